"""Where the backbones are, said before anything loads: a folder moved since training, a Hugging Face id not
downloaded on an offline machine, a device that is not there, a context shorter than the data, and a loading error
named by the backbone it is about, not transformers' traceback."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath

import torch
from huggingface_hub import constants, get_session, is_offline_mode, try_to_load_from_cache

from mmcaption.errors import ConfigError, unexpanded_variable
from mmcaption.model.backbone_weights import backbone_folder
from mmcaption.model.card import HUB_ID, mistyped_folder
from mmcaption.resources import permission_message


class BackboneNotFoundError(ConfigError):
    """A backbone that is neither a local folder nor in the Hugging Face cache, and cannot be downloaded."""


def download_hint(name: str) -> str:
    return (f"download it first (`hf download {name}`, or `huggingface-cli download {name}` with an older "
            "huggingface_hub), or set it to a local folder")


def check_device(device: str | torch.device | None) -> None:
    """Refuse a device this machine does not have, or a name that is none, before anything loads."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device {device!r} is not a device name: cpu, cuda, cuda:1, mps ({error})") from None
    kind, index = parsed.type, parsed.index
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available,
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}.get(kind, lambda: True)
    if not available():
        raise ConfigError(f"device {device!r}: PyTorch sees no {kind} device on this machine (torch {torch.__version__}); "
                          "use cpu, or run it where there is one")
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")


def emulated_bfloat16(device: str | torch.device) -> str | None:
    """``"<GPU> (compute capability 7.5)"`` where ``device`` is a GPU without bfloat16 arithmetic (compute capability below
    8: T4, V100, Colab's and Kaggle's free GPUs), which torch accepts and emulates, several times slower; else None."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return None if major >= 8 else f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"


def check_backbone(name: str, setting: str) -> bool:
    """Refuse, before anything loads, a backbone ``from_pretrained`` could not find: a local path that is
    not a model folder, or a hub id that is not in the Hugging Face cache while the hub is offline
    (``HF_HUB_OFFLINE=1``). Online, a hub id that is not cached is downloaded on first use: true then."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "preprocessor_config.json").is_file():
            raise BackboneNotFoundError(f"{setting} {name} is not a saved model folder (no config.json in it)")
        return False
    if is_local_path(name) or not (HUB_ID.fullmatch(name) or re.fullmatch(r"[\w.-]+", name)):  # '$HOME/x' (gpt2: one)
        where = "" if path.is_absolute() else f" (relative to the working directory, {Path.cwd()})"
        raise BackboneNotFoundError(f"{setting} {name}: no such folder{where}{unexpanded_variable(name)}")
    if near := mistyped_folder(name, "config.json"):
        raise BackboneNotFoundError(f"{setting} {name}: no such folder; did you mean {near}? (read as a Hub id, it is not "
                                    "in the Hugging Face cache)")
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return False
    if not is_offline_mode():
        return True
    owner, _, rest = name.partition("/")  # backbones/language_model, moved away from the folder that held it: a folder here
    here = f"; {owner} is a folder here ({Path.cwd()}), without {rest} in it" if rest and Path(owner).is_dir() else ""
    raise BackboneNotFoundError(f"{setting} {name!r} is neither a local folder nor in the Hugging Face cache{here}, and the "
                                f"hub is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): {download_hint(name)}")


def check_backbones(language_model: str, vision_model: str, trained_from: str | None) -> None:
    """:func:`check_backbone` for both, refused together (a second run found the second moved backbone), saying that
    the checkpoint ``trained_from`` (``--ckpt_path`` or ``init_from``, when given) records the folders as they were."""
    problems, downloads = [], []
    for name, setting in ((language_model, "model.config.language_model"), (vision_model, "model.config.vision_model")):
        try:
            if check_backbone(name, setting):
                downloads.append(name)
        except BackboneNotFoundError as error:
            problems.append(str(error))
    if downloads and not problems and (unreachable := hub_unreachable()):  # a compute node without internet: said at
        raise BackboneNotFoundError(  # once, both named, not after a minute of retries about the tokenizer alone
            f"{' and '.join(downloads)} {'is' if len(downloads) == 1 else 'are'} not in the Hugging Face cache, and the hub "
            f"cannot be reached ({unreachable}): download {'it' if len(downloads) == 1 else 'them'} where there is a network "
            f"(`hf download {downloads[0]}`{''.join(f', `hf download {d}`' for d in downloads[1:])}; HF_HOME names the "
            "cache to fill, on a shared disk), or set the settings to local folders; with HF_HUB_OFFLINE=1 a run never "
            "waits on the network")
    if problems and trained_from and any(": no such folder" in problem for problem in problems):
        problems[-1] += (f". Moved since? A checkpoint records its backbones' folders as they were when it trained, and "
                         f"{trained_from} is read with them unless the config gives others: give where they are now, "
                         "--model.config.language_model PATH --model.config.vision_model PATH")
    if problems:
        raise BackboneNotFoundError("; and ".join(problems))


HUB_PROBE_TIMEOUT_S = 10


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached (a compute node without internet, a firewall), asked once with a
    short timeout by the hub's own client, as the downloads are (its proxies and certificates); None when it answers,
    with any status (a mirror's 404, a proxy's 403: the download itself says that)."""
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - the client's connection, timeout and proxy errors, whichever it raises
        return str(error) or type(error).__name__
    return None


def context_problem(name: str, max_length: object) -> str | None:
    """Why ``data.max_length`` cannot be trained: longer than the language model's context (its config's
    ``max_position_embeddings``), positions it never learned. Read from its config.json; nothing is loaded."""
    folder = backbone_folder(name)
    if not isinstance(max_length, int) or folder is None or not (folder / "config.json").is_file():
        return None
    context = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    if isinstance(context, int) and max_length > context:
        return (f"data.max_length {max_length} is longer than the language model's context ({name}: max_position_embeddings "
                f"{context}); it never learned the positions beyond: give at most {context}")
    return None


@contextmanager
def naming_backbone(name: str, what: str) -> Iterator[None]:
    """A backbone that cannot be found or downloaded fails with one message naming it, not transformers'
    traceback ending in a connection error."""
    try:
        yield
    except ValueError as error:  # transformers' "Unrecognized configuration class ..." and its 3,000 characters of models
        if "trust_remote_code" in str(error):  # an auto_map to a .py of the folder's (a stranger's model from the Hub)
            raise ConfigError(f"cannot load the {what} {name}: its files ask to run Python code of their own (an auto_map in "
                              "its config.json, tokenizer_config.json or preprocessor_config.json), which mmcaption never "
                              "runs. Use a model whose classes transformers has") from None
        kind = re.search(r"configuration class <class '[\w.]+\.(\w+)Config'>", str(error))
        if kind is None:
            raise
        other = "vision model" if "language" in what else "language model"
        raise ConfigError(f"cannot load the {what} {name}: it is a {kind.group(1)} model. Is it the {other} "
                          "(language_model and vision_model the other way round)?") from None
    except OSError as error:
        if is_local_path(name) and not Path(name).expanduser().exists():  # not a hub id: downloading would not help
            raise BackboneNotFoundError(f"cannot load the {what} {name}: it is no folder (any more). "
                                        f"{moved_advice('it is', name)}") from error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        folder = Path(name).expanduser()
        private = [p for p in folder.iterdir() if p.is_file() and not os.access(p, os.R_OK)] if folder.is_dir() else []
        if private:  # safetensors says "No such file" of a file it may not read
            raise BackboneNotFoundError(f"cannot load the {what} {name}: " + permission_message(
                private[0], "not readable by this user", "Ask its owner to let the group read it (chmod -R g+rX), or copy "
                "the folder")) from error
        if folder.is_dir():  # a local folder that lacks the files: there is nothing to download
            raise BackboneNotFoundError(
                f"cannot load the {what} {name}: the folder lacks its files ({first.rstrip('.')}). It holds "
                f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}: save them there too "
                "(processor.save_pretrained / tokenizer.save_pretrained), or copy them from where the model came from") from error
        raise BackboneNotFoundError(f"cannot load the {what} {name!r}: {first}. {download_hint(name).capitalize()}") from error


def moved_advice(where: str, link: str) -> str:
    """How to point a checkpoint or an export at backbones that are no longer where it recorded them."""
    return ("A checkpoint or an export records the folders of its backbones: give where " + where + " now (--language_model "
            "/ --vision_model of mmcaption-export, chat and the app; Captioner.from_pretrained's language_model= / "
            "vision_model=; --model.config.* of the CLI), put the folder back there, or link it (ln -s <where it is now> "
            f"{link})")


def check_backbone_folders(language_model: str, vision_model: str) -> None:
    """Both backbones' folders gone (a project moved, its backbones with it) said at once: the language model's was
    said, and the vision model's only on the next try."""
    gone = [name for name in (language_model, vision_model) if is_local_path(name) and not Path(name).expanduser().exists()]
    if len(gone) == 2:
        raise BackboneNotFoundError(f"cannot load the language model {language_model} nor the vision model {vision_model}: "
                                    f"neither is a folder (any more). {moved_advice('they are', '<where it was>')}")


def is_local_path(name: str) -> bool:
    """A backbone named by a path (``/...``, ``./...``, ``~/...``, ``a/b/c``; Windows' ``C:\\models\\phi-2``,
    ``\\\\nas\\models``, ``models\\phi-2``), not a hub id (``owner/name``): a Windows path was checked as a hub id, a traceback."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or bool(PureWindowsPath(name).drive)
