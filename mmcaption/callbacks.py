"""Callbacks the CLI brings along: stopping on a signal with a checkpoint, and the progress shown
(``mmcaption predict``'s writer is :mod:`mmcaption.predictions`)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from mmcaption import step_ends
from mmcaption.errors import Interrupted, ResumeError, RunInterrupted, process_rank, stop_signals
from mmcaption.lightning_tools import tuners_checkpoint
from mmcaption.rebatch import SAID, earlier_order, restart_loader, resume_with_other_batches, save_where_a_worker_died
from mmcaption.resume_checks import check_same_resume, other_preprocessing, other_stage
from mmcaption.slurm import requeue_slurm_job, slurm_requeue_signal, this_job
from mmcaption.step_ends import (
    checkpoint_files,
    format_seconds,
    run_length,
    save_resumable_checkpoint,
    saved_since,
    schedule_validations,
    time_limit_note,
    time_spent_note,
    window_open,
)
from mmcaption.terminal import leave_a_closed_terminal, outlive_the_reader, shell_word


class ResumableStop(Callback):
    """Stop a ``fit`` on Ctrl-C, SIGTERM or SIGHUP with a checkpoint it resumes from exactly, save ``last.ckpt`` every
    ``every_minutes``, and at the end of training; refuse to resume another stage's checkpoint or on changed training data.

    A signal (SIGINT from Ctrl-C, SIGTERM from ``docker stop``, ``kill``, ``timeout`` or a scheduler, SIGHUP when the terminal
    closes or an SSH connection drops, unless ``nohup`` ignores it) is noted; at the end of the current optimizer step every
    process saves the checkpoint (a step-end ``ModelCheckpoint`` save's state: the resumed run repeats the uninterrupted one)
    and the command exits with 130 / 143 and a line saying how to resume. Ctrl-C while it waits stops at once, unsaved. A
    signal in validation is acted on at the next step, or in the last validation as training ends (a pipeline stops).

    Args:
        every_minutes: also save ``last.ckpt`` after this many minutes of training (a hard kill loses little); null: at validation only
    """

    def __init__(self, every_minutes: float | None = 30.0) -> None:
        self.every_minutes = every_minutes
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._streams_back: Callable[[], None] | None = None  # puts the console streams back (terminal.outlive_the_reader)
        self._last_save = time.monotonic()
        self._saved_step: int | None = None  # the step of this callback's last save
        self._requeue_signal: int | None = None
        self.resume_from, self.resume_told = None, False  # the checkpoint the command's fit resumes from (resuming_from)
        self._patience: dict[int, int] = {}  # each EarlyStopping's patience as configured (setup), before a resume
        self._stop_at_step_end = self._stop_saved = False  # a stop asked between a step's batches; a stop's checkpoint saved

    # -- signals ------------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self.signal, self._last_save, self._saved_step, self._stop_saved = None, time.monotonic(), None, False
        ended = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)
                      and c.stopping_reason != EarlyStoppingReason.NOT_STOPPED), None)
        if ended is not None and trainer.ckpt_path:  # Lightning restores EarlyStopping's verdict, not the stop: it trained on
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"note: {trainer.ckpt_path} is of a run EarlyStopping ended ({ended.monitor}): it ends at once. To train "
                      "on, resume without EarlyStopping, or start from its weights with --model.init_from", file=sys.stderr,
                      flush=True)
        for stopper in (c for c in trainer.callbacks if isinstance(c, EarlyStopping)):  # a patience changed on resume
            given = self._patience.get(id(stopper), stopper.patience)  # was the checkpoint's, unsaid
            if given != stopper.patience and trainer.is_global_zero:
                print(f"note: EarlyStopping's patience {given} is used, not {stopper.patience} as {trainer.ckpt_path} "
                      f"recorded ({stopper.wait_count} validation(s) without improvement counted so far)", file=sys.stderr,
                      flush=True)
            stopper.patience = given
        schedule_validations(trainer)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        # and SLURM's warning before the time limit, in place of Lightning's handler: that one saved an hpc_ckpt in
        # the middle of a step into the working directory, where any later run under SLURM resumed from it
        self._requeue_signal = slurm_requeue_signal(trainer)
        for signum in dict.fromkeys((*stop_signals(), *([self._requeue_signal] if self._requeue_signal else []))):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        if self._requeue_signal and trainer.is_global_zero:  # (Lightning's "SLURM auto-requeueing enabled" was of its own)
            print(f"SLURM: {signal.Signals(self._requeue_signal).name} before the time limit saves a checkpoint at the end of "
                  "the step and requeues the job, which resumes from it", file=sys.stderr, flush=True)

    def on_fit_start(self, trainer, pl_module) -> None:  # the Timer's own verdict is in (it ends before on_train_start)
        if not self.resume_told:  # a script's own Trainer.fit: its path known now under DDP (FSDP's: None, read later)
            check_same_resume(trainer, trainer.ckpt_path)
        if (note := time_spent_note(trainer)) and trainer.is_global_zero:
            print(note, file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        leave_a_closed_terminal(signum)
        if self.signal is not None and signum == signal.SIGINT and not self._stop_saved:  # once saved, the stop says so
            self._restore_handlers()
            raise Interrupted(signum, "stopped by a second Ctrl-C, without saving: the checkpoints saved before are kept")
        if self.signal is not None or self._stop_saved:  # a second SIGTERM (docker stop, then the scheduler): the save is due
            return
        self.signal = signum
        with suppress(OSError):  # output whose reader is gone: the save must still happen
            if process_rank() == 0:  # each process of a multi-process run got it: said once
                print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this training step (Ctrl-C"
                      f"{' again' if signum == signal.SIGINT else ''} stops at once, without saving)", file=sys.stderr, flush=True)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        if self.signal is None:  # with one, put back as the stop is raised (_stop): a Ctrl-C in between lost its line
            self._restore_handlers()
        callback, path = trainer.checkpoint_callback, None  # the steps after the last validation are kept too
        # (ModelCheckpoint saves at validation only); a smoke test (fast_dev_run) saves nothing, as Lightning says
        if isinstance(callback, ModelCheckpoint) and callback.save_last and not trainer.fast_dev_run and trainer.global_step \
                not in (callback._last_global_step_saved, self._saved_step):  # not after this step's save: it holds the epoch open
            path = self._save(trainer, self.signal is not None)
        self._stop_saved = self.signal is not None
        if (note := time_limit_note(trainer, path or getattr(callback, "last_model_path", None))) and trainer.is_global_zero:
            print(note, file=sys.stderr, flush=True)
        signum = self.signal
        if trainer.world_size > 1:  # every process alike: one signalled process stops them all, as at a step's end
            flags = trainer.strategy.reduce(torch.tensor([float(signum or 0)], device=pl_module.device), reduce_op="max")
            signum = int(flags[0]) or None
        if signum is not None:  # it came after the last step (in the last validation): the command stops as asked,
            # and a pipeline does not go on to its next stage
            done = 0 <= trainer.max_steps <= trainer.global_step or 0 <= (trainer.max_epochs or -1) <= trainer.current_epoch
            self._stop(trainer, signum, path or (callback.last_model_path if isinstance(callback, ModelCheckpoint) else None), done)

    def _save(self, trainer, stopping: bool) -> str:
        """Save; for a stop, a second Ctrl-C once the file is in place (the folder's sync) stops with it said as saved."""
        before = checkpoint_files(trainer) if stopping else {}
        try:
            path, self._stop_saved = save_resumable_checkpoint(trainer), stopping
        except Interrupted:
            if not stopping or (path := saved_since(trainer, before)) is None:
                raise
            self._stop_saved = True
        return path

    def _stop(self, trainer, signum: int, path: str | None, done: bool | str = False) -> None:
        """End the command on ``signum`` with the checkpoint saved for it (``done``: training was); SLURM's time-limit
        warning requeues the job."""
        requeued = requeue_slurm_job() if signum == self._requeue_signal and trainer.is_global_zero else None  # (done too)
        stopping = RunInterrupted(signum, path or None, trainer.global_step, requeued, done)  # a signal now waits for the cleanup
        self._restore_handlers()
        raise stopping

    def setup(self, trainer, pl_module, stage: str) -> None:
        # before any callback writes a line: `| tee log` killed, training goes on to its saves (predict to its rows)
        self._streams_back = self._streams_back or outlive_the_reader()
        # as configured, before a checkpoint's state replaces it (Lightning restores EarlyStopping's patience too)
        self._patience = {id(c): c.patience for c in trainer.callbacks if isinstance(c, EarlyStopping)}
        if stage == "fit" and self.resume_told:  # every process, before any reads it: one resuming where another starts
            check_same_resume(trainer, self.resume_from)  # afresh hung (Lightning says the path only after the setup hooks)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        save_where_a_worker_died(trainer, exception, save_resumable_checkpoint)
        self.teardown(trainer, pl_module, "fit")
        if isinstance(exception, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Lightning's, for
            signal.signal(signal.SIGINT, signal.default_int_handler)  # its shutdown: a notebook's kernel stayed deaf to Ctrl-C

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()
        if self._streams_back is not None:
            self._streams_back()
            self._streams_back = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if window_open(trainer, batch_idx):  # mid-accumulation: the gradients gathered so far are not part of a checkpoint
            self._stop_at_step_end |= trainer.should_stop  # a stop asked here (Lightning's Timer at max_time) waits for
            trainer.should_stop = False  # the step's end, as a signal's does: its batches were lost, and a resume went on
            return  # inside the next step
        trainer.should_stop, self._stop_at_step_end = trainer.should_stop or self._stop_at_step_end, False
        due = self.every_minutes is not None and not trainer.fast_dev_run and time.monotonic() - self._last_save >= 60 * self.every_minutes
        # max_steps reached or a stop asked (trainer.max_time's) mid-epoch: saved now, as the rest of the epoch is still
        # to come. The end-of-training save comes after Lightning has closed the epoch, and a run resumed from it to train
        # longer skipped the epoch's rest (a max_time stop, the rest of each epoch it stopped in, and its schedule shrank)
        stopping = 0 <= trainer.max_steps <= trainer.global_step or trainer.should_stop and trainer.fit_loop._can_stop_early
        due = due or (stopping and batch_idx + 1 != trainer.num_training_batches
                      and not trainer.fast_dev_run and isinstance(trainer.checkpoint_callback, ModelCheckpoint)
                      and trainer.checkpoint_callback.save_last)
        stop = self.signal is not None
        if trainer.world_size > 1:  # every process must decide alike: one signalled process stops them all
            flags = trainer.strategy.reduce(torch.tensor([float(stop), float(due)], device=pl_module.device), reduce_op="sum")
            stop, due = bool(flags[0] > 0), bool(flags[1] > 0)
        if not (stop or due):
            return
        saved_by_callback = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)
        # the save records it (a next stage started from it says it did not finish), and the validation due at this step
        self._stopping, self._validation_due = stop, stop and step_ends.validation_due(trainer)  # (run first if resumed)
        path = self._save(trainer, stop)
        self._stopping = False
        self._last_save, self._saved_step = time.monotonic(), trainer.global_step
        if saved_by_callback is not None:  # the checkpoint callback's own saves at this step (a validation's best, every
            trainer.checkpoint_callback._last_global_step_saved = saved_by_callback  # N steps) happen: it skips one saved
        if stop:
            # this step's metrics reach the loggers, as the loop sends them after this hook: the curve has no gap
            trainer._logger_connector.update_train_step_metrics()
            self._stop(trainer, self.signal or signal.SIGTERM, path, step_ends.done_at(trainer, self._validation_due))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._last_save = time.monotonic()
        checkpoint["slurm_job"] = this_job() or ""  # a requeued job resumes from its own saves (slurm.requeued_checkpoint)
        if getattr(self, "_stopping", False):
            step_ends.mark_stop(checkpoint, signal.Signals(self.signal or signal.SIGTERM).name, self._validation_due)
        describe = getattr(trainer.datamodule, "training_data", None)
        if describe is not None and trainer.state.fn == "fit":
            checkpoint["training_data"] = describe()

    # -- resuming -----------------------------------------------------------------------------------

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume another stage's checkpoint, or on training data other than the checkpoint's; say when
        nothing is left to train (after those refusals, which matter more); not a tuner's own of the run's start."""
        if not tuners_checkpoint(trainer.ckpt_path):  # (said as a resume with other batch settings, a BatchSizeFinder's)
            self._refuse_other_training(trainer, checkpoint)
        step = checkpoint.get("global_step", 0)
        if trainer.state.fn == "fit" and 0 <= trainer.max_steps <= step and trainer.is_global_zero:  # Lightning ends
            print(f"note: {trainer.ckpt_path} is at step {step}, and trainer.max_steps is {trainer.max_steps}: nothing "  # it silently
                  "is left to train. To train longer, give a larger one", file=sys.stderr, flush=True)

    def _refuse_other_training(self, trainer, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("training_data")
        describe = getattr(trainer.datamodule, "training_data", None)
        if trainer.state.fn != "fit" or saved is None or describe is None:
            return
        current = describe()
        source = trainer.ckpt_path or "the checkpoint"
        if problem := other_stage(source, saved.get("stage"), current.get("stage")):
            raise ResumeError(problem)
        workers = getattr(trainer.datamodule, "num_workers", None)
        states = _loader_states(checkpoint)
        for state in states:  # torchdata refuses another count (a traceback, then a hang)
            saved_workers = state["_snapshot"]["_main_snapshot"]["_num_workers"] if "_snapshot" in state else 0
            if workers is not None and saved_workers != workers:  # the sampler starts after the samples trained on
                restart_loader(trainer, checkpoint, saved, f"{source} was saved by a training loader with {saved_workers} "
                               f"worker processes, and this run has {workers}")
        if not states:  # saved as a loader worker died: its position would count a batch not trained on
            restart_loader(trainer, checkpoint, saved, f"{source} was saved as a data-loader worker died")
        if saved.get("preprocessing") != current.get("preprocessing") and saved.get("train_split") != current.get("train_split"):
            raise ResumeError(other_preprocessing(source, saved.get("preprocessing"), current["preprocessing"],
                                                  saved.get("train_split")))
        if "captions" in current and "captions" not in saved and saved.get("train_split") != current.get("train_split"):
            why = getattr(trainer.datamodule, "read_anew", {}).get(trainer.datamodule.stage_splits()["train"]) or "read otherwise"
            raise ResumeError(
                f"{source} was trained on captions that an earlier release of mmcaption read otherwise than this one ({why}), "
                "into a new cache: its place in the epoch would mean nothing there. Finish the run with the release that "
                f"began it, or start a new run from its weights with --model.init_from {shell_word(source)}")
        saved = {**saved, "preprocessing": current.get("preprocessing")}  # checkpoints from before it was kept
        if "length_group_batches" not in saved:  # checkpoints from before the setting grouped 50 batches
            saved = {**saved, "length_group_batches": 50 if saved.get("group_by_length") else None}
        saved = {"max_length": current.get("max_length"), **saved}  # checkpoints from before it was kept: the split tells
        if why := earlier_order(checkpoint, saved):
            raise ResumeError(f"{source}: {why} {source}")
        changed = [key for key in current if saved.get(key) != current.get(key)]
        if changed == ["train_split"] and trainer.datamodule.same_training_data(saved["train_split"]):
            if trainer.is_global_zero:  # (an image no record names added to its folder made a new split)
                print(f"note: {source} was trained on {saved['train_split']}, and this run's data was preprocessed anew into "
                      f"{current['train_split']}, with the same rows and images: it resumes", file=sys.stderr, flush=True)
        elif changed and (why := resume_with_other_batches(trainer, checkpoint, saved, current, changed, source)) is not None:
            said = "; ".join(f"{SAID.get(key, key)} {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
            raise ResumeError(
                f"{source} was trained on other data or batches than this run's ({said}){': ' + why if why else ''}: resuming "
                "would repeat some samples and skip others. Resume with the data and batch settings it was trained with, or "
                f"start a new run from its weights with --model.init_from {shell_word(source)}")


def _loader_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The saved states of the training loaders (torchdata's ``StatefulDataLoader``) in a checkpoint."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []
    return [state for state in (states if isinstance(states, list) else [states]) if isinstance(state, dict)]


def run_label(trainer) -> str:
    """What a run is, for its progress lines: its logger's name (``caption``, ``demo-instruct``, ``demo-instruct-scratch``),
    else its data module's stage, else ``training`` in ``fit`` (and nothing in ``predict``, whose lines say ``predict:
    batch ...``: they read ``training: predict: ...``)."""
    name = getattr(trainer.logger, "name", None) if trainer.logger is not None else None
    return name or getattr(trainer.datamodule, "training_stage", "") or ("training" if trainer.state.fn == "fit" else "")


class StageProgressBar(TQDMProgressBar):
    """Lightning's progress bar, with the run it belongs to and the epoch counted from 1 of all: ``demo-caption: epoch 2/3``
    instead of ``Epoch 1``."""

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
        total = trainer.estimated_stepping_batches  # max_steps or max_epochs, whichever ends first (and accumulation)
        total = run_length(trainer) if trainer.ckpt_path and total != float("inf") else total  # resumed: from here (not 300 of 150)
        return int(total) if total != float("inf") else "?"

    def _line(self, trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            label = run_label(trainer)
            print(f"{label}: {text}" if label else text, flush=True)

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

    # -- validation, test and predict: a line every every_seconds too (a folder of photos is hours of predicting) -----

    def _evaluation_start(self, *args: Any) -> None:
        self._evaluation_started = self._evaluation_last = time.monotonic()
        self._evaluation_done = 0

    def _evaluation_batch(self, trainer, what: str, totals: Any) -> None:
        self._evaluation_done += 1
        now = time.monotonic()
        if trainer.sanity_checking or now - self._evaluation_last < self.every_seconds:
            return
        self._evaluation_last = now
        total = sum(t for t in totals if t != float("inf")) if isinstance(totals, list) else totals
        rate = self._evaluation_done / max(now - self._evaluation_started, 1e-9)
        left = f", {format_seconds((total - self._evaluation_done) / rate)} left" if total else ""
        self._line(trainer, f"{what}: batch {self._evaluation_done}/{total or '?'}, {rate:.2f} batches/s{left}")

    on_validation_start = on_test_start = on_predict_start = _evaluation_start

    def on_validation_batch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        self._evaluation_batch(trainer, "validation", trainer.num_val_batches)

    def on_test_batch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        self._evaluation_batch(trainer, "test", trainer.num_test_batches)

    def on_predict_batch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        self._evaluation_batch(trainer, "predict", trainer.num_predict_batches)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        metrics = ", ".join(f"{k.removeprefix('val/')} {v:.4g}" for k, v in sorted(shown.items()))
        self._line(trainer, f"validation at step {trainer.global_step}: {metrics}")

    def on_train_end(self, trainer, pl_module) -> None:
        said = next((c.stopping_reason_message for c in trainer.callbacks if isinstance(c, EarlyStopping)
                     and c.stopping_reason != EarlyStoppingReason.NOT_STOPPED and c.stopping_reason_message), None)
        # Lightning says why only at its info level, which is kept quiet
        why = f" - stopped by EarlyStopping: {said.replace(' Signaling Trainer to stop.', '').strip()}" if said else ""
        skipped = getattr(pl_module, "skipped_batches", 0)  # on_nonfinite_loss skip: was said only batch by batch
        why += f" ({skipped} batch(es) skipped for a non-finite loss: train/skipped_batches)" if skipped else ""
        self._line(trainer, f"training done at step {trainer.global_step} in "
                            f"{format_seconds(time.monotonic() - self._start)}{why}")
