"""``mmcaption chat``: a conversation about an image with an exported model (or a checkpoint of fit), in a terminal or a
pipe.

    mmcaption chat --model exported/mmcaption-phi2 --image photo.jpg
    mmcaption chat --checkpoint checkpoints/demo-instruct/last.ckpt --image photo.jpg  # a checkpoint of fit
    printf 'What is in the picture?\\nWhat colour is it?\\n' | mmcaption chat --model ... --image photo.jpg

Each line is a question; the answer streams as it is generated, and earlier turns stay in the prompt
(the instruct stage's layout). ``/image other.jpg`` switches to another image and starts a new
conversation, ``/reset`` starts a new one about the same image, ``/quit`` (or end of input) ends.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TextIO

from transformers import TextStreamer

from mmcaption.console import quieted
from mmcaption.errors import ConfigError, Interrupted, carry_on, user_errors_exit
from mmcaption.generation_settings import check_generation
from mmcaption.images import check_image, fetch, file_uri_path, is_url, local_file
from mmcaption.inference import Captioner, held_checkpoint, model_source_problem
from mmcaption.model import is_pretrained_folder
from mmcaption.model.card import caption_stage
from mmcaption.usage import backbones_given, chat_parser

HELP = "/image PATH: another image (a new conversation) - /reset: a new conversation - /quit: end"


class _Stream(TextStreamer):
    """Writes the decoded answer to ``out`` as the tokens come (the prompt is not repeated)."""

    def __init__(self, tokenizer, out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.started = out, False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.started:  # the answer's leading space (" red" after "Assistant:"), as the API strips it
            text = text.lstrip()
            self.started = bool(text)
        # at the end, as the API's answer ends: a character cut in half by max_new_tokens (U+FFFD) dropped, then spaces
        self.out.write(text.rstrip().rstrip("\ufffd").rstrip() if stream_end else text)
        self.out.flush()


def read_image(path: str) -> bytes:
    """An image's bytes, from a file or an ``http(s)://`` URL, refusing with its name one that is missing,
    a folder, or cannot be downloaded or decoded."""
    if is_url(path):
        try:
            data = fetch(path)
        except OSError as error:
            raise ConfigError(str(error)) from None
    else:
        file = local_file(Path(file_uri_path(path)).expanduser())  # typed in the other Unicode form, or another case: as
        # macOS finds it; a file:// URI, as a file manager copies one
        if file.is_dir():
            raise ConfigError(f"image {file} is a folder; chat talks about one image (/image PATH changes it)")
        if not file.is_file():
            raise ConfigError(f"image not found: {file}")
        data = file.read_bytes()
    problem = check_image(data)
    if problem is not None:
        raise ConfigError(f"image {path} cannot be decoded: {problem}")
    return data


def chat(captioner: Captioner, image: str | None, lines: TextIO, out: TextIO, interactive: bool = False,
         refused: list[str] | None = None, **generate_kwargs) -> int:
    """Answer the questions of ``lines`` about ``image`` (``None``: text-only), keeping the conversation;
    returns how many questions were answered. ``refused`` gets those the language model's context could not hold."""
    picture = read_image(image) if image else None
    history: list[tuple[str, str]] = []
    answered, cut = 0, set()  # the kinds of cut answers said
    streaming = generate_kwargs.get("num_beams", captioner.tasks.generation.num_beams or 1) == 1  # beams come whole
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        try:
            line = lines.readline()
        except OSError as error:  # nohup's standard input: a file opened for writing only (no terminal to read)
            nohup = "; nohup gives a command one it cannot read" if error.errno in (errno.EBADF, None) else ""
            raise ConfigError(f"mmcaption chat reads its questions from standard input, which cannot be read here "
                              f"({error.strerror or error}{nohup}): give them in a file or a pipe (mmcaption chat ... < "
                              "questions.txt)") from None
        if not line:
            if interactive:  # Ctrl-D at "you> ": the shell's prompt on a line of its own
                out.write("\n")
            break
        text = line.strip().lstrip("\ufeff").strip()  # a BOM: Notepad's UTF-8 file piped in (its /image was a question)
        if not text:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, kept by surrogateescape: said, and the next line read
            out.write(f"(not UTF-8 text, skipped: {text.encode('utf-8', 'surrogateescape')!r})\n")
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history = []
            out.write("(a new conversation)\n")
            continue
        if text.split(maxsplit=1)[0] == "/image":  # ("/images please" is no command: its help is said)
            other = dropped_path(text.removeprefix("/image").strip())
            if not other:  # was "image . is a folder"
                out.write(f"(/image needs the image's path: /image photo.jpg; still about {image or 'no image'})\n")
                continue
            try:
                picture, image = read_image(other), other
            except ConfigError as error:
                out.write(f"({error}; still about {image or 'no image'})\n")
                continue
            history = []
            out.write(f"(now about {image}: a new conversation)\n")
            continue
        if text.startswith("/"):
            out.write(f"({HELP})\n")
            continue
        if interactive:
            out.write("model> ")
        stream = {"streamer": _Stream(captioner.tokenizer, out)} if streaming else {}
        try:
            answer = captioner.chat(picture, text, history, **stream, **generate_kwargs)
        except ValueError as error:  # past the model's context: said, and the conversation goes on (a traceback ended it)
            out.write(f"({error}{'; /reset starts a new conversation' if history else ''})\n")
            if refused is not None:
                refused.append(text)
            continue
        except (Interrupted, KeyboardInterrupt) as stopped:  # Ctrl-C at a long answer in a terminal: that answer ends, and
            if not interactive or getattr(stopped, "signum", signal.SIGINT) != signal.SIGINT:  # the conversation goes on
                raise  # (it ended the chat, and the conversation with it); a pipe's, SIGTERM, a closed terminal: the end
            carry_on()
            out.write("\n(stopped: this answer is left out of the conversation; Ctrl-C at the prompt ends the chat)\n")
            continue
        out.write(("" if streaming else answer) + "\n")
        out.flush()
        if captioner.tasks.unfinished[:1] == [True]:  # said once each, beside the answers (a cut one read as whole)
            at_context = captioner.tasks.at_context[:1] == [True]
            if at_context and "context" not in cut:
                print("note: the answer stopped where the language model's context ends, before its end: /reset starts a "
                      "new conversation, whose history takes none of it", file=sys.stderr, flush=True)
            elif not at_context and "limit" not in cut:
                limit = generate_kwargs.get("max_new_tokens", captioner.tasks.generation.max_new_tokens)
                print(f"note: the answer stopped at the length limit{f' ({limit} new tokens)' if limit else ''} before its "
                      "end: --max_new_tokens raises it", file=sys.stderr, flush=True)
            cut.add("context" if at_context else "limit")
        history.append((text, answer))
        answered += 1
    return answered


def check_source(model: str | None, checkpoint: str | None) -> None:
    """Refuse a model chat or the app cannot load, before anything heavy is imported or loaded."""
    if (model is None) == (checkpoint is None):
        raise ConfigError("give the model as --model FOLDER (of mmcaption-export) or --checkpoint FILE.ckpt")
    if model is not None and (problem := model_source_problem(model)):
        raise ConfigError(problem)
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise ConfigError(f"{checkpoint} is a folder: " + ("an exported model is given as --model" if is_pretrained_folder(checkpoint)
                                                          else "--checkpoint takes a training checkpoint's .ckpt file"
                                                          + held_checkpoint(Path(checkpoint))))
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"checkpoint not found: {checkpoint}")


def load_captioner(model: str | None = None, checkpoint: str | None = None, device: str | None = None,
                   compute_dtype: str | None = None, **backbones: str) -> Captioner:
    """The model of an exported folder, or of a training checkpoint (exported to a temporary folder first: the
    checkpoint holds its config, the backbones load from the names it records, or ``backbones``), computing in its own
    dtype or ``compute_dtype``."""
    check_source(model, checkpoint)
    if model is not None:
        return Captioner.from_pretrained(model, device=device, compute_dtype=compute_dtype, **backbones)
    from mmcaption.export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="mmcaption-") as folder:
        export_checkpoint(checkpoint, Path(folder) / "model", license="other", **backbones)  # (no card shared: its note unsaid)
        return Captioner.from_pretrained(Path(folder) / "model", device=device, compute_dtype=compute_dtype)


def dropped_path(text: str) -> str:
    """A path as typed (``~`` read as home), or as a terminal writes a dropped file: quoted, or its spaces escaped."""
    if os.path.exists(os.path.expanduser(text)):  # as typed (a Windows path's backslashes too)
        return os.path.expanduser(text)
    try:
        parts = shlex.split(text)
    except ValueError:  # an unbalanced quote
        return text
    return os.path.expanduser(parts[0]) if len(parts) == 1 else text


@user_errors_exit
@quieted
def main(argv: list[str] | None = None) -> None:
    """``mmcaption chat``."""
    args = chat_parser().parse_args(argv)
    check_source(args.model, args.checkpoint)
    if args.image:
        read_image(args.image)  # before the model loads
    # the settings given; the rest are the model's own, as the API and predict use them (128 tokens and greedy were chat's,
    # whatever the model was exported with)
    settings = {name: value for name in ("max_new_tokens", "min_new_tokens") if (value := getattr(args, name)) is not None}
    if args.top_p is not None and args.top_p != 1.0:  # (1.0, the old default, samples from every token: no setting)
        if args.temperature == 0:  # before the model loads: nothing of it is needed to say so
            raise ConfigError(f"--top_p {args.top_p} is used only when sampling, and --temperature 0 answers greedily: give a "
                              "temperature above 0")
        settings["top_p"] = args.top_p
    if args.temperature is not None:
        settings["do_sample"] = args.temperature != 0
        if args.temperature != 0:  # one sequence sampled, streamed as it comes
            settings.update(temperature=args.temperature, num_beams=1)
    check_generation(settings, "mmcaption chat")
    captioner = load_captioner(args.model, args.checkpoint, args.device, args.compute_dtype, **backbones_given(args))
    if "top_p" in settings and not settings.get("do_sample", captioner.tasks.generation.do_sample):  # was dropped unsaid
        raise ConfigError(f"--top_p {args.top_p} is used only when sampling, and the answers would be not sampled (the "
                          "model's own settings): give --temperature above 0 with it")
    if caption_stage(captioner.manifest):  # as predict says of a caption-stage checkpoint
        print(f"note: {args.model or args.checkpoint} is a caption-stage model: the instruct stage teaches to answer questions and chat; "
              "expect captions, not answers", file=sys.stderr, flush=True)
        warnings.filterwarnings("ignore", message="this is a caption-stage model")  # the API's own note: said just above
    warnings.filterwarnings("ignore", message=r"\d+ of \d+ texts stopped before their end")  # chat says it its own way
    # piped in and out as UTF-8 (Windows reads and writes a pipe in its code page: an accent or emoji ended the chat),
    # and a line of other bytes is skipped, not the end of the chat
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "strict")):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=errors, **({} if stream.isatty() else {"encoding": "utf-8"}))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"mmcaption chat about {args.image or 'no image'} (each line is a question: a pasted text of several lines asks "
              f"several; {HELP})")
    refused: list[str] = []
    chat(captioner, args.image, sys.stdin, sys.stdout, interactive=interactive, refused=refused, **settings)
    if refused and not interactive:  # a script's questions piped in: each refusal was a line among the answers, exit 0
        raise ConfigError(f"{len(refused)} question{'s were' if len(refused) > 1 else ' was'} not answered, past the "
                          f"language model's context (first: {refused[0][:60]!r}): ask shorter questions, or put a /reset "
                          "line among them to start a new conversation")
