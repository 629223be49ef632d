"""A small Python API over a saved model folder (``mmcaption-export``).

    from mmcaption import Captioner
    captioner = Captioner.from_pretrained("exported/mmcaption-phi2")
    print(captioner.caption("photo.jpg"))

It needs the model and the task layer only: no Lightning, no ``datasets``.
"""

from __future__ import annotations

import itertools
import numbers
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, get_args

import torch
from huggingface_hub import hf_hub_download, is_offline_mode, snapshot_download
from transformers.utils import logging as hf_logging

from mmcaption.api_inputs import (
    as_batch,
    callers_level,
    caption_needs_images,
    check_errors,
    check_texts,
    checked_batch_size,
    one_image,
    pair_questions,
    per_question_options,
)
from mmcaption.errors import ConfigError, NotAModelFolderError, image_input_error
from mmcaption.generation_settings import check_generation, saved_generation
from mmcaption.images import ImageSource, blank_pixels, load_rgb, processor_side
from mmcaption.model import MultimodalCausalLM, is_pretrained_folder, read_manifest
from mmcaption.model.backbone_checks import (
    BackboneNotFoundError,
    check_device,
    emulated_bfloat16,
    hub_unreachable,
    is_local_path,
)
from mmcaption.model.backbone_weights import changed_backbones
from mmcaption.model.backbones import load_image_processor, load_tokenizer
from mmcaption.model.card import CONFIG_FILE, HUB_ID, caption_stage, mistyped_folder, newest_checkpoint
from mmcaption.model.config import DType, Quantization
from mmcaption.model.multimodal import pretrained_config
from mmcaption.prompts import ConversationTemplate, caption_prompt_ids, choice_prompts
from mmcaption.tasks import Tasks, evaluating
from mmcaption.terminal import shell_word

ImageInput = ImageSource  # a path, an http(s):// URL, bytes, a PIL image or an array
FOLDER_PARTS = ("adapter/adapter_model.safetensors", "multimodal.safetensors", "tokenizer", "image_processor")


_LAST_CALL = threading.local()  # the cut texts of this thread's last call (last_cut)


def last_cut() -> tuple[int, int, int]:
    """Of this thread's last :class:`Captioner` call: its texts cut before their end, of them at the context's end, all."""
    return getattr(_LAST_CALL, "cut", (0, 0, 0))


class Captioner:
    """Captions images, answers questions about them and picks multiple-choice options.

    ``generate_kwargs`` are Hugging Face ``generate`` settings (or a ``generation_config``) over the folder's
    own. One captioner may serve several threads: their calls take turns."""

    batch_size = 16  # images generated for (or scored) at a time, unless a call says otherwise

    def __init__(self, model: MultimodalCausalLM, tokenizer, image_processor, manifest: dict[str, Any]) -> None:
        self.model = model.eval()
        self.manifest = manifest  # the saved folder's mmcaption.json: its settings, prompts and how it was trained
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.caption_prompt = manifest["prompts"].get("caption_prompt", "")
        self.template = ConversationTemplate(system=manifest["prompts"].get("system_prompt", ""))
        self.tasks = Tasks(model, tokenizer, manifest.get("generation", {}))
        self._lock = threading.Lock()  # generate() sets the images on the model's layers: one call at a time
        self._asked = False  # whether a question was asked of it (a caption-stage model says once what to expect)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy: a replica for another thread, with a lock of its own
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device | None = None, quantization: Quantization | None = None,
        language_model: str | None = None, vision_model: str | None = None, compute_dtype: DType | None = None,
    ) -> Captioner:
        """Rebuild the model of a saved folder (backbones from their own names, trained parts from the
        folder), optionally with another quantization for inference, or another ``compute_dtype`` (float16 on a GPU
        without bfloat16: T4, V100). ``language_model`` / ``vision_model``: where a backbone is now, when its folder
        moved since training (a merged export holds its language model)."""
        folder = _model_folder(folder)
        check_device(device)
        for name, value, kinds in (("quantization", quantization, Quantization), ("compute_dtype", compute_dtype, DType)):
            if value is not None and value not in get_args(kinds):
                raise ConfigError(f"{name} is one of {', '.join(get_args(kinds))} (or None for the folder's own), not {value!r}")
        manifest = read_manifest(folder)  # refuses, saying so, a folder that is not a saved model's
        parts = [*FOLDER_PARTS, *(["language_model"] if manifest.get("merged") else [])]
        missing = [part for part in parts if not (folder / part).exists()]
        if missing:  # found before the model loads; a missing tokenizer/ was looked for on the Hub
            raise NotAModelFolderError(f"{folder} lacks {', '.join(missing)} of a saved model folder (copied in part?); "
                                       "write it again with mmcaption-export")
        overrides = {name: value for name, value in (("quantization", quantization), ("language_model", language_model),
                                                     ("vision_model", vision_model), ("compute_dtype", compute_dtype))
                     if value is not None}
        overrides.update({name: os.path.expanduser(overrides[name]) for name in ("language_model", "vision_model")
                          if name in overrides})  # "~/models/phi-2", as the shell would read it
        for name in ("language_model", "vision_model"):  # a typo of one's own: not "the folder it recorded moved; link it"
            given = overrides.get(name)
            if given is not None and is_local_path(given) and not Path(given).is_dir():
                raise BackboneNotFoundError(f"the {name} given, {given}, is no folder" + (
                    " (a file: a backbone is the folder holding its config.json)" if Path(given).is_file() else ""))
        if compute_dtype is not None and pretrained_config(folder, **overrides).computed_dtype != compute_dtype:
            raise ConfigError(f"compute_dtype {compute_dtype!r} does nothing for a model in int8, which loads in float32 "
                              "(LLM.int8 has no compute dtype): leave it out (chat's and the app's --compute_dtype too), "
                              "or give quantization='nf4' with it")
        bars = hf_logging.is_progress_bar_enabled()  # transformers' "Loading weights" bar per file: gone in a second
        hf_logging.disable_progress_bar()
        try:
            model = MultimodalCausalLM.from_pretrained(folder, device=device, **overrides)
        finally:
            if bars:  # the notebook's own setting, as it was
                hf_logging.enable_progress_bar()
        fitted = {k: v for k, v in (manifest.get("backbone_weights") or {}).items() if not (manifest.get("merged") and k == "language_model")}
        if said := changed_backbones(fitted, model.backbone_weights, model.config, str(folder), manifest.get("model")):
            warnings.warn(said, UserWarning, stacklevel=callers_level())
        processor = load_image_processor(str(folder / "image_processor"))
        manifest = {**manifest, "generation": saved_generation(manifest.get("generation") or {}, str(folder / CONFIG_FILE))}
        captioner = cls(model, load_tokenizer(str(folder / "tokenizer")), processor, manifest)
        if model.config.computed_dtype == "bfloat16" and (gpu := emulated_bfloat16(captioner.tasks.device)):
            warnings.warn(f"{gpu} has no bfloat16 arithmetic, which this model computes in: torch emulates it there, several "
                          "times slower. Its own is float16: compute_dtype='float16' (mmcaption chat, mmcaption-app: "
                          "--compute_dtype float16)", UserWarning, stacklevel=callers_level())
        return captioner

    def _asking(self) -> None:
        """A question asked of a caption-stage model: said once (``mmcaption chat`` and ``predict`` say it too)."""
        if not self._asked and caption_stage(self.manifest):
            warnings.warn("this is a caption-stage model: the instruct stage teaches it to answer questions and chat; "
                          "expect captions, not answers", UserWarning, stacklevel=callers_level())
        self._asked = True

    def _images(self, images: list[ImageInput | None], first: int = 0, total: int | None = None,
                skip: bool = False, errors: list | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Pixels of each image (zeros for ``None``), the mask of those that are there, and (``skip``) the places of those
        that cannot be read, each warned of, or added to ``errors`` (else the first is raised). Each image is decoded and made the model's
        size before the next is read: a list of 12-megapixel photos never sits in memory at full size. ``first`` and
        ``total``: where these images are in the caller's list, to name one that cannot be read."""
        check_errors(errors)  # (before the first image is read)
        total = len(images) if total is None else total
        rows, unreadable = [], []
        for i, image in enumerate(images):
            try:
                rows.append(None if image is None else self._pixels_of(image, first + i, total, skip))
            except (OSError, ValueError, TypeError) as error:
                if not skip:
                    raise
                if errors is not None:  # this call's own list: a service's requests each get their own reasons
                    errors.append((first + i, str(error)))
                else:
                    warnings.warn(f"{error}: its result is None", UserWarning, stacklevel=callers_level())
                rows.append(None)
                unreadable.append(i)
        present = next((row for row in rows if row is not None), None)
        blank = torch.zeros_like(present) if present is not None else blank_pixels(self.image_processor)
        mask = torch.tensor([row is not None for row in rows])
        return torch.stack([blank if row is None else row for row in rows]), mask, unreadable

    def _pixels_of(self, image: ImageInput, index: int, total: int, skip: bool = False) -> torch.Tensor:
        try:
            picture = load_rgb(image, processor_side(self.image_processor))
        except (OSError, ValueError, TypeError) as error:  # the caller's image: an ImageInputError too (a service's 400)
            if total == 1 and not skip:  # the error as it was raised, said once
                raise image_input_error(error).with_traceback(error.__traceback__) from None
            place = f"image {index + 1}" + (f" of {total}" if total else "")  # which one of a long list
            numbered = isinstance(error, OSError) and error.errno is not None  # its errno and file kept
            raise image_input_error(error, f"{place}: {error.strerror if numbered else error}") from error
        return self.image_processor(images=[picture], return_tensors="pt")["pixel_values"][0]

    def _generate(self, prompts: list[list[int]], images: list[ImageInput | None], batch_size: int | None = None,
                  first: int = 0, total: int | None = None, skip_unreadable: bool = False, errors: list | None = None,
                  _ends_at: float | None = None, _cut: list[int] | None = None, **generate_kwargs) -> list[str] | list[list[str]]:
        """A text per prompt, or with ``num_return_sequences`` n > 1 a list of n texts per prompt; ``batch_size`` at a
        time (:attr:`batch_size` by default); ``None`` in place of one whose image cannot be read, with
        ``skip_unreadable``. ``first``, ``total``: where these images are in the caller's (0: unknown). ``_ends_at``
        (not a name of generate's): when (``time.monotonic()``) the whole call's ``max_time`` is up, for a call made
        of several of these."""
        size = checked_batch_size(self.batch_size if batch_size is None else batch_size)
        texts: list = []
        # the call's time, not each batch's (N batches took N times it)
        deadline = _deadline(generate_kwargs) if _ends_at is None else _ends_at
        cut = [0, 0, 0] if _cut is None else _cut  # texts cut before their end, of them at the context's end, texts made
        for start in range(0, len(prompts), size):
            batch = self.tasks.prompt_batch(prompts[start:start + size])
            pixels, mask, unreadable = self._images(images[start:start + size], first + start,
                                                    len(images) if total is None else total, skip_unreadable, errors)
            if deadline is not None:  # a batch after the time is up makes a token each, as transformers' first one
                generate_kwargs["max_time"] = max(deadline - time.monotonic(), 1e-3)
            with self._lock, evaluating(self.model):  # threads (a web server's) take turns: they got each other's images
                made = self.tasks.generate(batch["input_ids"], batch["attention_mask"], pixels, None, mask,
                                           **generate_kwargs)
                n = len(made) // len(batch["input_ids"])  # (what it cut, read before another thread generates)
                rows = [i for i in range(len(made)) if i // n not in unreadable and self.tasks.unfinished[i:i + 1] == [True]]
                cut[:] = [cut[0] + len(rows), cut[1] + sum(self.tasks.at_context[i] for i in rows),
                          cut[2] + len(made) - n * len(unreadable)]
            texts += [None if i // n in unreadable else text for i, text in enumerate(made)]
        if _cut is None:  # (a generator's chunks: said once, for the whole call)
            self._call_ended(cut, generate_kwargs)
        n = len(texts) // max(len(prompts), 1)  # num_return_sequences, however it was given
        groups = [texts[i:i + n] for i in range(0, len(texts), n)]  # an unreadable image's: None, as one text's is
        return texts if n == 1 else [None if group[0] is None else group for group in groups]

    def _call_ended(self, cut: list[int], generate_kwargs: dict[str, Any]) -> None:
        """A call's end: its texts that stopped before their end (``cut``: their count, those at the context's end, the
        texts made) kept as this thread's :func:`last_cut` (for the app's page; another thread's call may have ended
        since), and said in one warning: a script read a cut answer as the model's whole one."""
        _LAST_CALL.cut = tuple(cut)
        if not cut[0]:
            return
        saved, length = self.tasks.generation, generate_kwargs.get("max_length")  # the call's limit, else the model's
        tokens = generate_kwargs.get("max_new_tokens", None if length is not None else saved.max_new_tokens)
        if tokens is None and (length := saved.max_length if length is None else length) is not None:
            limit = f" (max_length {length} tokens, the prompt's included), which max_length=... raises"
        else:
            limit = f"{f' ({tokens} new tokens)' if tokens else ''}, which max_new_tokens=... raises"
        warnings.warn(f"{cut[0]} of {cut[2]} texts stopped before their end: " + "; ".join([
            *([f"{cut[0] - cut[1]} at the length limit{limit}"] if cut[0] > cut[1] else []),
            *([f"{cut[1]} where the language model's context ends (a shorter question or history leaves more room)"]
              if cut[1] else [])]), UserWarning, stacklevel=callers_level())

    def caption(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None,
                skip_unreadable: bool = False, errors: list | None = None, **generate_kwargs) -> str | list[str]:
        """A caption per image (a string for one image; a list for a list, a tuple, a pandas Series, an array of
        paths or of images, or a generator; with ``num_return_sequences`` n > 1, a list of n captions in place of each
        string), ``batch_size`` images at a time (:attr:`batch_size` by default; a generator is read so, too: video
        frames are not all held at once). An image that cannot be read is raised, named by its place; with
        ``skip_unreadable``, its caption is ``None`` (with a warning) and the others are made: a folder's one broken
        file does not lose hours of captions. ``errors``: a list that gets ``(index, reason)`` of each image skipped,
        in place of the warning (a web service's requests each get their own; warnings are the process's)."""
        size = checked_batch_size(self.batch_size if batch_size is None else batch_size)
        prompt = caption_prompt_ids(self.tokenizer, self.caption_prompt)
        if isinstance(images, Iterable) and not isinstance(images, Sized) and not one_image(images):  # a generator, a
            images = iter(images)  # streamed dataset's column: read a batch at a time, its length unknown (its images named
        if isinstance(images, Iterator) and not one_image(images):  # by their place alone); not an open file's lines
            captions: list = []
            deadline, cut = _deadline(generate_kwargs), [0, 0, 0]  # the whole call's, as for a list
            while chunk := list(itertools.islice(images, size)):
                caption_needs_images(chunk)
                captions += self._generate([prompt] * len(chunk), chunk, size, first=len(captions), total=0,
                                           skip_unreadable=skip_unreadable, errors=errors, _ends_at=deadline, _cut=cut,
                                           **generate_kwargs)
            self._call_ended(cut, generate_kwargs)
            return captions
        batch = as_batch(images)
        images = [images] if batch is None else batch
        if not images:
            return []
        caption_needs_images(images)
        captions = self._generate([prompt] * len(images), images, size, skip_unreadable=skip_unreadable, errors=errors,
                                  **generate_kwargs)
        return captions if batch is not None else captions[0]

    def answer(
        self, images: ImageInput | None | Sequence[ImageInput | None], questions: str | Sequence[str],
        batch_size: int | None = None, skip_unreadable: bool = False, errors: list | None = None, **generate_kwargs,
    ) -> str | list[str]:
        """A free-form answer, as the instruct stage was taught to give (an image of ``None``: a text-only
        question). One image and question give a string; a list of images and a list of as many questions (or
        one question for them all) give a list, ``batch_size`` at a time (``num_return_sequences`` n > 1: n
        answers in place of each string); ``skip_unreadable`` and ``errors`` as :meth:`caption` has them."""
        self._asking()
        many, images, questions = pair_questions(images, questions)
        prompts = [self.template.prompt(question, self.tokenizer) for question in questions]
        self.tasks.check_context(prompts)
        answers = self._generate(prompts, images, batch_size, skip_unreadable=skip_unreadable, errors=errors,
                                 **generate_kwargs) if prompts else []
        return answers if many else answers[0]

    def chat(self, image: ImageInput | None, question: str, history: Sequence[tuple[str, str]] | None = None,
             **generate_kwargs) -> str | list[str]:
        """The answer to ``question`` after the earlier ``(question, answer)`` turns of ``history``, all
        about ``image``, laid out as the instruct stage's conversations (the exported ``chat_template``); with
        ``num_return_sequences`` n > 1, a list of n answers."""
        turns = [] if history is None else as_batch(history)
        if turns is None or not all(isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
                                    for turn in turns):
            raise ConfigError(f"history is a list of (question, answer) pairs of strings, not {history!r}")
        check_texts("question", [question])
        self._asking()
        prompt = self.template.chat_prompt(turns, question, self.tokenizer)
        self.tasks.check_context([prompt], *(("conversation", "start a new one (no history), or ask a shorter question")
                                             if turns else ()))
        return self._generate([prompt], [image], **generate_kwargs)[0]

    def choose(
        self, images: ImageInput | None | Sequence[ImageInput | None], questions: str | Sequence[str],
        options: Sequence[str] | Sequence[Sequence[str]], batch_size: int | None = None, skip_unreadable: bool = False,
        errors: list | None = None,
    ) -> str | list[str]:
        """The letter (A, B, ...) of the most likely option given the image and question; 2 to 8 options.
        A list of images with a list of as many questions and option lists (or one question and one option list
        for them all) gives a list of letters, scored ``batch_size`` at a time; ``skip_unreadable`` (``None`` in place of
        the letter of an image that cannot be read) and ``errors`` as :meth:`caption` has them."""
        letters, _ = self._choose(images, questions, options, batch_size, skip_unreadable, errors)
        return letters

    def option_scores(
        self, images: ImageInput | None | Sequence[ImageInput | None], questions: str | Sequence[str],
        options: Sequence[str] | Sequence[Sequence[str]], batch_size: int | None = None, skip_unreadable: bool = False,
        errors: list | None = None,
    ) -> list[float] | list[list[float]]:
        """Each option's mean log-probability per token (the scores ``choose`` picks the highest of),
        for one question or, with lists, for each; ``skip_unreadable`` and ``errors`` as :meth:`choose` has them."""
        _, scores = self._choose(images, questions, options, batch_size, skip_unreadable, errors)
        return scores

    @torch.no_grad()
    def _choose(self, images, questions, options, batch_size: int | None = None, skip_unreadable: bool = False,
                errors: list | None = None) -> tuple[str | list[str], list[float] | list[list[float]]]:
        self._asking()
        many, images, questions = pair_questions(images, questions)
        option_lists = per_question_options(options, questions, many)
        if not questions:
            return [], []
        prompts, option_ids = choice_prompts(self.template, self.tokenizer, questions, option_lists, "likelihood")
        self.tasks.check_context([prompt + max(opts, key=len) for prompt, opts in zip(prompts, option_ids)], "question",
                                 "shorten the question or its longest option", " and its longest option")
        size, letters, per_question = checked_batch_size(self.batch_size if batch_size is None else batch_size), [], []
        for start in range(0, len(prompts), size):
            pixels, mask, unreadable = self._images(images[start:start + size], start, len(images), skip_unreadable, errors)
            with self._lock, evaluating(self.model):
                image_embeds = self.model.encode_images(pixels.to(self.tasks.device))
                chosen, scores = self.tasks.choose(list(prompts[start:start + size]), list(option_ids[start:start + size]),
                                                   image_embeds, image_mask=mask)
            letters += [None if i in unreadable else letter for i, letter in enumerate(chosen)]
            per_question += [None if i in unreadable else row[: len(opts)].tolist()
                             for i, (row, opts) in enumerate(zip(scores.float().cpu(), option_lists[start:start + size]))]
        return (letters, per_question) if many else (letters[0], per_question[0])


def model_source_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a saved model to load (a folder of mmcaption-export, or a Hub repository's id, which
    loading fetches or refuses itself), said before anything loads; None when nothing is."""
    folder = Path(name).expanduser()
    if folder.is_file():
        return f"{name} is a file" + (": a training checkpoint is given as --checkpoint" if folder.suffix == ".ckpt" else
                                      ", not a model folder of mmcaption-export")
    if folder.is_dir():
        return None if is_pretrained_folder(folder) else (f"{name} is not a model folder of mmcaption-export (no mmcaption.json "
                                                          f"in it){held_checkpoint(folder)}")
    if not HUB_ID.fullmatch(name):
        return f"model folder not found: {name}"
    near = mistyped_folder(name, CONFIG_FILE)
    return None if near is None else f"model folder not found: {name}; did you mean {near}?"


def _deadline(generate_kwargs: dict[str, Any]) -> float | None:
    """When (``time.monotonic()``) a call's ``max_time`` in seconds is up; None without one (or with a value that is
    not a number of seconds, which the settings check refuses)."""
    seconds = generate_kwargs.get("max_time")
    real = isinstance(seconds, numbers.Real) and not isinstance(seconds, bool)
    if real:  # checked before it becomes the time left of a call (-1 was 1 ms: a one-token text)
        check_generation({"max_time": seconds})
    return time.monotonic() + float(seconds) if real else None


def held_checkpoint(folder: Path) -> str:
    """What to say of a folder of fit's checkpoints given where a model or a checkpoint file was wanted."""
    return f"; it holds checkpoints of fit: --checkpoint {shell_word(held)}" if (held := newest_checkpoint(folder)) else ""


def _model_folder(name: str | Path) -> Path:
    """A saved model's folder: a local one (``~`` read as the home folder), or a Hugging Face Hub repository's
    (``owner/name`` given as a string, as the model card's snippet names it), downloaded as ``huggingface_hub`` does
    (offline: its cache) once its ``mmcaption.json`` says it is a saved model."""
    folder = Path(name).expanduser()
    if folder.exists() or not isinstance(name, str) or not HUB_ID.fullmatch(name) or mistyped_folder(name, CONFIG_FILE):
        return folder
    if not is_offline_mode() and (unreachable := hub_unreachable()):  # a mistyped folder, offline: said at once (25 s of
        raise NotAModelFolderError(f"{name} is no folder here ({folder.resolve()}), and the Hugging Face Hub, where it "  # retries)
                                   f"would be looked for, cannot be reached ({unreachable}): give the model's folder")
    try:
        hf_hub_download(name, CONFIG_FILE, local_files_only=is_offline_mode())  # not a whole repository of another kind
        return Path(snapshot_download(name, local_files_only=is_offline_mode()))
    except Exception as error:  # noqa: BLE001 - the hub's many errors (offline, not found, gated) all mean the same here
        why = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise NotAModelFolderError(f"{name} is no folder here ({folder.resolve()}), and no saved mmcaption model could be "
                                   f"had from the Hugging Face Hub under that name ({why}); download it (hf download {name} "
                                   "--local-dir <folder>) and give the folder") from None
