"""Callbacks the LightningModule and the CLI bring along: stopping on a signal with a checkpoint,
and writing predictions."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.errors import ResumeError, RunInterrupted
from mmcaption.evaluation.answers import normalise_answer
from mmcaption.tasks import RESULT_COLUMNS


def save_resumable_checkpoint(trainer) -> str:
    """Save the run as it is now, resumable: as the checkpoint callback's ``last.ckpt`` when it keeps
    one (with its bookkeeping, as its own saves do), else ``interrupted-step<N>.ckpt`` in its folder."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
        # Lightning < 2.7 (pinned): the method ModelCheckpoint saves its last checkpoint with
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        return callback.last_model_path
    folder = Path(callback.dirpath) if isinstance(callback, ModelCheckpoint) and callback.dirpath else Path(trainer.default_root_dir)
    path = folder / f"interrupted-step{trainer.global_step}.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


class ResumableStop(Callback):
    """Stop a ``fit`` on Ctrl-C or SIGTERM with a checkpoint it resumes from exactly, save ``last.ckpt``
    every ``every_minutes``, and at the end of training; refuse to resume another stage's checkpoint or
    on changed training data.

    A signal (SIGINT from Ctrl-C, SIGTERM from ``docker stop``, ``kill``, ``timeout`` or a scheduler) is
    noted; at the end of the current optimizer step every process saves the checkpoint (the same state a
    step-end ``ModelCheckpoint`` save holds, so the resumed run repeats the uninterrupted one) and the
    command exits with 130 / 143 and one line saying how to resume. A second Ctrl-C stops at once,
    without saving. A signal during validation is acted on at the next training step.

    Args:
        every_minutes: also save ``last.ckpt`` when this many minutes of training passed since the last
            save, so that even a hard kill (SIGKILL, a power cut) loses little; null: only at validation.
    """

    def __init__(self, every_minutes: float | None = 30.0) -> None:
        self.every_minutes = every_minutes
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_save = time.monotonic()

    # -- signals ------------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self.signal, self._last_save = None, time.monotonic()
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            self._restore_handlers()
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.signal = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this training step "
              "(Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()
        callback = trainer.checkpoint_callback
        # the steps after the last validation are kept too (ModelCheckpoint saves at validation only)
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback._last_global_step_saved != trainer.global_step:
            save_resumable_checkpoint(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches and batch_idx + 1 != trainer.num_training_batches:
            return  # mid-accumulation: the gradients gathered so far are not part of a checkpoint
        due = self.every_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_minutes
        stop, due = self.signal is not None, due
        if trainer.world_size > 1:  # every process must decide alike: one signalled process stops them all
            flags = torch.tensor([float(stop), float(due)], device=pl_module.device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
            stop, due = bool(flags[0] > 0), bool(flags[1] > 0)
        if not (stop or due):
            return
        path = save_resumable_checkpoint(trainer)
        self._last_save = time.monotonic()
        if stop:
            self._restore_handlers()
            raise RunInterrupted(self.signal or signal.SIGTERM, path, trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._last_save = time.monotonic()
        describe = getattr(trainer.datamodule, "training_data", None)
        if describe is not None and trainer.state.fn == "fit":
            checkpoint["training_data"] = describe()

    # -- resuming -----------------------------------------------------------------------------------

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume another stage's checkpoint, or on training data other than the checkpoint's."""
        saved = checkpoint.get("training_data")
        describe = getattr(trainer.datamodule, "training_data", None)
        if trainer.state.fn != "fit" or saved is None or describe is None:
            return
        current = describe()
        source = trainer.ckpt_path or "the checkpoint"
        if saved.get("stage") != current.get("stage"):
            raise ResumeError(
                f"{source} is a checkpoint of the {saved.get('stage')} stage, and this run trains the {current.get('stage')} "
                f"stage: --ckpt_path resumes an interrupted run of the same stage. To start this stage from its weights "
                f"(fresh optimizer, schedule and step count), use --model.init_from {source}"
            )
        if "length_group_batches" not in saved:  # checkpoints from before the setting grouped 50 batches
            saved = {**saved, "length_group_batches": 50 if saved.get("group_by_length") else None}
        changed = [f"{key} {saved.get(key)!r} -> {current.get(key)!r}" for key in current if saved.get(key) != current.get(key)]
        if changed:
            raise ResumeError(
                f"{source} was trained on other data or batches than this run's ({'; '.join(changed)}): resuming would "
                "repeat some samples and skip others. Resume with the data and batch settings it was trained with, or "
                f"start a new run from its weights with --model.init_from {source}"
            )


def run_label(trainer) -> str:
    """What a training run is, for its progress lines: its logger's name (``caption``, ``demo-instruct``,
    ``demo-instruct-scratch``), else its data module's stage."""
    logger = trainer.logger
    name = getattr(logger, "name", None) if logger is not None else None
    return name or getattr(trainer.datamodule, "training_stage", "") or "training"


class StageProgressBar(TQDMProgressBar):
    """Lightning's progress bar, with the run it belongs to and the epoch counted from 1 of all:
    ``demo-caption: epoch 2/3`` instead of ``Epoch 1``."""

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"{run_label(trainer)}: epoch {trainer.current_epoch + 1}{epochs}")


class PlainProgress(ProgressBar):
    """Progress as plain lines, for output that is not a terminal (a log file, a pipe, a scheduler's
    log): every ``every_seconds`` and at each validation, one line with the step, loss, rate and time
    left, flushed at once. Bars redrawn with carriage returns would show nothing until a stage ends.
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self._enabled = True
        self._start = self._last = 0.0
        self._first_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step
        self._line(trainer, f"training starts at step {trainer.global_step} of {self._total(trainer)}")

    def _total(self, trainer) -> int | str:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        return int(total) if total != float("inf") else "?"

    def _line(self, trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(f"{run_label(trainer)}: {text}", flush=True)

    def _status(self, trainer) -> str:
        elapsed = time.monotonic() - self._start
        done = trainer.global_step - self._first_step
        rate = done / elapsed if elapsed > 0 else 0.0
        total = self._total(trainer)
        text = f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}/{total}"
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            text += f", loss {float(loss):.4f}"
        text += f", {rate:.2f} steps/s"
        if rate > 0 and isinstance(total, int):
            text += f", {format_seconds((total - trainer.global_step) / rate)} left"
        return text

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if time.monotonic() - self._last >= self.every_seconds:
            self._last = time.monotonic()
            self._line(trainer, self._status(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        metrics = ", ".join(f"{k.removeprefix('val/')} {v:.4g}" for k, v in sorted(shown.items()))
        self._line(trainer, f"validation at step {trainer.global_step}: {metrics}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._line(trainer, f"training done at step {trainer.global_step} in {format_seconds(time.monotonic() - self._start)}")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class PredictionWriter(BasePredictionWriter):
    """Writes ``mmcaption predict`` results to the data module's ``output`` as they come, batch by
    batch (JSON Lines, or CSV for ``.csv``), into a hidden ``.<name>.partial`` beside it that is renamed
    to ``output`` at the end; at the end, a summary (rows, errors, accuracy when answers were given)
    next to it and on the console.

    Rows with a category (the data module's ``category_columns``, else a ``category`` column) add the
    accuracy per category (``per_category``: ``{name: {correct, answered, accuracy}}``; MMBench's also
    ``per_l2_category``). Rows of MMBench's CircularEval (``circular_index``, ``rotation``) add
    ``circular_accuracy``: the questions right under every rotation, a row without an answer counted wrong;
    the per-category accuracies then count questions so judged (``per_category_over``). Rows scored by
    VQA accuracy add its mean per category too (``vqa_per_answer_type``: VQAv2's yes/no, number, other).
    Questions from VQAv2's official file also give ``<output>.vqa_results.json``, the ``[{"question_id",
    "answer"}]`` its evaluation server takes (test-dev is scored there), each answer normalised as scored.

    Interrupted (Ctrl-C, an error), the rows done so far are kept under ``output`` with the summary so
    far. The data module's ``check_output`` refuses an output that is one of its inputs, or that exists
    without ``overwrite``, before anything is written."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path: Path | None = None
        self.partial: Path | None = None
        self.handle = None
        self.writer = None
        self.counts: dict[str, float] = {}
        self.late_columns: dict[int, dict[str, Any]] = {}
        self.category_columns: dict[str, str] = {}
        self.categories: dict[str, dict[str, list[int]]] = {}  # summary key -> category -> [correct, answered]
        self.questions: dict[str, tuple[bool, dict[str, str]]] = {}  # CircularEval: index -> (right so far, categories)
        self.vqa_categories: dict[str, dict[str, list[float]]] = {}  # summary key -> category -> [sum of VQA accuracies, rows]
        self.vqa_results: list[dict[str, Any]] | None = None
        self.submission_ids: list[int] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "output", None) is None:
            self.path = None
            return
        output = datamodule.check_output(trainer.world_size, trainer.global_rank)
        output.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.partial = output, output.with_name(f".{output.name}.partial")
        self.handle = self.partial.open("w", newline="", encoding="utf-8")
        self.writer = None
        self.late_columns: dict[int, dict[str, Any]] = {}  # CSV row -> its values of columns added after the header
        self.counts = {"rows": 0, "errors": 0, "answered": 0, "correct": 0, "unanswered": 0}
        self.category_columns = dict(getattr(datamodule, "category_columns", None) or {"per_category": "category"})
        self.categories, self.questions, self.vqa_categories = {}, {}, {}
        # VQAv2's official questions: the answers as its evaluation server takes them, written at the end by a
        # single process (several processes each answer a share); a previous run's file goes now
        official = getattr(datamodule, "official_vqa", False)
        self.vqa_results = [] if official and trainer.world_size == 1 else None
        self.submission_ids = datamodule.submission_question_ids() if self.vqa_results is not None else []
        if official:
            self.vqa_results_path(output).unlink(missing_ok=True)
        if official and trainer.world_size > 1:
            rank_zero_info("the answers for VQA's evaluation server are written by a single-process run (--trainer.devices 1); "
                           f"with {trainer.world_size} processes, each output holds its share (question_id, prediction)")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if self.path is None:
            return
        for row in prediction:
            self._count(row)
            if self.path.suffix.lower() == ".csv":
                if self.writer is None:
                    columns = [c for c in row if c not in RESULT_COLUMNS] + list(RESULT_COLUMNS)
                    self.writer = csv.DictWriter(self.handle, fieldnames=columns, extrasaction="ignore")
                    self.writer.writeheader()
                values = {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
                late = {k: v for k, v in values.items() if k not in self.writer.fieldnames}
                if late:  # a column the first row did not have: kept, and added to the header at the end
                    self.late_columns[self.counts["rows"] - 1] = late
                self.writer.writerow(values)
            else:
                self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()

    @staticmethod
    def vqa_results_path(output: Path) -> Path:
        return output.with_name(output.name + ".vqa_results.json")

    def _count(self, row: dict[str, Any]) -> None:
        self.counts["rows"] += 1
        if self.vqa_results is not None:  # an unanswered question (unreadable image) still needs its entry
            self.vqa_results.append({"question_id": row["question_id"], "answer": normalise_answer(row.get("prediction") or "")})
        if row.get("error"):
            self.counts["errors"] += 1
        if row.get("correct") is not None:  # rows with a reference answer; those given none count as wrong
            self.counts["answered"] += 1
            self.counts["correct"] += int(row["correct"])
            self.counts["unanswered"] += int(row.get("prediction") is None)
        groups = {key: str(row[column]) for key, column in self.category_columns.items() if row.get(column) not in (None, "")}
        if row.get("vqa_accuracy") is not None:
            self.counts["vqa_scored"] = self.counts.get("vqa_scored", 0) + 1
            self.counts["vqa_accuracy_sum"] = self.counts.get("vqa_accuracy_sum", 0.0) + row["vqa_accuracy"]
            for key, name in groups.items():  # e.g. VQAv2's answer types: [sum of accuracies, questions]
                sums = self.vqa_categories.setdefault(key, {}).setdefault(name, [0.0, 0])
                sums[0] += row["vqa_accuracy"]
                sums[1] += 1
        if row.get("correct") is None:
            return
        if row.get("circular_index") not in (None, ""):  # a question is right if every rotation of it is
            right, _ = self.questions.get(str(row["circular_index"]), (True, groups))
            self.questions[str(row["circular_index"])] = (right and bool(row["correct"]), groups)
        else:
            self._tally(self.categories, groups, bool(row["correct"]))

    @staticmethod
    def _tally(categories: dict[str, dict[str, list[int]]], groups: dict[str, str], right: bool) -> None:
        for key, name in groups.items():
            counts = categories.setdefault(key, {}).setdefault(name, [0, 0])
            counts[0] += int(right)
            counts[1] += 1

    def summary(self) -> dict[str, Any]:
        summary = dict(self.counts, output=str(self.path))
        if self.counts["answered"]:
            summary["accuracy"] = self.counts["correct"] / self.counts["answered"]
        if self.counts.get("vqa_scored"):
            summary["vqa_accuracy"] = summary.pop("vqa_accuracy_sum") / self.counts["vqa_scored"]
        for key, sums in self.vqa_categories.items():
            summary[f"vqa_{key}"] = {name: {"vqa_accuracy": total / n, "questions": n} for name, (total, n) in sorted(sums.items())}
        categories = self.categories
        if self.questions:
            right = sum(r for r, _ in self.questions.values())
            summary.update(circular_questions=len(self.questions), circular_correct=right,
                           circular_accuracy=right / len(self.questions))
            categories = {}
            for r, groups in self.questions.values():
                self._tally(categories, groups, r)
        for key in self.category_columns:
            if categories.get(key):
                summary[key] = {name: {"correct": c, "answered": n, "accuracy": c / n} for name, (c, n) in sorted(categories[key].items())}
        if any(key in summary for key in self.category_columns):
            summary["per_category_over"] = "questions, right only if every rotation is (CircularEval)" if self.questions else "rows"
        return summary

    def _finish(self, interrupted: BaseException | None = None) -> None:
        """Close the partial file and put it in place (with what was written, when interrupted)."""
        if self.path is None or self.handle is None:
            return
        self.handle.close()
        self.handle = None
        summary = self.summary()
        if interrupted is not None and not summary["rows"]:
            self.partial.unlink(missing_ok=True)
            rank_zero_info(f"predict stopped ({type(interrupted).__name__}) before any row was done; {self.path} not written")
            return
        if self.late_columns:
            self._add_late_columns()
        os.replace(self.partial, self.path)
        if interrupted is not None:
            summary["interrupted"] = type(interrupted).__name__
        self.path.with_name(self.path.name + ".summary.json").write_text(json.dumps(summary, indent=2))
        if self.vqa_results is not None and interrupted is None:
            asked = {entry["question_id"] for entry in self.vqa_results}
            padding = [{"question_id": q, "answer": ""} for q in self.submission_ids if q not in asked]
            self.vqa_results_path(self.path).write_text(json.dumps(self.vqa_results + padding))
            self.counts["vqa_results_padded"] = len(padding)
        message = f"predictions: {summary['rows']} rows -> {self.path}"
        if interrupted is not None:
            message = f"predict stopped ({type(interrupted).__name__}); the {summary['rows']} rows done are kept -> {self.path}"
        if summary["errors"]:
            message += f"; {summary['errors']} could not be predicted (see their 'error' field)"
        if "accuracy" in summary:
            message += f"; accuracy {summary['accuracy']:.3f} ({summary['correct']}/{summary['answered']}"
            message += f", {summary['unanswered']} without an answer, counted wrong)" if summary["unanswered"] else ")"
        if "vqa_accuracy" in summary:
            message += f"; VQA accuracy {summary['vqa_accuracy']:.3f} over {summary['vqa_scored']} questions"
            for key in self.vqa_categories:
                accuracies = ", ".join(f"{name} {s['vqa_accuracy']:.3f} ({s['questions']})" for name, s in summary[f"vqa_{key}"].items())
                message += f"\n  VQA accuracy {key.replace('_', ' ')}: {accuracies}"
        if "circular_accuracy" in summary:
            message += (f"; CircularEval accuracy {summary['circular_accuracy']:.3f} ({summary['circular_correct']}/"
                        f"{summary['circular_questions']} questions right under every rotation)")
        for key in self.category_columns:
            if key in summary:
                accuracies = ", ".join(f"{name} {s['accuracy']:.3f} ({s['correct']}/{s['answered']})" for name, s in summary[key].items())
                message += f"\n  accuracy {key.replace('_', ' ')} (over {summary['per_category_over'].split(',')[0]}): {accuracies}"
        if self.vqa_results is not None and interrupted is None:
            message += (f"\n  answers for VQA's evaluation server ([{{question_id, answer}}], normalised as scored): "
                        f"{self.vqa_results_path(self.path)}")
            if self.submission_ids:
                message += f" ({self.counts['vqa_results_padded']} questions not asked here given an empty answer, as the server wants all)"
        rank_zero_info(message)

    def _add_late_columns(self) -> None:
        """Rewrite the CSV with the columns that only later rows had (before the result columns)."""
        with self.partial.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header, rows = list(reader.fieldnames or []), list(reader)
        added = list(dict.fromkeys(k for late in self.late_columns.values() for k in late))
        columns = [c for c in header if c not in RESULT_COLUMNS] + added + [c for c in header if c in RESULT_COLUMNS]
        rewritten = self.partial.with_name(self.partial.name + ".columns")
        with rewritten.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({**row, **self.late_columns.get(i, {})} for i, row in enumerate(rows))
        os.replace(rewritten, self.partial)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._finish()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._finish(interrupted=exception)
