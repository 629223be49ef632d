"""Multiple-choice answers two ways: by the likelihood of each option (OpenFlamingo-style, robust)
and by generating a letter from a prompt that lists the options (LLaVA-style, as the seed did)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from mmcaption.data.collate import IGNORE_INDEX, collate


def parse_choice(text: str) -> str | None:
    """The first stand-alone letter A-D of a generated answer (``"B"``, ``"B."``, ``"(B) red"``)."""
    match = re.search(r"\b([ABCD])\b", text)
    return match.group(1) if match else None


def option_scores(
    model, prompt_ids: list[list[int]], option_ids: list[list[list[int]]], image_embeds: torch.Tensor,
    pad_token_id: int, length_normalize: bool = True,
) -> torch.Tensor:
    """Log-likelihood of every option's tokens after its question's prompt, given the image.

    Args:
        model: a :class:`~mmcaption.model.MultimodalCausalLM`.
        prompt_ids: per question, the prompt tokens (template up to the answer).
        option_ids: per question, per option, the answer tokens (ending with end-of-text).
        image_embeds: ``(questions, image_tokens, hidden)``, one image per question.
        length_normalize: mean log-probability per token instead of the sum, so long options are
            not penalised for their length.

    Returns ``(questions, options)`` scores; the highest is the model's choice.
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
    images = image_embeds.repeat_interleave(torch.tensor(counts, device=device), dim=0)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), image_embeds=images
    ).logits[:, :-1].float()
    targets = batch["labels"][:, 1:].to(device)
    mask = targets != IGNORE_INDEX
    token_logprobs = -F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none") * mask
    scores = token_logprobs.sum(1) / (mask.sum(1) if length_normalize else 1)
    return scores.view(len(prompt_ids), -1)
