"""Turning samples into batches: per-batch padding and label masking."""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from mmcaption.errors import ConfigError

IGNORE_INDEX = -100


def caption_sample(
    caption_ids: list[int], bos_id: int, eos_id: int, prompt_ids: list[int], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``labels`` of one caption: ``<bos> prompt caption <eos>``.

    Only the caption and its end-of-text token are supervised; a caption that does not fit in
    ``max_length`` is cut, never its end-of-text token (the model must learn to stop).
    """
    room = max_length - 2 - len(prompt_ids)
    if room < 1:
        raise ConfigError(f"max_length {max_length} leaves no room for a caption after a {len(prompt_ids)}-token prompt")
    caption_ids = list(caption_ids[:room])
    input_ids = [bos_id, *prompt_ids, *caption_ids, eos_id]
    labels = [IGNORE_INDEX] * (1 + len(prompt_ids)) + caption_ids + [eos_id]
    return torch.tensor(input_ids), torch.tensor(labels)


def collate(
    samples: list[dict[str, torch.Tensor]], pad_token_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` and ``labels`` to the longest sample of the batch.

    Padding is masked out of ``labels`` (``-100``) and ``attention_mask`` by position, not by token
    id: the pad token is often the end-of-text token, whose first occurrence is supervised. Other
    tensors (pixel values) are stacked; anything else (reference captions, ids) stays a list.
    """
    input_ids = [s["input_ids"] for s in samples]
    batch = {
        "input_ids": pad_sequence(input_ids, batch_first=True, padding_value=pad_token_id, padding_side=padding_side),
        "attention_mask": pad_sequence(
            [torch.ones_like(ids) for ids in input_ids], batch_first=True, padding_value=0, padding_side=padding_side
        ),
    }
    if "labels" in samples[0]:
        batch["labels"] = pad_sequence(
            [s["labels"] for s in samples], batch_first=True, padding_value=IGNORE_INDEX, padding_side=padding_side
        )
    for key, value in samples[0].items():
        if key in batch or key == "labels":
            continue
        if torch.is_tensor(value):
            batch[key] = torch.stack([s[key] for s in samples])  # pixel values, display images
        else:
            batch[key] = [s[key] for s in samples]  # references, ids: kept as lists
    return batch
