"""Callbacks the LightningModule brings along."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

EXTRA_CSV_COLUMNS = ("prediction", "correct", "generated", "scores", "error")


class PredictionWriter(BasePredictionWriter):
    """Writes ``mmcaption predict`` results to the data module's ``output`` as they come, batch by
    batch (JSON Lines, or CSV for ``.csv``), so an interrupted run keeps what it predicted; at the
    end, a summary (rows, errors, accuracy when answers were given) next to it and on the console."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path: Path | None = None
        self.handle = None
        self.writer = None
        self.counts: dict[str, int] = {}

    def on_predict_start(self, trainer, pl_module) -> None:
        output = getattr(trainer.datamodule, "output", None)
        if output is None:
            self.path = None
            return
        output = Path(output)
        if trainer.world_size > 1:
            output = output.with_name(f"{output.stem}.rank{trainer.global_rank}{output.suffix}")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.path = output
        self.handle = output.open("w", newline="", encoding="utf-8")
        self.writer = None
        self.counts = {"rows": 0, "errors": 0, "answered": 0, "correct": 0, "unanswered": 0}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if self.path is None:
            return
        for row in prediction:
            self._count(row)
            if self.path.suffix.lower() == ".csv":
                if self.writer is None:
                    columns = [c for c in row if c not in EXTRA_CSV_COLUMNS] + list(EXTRA_CSV_COLUMNS)
                    self.writer = csv.DictWriter(self.handle, fieldnames=columns, extrasaction="ignore")
                    self.writer.writeheader()
                self.writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
            else:
                self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()

    def _count(self, row: dict[str, Any]) -> None:
        self.counts["rows"] += 1
        if row.get("error"):
            self.counts["errors"] += 1
        if row.get("correct") is not None:  # rows with a reference answer; those given none count as wrong
            self.counts["answered"] += 1
            self.counts["correct"] += int(row["correct"])
            self.counts["unanswered"] += int(row.get("prediction") is None)

    def summary(self) -> dict[str, Any]:
        summary = dict(self.counts, output=str(self.path))
        if self.counts["answered"]:
            summary["accuracy"] = self.counts["correct"] / self.counts["answered"]
        return summary

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.path is None:
            return
        self.handle.close()
        summary = self.summary()
        self.path.with_name(self.path.name + ".summary.json").write_text(json.dumps(summary, indent=2))
        message = f"predictions: {summary['rows']} rows -> {self.path}"
        if summary["errors"]:
            message += f"; {summary['errors']} could not be predicted (see their 'error' field)"
        if "accuracy" in summary:
            message += f"; accuracy {summary['accuracy']:.3f} ({summary['correct']}/{summary['answered']}"
            message += f", {summary['unanswered']} without an answer, counted wrong)" if summary["unanswered"] else ")"
        rank_zero_info(message)
