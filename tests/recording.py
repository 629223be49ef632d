"""A callback for the subprocess tests: records every training step, optionally slowly."""

import hashlib
import json
import time

from lightning.pytorch.callbacks import Callback


class RecordSteps(Callback):
    """Append ``{"step", "rank", "loss", "token_sum", "first_ids", "lr", "samples"}`` for each optimizer step
    to a JSONL file (``{rank}`` in the path is replaced), flushed at once so that a killed process
    leaves every step it finished on record. ``samples`` fingerprints each sample (tokens and image:
    pixels, or cached features)."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step trains at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = batch["pixel_values"] if "pixel_values" in batch else batch["vision_features"]
        row = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "loss": float(outputs["mean_loss"]),  # the global batch's mean token loss
            "token_sum": int(batch["input_ids"].sum()),
            "first_ids": batch["input_ids"][:, 1:4].tolist(),
            "lr": self.lr,
            "samples": [fingerprint(ids[mask.bool()], image) for ids, mask, image
                        in zip(batch["input_ids"], batch["attention_mask"], images)],
        }
        with open(self.path.format(rank=trainer.global_rank), "a") as file:
            file.write(json.dumps(row) + "\n")
        time.sleep(self.delay)


def fingerprint(*tensors) -> str:
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class SignalAt(Callback):
    """Send the process ``signum`` (Ctrl-C's SIGINT by default) as the batch of optimizer step ``step`` (from 0) starts: a
    signal at a chosen step, as no timing can place it."""

    def __init__(self, step: int, signum: int = 2) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os

        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
