"""The task layer: what the model is asked and how its output becomes an answer.

Captions, free-form answers and multiple choice (by the likelihood of each option, OpenFlamingo-style,
or by generating a letter, LLaVA-style, as the original scripts did), for the LightningModule's
validation and ``predict``, the Python API and the demo's evaluation alike. Prompts are built in
:mod:`mmcaption.prompts`; this module runs the model on them and turns tokens into results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from mmcaption.collate import IGNORE_INDEX, collate
from mmcaption.errors import ConfigError
from mmcaption.evaluation.answers import LETTERS, normalise_answer, parse_choice, vqa_accuracy
from mmcaption.generation_settings import (
    CHECKED_SETTINGS,
    DEFAULT_GENERATION,
    call_settings,
    check_generation,
    explicit_settings,
    is_setting,
)
from mmcaption.model import MultimodalCausalLM

# What ``predict`` adds to each input record. A file written by ``predict`` is a valid input again: these
# columns are the earlier run's results, not questions, and are replaced.
CUT = "cut_at_max_new_tokens"  # a predict row whose text stopped at the length limit before its end
RESULT_COLUMNS = ("prediction", "correct", "vqa_accuracy", "generated", "scores", "error", CUT)
NO_OPTION = "no single option letter or option text in the generated answer"  # an answer's error when it names none


def without_results(record: dict[str, Any]) -> dict[str, Any]:
    """An input record without the result columns an earlier ``predict`` wrote into it."""
    return {key: value for key, value in record.items() if key not in RESULT_COLUMNS}


class RoomLeft(StoppingCriteria):
    """Ends each row of a batch once it holds as many new tokens as the language model's context leaves after its own
    prompt: ``max_new_tokens`` is capped by the shortest prompt's room, which a longer prompt beside it does not have.
    ``rooms``: per prompt, the tokens left; ``start``: the padded prompts' length. Rows expanded for beams or returned
    sequences follow their prompt's (``generate`` puts them next to each other)."""

    def __init__(self, rooms: torch.Tensor, start: int) -> None:
        self.rooms, self.start = rooms, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return self.per_row(self.rooms, input_ids) <= input_ids.shape[1] - self.start

    @staticmethod
    def per_row(rooms: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``rooms``, one a prompt (at least 1: a prompt past the context is refused before), for each of ``rows``."""
        return rooms.clamp(min=1).to(rows.device).repeat_interleave(len(rows) // len(rooms))


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


class Tasks:
    """A model with its tokenizer and generation settings: captions, answers and choices.

    Args:
        model: the multimodal model.
        tokenizer: its language model's tokenizer.
        generation: Hugging Face ``generate`` settings over :data:`DEFAULT_GENERATION`.
        option: the command line's prefix of those settings (``--model.generation.``), for the warnings that name
            them; None: named as a call's keywords.
    """

    def __init__(self, model: MultimodalCausalLM, tokenizer: PreTrainedTokenizerBase, generation: dict[str, Any] | None = None,
                 option: str | None = None) -> None:
        self.model = model
        self.option = option  # the command line's name of the settings (--model.generation.), for what is said of them
        self.tokenizer = tokenizer
        check_generation(generation or {})
        generation = {key: value for key, value in (generation or {}).items() if value is not None or is_setting(key)}  # a null typo: unset
        defaults = {k: v for k, v in DEFAULT_GENERATION.items()  # a max_length given alone is the limit: not our default's
                    if not (k == "max_new_tokens" and (generation or {}).get("max_length") is not None)}
        self.generation = GenerationConfig(**{
            **defaults, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **(generation or {}),
        })
        self.unfinished: list[bool] = []  # the last generation's rows cut at the length limit
        self.at_context: list[bool] = []  # ... of them, those cut where the context ends (a longer limit gives no more)

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
            check_generation({**{key: getattr(self.generation, key) for key in CHECKED_SETTINGS}, **checked}, asked=checked)
        lengths = attention_mask.sum(1)
        self._within_context(input_ids.shape[1], generate_kwargs, int(lengths.min()))
        device = self.device
        extra = {}
        if self.context is not None and int(lengths.max()) > int(lengths.min()):  # each row ends at its own room: a long
            extra["stopping_criteria"] = StoppingCriteriaList([  # prompt beside a short one went on past the context
                *(generate_kwargs.get("stopping_criteria") or []), RoomLeft(self.context - lengths, input_ids.shape[1])])
        tokens = self.model.generate(
            input_ids.to(device), attention_mask.to(device),
            pixel_values=None if pixel_values is None else pixel_values.to(device), image_embeds=image_embeds,
            # the settings above, not the language model's generation_config.json where they leave one unset
            generation_config=explicit_settings(self.generation, getattr(self.model.language_model, "generation_config", None),
                                                generate_kwargs, self.option),
            image_mask=image_mask, **{**generate_kwargs, **extra},
        )
        self.unfinished, self.at_context = self._unfinished(tokens, generate_kwargs,
                                                            None if self.context is None else self.context - lengths)
        return self.decode(tokens)

    def _unfinished(self, tokens: torch.Tensor, settings: dict[str, Any],
                    rooms: torch.Tensor | None = None) -> tuple[list[bool], list[bool]]:
        """The rows that stopped at the length limit (max_new_tokens, or ``rooms``: each prompt's room in the context)
        before their end-of-text: a caption cut mid-sentence reads as a finished one. A row ends within its room or was
        cut (:class:`RoomLeft` pads a row cut at its room while longer ones go on). Then, of them, those cut at their room."""
        if any(settings.get(key, getattr(self.generation, key, None)) for key in ("stop_strings", "stopping_criteria", "max_time")):
            return [False] * len(tokens), [False] * len(tokens)  # stopped by these, a row may end without its end-of-text
        ends = [self.generation.pad_token_id, *(self.generation.eos_token_id if isinstance(self.generation.eos_token_id, list)
                                                else [self.generation.eos_token_id])]
        found = torch.isin(tokens, torch.tensor([end for end in ends if end is not None], device=tokens.device))
        if rooms is None:
            return (~found.any(1)).tolist(), [False] * len(tokens)
        rooms = RoomLeft.per_row(rooms, tokens)  # (rows of beams or returned sequences next to their prompt's)
        found &= torch.arange(tokens.shape[1], device=tokens.device) < rooms[:, None]
        return (~found.any(1)).tolist(), ((rooms <= tokens.shape[1]) & ~found.any(1)).tolist()

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

    def _within_context(self, prompt_length: int, settings: dict[str, Any], shortest: int | None = None) -> None:
        """No more new tokens than the language model's context holds after the prompt (``max_new_tokens=10**9``
        generated past it for minutes, holding a service's one model; a prompt of 223 tokens in a context of 256 went on
        to 479 positions); a ``min_new_tokens`` past that is refused. ``prompt_length``: the batch's padded length;
        ``shortest``: its shortest prompt's, whose room is kept (a long question beside a short one does not cut the short
        one's answer; :class:`RoomLeft` ends the long one's at its own)."""
        if self.context is None:
            return
        room = max(self.context - (prompt_length if shortest is None else shortest), 1)  # (a prompt past it is refused)
        least = settings.get("min_new_tokens", self.generation.min_new_tokens) or 0
        if least > room:
            raise ConfigError(f"min_new_tokens {least} is past the language model's context ({self.context:,} tokens) after "
                              f"the prompt's {self.context - room:,}: {room:,} new tokens fit")
        in_effect = settings["max_new_tokens"] if "max_new_tokens" in settings else self.generation.max_new_tokens
        if (in_effect or 0) > room:  # None: a call's max_length, in effect instead
            settings["max_new_tokens"] = room
        if (settings.get("max_length") or 0) > prompt_length + self.context:  # it counts the prompt too
            settings["max_length"] = prompt_length + self.context

    def check_context(self, prompts: Sequence[Sequence[int]], asked: str = "question", advice: str = "ask a shorter one",
                      counted: str = "") -> None:
        """Refuse a prompt the language model's context cannot hold (a question of 100,000 words held a web server's one
        worker for minutes, and at Phi-2's size ran the GPU out of memory), naming which and by how much."""
        context = self.context
        for index, prompt in enumerate(prompts):
            if context is not None and len(prompt) >= context:
                which = f"{asked} {index + 1} of {len(prompts)}" if len(prompts) > 1 else f"the {asked}"
                raise ConfigError(f"{which} takes {len(prompt):,} tokens with the prompt{counted}, and the language model reads "
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
                row["vqa_accuracy"] = 0.0 if prediction is None else vqa_accuracy(prediction, row["answers"],
                                                                                   row.get("vqa_scoring") or "vqav2")
            if answer:
                if prediction is None:
                    row["correct"] = False
                elif task.startswith("choice"):
                    row["correct"] = prediction == answer.strip().upper()
                else:
                    row["correct"] = normalise_answer(prediction) == normalise_answer(answer)
        return results

    def _mark_unfinished(self, rows: list[int], results: list[dict[str, Any]]) -> None:
        """``cut_at_max_new_tokens`` on the rows the last generation cut (only on those: the output says nothing else)."""
        for i, cut in zip(rows, self.unfinished):
            if cut:
                results[i][CUT] = True

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
        text = sub["attention_mask"].bool().any(0)  # a row not asked (past the context) no longer pads the others to its width
        sub["input_ids"], sub["attention_mask"] = sub["input_ids"][:, text], sub["attention_mask"][:, text]
        if task == "caption":
            for i, caption in zip(ok, self.generate_batch(sub)):
                results[i]["caption"] = caption
            self._mark_unfinished(ok, results)
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
            self._mark_unfinished(ok, results)
        elif task == "answer":
            for i, text in zip(ok, self.generate_batch(sub)):
                results[i]["prediction"] = text
            self._mark_unfinished(ok, results)
        else:
            raise ValueError(f"unknown task {task!r}")
