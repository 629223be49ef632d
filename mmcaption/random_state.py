"""Random number generator states in checkpoints, so that a resumed run draws what the uninterrupted
one would have drawn (LoRA and cross-attention dropout masks).

Lightning restores the model, optimizer, schedule, loops and the training loader's position, but not
the generators. The states are stored as tensors and plain values, loadable with ``weights_only``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), Python and NumPy generator states."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
    }


def restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


def gather_objects(items: list, interleaved: bool = False) -> list:
    """Concatenate a list from every process (the list itself when not distributed): the generators' states a
    checkpoint keeps. ``interleaved``: the rows a validation generated on each, taken in turn from each process, as
    the evaluation sampler dealt the split's samples out (sample i to process i % processes): in the split's order (by
    process, the predictions files of two processes read 3001, 3003, ..., 3002, ...)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    gathered: list[list] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, items)
    if interleaved:
        return [part[i] for i in range(max(map(len, gathered), default=0)) for part in gathered if i < len(part)]
    return [item for part in gathered for item in part]
