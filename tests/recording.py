"""A callback for the subprocess tests: records every training step, optionally slowly."""

import json
import time

from lightning.pytorch.callbacks import Callback


class RecordSteps(Callback):
    """Append ``{"step", "loss", "token_sum", "first_ids"}`` for each optimizer step to a JSONL file,
    flushed at once so that a killed process leaves every step it finished on record."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "loss": float(outputs["loss"]),
            "token_sum": int(batch["input_ids"].sum()),
            "first_ids": batch["input_ids"][:, 1:4].tolist(),
        }
        with open(self.path, "a") as file:
            file.write(json.dumps(row) + "\n")
        time.sleep(self.delay)
