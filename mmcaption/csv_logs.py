"""A ``CSVLogger``'s files when a later command logs into the same run folder (a resume, ``test`` or ``validate`` given
the run's ``version``): kept, as a TensorBoard run folder keeps its earlier event files beside the new ones."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from pathlib import Path
from typing import Any

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
            writer.NAME_HPARAMS_FILE = free_numbered(folder, "hparams-{}.yaml").name


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


def free_numbered(folder: Path, name: str) -> Path:
    """The first of ``name`` numbered 2, 3, ... (``"hparams-{}.yaml"``) that is not in ``folder``."""
    number = 2
    while (folder / name.format(number)).exists():
        number += 1
    return folder / name.format(number)


def set_retraced_rows_aside(trainer: Any, step: int) -> None:
    """A fit resumed at ``step`` from a checkpoint older than a ``CSVLogger``'s last row (a kill, the OOM killer or a
    preemption ended the run after it, or an ``every_n_train_steps`` checkpoint was chosen) logs those steps again: its
    rows from ``step`` on (the step its logs go on at, CurvesAtTheirSteps' count) are moved to ``metrics-superseded-<n>.csv``
    beside it, so that ``metrics.csv`` is one run's curve (steps 4, 5, 6 were in it twice, one of each by a run that no
    longer exists). On the first process (the one that writes the logs)."""
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
        aside = free_numbered(metrics.parent, "metrics-superseded-{}.csv")
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
