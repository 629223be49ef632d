"""The argument parsers of the argparse console scripts (``mmcaption-export``, ``mmcaption chat``,
``mmcaption-app``, ``mmcaption-pipeline``), kept free of torch, Lightning and the model so that
``--help`` and a mistyped flag are answered in a moment: :mod:`mmcaption.scripts` parses with them
before it imports the script. Each parser's description is its script's module docstring, read from
the source file without importing it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def path(text: str) -> str:
    """A path argument, ``~`` read as the home folder: the shell leaves it as it is after ``--model=``."""
    return os.path.expanduser(text)


def shipped_configs() -> Path:
    """The shipped configs: installed inside the package by a wheel (``pip install mmcaption``, ``pip install .``),
    else ``configs/`` of the checkout the package runs from."""
    installed = Path(__file__).resolve().parent / "configs"
    return installed if installed.is_dir() else installed.parent.parent / "configs"


def docstring(module: str) -> str | None:
    """``module``'s docstring, without importing it (and all it imports)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False)


def described(module: str, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=docstring(module), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=VERSION)  # what a bug report or a container's log names
    return parser


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the backbones are now: a checkpoint or an export records their folders as they were at training."""
    for name, what in (("language_model", "language model"), ("vision_model", "vision tower")):
        parser.add_argument(f"--{name}", default=None, type=path,
                            help=f"the {what}'s folder (or hub id) if it is no longer where training found it: a project "
                                 "moved or copied to another machine")


def add_compute_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """What the trained model computes in: its own, or float16 on a GPU that emulates bfloat16."""
    parser.add_argument("--compute_dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="what the language model computes in (default: the model's own, bfloat16 in the real configs); "
                             "float16 on a GPU without bfloat16 (T4, V100)")


def backbones_given(args: argparse.Namespace) -> dict[str, str]:
    """The backbone folders given on the command line, as config overrides."""
    return {name: getattr(args, name) for name in ("language_model", "vision_model") if getattr(args, name, None)}


def export_parser() -> argparse.ArgumentParser:
    parser = described("mmcaption.export", "mmcaption-export")
    parser.add_argument("checkpoint", type=path, help="a Lightning checkpoint of mmcaption fit")
    parser.add_argument("out", type=path, help="folder to write (refused if it holds anything, unless --overwrite)")
    parser.add_argument("--merge", action="store_true", help="also write the language model with LoRA merged in")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export's files in the folder (what the export does not write, as a Hub clone's "
                             ".git, is kept); other folders are refused")
    parser.add_argument("--license", default=None,
                        help="Hub license id the model card declares (mit, apache-2.0, cc-by-nc-4.0, other, ...; none by "
                             "default), one the backbones' licenses and the training data's terms allow")
    parser.add_argument("--include_backbones", action="store_true",
                        help="copy the language model and the vision tower into the folder: it then works with nothing else")
    add_backbone_arguments(parser)
    return parser


def chat_parser() -> argparse.ArgumentParser:
    parser = described("mmcaption.chat", "mmcaption chat")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=path, help="a folder written by mmcaption-export")
    source.add_argument("--checkpoint", type=path, help="a checkpoint of mmcaption fit (its config is inside it)")
    parser.add_argument("--image", type=path, help="the image to talk about (none: text-only questions)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: where the model loads)")
    add_compute_dtype_argument(parser)
    own = "(default: the model's own, as the Python API and predict use it)"
    parser.add_argument("--max_new_tokens", type=int, default=None, help=own)
    parser.add_argument("--min_new_tokens", type=int, default=None, help=own)
    parser.add_argument("--temperature", type=float, default=None, help=f"0: greedy; above 0: sampling at this temperature {own}")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling (with --temperature above 0, or a model that samples)")
    add_backbone_arguments(parser)
    return parser


def app_parser() -> argparse.ArgumentParser:
    parser = described("mmcaption.app", "mmcaption-app")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=path, help="a folder written by mmcaption-export")
    source.add_argument("--checkpoint", type=path, help="a checkpoint of mmcaption fit (its config is inside it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: where the model loads)")
    add_compute_dtype_argument(parser)
    add_backbone_arguments(parser)
    return parser


def pipeline_parser() -> argparse.ArgumentParser:
    """Parsed with ``parse_known_args``: what it does not know goes to both stages' ``fit``."""
    parser = described("mmcaption.pipeline", "mmcaption-pipeline")
    parser.add_argument("--caption", default="configs/caption.yaml", type=path, help="fit config of the caption stage")
    parser.add_argument("--instruct", default="configs/instruct.yaml", type=path, help="fit config of the instruct stage")
    return parser


# ``mmcaption``'s help: its epilog, and ``mmcaption prepare``'s description
try:  # --version of every command (the package's metadata: importing mmcaption here would load the Python API)
    RELEASE = version("mmcaption")
except PackageNotFoundError:  # run from a checkout that was never installed
    RELEASE = "(not installed)"
VERSION = f"mmcaption {RELEASE}"

EPILOG = ("also: `mmcaption prepare --config C` checks and preprocesses a config's data and prints what it holds; "
          "`mmcaption chat --model EXPORTED --image PHOTO` talks about a photo. Other commands: mmcaption-demo, "
          "mmcaption-pipeline, mmcaption-export, mmcaption-app.")

PREPARE_HELP = ("Check and preprocess the data of a config (the same --config files and settings as `mmcaption fit`) "
                "without loading the language model, and print what each split holds: records kept and skipped, tokens "
                "per sample, the share cut to max_length, the padding. Exits 2 with the bad record named.")
