"""A small Python API over a saved model folder (``mmcaption-export``).

    from mmcaption import Captioner
    captioner = Captioner.from_pretrained("exported/mmcaption-phi2")
    print(captioner.caption("photo.jpg"))

It needs the model and the task layer only: no Lightning, no ``datasets``.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from mmcaption.errors import NotAModelFolderError
from mmcaption.evaluation.answers import LETTERS
from mmcaption.images import ImageSource, blank_pixels, load_rgb
from mmcaption.model import MultimodalCausalLM, read_manifest
from mmcaption.model.backbones import check_device, load_image_processor, load_tokenizer
from mmcaption.model.config import Quantization
from mmcaption.prompts import ConversationTemplate, caption_prompt_ids, choice_prompt
from mmcaption.tasks import Tasks

ImageInput = ImageSource  # a path, an http(s):// URL, bytes, a PIL image or an array
FOLDER_PARTS = ("adapter/adapter_model.safetensors", "multimodal.safetensors", "tokenizer", "image_processor")


class Captioner:
    """Captions images, answers questions about them and picks multiple-choice options.

    ``generate_kwargs`` are Hugging Face ``generate`` settings (or a ``generation_config``) over the folder's
    own. One captioner may serve several threads: their calls take turns."""

    def __init__(self, model: MultimodalCausalLM, tokenizer, image_processor, manifest: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.caption_prompt = manifest["prompts"].get("caption_prompt", "")
        self.template = ConversationTemplate(system=manifest["prompts"].get("system_prompt", ""))
        self.tasks = Tasks(model, tokenizer, manifest.get("generation", {}))
        self._lock = threading.Lock()  # generate() sets the images on the model's layers: one call at a time

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device | None = None, quantization: Quantization | None = None,
        language_model: str | None = None, vision_model: str | None = None,
    ) -> Captioner:
        """Rebuild the model of a saved folder (backbones from their own names, trained parts from the
        folder), optionally with another quantization for inference. ``language_model`` / ``vision_model``: where a
        backbone is now, when its folder moved since training (a merged export holds its language model)."""
        folder = Path(folder)
        check_device(device)
        manifest = read_manifest(folder)  # refuses, saying so, a folder that is not a saved model's
        parts = [*FOLDER_PARTS, *(["language_model"] if manifest.get("merged") else [])]
        missing = [part for part in parts if not (folder / part).exists()]
        if missing:  # found before the model loads; a missing tokenizer/ was looked for on the Hub
            raise NotAModelFolderError(f"{folder} lacks {', '.join(missing)} of a saved model folder (copied in part?); "
                                       "write it again with mmcaption-export")
        overrides = {name: value for name, value in (("quantization", quantization), ("language_model", language_model),
                                                     ("vision_model", vision_model)) if value}
        model = MultimodalCausalLM.from_pretrained(folder, device=device, **overrides)
        processor = load_image_processor(str(folder / "image_processor"))
        return cls(model, load_tokenizer(str(folder / "tokenizer")), processor, manifest)

    def _pixels(self, images: list[ImageInput | None]) -> torch.Tensor:
        return self._images(images)[0]

    def _images(self, images: list[ImageInput | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels of each image (zeros for ``None``) and the mask of those that are there."""
        present = [image for image in images if image is not None]
        pixels = self.image_processor(images=[load_rgb(image) for image in present], return_tensors="pt")["pixel_values"] \
            if present else None
        blank = torch.zeros_like(pixels[0]) if pixels is not None else blank_pixels(self.image_processor)
        rows, position = [], 0
        for image in images:
            rows.append(blank if image is None else pixels[position])
            position += image is not None
        return torch.stack(rows), torch.tensor([image is not None for image in images])

    def _generate(self, prompts: list[list[int]], images: list[ImageInput | None], **generate_kwargs) -> list[str] | list[list[str]]:
        """A text per prompt, or with ``num_return_sequences`` n > 1 a list of n texts per prompt."""
        batch = self.tasks.prompt_batch(prompts)
        pixels, mask = self._images(images)
        with self._lock:  # threads (a web server's) take turns: they got each other's images
            texts = self.tasks.generate(batch["input_ids"], batch["attention_mask"], pixels, image_mask=mask, **generate_kwargs)
        n = len(texts) // max(len(prompts), 1)  # num_return_sequences, however it was given
        return texts if n == 1 else [texts[i:i + n] for i in range(0, len(texts), n)]

    def caption(self, images: ImageInput | list[ImageInput], **generate_kwargs) -> str | list[str]:
        """A caption per image (a string for one image, a list for a list; with ``num_return_sequences`` n > 1,
        a list of n captions in place of each string)."""
        many = isinstance(images, list | tuple)
        images = list(images) if many else [images]
        if not images:
            return []
        if any(image is None for image in images):  # a caption of no image would be made up from the prompt alone
            raise ValueError("caption needs an image for each item; None is for text-only questions (answer, choose, chat)")
        prompt = caption_prompt_ids(self.tokenizer, self.caption_prompt)
        captions = self._generate([prompt] * len(images), images, **generate_kwargs)
        return captions if many else captions[0]

    def answer(
        self, images: ImageInput | None | list[ImageInput | None], questions: str | list[str], **generate_kwargs
    ) -> str | list[str]:
        """A free-form answer, as the instruct stage was taught to give (an image of ``None``: a text-only
        question). One image and question give a string; lists of the same length give a list, answered
        as one batch (``num_return_sequences`` n > 1: n answers in place of each string)."""
        many, images, questions = _batch(images, questions)
        prompts = [self.template.prompt(question, self.tokenizer) for question in questions]
        answers = self._generate(prompts, images, **generate_kwargs) if prompts else []
        return answers if many else answers[0]

    def chat(self, image: ImageInput | None, question: str, history: list[tuple[str, str]] | None = None,
             **generate_kwargs) -> str:
        """The answer to ``question`` after the earlier ``(question, answer)`` turns of ``history``, all
        about ``image``, laid out as the instruct stage's conversations (the exported ``chat_template``)."""
        history = list(history or [])
        if not all(isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
                   for turn in history):
            raise ValueError(f"history is a list of (question, answer) pairs of strings, not {history!r}")
        _check_texts("question", [question])
        prompt = self.template.chat_prompt(history, question, self.tokenizer)
        return self._generate([prompt], [image], **generate_kwargs)[0]

    def choose(
        self, images: ImageInput | None | list[ImageInput | None], questions: str | list[str],
        options: list[str] | list[list[str]],
    ) -> str | list[str]:
        """The letter (A, B, ...) of the most likely option given the image and question; 2 to 8 options.
        Lists of images, questions and option lists (of the same length) give a list of letters, scored
        as one batch."""
        letters, _ = self._choose(images, questions, options)
        return letters

    def option_scores(
        self, images: ImageInput | None | list[ImageInput | None], questions: str | list[str],
        options: list[str] | list[list[str]],
    ) -> list[float] | list[list[float]]:
        """Each option's mean log-probability per token (the scores ``choose`` picks the highest of),
        for one question or, with lists, for each."""
        _, scores = self._choose(images, questions, options)
        return scores

    @torch.no_grad()
    def _choose(self, images, questions, options) -> tuple[str | list[str], list[float] | list[list[float]]]:
        many, images, questions = _batch(images, questions)
        option_lists = options if many else [options]
        if not many and not isinstance(options, (list, tuple)):
            raise ValueError(f"options is a list of the options' texts, not {options!r}")
        if len(option_lists) != len(questions) or not all(isinstance(o, (list, tuple)) for o in option_lists):
            raise ValueError("choose with lists of questions needs a list of options per question")
        option_lists = [list(o) for o in option_lists]
        for opts in option_lists:
            _check_texts("option", opts)
            for text in dict.fromkeys(option for option in opts if opts.count(option) > 1):  # equal scores: the first wins
                same = [letter for letter, option in zip(LETTERS, opts) if option == text]
                warnings.warn(f"options {', '.join(same)} are the same text ({text!r}): no model can tell them apart, and "
                              f"{same[0]} is chosen whenever any of them is likeliest", stacklevel=3)
        if not questions:
            return [], []
        prompts, option_ids = zip(*(choice_prompt(self.template, self.tokenizer, question, opts, "likelihood")
                                    for question, opts in zip(questions, option_lists)))
        pixels, mask = self._images(images)
        with self._lock:
            image_embeds = self.model.encode_images(pixels.to(self.tasks.device))
            letters, scores = self.tasks.choose(list(prompts), list(option_ids), image_embeds, image_mask=mask)
        per_question = [row[: len(opts)].tolist() for row, opts in zip(scores.float().cpu(), option_lists)]
        return (letters, per_question) if many else (letters[0], per_question[0])


def _batch(images, questions) -> tuple[bool, list, list[str]]:
    """(whether lists were given, the images, the questions) - one of each, or lists of the same length."""
    many = isinstance(questions, list | tuple)
    images, questions = (list(images) if isinstance(images, list | tuple) else None, list(questions)) if many else ([images], [questions])
    if images is None or len(images) != len(questions):
        raise ValueError(f"{len(questions)} questions need a list of as many images (None for a text-only question)")
    _check_texts("question", questions)
    return many, images, questions


def _check_texts(what: str, texts: list) -> None:
    """Questions and options are text that says something: an empty one would leave the model to make it up."""
    empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise ValueError(f"{what} {empty[0]} is {texts[empty[0]]!r}: each {what} is a non-empty string")
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # bytes a terminal or file decoded with surrogateescape
            raise ValueError(f"{what} {i} is not text: {text!r} holds bytes that are not UTF-8 ({error.reason} at "
                             f"character {error.start})") from None
