"""Gradient clipping with the fused AdamW under mixed precision.

Lightning's ``MixedPrecision`` refuses to clip for an optimizer that unscales its own gradients (torch's
fused AdamW, which ``mmcaption.model.optim.adamw`` builds), as if a loss scale were always in the
gradients. So ``trainer.gradient_clip_val`` with ``precision: bf16-mixed``, as the real configs set them,
stopped every GPU run at its first step ("AdamW does not allow for gradient clipping because it performs
unscaling of gradients internally"). bf16-mixed has no loss scale: its gradients are clipped as they
are. 16-mixed has one: the gradients are unscaled first (``GradScaler.unscale_``), and the scaler's step
then tells the fused kernel that they are (torch's documented way to clip with a fused optimizer).
"""

from __future__ import annotations

from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim import Optimizer


class FusedOptimizerClipping:
    """A ``LightningModule`` mixin: ``configure_gradient_clipping`` that clips for a fused optimizer too."""

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        plugin = self.trainer.precision_plugin
        if not (isinstance(plugin, MixedPrecision) and _optimizer_handles_unscaling(optimizer)):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        clip_val = self.trainer.gradient_clip_val if gradient_clip_val is None else gradient_clip_val
        if not clip_val:
            return None
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or self.trainer.gradient_clip_algorithm or "norm")
        if plugin.scaler is not None:  # 16-mixed: the gradients hold the loss scale until unscaled
            plugin.scaler.unscale_(optimizer)
        Precision.clip_gradients(plugin, optimizer, clip_val, algorithm)  # the plain clipping, without MixedPrecision's refusal
        return None
