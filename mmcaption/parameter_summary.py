"""The model's parameters as a fit starts, told as a 4-bit model holds them.

Lightning's model summary counts a 4-bit weight by its packed storage (bitsandbytes packs its values into elements of
the compute dtype, as the model loads them: four to a bfloat16, eight to a float32; Phi-2's 2.5 billion quantized
weights counted as some 600 million), sizes every parameter at 4 bytes, and shows a FLOPs column of zeros (it counts them only with an example
input). A run's log should show what matters: how many parameters the model has, which are frozen (in 4-bit or not)
and which train (LoRA, the cross-attention blocks, the projection), and what the weights take in memory.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_info


def _trainable_part(name: str) -> str:
    """What a trainable parameter belongs to: LoRA, the cross-attention blocks, else the model's part it is in."""
    if "lora_" in name:
        return "LoRA"
    if "cross_attention" in name:
        return "cross-attention"
    parts = name.split(".")
    return parts[1] if parts[0] == "model" and len(parts) > 2 else parts[0]


def parameter_counts(model: torch.nn.Module) -> tuple[dict[str, Counter], int]:
    """``{"frozen 4-bit": ..., "frozen": ..., "trainable": ...}``, each a count of parameters by part (a 4-bit weight
    counted as the values it holds), and the bytes the parameters take in memory as stored."""
    counts: dict[str, Counter] = {"frozen 4-bit": Counter(), "frozen": Counter(), "trainable": Counter()}
    size = 0
    for name, parameter in model.named_parameters():
        state = getattr(parameter, "quant_state", None)
        values = math.prod(state.shape) if state is not None else parameter.numel()
        if parameter.requires_grad:
            counts["trainable"][_trainable_part(name)] += values
        else:
            part = "vision tower" if ".vision_model." in f".{name}" else "language model"
            counts["frozen 4-bit" if state is not None else "frozen"][part] += values
        size += parameter.numel() * parameter.element_size() + _quantization_bytes(state)
    return counts, size


def _quantization_bytes(state) -> int:
    """What a 4-bit weight's quantization constants take: its blocks' scales, and with double quantization theirs."""
    if state is None:
        return 0
    tensors = [getattr(state, name, None) for name in ("absmax", "code")]
    nested = getattr(state, "state2", None)
    tensors += [getattr(nested, name, None) for name in ("absmax", "code")] if nested is not None else []
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def parameter_summary(model: torch.nn.Module) -> str:
    """One paragraph: the parameters in all, frozen in 4-bit, frozen otherwise and trainable, each by part."""
    counts, size = parameter_counts(model)
    groups = [name for name in ("frozen 4-bit", "frozen", "trainable") if counts[name]]
    said = []
    for group in groups:
        parts = ", ".join(f"{part} {number:,}" for part, number in counts[group].most_common())
        said.append(f"{sum(counts[group].values()):,} {group} ({parts})")
    amount = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    total = sum(sum(counts[group].values()) for group in groups)
    counted = " (a 4-bit weight counted as the values it holds)" if counts["frozen 4-bit"] else ""
    return f"model: {total:,} parameters{counted}: {'; '.join(said)}; the weights take {amount} in memory"


class ParameterSummary(ModelSummary):
    """In place of Lightning's model summary (:func:`parameter_summary`, said once as a fit starts, by the first
    process); with another ``max_depth`` than 1 (a config's ``ModelSummary``: 2, or -1 for all layers), Lightning's
    table of layers follows it, with its own counts."""

    def on_fit_start(self, trainer: Trainer, pl_module) -> None:
        if not self._max_depth:
            return
        rank_zero_info(parameter_summary(pl_module))
        if self._max_depth != 1:
            super().on_fit_start(trainer, pl_module)
