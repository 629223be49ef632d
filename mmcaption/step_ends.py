"""Where a fit validates and stops: at an optimizer step's end. Under gradient accumulation a checkpoint holds none of the
gradients gathered for a step not yet taken, so a run saved between a step's batches lost them when it resumed. And
what a stop by Lightning's Timer (``trainer.max_time``) leaves, said. And the step a resumed run ends at. And the checkpoint
a stop saves there."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from mmcaption.terminal import shell_word


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def window_open(trainer, batch_idx: int) -> bool:
    """Whether batch ``batch_idx`` of the epoch is not an optimizer step's last (its gradients wait for the next
    batches': ``accumulate_grad_batches``; an epoch's last batch always ends a step)."""
    return bool((batch_idx + 1) % trainer.accumulate_grad_batches) and batch_idx + 1 != trainer.num_training_batches


def schedule_validations(trainer) -> None:
    """Lightning's validation schedule (``val_check_interval``, by batch or by time, per epoch or across epochs), each
    validation that falls inside an optimizer step's batches held to that step's end (``accumulate_grad_batches`` - 1
    batches later at most), said once. One inside a step saved ``last.ckpt`` (and a best) there, and a run resumed
    from it - after a kill, or from its best - took its next step without the batches gathered before the save,
    unsaid (the caption config's 0.25 of an epoch of 18,493 batches is 4,623: inside a step at any accumulation).

    And the validation a stop's checkpoint marks as due (:func:`validation_to_run_first`) runs first when it is resumed,
    whatever the schedule says there: one held to the step's end, by time (its clock starts anew) or for a Timer's stop
    was said due as the run stopped, not as it resumed, and the resume went on without it, its steps counted one short."""
    if getattr(loop := trainer.fit_loop.epoch_loop, "_held_to_step_ends", False):
        return
    asked, held = loop._should_check_val_fx, [False, False]  # a validation waiting for its step's end; said

    def should_check(data_fetcher) -> bool:
        if loop.restarting and loop.val_loop.restarted_mid_evaluation:  # (Lightning < 2.7's restart stages, pinned)
            return True
        if trainer.accumulate_grad_batches <= 1:
            return asked(data_fetcher)
        due = asked(data_fetcher) or held[0]
        held[0] = due and loop._should_accumulate()  # inside a step: at its end
        if held[0] and not held[1] and trainer.is_global_zero:
            print(f"note: a validation that falls inside an optimizer step (accumulate_grad_batches "
                  f"{trainer.accumulate_grad_batches}) comes at the step's end, so that the checkpoint it saves holds "
                  "whole steps (one resumed from inside a step lost the batches gathered before it)", file=sys.stderr,
                  flush=True)
            held[1] = True
        return due and not held[0]

    loop._should_check_val_fx, loop._held_to_step_ends = should_check, True


def validation_due(trainer) -> bool:
    """Whether Lightning validates at the end of the step now ending (a stop saves before it: asked at a step's end)."""
    return bool(trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


def done_at(trainer, validation_due: bool) -> bool | str:
    """Whether training is done at this step's end (``max_steps``), and ``"validation"`` when a validation was due there
    that a stop now leaves unrun: a resume trains nothing and runs nothing (Lightning's loop is done before it begins;
    at the last epoch's end it is not: the resume closes the epoch, its validation first)."""
    done = 0 <= trainer.max_steps <= trainer.global_step
    return "validation" if done and validation_due else done


def mark_stop(checkpoint: dict, signal_name: str, validation_due: bool) -> None:
    """Record in a stop's checkpoint the signal that stopped the run (a next stage started from it says it did not
    finish), and the validation due at its step, if one was (:func:`validation_to_run_first`)."""
    checkpoint["stopped_by"] = signal_name
    if validation_due:
        validation_to_run_first(checkpoint)


def validation_to_run_first(checkpoint: dict) -> None:
    """Mark a stop's checkpoint, saved at a step's end before the validation due there, as Lightning marks one saved
    inside that validation's first batch: the resumed run runs it before its next step (Lightning < 2.7's restart
    stages, pinned). Resumed as saved, the validation was never run: a gap in its curve, the best checkpoint and early
    stopping's count without it, and with one validation an epoch, a stop in an epoch's last step lost that epoch's."""
    loops = checkpoint["loops"]["fit_loop"]
    training = loops["epoch_loop.batch_progress"]
    for part in ("total", "current"):  # the step's batch done, as after its hooks (not counted again when resumed)
        training[part]["completed"] = training[part]["processed"]
    validation = loops["epoch_loop.val_loop.batch_progress"]
    done = validation["total"]["completed"]  # those of the validations run before; the first batch of this one begun
    validation["total"].update(ready=done + 1, started=done + 1, processed=done)
    validation["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}


def run_timer(trainer) -> Timer | None:
    """Lightning's Timer, there when ``trainer.max_time`` is set."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)


def time_spent_note(trainer) -> str | None:
    """Said when a run resumed has spent its ``max_time`` already (Lightning's own line, at its info level, was kept
    quiet, and the command exited 0)."""
    timer = run_timer(trainer)
    left = timer.time_remaining() if timer is not None and trainer.ckpt_path else None
    if left is None or left > 0:
        return None
    return (f"note: {trainer.ckpt_path} has trained for {format_seconds(timer.time_elapsed())}, which trainer.max_time "
            f"({format_seconds(timer._duration)}) counts too: it ends at once. Raise --trainer.max_time to train on")


def time_limit_note(trainer, checkpoint: str | None) -> str | None:
    """Said when ``trainer.max_time`` stopped a fit before its planned steps: its learning rate had not decayed to the
    end of its schedule (sized by max_epochs / max_steps), and only "Time limit reached" was said."""
    timer = run_timer(trainer)
    if timer is None or timer.time_remaining() > 0 or trainer.global_step >= (planned := trainer.estimated_stepping_batches):
        return None
    if any(isinstance(c, EarlyStopping) and c.stopping_reason != EarlyStoppingReason.NOT_STOPPED for c in trainer.callbacks):
        return None  # ended by EarlyStopping as the time ran out: resuming it ends at once
    resume = (f"; to train the rest, resume it (--ckpt_path {shell_word(checkpoint)}) with a larger --trainer.max_time (the time "
              "trained so far counts)") if checkpoint else ""
    return (f"note: trainer.max_time ({format_seconds(timer._duration)}) stopped training at step {trainer.global_step} of "
            f"{int(planned)}, before the end of its learning-rate schedule{resume}")


def run_length(trainer) -> int:
    """The optimizer step a resumed run ends at: the step reached, then the rest of this epoch and the epochs after it
    with this run's batches per epoch and accumulation (or ``max_steps``, if sooner). Lightning's
    ``estimated_stepping_batches`` counts every epoch under this run's settings from step 0: a run resumed with another
    ``accumulate_grad_batches`` or ``limit_train_batches`` had its schedule end at the step reached, and trained its
    remaining epochs at a rate of 0 (or ended before its schedule did)."""
    step, total = trainer.global_step, math.inf
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and math.isfinite(trainer.num_training_batches):
        per_epoch, accumulate = int(trainer.num_training_batches), trainer.accumulate_grad_batches
        epoch = trainer.fit_loop.epoch_progress.current  # an epoch begun and not ended: the batches trained of it
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready if epoch.started > epoch.completed else 0
        windows = math.ceil(per_epoch / accumulate)  # an epoch's optimizer steps: windows counted from its first batch
        # saved at the validation on the epoch's last batch (the epoch not yet closed): its last, shorter window was stepped
        stepped = windows if done >= per_epoch else done // accumulate
        total = step + max(windows - stepped, 0) + windows * max(trainer.max_epochs - trainer.current_epoch - 1, 0)
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        total = min(total, trainer.max_steps)
    return int(total)


def save_resumable_checkpoint(trainer) -> str:
    """Save the run as it is now, resumable: as the checkpoint callback's ``last.ckpt`` when it keeps
    one (with its bookkeeping, as its own saves do), else ``interrupted-step<N>.ckpt`` in its folder, or the next free
    ``interrupted-step<N>-v1.ckpt``, ... when an earlier run stopped at the same step there (as Lightning names its own)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.save_last is True and callback.dirpath:  # ("link": a link to
        # its last scheduled save, the steps since lost; saved whole below instead)
        # whole, where the callback saves the weights alone (save_weights_only): the stop says to resume it, and
        # --ckpt_path last finds it (an interrupted-step<N>.ckpt beside a weights-only last.ckpt was passed over)
        weights_only, callback.save_weights_only = callback.save_weights_only, False
        try:  # Lightning < 2.7 (pinned): the method ModelCheckpoint saves its last checkpoint with
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        finally:
            callback.save_weights_only = weights_only
        return callback.last_model_path
    folder = checkpoint_folder(trainer)
    names = (f"interrupted-step{trainer.global_step}{f'-v{n}' if n else ''}.ckpt" for n in itertools.count())  # a stop
    # in validation acts a step later: runs stopped so met at one step, and the earlier one's was written over
    path = trainer.strategy.broadcast(str(next(folder / name for name in names if not (folder / name).exists())))
    trainer.save_checkpoint(path, weights_only=False)  # unsaid, Lightning logs "`weights_only` was not set"
    return path


def checkpoint_folder(trainer) -> Path:
    """Where a stop's checkpoint goes: the checkpoint callback's folder, else the run's."""
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) if isinstance(callback, ModelCheckpoint) and callback.dirpath else Path(trainer.default_root_dir)


def checkpoint_files(trainer) -> dict[str, tuple[int, int]]:
    """Each checkpoint file where a stop saves, as (inode, modification time): a file renamed into place has others."""
    try:
        return {p.name: (s.st_ino, s.st_mtime_ns) for p in checkpoint_folder(trainer).glob("*.ckpt") if (s := p.stat())}
    except OSError:
        return {}


def saved_since(trainer, before: dict[str, tuple[int, int]]) -> str | None:
    """The checkpoint put in place since ``before`` (:func:`checkpoint_files`): the save a second Ctrl-C cut short after
    its file was whole (written beside its place and renamed there), in the folder's sync or Lightning's bookkeeping."""
    now = checkpoint_files(trainer)
    return next((str(checkpoint_folder(trainer) / name) for name, seen in now.items() if before.get(name) != seen), None)
