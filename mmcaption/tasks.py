"""The task layer: what the model is asked and how its output becomes an answer.

Captions, free-form answers and multiple choice (by the likelihood of each option, OpenFlamingo-style,
or by generating a letter, LLaVA-style, as the original scripts did), for the LightningModule's
validation and ``predict``, the Python API and the demo's evaluation alike. Prompts are built in
:mod:`mmcaption.prompts`; this module runs the model on them and turns tokens into results.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedTokenizerBase

from mmcaption.collate import IGNORE_INDEX, collate
from mmcaption.errors import ConfigError
from mmcaption.evaluation.answers import LETTERS, normalise_answer, parse_choice, vqa_accuracy
from mmcaption.model import MultimodalCausalLM

DEFAULT_GENERATION = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False}

# What ``predict`` adds to each input record. A file written by ``predict`` is a valid input again: these
# columns are the earlier run's results, not questions, and are replaced.
RESULT_COLUMNS = ("prediction", "correct", "vqa_accuracy", "generated", "scores", "error")
NO_OPTION = "no single option letter or option text in the generated answer"  # an answer's error when it names none


def without_results(record: dict[str, Any]) -> dict[str, Any]:
    """An input record without the result columns an earlier ``predict`` wrote into it."""
    return {key: value for key, value in record.items() if key not in RESULT_COLUMNS}


def unpadded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """The prompts of a padded batch without their padding."""
    return [[t for t, m in zip(ids.tolist(), mask.tolist()) if m] for ids, mask in zip(input_ids, attention_mask)]


def option_scores(
    model: MultimodalCausalLM, prompt_ids: list[list[int]], option_ids: list[list[list[int]]], image_embeds: torch.Tensor,
    pad_token_id: int, length_normalize: bool = True, image_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-likelihood of every option's tokens after its question's prompt, given the image.

    Args:
        model: the multimodal model.
        prompt_ids: per question, the prompt tokens (template up to the answer).
        option_ids: per question, per option, the answer tokens (ending with end-of-text).
        image_embeds: ``(questions, image_tokens, hidden)``, one image per question.
        pad_token_id: the tokenizer's pad token.
        length_normalize: mean log-probability per token instead of the sum, so long options are
            not penalised for their length.
        image_mask: ``(questions,)``, False for a question without an image.

    Returns ``(questions, most options)`` scores, ``-inf`` where a question has fewer options; the
    highest is the model's choice.
    """
    samples, counts = [], []
    for prompt, options in zip(prompt_ids, option_ids):
        counts.append(len(options))
        for option in options:
            samples.append({
                "input_ids": torch.tensor(prompt + option),
                "labels": torch.tensor([IGNORE_INDEX] * len(prompt) + option),
            })
    batch = collate(samples, pad_token_id)
    device = image_embeds.device
    repeats = torch.tensor(counts, device=device)
    images = image_embeds.repeat_interleave(repeats, dim=0)
    mask = None if image_mask is None else image_mask.to(device).repeat_interleave(repeats, dim=0)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), image_embeds=images,
        image_mask=mask,
    ).logits[:, :-1].float()
    targets = batch["labels"][:, 1:].to(device)
    mask = targets != IGNORE_INDEX
    token_logprobs = -F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none") * mask
    flat = token_logprobs.sum(1) / (mask.sum(1) if length_normalize else 1)
    scores = torch.full((len(counts), max(counts)), float("-inf"), device=flat.device)
    for row, (start, count) in enumerate(zip([0, *torch.tensor(counts).cumsum(0).tolist()], counts)):
        scores[row, :count] = flat[start:start + count]
    return scores


# the generate() settings checked before generation, by kind (a request's JSON gives "false" and "5" as text: "false"
# turned sampling on, and "5" failed inside transformers, a TypeError a service could not tell from its own)
_WHOLE = ("max_new_tokens", "min_new_tokens", "num_beams", "num_return_sequences", "max_length", "min_length", "top_k",
          "no_repeat_ngram_size", "num_beam_groups")
_NUMBERS = ("temperature", "top_p", "repetition_penalty", "length_penalty", "typical_p", "diversity_penalty", "min_p",
            "epsilon_cutoff", "eta_cutoff", "max_time", *_WHOLE)
_SWITCHES = ("do_sample", "renormalize_logits", "remove_invalid_values", "use_cache")
CHECKED_SETTINGS = (*_NUMBERS, *_SWITCHES)
# what the task methods set themselves
_TASKS_OWN = ("input_ids", "attention_mask", "pixel_values", "image_embeds", "image_mask", "inputs")


def check_generation(settings: dict[str, Any], where: str = "generation") -> None:
    """Refuse ``generate`` settings that cannot work, naming them, before a model loads (transformers or its
    logits processors would refuse them at the first ``generate``, after the model has loaded). Unset
    (``None``) settings are transformers' defaults."""
    given = {key: plain(value) for key, value in {**DEFAULT_GENERATION, **settings}.items() if value is not None}
    number = {key: value for key, value in given.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    problems = [f"{name} {given[name]!r} is not a number" for name in _NUMBERS
                if name in given and name not in number]
    problems += [f"{name} {given[name]!r} is not true or false" for name in _SWITCHES
                 if name in given and not isinstance(given[name], bool)]
    problems += [f"{name} {number[name]} must be 1 or more" for name in ("max_new_tokens", "num_beams", "num_return_sequences")
                 if name in number and number[name] < 1]
    problems += [f"{name} {number[name]!r} must be a whole number" for name in _WHOLE
                 if name in number and not (math.isfinite(number[name]) and number[name] == int(number[name]))]
    if "min_new_tokens" in number and number["min_new_tokens"] > number.get("max_new_tokens", float("inf")):
        problems.append(f"min_new_tokens {number['min_new_tokens']} is above max_new_tokens {number['max_new_tokens']}")
    if given.get("do_sample") and number.get("temperature", 1.0) <= 0:
        problems.append(f"temperature {number['temperature']} must be above 0 when sampling")
    if given.get("do_sample") and not 0 <= number.get("top_p", 1.0) <= 1:
        problems.append(f"top_p {number['top_p']} must be between 0 and 1")
    if not problems:
        try:
            GenerationConfig(**given)
        except (ValueError, TypeError) as error:  # what else transformers refuses
            problems.append(str(error))
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")


def check_run_generation(settings: dict[str, Any], where: str = "model.generation") -> None:
    """:func:`check_generation` of the settings validation, test and ``predict`` generate with: one text per image or
    question (each is scored and written against its own row: several were matched with the next rows' references);
    both length limits given are said (``max_new_tokens`` wins over ``max_length``, which transformers says in passing)."""
    check_generation(settings, where)
    given = {key: plain(value) for key, value in settings.items() if value is not None}
    if (given.get("num_return_sequences") or 1) > 1:
        raise ConfigError(f"{where}: num_return_sequences {given['num_return_sequences']}: validation, test and predict "
                          "score and write one text per image or question; the Python API gives several "
                          "(Captioner.caption(image, num_return_sequences=n))")
    if "max_length" in given and "max_new_tokens" in given:  # warned, not refused: a checkpoint's settings stay loadable
        warnings.warn(f"{where}: max_length {given['max_length']} (the prompt's tokens and the new ones) and max_new_tokens "
                      f"{given['max_new_tokens']} (the new ones) both limit the text: max_new_tokens {given['max_new_tokens']} is "
                      "the limit (--model.generation.max_new_tokens null makes it max_length)", UserWarning, stacklevel=2)


def plain(value: Any) -> Any:
    """A NumPy or torch number or truth value as Python's (``np.int64(5)`` -> ``5``, ``np.bool_(False)`` -> ``False``); anything
    else as it is."""
    if isinstance(value, numbers.Number | np.bool_) and not isinstance(value, bool | int | float) and hasattr(value, "item"):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:  # torch.tensor(False), a 0-d number
        return value.item()
    return value


# generate() options that change what it returns: the task layer returns texts
_RETURN_OPTIONS = ("return_dict_in_generate", "output_scores", "output_logits", "output_attentions", "output_hidden_states")


def call_settings(generation: GenerationConfig, generate_kwargs: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """A call's own ``generate`` settings as :meth:`Tasks.generate` passes them on: a ``generation_config``
    of its own is read as the settings it changes, NumPy numbers become Python's, ``max_length`` replaces
    the model's ``max_new_tokens`` (which transformers would let win), ``stop_strings`` get the tokenizer
    they need, a setting given as ``None`` is the model's own; options that would return scores instead of texts are
    refused."""
    own = generate_kwargs.pop("generation_config", None)
    if own is not None and not isinstance(own, GenerationConfig):
        raise ConfigError(f"generation_config is a transformers GenerationConfig, not {type(own).__name__}")
    changed = {key: value for key, value in (own.to_diff_dict() if own is not None else {}).items() if key != "transformers_version"}
    given = {key: value for key, value in generate_kwargs.items() if value is not None}  # None: the model's own (a
    settings = {key: plain(value) for key, value in {**changed, **given}.items()}  # service's optional field, passed on)
    unknown = [key for key in settings if key not in _known_settings()]
    if unknown:  # transformers' "model_kwargs are not used", or a TypeError for one the task methods set
        near = [f" (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(key, _known_settings(), n=2))
                else "" for key in unknown]
        raise ConfigError("; ".join(f"{key}: set by the task methods themselves" if key in _TASKS_OWN else
                                    f"{key} is no setting of Hugging Face's generate{hint}" for key, hint in zip(unknown, near)))
    returns = [key for key in _RETURN_OPTIONS if settings.get(key)]
    if returns:
        raise ConfigError(f"{', '.join(returns)}: the task methods return texts; for scores use option_scores, or call "
                          "the model's own generate (captioner.model.generate)")
    for key in _WHOLE:  # num_beams=2.0 (a JSON number): torch and transformers take whole numbers only
        if isinstance(settings.get(key), float) and settings[key].is_integer():
            settings[key] = int(settings[key])
    if settings.get("max_length") is not None and "max_new_tokens" not in settings and generation.max_new_tokens is not None:
        settings["max_new_tokens"] = None  # max_length counts the prompt's tokens too, as in transformers
    if settings.get("stop_strings"):
        settings.setdefault("tokenizer", tokenizer)
    return settings


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode for a call (after a caller's ``model.train()``, dropout changed greedy captions), each
    module's own mode put back after it (a frozen tower stays in eval mode while the rest trains)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@functools.cache
def _known_settings() -> frozenset[str]:
    """What a task method's ``**generate_kwargs`` may set: GenerationConfig's settings and generate()'s own
    arguments (a streamer, stopping criteria, ...), but what the task methods set themselves."""
    from transformers.generation.utils import GenerationMixin

    own = set(inspect.signature(GenerationMixin.generate).parameters) | set(inspect.signature(MultimodalCausalLM.generate).parameters)
    # what generate() takes through its **kwargs: assisted decoding's tokenizers, a hub generation method's code
    passed = {"tokenizer", "assistant_tokenizer", "trust_remote_code"}
    return frozenset((set(GenerationConfig().to_dict()) | own | passed) - {"self", "kwargs", *_TASKS_OWN})


class Tasks:
    """A model with its tokenizer and generation settings: captions, answers and choices.

    Args:
        model: the multimodal model.
        tokenizer: its language model's tokenizer.
        generation: Hugging Face ``generate`` settings over :data:`DEFAULT_GENERATION`.
    """

    def __init__(self, model: MultimodalCausalLM, tokenizer: PreTrainedTokenizerBase, generation: dict[str, Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        check_generation(generation or {})
        defaults = {k: v for k, v in DEFAULT_GENERATION.items()  # a max_length given alone is the limit: not our default's
                    if not (k == "max_new_tokens" and (generation or {}).get("max_length") is not None)}
        self.generation = GenerationConfig(**{
            **defaults, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **(generation or {}),
        })

    @property
    def device(self) -> torch.device:
        return self.model.projection.weight.device

    def decode(self, tokens: torch.Tensor) -> list[str]:
        # a text cut by max_new_tokens inside a character of several byte tokens (most Chinese ones, emoji) ends in
        # half of it, which decodes as U+FFFD: dropped, not written to outputs and scored
        return [text.strip().rstrip("\ufffd").rstrip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None, image_mask: torch.Tensor | None = None, /, **generate_kwargs: Any,
    ) -> list[str]:
        """The decoded continuations of left-padded prompts, one image (pixels or embeddings) each;
        rows whose ``image_mask`` is False are text-only."""
        generate_kwargs = call_settings(self.generation, dict(generate_kwargs), self.tokenizer)
        checked = {key: value for key, value in generate_kwargs.items() if key in CHECKED_SETTINGS}
        if checked:  # a call's own settings (the Python API's, chat's), over this model's
            check_generation({**{key: getattr(self.generation, key) for key in CHECKED_SETTINGS}, **checked})
        self._within_context(input_ids.shape[1], generate_kwargs)
        device = self.device
        tokens = self.model.generate(
            input_ids.to(device), attention_mask.to(device),
            pixel_values=None if pixel_values is None else pixel_values.to(device), image_embeds=image_embeds,
            generation_config=self.generation, image_mask=image_mask, **generate_kwargs,
        )
        return self.decode(tokens)

    def generate_batch(self, batch: dict[str, Any], image_embeds: torch.Tensor | None = None) -> list[str]:
        """:meth:`generate` on a collated batch (``input_ids``, ``attention_mask``, ``pixel_values``,
        optionally ``image_mask``)."""
        return self.generate(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"), image_embeds,
                             batch.get("image_mask"))

    @property
    def context(self) -> int | None:
        """The tokens the language model reads at most (its ``max_position_embeddings``), None if it does not say."""
        context = getattr(getattr(self.model.language_model, "config", None), "max_position_embeddings", None)
        return context if isinstance(context, int) else None

    def _within_context(self, prompt_length: int, settings: dict[str, Any]) -> None:
        """No more new tokens than the language model's context holds (``max_new_tokens=10**9`` generated past it for
        minutes, holding a service's one model); a ``min_new_tokens`` past it is refused. Settings within it are left as
        they are (``prompt_length``: the batch's padded length, which a shorter prompt of the batch does not have)."""
        if self.context is None:
            return
        least = settings.get("min_new_tokens", self.generation.min_new_tokens) or 0
        if least > self.context:
            raise ConfigError(f"min_new_tokens {least} is past the language model's context ({self.context:,} tokens)")
        in_effect = settings["max_new_tokens"] if "max_new_tokens" in settings else self.generation.max_new_tokens
        if (in_effect or 0) > self.context:  # None: a call's max_length, in effect instead
            settings["max_new_tokens"] = self.context
        if (settings.get("max_length") or 0) > prompt_length + self.context:  # it counts the prompt too
            settings["max_length"] = prompt_length + self.context

    def check_context(self, prompts: Sequence[Sequence[int]], asked: str = "question", advice: str = "ask a shorter one") -> None:
        """Refuse a prompt the language model's context cannot hold (a question of 100,000 words held a web server's one
        worker for minutes, and at Phi-2's size ran the GPU out of memory), naming which and by how much."""
        context = self.context
        for index, prompt in enumerate(prompts):
            if context is not None and len(prompt) >= context:
                which = f"{asked} {index + 1} of {len(prompts)}" if len(prompts) > 1 else f"the {asked}"
                raise ConfigError(f"{which} takes {len(prompt):,} tokens with the prompt, and the language model reads "
                                 f"{context:,} at most: {advice}")

    def prompt_batch(self, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left-padded prompts, as generation needs them."""
        return collate([{"input_ids": torch.tensor(p)} for p in prompts], self.tokenizer.pad_token_id, padding_side="left")

    @torch.no_grad()
    def choose(
        self, prompts: list[list[int]], options: list[list[list[int]]], image_embeds: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[list[str], torch.Tensor]:
        """The letter of the most likely option of each question, and all options' scores."""
        scores = option_scores(self.model, prompts, options, image_embeds, self.tokenizer.pad_token_id, image_mask=image_mask)
        return [LETTERS[int(i)] for i in scores.argmax(1)], scores

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Result rows of a ``predict`` batch: each input record with its caption, answer or chosen letter.

        ``batch["task"]`` says which: ``caption``, ``answer``, ``choice-likelihood`` or ``choice-generation``.
        Rows whose image could not be read come back with their ``error`` only; rows with a reference
        ``answer`` get ``correct``.
        """
        results = [{**without_results(record), "error": error} for record, error in zip(batch["record"], batch["error"])]
        task = batch["task"][0]
        past = self._past_context(batch, task)  # not asked: the model would answer what it cannot read, unsaid
        for i, error in past.items():
            results[i]["error"] = error
        ok = [i for i, error in enumerate(batch["error"]) if error is None and i not in past]
        if ok:
            self._predict_rows(task, batch, ok, results)
        for row in results:  # with a reference answer, a row that got no answer (unreadable image, no letter) is wrong
            answer, prediction = row.get("answer"), row.get("prediction")
            if isinstance(row.get("answers"), list):  # VQAv2-style human answers
                row["vqa_accuracy"] = 0.0 if prediction is None else vqa_accuracy(prediction, row["answers"])
            if answer:
                if prediction is None:
                    row["correct"] = False
                elif task.startswith("choice"):
                    row["correct"] = prediction == answer.strip().upper()
                else:
                    row["correct"] = normalise_answer(prediction) == normalise_answer(answer)
        return results

    def _past_context(self, batch: dict[str, Any], task: str) -> dict[int, str]:
        """The rows whose prompt (with its longest option, scored by likelihood) the language model's context cannot
        hold, and why: as :meth:`check_context` refuses them in the Python API (they were answered, scored and written)."""
        if self.context is None:
            return {}
        past = {}
        for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            with_option = task == "choice-likelihood" and bool(batch.get("option_ids"))
            length += max(map(len, batch["option_ids"][i]), default=0) if with_option else 0
            if length >= self.context and batch["error"][i] is None:
                past[i] = (f"not asked: the question takes {length:,} tokens with the prompt{' and its longest option' if with_option else ''}"
                           f", and the language model reads {self.context:,} at most")
        return past

    def _predict_rows(self, task: str, batch: dict[str, Any], ok: list[int], results: list[dict[str, Any]]) -> None:
        """Fill in the results of the rows ``ok`` (those whose image could be read)."""
        select = torch.tensor(ok, device=batch["input_ids"].device)
        sub = {k: batch[k].index_select(0, select) for k in ("input_ids", "attention_mask", "pixel_values", "image_mask") if k in batch}
        if task == "caption":
            for i, caption in zip(ok, self.generate_batch(sub)):
                results[i]["caption"] = caption
        elif task == "choice-likelihood":
            image_embeds = self.model.encode_images(sub["pixel_values"].to(self.device))
            letters, scores = self.choose(unpadded(sub["input_ids"], sub["attention_mask"]), [batch["option_ids"][i] for i in ok], image_embeds)
            for i, letter, row_scores in zip(ok, letters, scores.tolist()):  # a question's own options: no -inf padding
                results[i]["scores"] = [round(s, 4) for s in row_scores[: len(batch["option_ids"][i])]]
                results[i]["prediction"] = letter
        elif task == "choice-generation":
            for i, text in zip(ok, self.generate_batch(sub)):
                options = batch["options"][i] if "options" in batch else None
                results[i]["generated"] = text
                results[i]["prediction"] = parse_choice(text, options)
                if results[i]["prediction"] is None:  # counted as wrong, and said why
                    results[i]["error"] = f"{NO_OPTION} {text!r}"
        elif task == "answer":
            for i, text in zip(ok, self.generate_batch(sub)):
                results[i]["prediction"] = text
        else:
            raise ValueError(f"unknown task {task!r}")
