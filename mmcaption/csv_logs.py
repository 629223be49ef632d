"""A ``CSVLogger``'s files when a later command logs into the same run folder (a resume, ``test`` or ``validate`` given
the run's ``version``): kept, as a TensorBoard run folder keeps its earlier event files beside the new ones."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


def keep_earlier_csv_logs(trainer: Any) -> None:
    """Before a command runs (Lightning makes each logger's writer before any setup hook): a ``CSVLogger`` of a named
    version whose folder holds an earlier command's ``metrics.csv`` appends its rows to it (Lightning's writer deleted
    it, "Previous log files in this directory will be deleted": a resume's curves started at its first step, a test's
    one row replaced the training's), and its ``hparams.yaml`` stays, this command's written beside it as
    ``hparams-2.yaml``, ``hparams-3.yaml``, ... (a test's overrides read as the training's settings). A run without a
    named version gets a folder of its own."""
    if rank_zero_only.rank != 0:  # (the process that writes the logs)
        return
    named = {str(Path(lg.root_dir).resolve()): lg._version for lg in trainer.loggers
             if getattr(lg, "_version", None) is not None and getattr(lg, "root_dir", None) is not None}  # (fast_dev_run's: none)
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or logger._experiment is not None:
            continue
        if logger._version is None:  # beside TensorBoard's of a named version it shares its folder (claim_run_folders)
            logger._version = named.get(str(Path(logger.root_dir).resolve()))
        if logger._version is None:
            continue
        folder = Path(logger.log_dir)
        metrics = folder / "metrics.csv"
        if not metrics.is_file() and not (folder / "hparams.yaml").is_file():
            continue
        aside = metrics.with_name(f".metrics.csv.{os.getpid()}.kept") if metrics.is_file() else None
        if aside is not None:
            os.replace(metrics, aside)
        try:
            with warnings.catch_warnings():  # (its warning, of what is kept now; a TensorBoard run's files beside it)
                warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
                writer = logger.experiment
        finally:
            if aside is not None:
                os.replace(aside, metrics)
        if aside is not None:
            _sorted_header(metrics)
            with metrics.open(newline="", encoding="utf-8") as handle:
                writer.metrics_keys = next(csv.reader(handle), [])  # its rows appended under the same columns
        if (folder / "hparams.yaml").is_file():
            number = 2
            while (folder / f"hparams-{number}.yaml").exists():
                number += 1
            writer.NAME_HPARAMS_FILE = f"hparams-{number}.yaml"


def _sorted_header(metrics: Path) -> None:
    """Lightning's writer keeps its columns sorted and appends rows in that order: a file whose columns are not (edited,
    another tool's) is written again in it first, its rows unchanged."""
    with metrics.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header, rows = list(reader.fieldnames or []), list(reader)
    if header == sorted(header):
        return
    staged = metrics.with_name(f".{metrics.name}.{os.getpid()}.sorted")
    with staged.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted(header))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(staged, metrics)


class RetracedRowsAside(Callback):
    """A fit resumed from a checkpoint older than a ``CSVLogger``'s last row (a kill, the OOM killer or a preemption
    ended the run after it, or an ``every_n_train_steps`` checkpoint was chosen) logs those steps again: its rows from
    the resumed step on are moved to ``metrics-superseded-<n>.csv`` beside it, so that ``metrics.csv`` is one run's
    curve (steps 4, 5, 6 were in it twice, one of them each of a run that no longer exists)."""

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.ckpt_path or not trainer.is_global_zero or Path(str(trainer.ckpt_path)).name.startswith("."):
            return  # (a tuner's own checkpoint of the run's start is hidden)
        step = trainer.global_step  # the step its logs go on at (CurvesAtTheirSteps' count, not Lightning's one behind)
        for logger in trainer.loggers:
            metrics = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
            if metrics is None or not metrics.is_file():
                continue
            logger.experiment.save()  # (any row this run logged already)
            with metrics.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                header, rows = list(reader.fieldnames or []), list(reader)
            later = [row for row in rows if (row.get("step") or "").isdigit() and int(row["step"]) >= step]
            if not later:
                continue
            number = 2
            while (aside := metrics.with_name(f"metrics-superseded-{number}.csv")).exists():
                number += 1
            retraced = {id(row) for row in later}
            for path, kept in ((aside, later), (metrics, [row for row in rows if id(row) not in retraced])):
                staged = path.with_name(f".{path.name}.{os.getpid()}.staged")
                with staged.open("w", newline="", encoding="utf-8") as handle:
                    writer = csv.DictWriter(handle, fieldnames=header)
                    writer.writeheader()
                    writer.writerows(kept)
                os.replace(staged, path)
            print(f"note: {metrics}'s {len(later)} rows from step {step} on, logged before the run resumed from "
                  f"{trainer.ckpt_path}, are moved to {aside.name}: this run logs those steps again", file=sys.stderr, flush=True)
