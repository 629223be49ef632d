"""The optimizer every training loop of mmcaption builds: the module's, the demo's pretraining, the benchmarks'."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def adamw(params: Iterable, **settings: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where the trainable tensors live on a device it supports: one
    kernel for all of them instead of a dozen ops per tensor group. On the demo backbones an optimizer
    step took 3.6-5.6 ms foreach and 1.0-1.2 ms fused, a fixed cost of every training step.
    The update is the same AdamW (``tests/test_model.py`` compares both)."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = bool(tensors) and all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **settings)
