"""A training batch whose loss is not finite (NaN, inf): refused naming where, or skipped (``on_nonfinite_loss``), and
refused whatever the setting once the trained weights are no longer finite themselves (an update diverged: skipping
every batch after it finished the run "done", its last.ckpt all NaN)."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from mmcaption.errors import NonFiniteLossError


def skip_nonfinite(module, loss: torch.Tensor, batch_idx: int, batch_size: int) -> None:
    """Refuse, or count and say, the batch whose global mean ``loss`` is not finite (the caller skips its step)."""
    where = f"step {module.global_step}, epoch {module.current_epoch}, batch {batch_idx}"
    broken = next((name for name, tensor in module.named_parameters() if tensor.requires_grad
                   and not torch.isfinite(tensor).all()), None)  # looked at only now: the check is not free
    if broken is not None and module.global_step == 0:  # no update of this run yet: they came so from a checkpoint
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) at {where}: the trained weights were not finite before this run's "
            f"first update ({broken}): the checkpoint it started from (model.init_from, or --ckpt_path) holds them so, "
            "from a run that diverged. Start from a checkpoint saved before that run's loss went wrong, or afresh")
    if broken is not None:
        lr = module.learning_rate
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) at {where}: the trained weights themselves are no longer finite "
            f"({broken}), so skipping batches cannot help: an update before this step diverged. Lower "
            f"model.learning_rate ({lr:g} now), raise model.warmup_ratio or set trainer.gradient_clip_val (1.0), and "
            "start again, from a checkpoint saved before the loss went wrong if there is one")
    if module.on_nonfinite_loss == "error":
        raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at {where}; set model.on_nonfinite_loss: "
                                 "skip to skip such batches (they are counted in train/skipped_batches)")
    module.skipped_batches += 1
    module.log("train/skipped_batches", float(module.skipped_batches), batch_size=batch_size)
    rank_zero_warn(f"skipping the batch at {where}: non-finite training loss")
