"""Lightning's own tools around a fit, with mmcaption's model: its tuners (``LearningRateFinder``, ``BatchSizeFinder`` in
the callbacks; ``Tuner(trainer).lr_find`` / ``scale_batch_size`` in a script, which run them in a fit of their own) and
the callbacks that cannot work with it (``StochasticWeightAveraging``, ``GradientAccumulationScheduler``).

A tuner saves the run's state to a hidden checkpoint as the fit starts (``.lr_find_<uuid>.ckpt``,
``.scale_batch_size_<uuid>.ckpt`` in the root folder), tries rates or batch sizes, and restores it: after the model is
built and the schedule planned, before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import (
    BatchSizeFinder,
    GradientAccumulationScheduler,
    LearningRateFinder,
    StochasticWeightAveraging,
)

from mmcaption.errors import ConfigError

TUNERS = (LearningRateFinder, BatchSizeFinder)
_TUNERS_CHECKPOINTS = (".lr_find_", ".scale_batch_size_")


def callbacks_problem(callbacks: list[Any]) -> str | None:
    """Why one of ``callbacks`` cannot run with mmcaption's model (the CLI's config, a script's own Trainer)."""
    if any(isinstance(c, StochasticWeightAveraging) for c in callbacks):
        # it copies the module in its setup, before configure_model builds the model: it averaged nothing, silently
        return ("trainer.callbacks: StochasticWeightAveraging cannot average this model (it copies the LightningModule "
                "before mmcaption builds the model in configure_model, so it would average no weight); leave it out")
    if any(isinstance(c, GradientAccumulationScheduler) for c in callbacks):
        # the schedule was planned for the first epoch's accumulation (it ended at 26% of the peak rate, 45 of 60 steps)
        # and a resume mid-epoch was refused as of other batches
        return ("trainer.callbacks: GradientAccumulationScheduler changes trainer.accumulate_grad_batches between epochs, "
                "which the learning-rate schedule (planned over the run's optimizer steps as it starts) and an exact "
                "resume cannot follow; leave it out and set trainer.accumulate_grad_batches")
    return None


def tuning(trainer: Any) -> list[Any]:
    """The tuners among a fit's callbacks."""
    return [c for c in getattr(trainer, "callbacks", []) if isinstance(c, TUNERS)]


def tuners_checkpoint(path: Any) -> bool:
    """Whether ``path`` is a tuner's own checkpoint of the run's start, not one the run resumes from."""
    return bool(path) and Path(str(path)).name.startswith(_TUNERS_CHECKPOINTS)


def check_tuned_resume(trainer: Any) -> None:
    """Refuse a fit that resumes with a tuner in its callbacks: the tuner runs again as it starts and restores its own
    checkpoint of the run before it, of step 0 (the resumed run's schedule warmed up again from 0, its steps counted
    from 0 beside the checkpoint's last.ckpt)."""
    if (tuners := tuning(trainer)) and trainer.ckpt_path and not tuners_checkpoint(trainer.ckpt_path):
        name = type(tuners[0]).__name__
        found = "learning rate (--model.learning_rate" if isinstance(tuners[0], LearningRateFinder) else \
            "batch size (--data.init_args.batch_size"
        raise ConfigError(f"trainer.callbacks: {name} cannot resume a run ({trainer.ckpt_path}): it tunes again as the "
                          "run starts and puts it back to step 0; resume without it, giving the " + found + ") it found")
