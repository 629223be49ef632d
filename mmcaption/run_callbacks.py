"""The callbacks every command's trainer gets beside the config's: the resumable stop, out-of-memory advice, mmcaption's
progress display and parameter summary, a note when a resumed run has nothing left to train, curves that stop on a full disk rather than the run, where a finished fit left its checkpoints and
curves, a resumed run's curves at their steps, what a checkpoint records of its run, and the run's config saved without writing over an earlier command's; and a run's seed not left to the next run in the process."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    ModelSummary,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from mmcaption.advice import OutOfMemoryAdvice
from mmcaption.callbacks import PlainProgress, ResumableStop, StageProgressBar, run_label
from mmcaption.csv_logs import keep_earlier_csv_logs
from mmcaption.errors import FolderLockedError, hold_stops
from mmcaption.folders import FolderLock
from mmcaption.full_log_disk import CurvesOnFullDisk
from mmcaption.parameter_summary import ParameterSummary
from mmcaption.results import ResumedAt
from mmcaption.terminal import draws_bars

# the environment's, as the process began: not an earlier run's
_SEED_GIVEN = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}


def forget_earlier_seed() -> None:
    """``PL_GLOBAL_SEED`` (and ``PL_SEED_WORKERS``) put back as the process began: Lightning leaves a run's seed there,
    and a later run in the same process with ``seed_everything: false`` (a sweep's next trial) took it for its own: its
    data order and loader workers' seeds, and the seed its checkpoint records, so that resuming it in a new process was
    refused."""
    for name, given in _SEED_GIVEN.items():
        if given is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = given


def add_run_callbacks(trainer: Trainer) -> None:
    """Add mmcaption's own callbacks to ``trainer``, and put its progress display in place of Lightning's bars; keep an
    earlier command's CSV logs in a named run folder (:func:`~mmcaption.csv_logs.keep_earlier_csv_logs`), as KeptConfig
    keeps its config."""
    keep_earlier_csv_logs(trainer)
    # after the other callbacks' step-end hooks (Lightning keeps ModelCheckpoint last): a stop Lightning's Timer asks at a
    # batch is seen at that batch. A config may list its own to change every_minutes
    listed = [callback for callback in trainer.callbacks if isinstance(callback, ResumableStop)]
    trainer.callbacks[:] = [callback for callback in trainer.callbacks if not isinstance(callback, ResumableStop)]
    trainer.callbacks.append(listed[0] if listed else ResumableStop())
    trainer.callbacks += [OutOfMemoryAdvice(), NothingLeftToTrain(), RunRecord(), WhereSaved(), CurvesOnFullDisk(), StopsHeldInTeardown(),
                          FolderKept(), ResumedAt()]
    trainer.callbacks.insert(0, CurvesAtTheirSteps())  # before the config's LearningRateMonitor logs at a step
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) in (TQDMProgressBar, RichProgressBar):  # Lightning's: named bars, or plain lines off a terminal
            trainer.callbacks[index] = StageProgressBar() if draws_bars() else PlainProgress()
        if type(callback) in (ModelSummary, RichModelSummary):  # it counted 4-bit weights by their packed storage
            trainer.callbacks[index] = ParameterSummary(max_depth=callback._max_depth, **callback._summarize_kwargs)


class StopsHeldInTeardown(Callback):
    """Once a command's work is done, a stop signal waits for the end of its teardown (:func:`~mmcaption.errors.hold_stops`)."""

    def on_train_end(self, trainer: Trainer, pl_module) -> None:  # after ResumableStop's: its save at the end is made
        hold_stops()

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # `validate`, not a validation inside fit
            hold_stops()

    def on_test_end(self, trainer: Trainer, pl_module) -> None:
        hold_stops()

    def on_predict_end(self, trainer: Trainer, pl_module) -> None:
        hold_stops()


class NothingLeftToTrain(Callback):
    """Says when a ``fit`` resumed from a checkpoint at its ``max_epochs`` or ``max_steps`` trained nothing: Lightning
    only said "`Trainer.fit` stopped: `max_epochs=3` reached" and exited 0 (a finished run resumed, or a resumed run's
    own config.yaml run again, whose ``ckpt_path`` names a last.ckpt that has moved on). ``trained`` tells the CLI
    whether this run's new log folder holds anything."""

    def __init__(self) -> None:
        self.trained = self.validated = False

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        self.validated |= not trainer.sanity_checking  # (a stop's validation, due at its last step, run first)

    def on_train_epoch_end(self, trainer: Trainer, pl_module) -> None:  # before ModelCheckpoint's (Lightning keeps it last)
        # resumed from the last validation of its last epoch, the loop ends that epoch without a batch: the checkpoint
        # resumed from is this run's last, not saved again (last.ckpt was, recording the resume's settings - a learning
        # rate its steps were not trained with - and a last-v1.ckpt where the folder was another run's)
        epochs = trainer.max_epochs  # the run ends here (with epochs left, an empty epoch end saves nothing anyway)
        if trainer.ckpt_path and not (self.trained or self.validated) and epochs not in (None, -1) and \
                trainer.fit_loop.epoch_progress.current.processed >= epochs:
            for callback in trainer.checkpoint_callbacks:  # the last saved is the one resumed from (a path: save_last
                if isinstance(callback, ModelCheckpoint):  # "link" links to it)
                    callback._last_checkpoint_saved, callback._last_global_step_saved = str(trainer.ckpt_path), trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        self.trained = True

    def on_fit_end(self, trainer: Trainer, pl_module) -> None:
        if self.trained or not trainer.ckpt_path or not trainer.is_global_zero:
            return
        steps, epochs = trainer.max_steps, trainer.max_epochs
        limit = (("max_steps", steps) if steps not in (None, -1) and trainer.global_step >= steps else
                 ("max_epochs", epochs) if epochs not in (None, -1) and trainer.current_epoch >= epochs else None)
        if limit is not None:
            ran = ", and ran the validation a stop had left due there" if self.validated else ""
            print(f"note: {trainer.ckpt_path} is at step {trainer.global_step} (epoch {trainer.current_epoch}), the end of "
                  f"trainer.{limit[0]} {limit[1]}: this fit trained nothing more{ran} (to train on, raise --trainer.{limit[0]} "
                  f"above {limit[1]})", file=sys.stderr, flush=True)


def _shown(path: str | Path) -> str:
    """``path`` as the user would type it here: relative to the working directory when under it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


class WhereSaved(Callback):
    """One line as a fit ends, after every save: its last and best checkpoints (the best with its score) and its log
    folder. Runs of a sweep in one root save last-v1.ckpt, last-v2.ckpt, ... and version_0, version_1, ...: which
    checkpoint went with which curves was only in each folder's config.yaml."""

    def __init__(self) -> None:
        self._started = False  # not `trained`: the CLI reads that name as NothingLeftToTrain's

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:  # nothing trained: said
        self._started = True  # by NothingLeftToTrain, nothing saved

    def on_fit_end(self, trainer: Trainer, pl_module) -> None:  # not after a signal's stop, which says its checkpoint
        log_dir = trainer.log_dir if trainer.logger is not None else None  # on every process: a broadcast
        callback = trainer.checkpoint_callback
        if not self._started or not trainer.is_global_zero:
            return
        saved = []
        if isinstance(callback, ModelCheckpoint):
            last, best = callback.last_model_path, callback.best_model_path
            if last and Path(last).is_file():
                saved.append(f"{_shown(last)} (step {trainer.global_step})")
            if best and best != last and Path(best).is_file():
                score = callback.best_model_score
                shown = f" ({callback.monitor} {float(score):.4g})" if callback.monitor and score is not None else ""
                saved.append(f"the best, {_shown(best)}{shown}")
        said = f"saved {' and '.join(saved)}" if saved else "no checkpoint saved"
        if log_dir and Path(log_dir).is_dir():
            said += f"; curves and config in {_shown(log_dir)}"
        label = run_label(trainer)
        print(f"{label}: {said}" if label else said, flush=True)
        self._started = False


class KeptConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback, never writing over the config an earlier command saved in the same run folder: a
    resume, ``test`` or ``validate`` given the training run's folder (``--trainer.logger.init_args.version``) replaced
    its config.yaml with its own, and the folder then recorded settings the model was not trained with. A later
    command's config goes beside it, as config-2.yaml, config-3.yaml, ...

    A resumed fit's ``ckpt_path`` is left out of it, said in a comment: the file given as ``--config`` to repeat the run
    (on another machine, or as a new experiment) resumed the checkpoint there, or whatever run's now stood at that path,
    and wrote over its ``last.ckpt``."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        log_dir = trainer.log_dir if not self.already_saved and self.save_to_log_dir else None  # every process: a broadcast
        if log_dir and trainer.is_global_zero:  # (asked on rank 0 alone, it waited for a broadcast the others never made)
            folder, self.config_filename, number = Path(log_dir), "config.yaml", 1
            folder.mkdir(parents=True, exist_ok=True)
            while True:  # the name taken at once: two commands started together in one folder do not pick the same
                try:
                    (folder / self.config_filename).open("x").close()
                    break
                except FileExistsError:
                    number += 1
                    self.config_filename = f"config-{number}.yaml"
        if self.save_to_log_dir and not self.already_saved and log_dir is None:  # a logger with no local folder (MLflow's,
            if trainer.is_global_zero:  # Comet's): Lightning's own stopped at a bare AssertionError
                print(f"note: the config is not saved: trainer.logger ({type(trainer.logger).__name__}) has no local folder "
                      "(save_dir) to save it in", file=sys.stderr, flush=True)
            return
        resumed = self.config.get("ckpt_path") if stage == "fit" else None
        if resumed:
            self.config = self.config.clone()
            self.config.ckpt_path = None
        super().setup(trainer, pl_module, stage)
        if log_dir and resumed and trainer.is_global_zero:
            saved = Path(log_dir) / self.config_filename
            resumed = " ".join(str(resumed).splitlines())  # (a comment of one line, whatever the path holds)
            saved.write_text(f"# this run was resumed with --ckpt_path {resumed}, left out here: this file given as --config "
                             "starts a run anew (add --ckpt_path to resume)\n" + saved.read_text())


class FolderKept(Callback):
    """The checkpoint folder's lock kept through the run (:meth:`~mmcaption.folders.FolderLock.taken_again`), the
    folder made again with it when removed under the run (as the run's next save would make it). Taken meanwhile by
    another run, it is said once, and this run goes on (stopped mid-step, it lost what it trained since its last save)."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and callback.dirpath not in self._said:
                try:
                    FolderLock.taken_again(callback.dirpath)
                except FolderLockedError as error:
                    self._said.add(callback.dirpath)
                    rank_zero_warn(f"the checkpoint folder was removed under this run, and {error.args[0].split('; wait')[0]} "
                                   "now: this run's saves go there beside that run's")


class CurvesAtTheirSteps(Callback):
    """A resumed run's curves at the steps they belong to. Lightning's step for loggers (its count of batches that stepped
    the optimizer, which the checkpoint holds) came back one off from saves at an epoch's end: ahead after the last
    checkpoint saved after its validation, behind after one saved at the validation's end. The resumed curves sat a step
    beside an uninterrupted run's, one more with each resume. One optimizer (automatic optimization), it is the global step."""

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        if pl_module.automatic_optimization and loop._batches_that_stepped != trainer.global_step:
            loop._batches_that_stepped = trainer.global_step


class RunRecord(Callback):
    """What a checkpoint holds of the run that saved it, beside its model settings: the run's log folder (TensorBoard's
    curves and config.yaml; a checkpoint folder shared by runs named none of them), its seed, learning rate and the
    trainer settings that decide what one step and one epoch are. ``mmcaption-export`` puts them on the model card."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        settings = ("max_epochs", "max_steps", "accumulate_grad_batches", "limit_train_batches", "precision", "world_size")
        checkpoint["run"] = {"log_dir": trainer.log_dir if trainer.logger is not None else None,
                             "seed": os.environ.get("PL_GLOBAL_SEED"),
                             "learning_rate": getattr(pl_module, "learning_rate", None),
                             "trainer": {name: getattr(trainer, name, None) for name in settings}}
