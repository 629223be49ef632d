"""Next-token cross-entropy that never holds the whole batch's logits.

At Phi-2's shapes one instruct batch's float32 logits are 16 x 512 x 51,200 x 4 B = 1.7 GB, and the
plain loss keeps them (and a float32 copy of their gradient) alive through backward. Here the output
head runs only on the positions that have a label, a chunk at a time, and each chunk's logits are
recomputed in backward instead of kept (litgpt's ``chunked_cross_entropy`` does the same over the
sequence). The loss and gradients are the plain ones (``benchmarks/loss_memory.py`` measures the
memory; ``tests/test_model.py`` checks the equality).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # PyTorch's default ignore_index, and Hugging Face's label for "not supervised"


class FinalLogits(nn.Module):
    """A language model's output head, then what its forward does to the logits after it: Gemma 2's and 3's
    soft-capping (``final_logit_softcapping``), Granite's ``logits_scaling`` (HyperCLOVA X's, which multiplies), Cohere's
    ``logit_scale``. The loss computes the logits itself: without these it trained another distribution than the one
    generation samples."""

    def __init__(self, head: nn.Module, config) -> None:
        super().__init__()
        self.head, self.cap = head, getattr(config, "final_logit_softcapping", None)
        scaling = getattr(config, "logits_scaling", None) or 1.0  # (None: not scaled, as the model's own forward reads it)
        multiplied = getattr(config, "model_type", "").startswith("hyperclovax")  # its logits_scaling multiplies; Granite's divide
        self.scale = (getattr(config, "logit_scale", None) or 1.0) * (scaling if multiplied else 1.0 / scaling)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits if not self.cap else torch.tanh(logits / self.cap) * self.cap


def final_logits(head: nn.Module, config) -> nn.Module:
    """``head``, or a :class:`FinalLogits` of it where the model's forward changes the logits after it."""
    wrapped = FinalLogits(head, config)
    return wrapped if wrapped.cap or wrapped.scale != 1.0 else head


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of ``head(hidden)`` against ``labels`` (both ``(batch, seq)``
    aligned; the shift happens here), and the number of supervised tokens.

    Only positions whose next label is not ``IGNORE_INDEX`` reach the head, ``chunk_size`` at a time;
    under autograd each chunk is checkpointed, so at most one chunk's logits exist at once.
    """
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    rows, wanted = hidden[:, :-1][supervised], targets[supervised]
    # zero, but on the graph through the head too: a batch without labels still backpropagates, and a
    # trainable head (lm_head among the LoRA targets) still gets its (zero) gradient for DDP
    total = head(hidden[:, :0]).sum().float()
    for start in range(0, rows.size(0), chunk_size):
        chunk, chunk_targets = rows[start:start + chunk_size], wanted[start:start + chunk_size]
        if torch.is_grad_enabled() and chunk.requires_grad:
            total = total + checkpoint(_chunk_loss, head, chunk, chunk_targets, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, chunk, chunk_targets)
    return total, supervised.sum()


class AccumulatedTokens:
    """The mean token loss of a whole accumulation window, as one batch of all its micro-batches would have it.

    Lightning divides each micro-batch's loss by ``accumulate_grad_batches``: a mean of per-micro-batch means, which
    weighs the tokens of short micro-batches more (0.2-3% off the large batch's gradient on the demo's captions, more
    on conversations of mixed lengths). Each micro-batch's token-loss sum is divided instead by a divisor fixed for
    the window (its first micro-batch's tokens), and before the optimizer steps the gradients are scaled by that
    divisor over the window's tokens: the gradient of the sum over every token of the window, divided by their number.
    """

    def __init__(self) -> None:
        self.reference: float | None = None
        self.tokens = 0.0
        self.loss_sum: torch.Tensor | float = 0.0

    def start(self, batch_idx: int, accumulate: int) -> None:
        """Before each micro-batch, skipped or not: a window starts at each ``accumulate``-th (one a skipped non-finite
        batch ended unstepped is dropped; a skipped first one had left the last window's counts to the next)."""
        if batch_idx % accumulate == 0:
            self.reference, self.tokens, self.loss_sum = None, 0.0, 0.0

    def divisor(self, tokens: torch.Tensor, accumulate: int) -> torch.Tensor:
        """What this micro-batch's loss sum is divided by, given its (global) number of supervised ``tokens``."""
        if accumulate == 1:
            return tokens
        self.reference = self.reference or float(tokens)
        self.tokens += float(tokens)
        return tokens.new_tensor(self.reference / accumulate)  # Lightning divides by accumulate after

    def mean(self, loss_sum: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The mean token loss of the window's micro-batches so far, this one's (``loss_sum`` over ``tokens``, counted by
        :meth:`divisor` already) added: at its last, the optimizer step's loss, as one batch of them all has it (the
        last micro-batch's alone was logged: 16 x 2 and 32 x 1, the same updates, drew other curves)."""
        if not self.tokens:  # no accumulation
            return loss_sum / tokens
        self.loss_sum = self.loss_sum + loss_sum
        return self.loss_sum / self.tokens

    def rescale(self, parameters) -> None:
        """Before the optimizer steps: the gradients of the window's sum, over the window's tokens."""
        if self.reference is not None and self.tokens:
            factor = self.reference / self.tokens
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad.mul_(factor)
        self.reference, self.tokens, self.loss_sum = None, 0.0, 0.0
