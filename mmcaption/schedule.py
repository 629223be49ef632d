"""The learning-rate schedule: linear warm-up then decay over the run's optimizer steps, and where a resumed run takes
it up (the rate given now, the length of this run)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import get_linear_schedule_with_warmup

from mmcaption.lightning_tools import tuners_checkpoint
from mmcaption.step_ends import run_length


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_ratio: float, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear schedule: ``warmup_ratio`` of ``steps`` warming up from 0, then down to 0 at ``steps``."""
    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), int(steps))


def resize(scheduler: torch.optim.lr_scheduler.LambdaLR, warmup_ratio: float, length: int) -> None:
    """``scheduler`` (``configure_optimizers``' own) as the linear schedule of ``length`` steps, from the step it is at."""
    fresh = linear_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), warmup_ratio, length)
    scheduler.lr_lambdas = fresh.lr_lambdas * len(scheduler.optimizer.param_groups)


def schedule_from_here(trainer, learning_rate: float, warmup_ratio: float) -> int | None:
    """After a resume, train at the ``learning_rate`` given now, on the schedule of this run's length (call from
    ``on_train_start``). The restored optimizer and scheduler keep the checkpoint's base rate, and the rate the
    old schedule had reached: 0 at its end, so a run resumed to train longer took its first step at 0. Returns the
    schedule's new length when it is not the one ``configure_optimizers`` planned (:func:`run_length`)."""
    planned, length = int(trainer.estimated_stepping_batches), run_length(trainer)
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # the schedule configure_optimizers builds
            continue
        groups = scheduler.optimizer.param_groups
        if length != planned:  # the same schedule as configure_optimizers builds, of this run's length
            resize(scheduler, warmup_ratio, length)
            rank_zero_info(f"the learning-rate schedule ends at step {length}: this run's epochs from step "
                           f"{scheduler.last_epoch} ({trainer.num_training_batches} batches, accumulate_grad_batches "
                           f"{trainer.accumulate_grad_batches}); counted from step 0 it would end at step {planned}")
        if any(base != learning_rate for base in scheduler.base_lrs):
            rank_zero_info(f"learning rate {learning_rate:g} (the checkpoint's: {scheduler.base_lrs[0]:g}), on the schedule "
                           f"from step {scheduler.last_epoch}")
        reached = groups[0]["lr"] / scheduler.base_lrs[0] if scheduler.base_lrs[0] else 0.0  # the old schedule's share
        rates = [learning_rate * rate(scheduler.last_epoch) for rate in scheduler.lr_lambdas]
        if learning_rate and abs(rates[0] / learning_rate - reached) > 0.01:  # a run extended: its schedule had ended at 0
            rank_zero_info(f"the learning rate goes from {groups[0]['lr']:g} to {rates[0]:g} ({rates[0] / learning_rate:.0%} of "
                           f"{learning_rate:g}) at step {scheduler.last_epoch}: the schedule now ends at step {length}, this "
                           "run's end, and is taken up at the step reached")
        rebase(scheduler, learning_rate)
    return length if length != planned else None


def rebase(scheduler: torch.optim.lr_scheduler.LambdaLR, learning_rate: float) -> None:
    """``scheduler`` and its optimizer's groups at ``learning_rate`` as their peak, at the step the schedule is at."""
    rates = [learning_rate * rate(scheduler.last_epoch) for rate in scheduler.lr_lambdas]
    scheduler.base_lrs = [learning_rate] * len(rates)
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["initial_lr"], group["lr"] = learning_rate, rate
    scheduler._last_lr = rates  # what get_last_lr() and Lightning's LearningRateMonitor read


def after_tuning(trainer: Any, module: Any) -> None:
    """As the fit starts, once a tuner has run: the fit resumes from no checkpoint (the tuner's, restored and deleted,
    is none of the run's: a fresh run was said to take up the schedule 'from step 0' at the checkpoint's rate), and its
    schedule is as long as the run at the batch size found (planned before a ``BatchSizeFinder`` doubled the batch, it
    ended at half the peak rate, 15 steps into 30)."""
    if not tuners_checkpoint(trainer.ckpt_path):
        return
    trainer._checkpoint_connector._ckpt_path = None  # (Lightning leaves the tuner's; check_tuned_resume refuses others)
    length = int(trainer.estimated_stepping_batches)
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR):  # the schedule configure_optimizers builds
            if length != module.planned_steps:
                resize(config.scheduler, module.warmup_ratio, length)
            rebase(config.scheduler, module.learning_rate)  # a LearningRateFinder's rate as the schedule's peak (Lightning
            # sets it in the optimizer alone: it held for one step, unwarmed, then the schedule went back to the config's)
    if length != module.planned_steps:
        rank_zero_info(f"the learning-rate schedule ends at step {length}, this run's length at the batch size the "
                       f"BatchSizeFinder found (it was planned for {module.planned_steps})")
        module.planned_steps = length
