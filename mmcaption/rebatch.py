"""Resuming with other batch settings than the checkpoint's: a run out of memory goes on with half the batch and twice
the accumulation, a run of several processes goes on with another number of them (the same samples an optimizer step
on all), and a run at an epoch's end goes on with any batch, accumulation, process or order settings.

A checkpoint's place in its epoch is counted in batches (Lightning's progress, the loader's position). The order of an
epoch is one of optimizer steps' batches (``batch_size x accumulate_grad_batches x devices`` samples, see
:mod:`mmcaption.data.sampling`), so with the same samples a step, the rest of the epoch is the same steps in the same
order whatever the batches they are cut into: the progress is counted anew in this run's batches, and the loader starts
after the samples trained on (the sampler's ``skip``) in place of the position its saved state counts in the
checkpoint's batches. At an epoch's end nothing of the epoch is left, and the next one is ordered by this run's settings.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch

from mmcaption.resources import worker_killed

BATCH_KEYS = ("batch_size", "accumulate_grad_batches", "devices")
ORDER_KEYS = ("seed", "group_by_length", "length_group_batches")  # what orders an epoch
PROGRESS = ("ready", "started", "processed", "completed")
SAID = {"train_split": "the training data's content (the preprocessed split it was read into)"}  # in a refusal


def step_batch(data: dict[str, Any]) -> int:
    """An optimizer step's samples on all processes."""
    return data["batch_size"] * data.get("accumulate_grad_batches", 1) * data.get("devices", 1)


def step_split(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """The batch settings that keep the checkpoint's samples an optimizer step on this run's processes: half the batch
    and twice the accumulation where the processes are the same (the advice on running out of memory)."""
    batch, accumulate, devices = saved["batch_size"], saved.get("accumulate_grad_batches", 1), current.get("devices", 1)
    if devices == saved.get("devices", 1):
        batch, accumulate = (batch // 2, 2 * accumulate) if batch % 2 == 0 else (0, 0)
    elif step_batch(saved) % devices == 0:
        each = step_batch(saved) // devices  # a process's samples a step: the checkpoint's batch, accumulated to it
        batch, accumulate = (batch, each // batch) if each % batch == 0 else (each, 1)
    else:
        return ""
    return f"--data.batch_size {batch} --trainer.accumulate_grad_batches {accumulate}" if batch else ""


def epoch_place(checkpoint: dict[str, Any], saved: dict[str, Any]) -> tuple[int, int, int] | None:
    """(samples of its epoch this process had trained on, of the epoch's samples per process, the epoch), or None for
    a checkpoint without Lightning's loop progress."""
    try:
        batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"]
        per_process = math.ceil(saved["samples"] / saved["devices"])
        return min(batches * saved["batch_size"], per_process), per_process, checkpoint["epoch"]
    except (KeyError, TypeError):
        return None


def resume_with_other_batches(trainer, checkpoint: dict[str, Any], saved: dict[str, Any], current: dict[str, Any],
                              changed: list[str], source: str) -> str | None:
    """Make ``checkpoint`` resume under this run's batch settings where that repeats and skips nothing: None when it
    does (and says so); else the refusal's reason, "" where it is only that the data or batches are not the same."""
    place = epoch_place(checkpoint, saved)
    if not changed or not set(changed) <= {*BATCH_KEYS, *ORDER_KEYS} or place is None:
        return ""
    done, per_process, epoch = place
    at_epoch_end = done in (0, per_process)
    if not at_epoch_end and set(changed) & set(ORDER_KEYS):
        return "mid-epoch, the rest of the epoch is in the order its settings made"
    if not at_epoch_end and step_batch(saved) != step_batch(current):
        split = step_split(saved, current)
        return (f"mid-epoch, a run resumes with its {step_batch(saved)} samples an optimizer step (batch_size x "
                f"accumulate_grad_batches x devices), cut into other batches or processes as memory and machines need"
                + (f" ({split})" if split else ""))
    devices = current.get("devices", 1)
    # this process's share of the samples trained on: an epoch's global order is dealt out in turn to the processes
    mine = math.ceil(saved["samples"] / devices) if done == per_process else done * saved.get("devices", 1) // devices
    if not at_epoch_end and mine % current["batch_size"]:  # (saved inside an accumulation: no save of mmcaption's is)
        return f"its place in the epoch, sample {mine:,} of each process, falls inside a batch of {current['batch_size']}"
    if saved["batch_size"] != current["batch_size"] or mine != done:
        count_anew(checkpoint, mine, current["batch_size"])
        trainer.datamodule.resume_skip = (mine, epoch)
    if trainer.is_global_zero:
        said = ", ".join(f"{key} {saved.get(key)} -> {current.get(key)}" for key in changed)
        print(f"note: {source} resumes with other batch settings ({said}): " + (
              "it was saved at an epoch's end, and the next epoch is ordered by this run's" if at_epoch_end else
              f"the rest of its epoch {epoch + 1} is the same {step_batch(current)} samples an optimizer step, in the same "
              f"order, from sample {done * saved['devices']:,} of {saved['samples']:,}" + (
                  "; dropout draws its masks a batch at a time, so its steps are other draws than the uninterrupted run's"
                  if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in trainer.lightning_module.modules()) else "")
              ) + val_check_note(trainer, saved, current),
              file=sys.stderr, flush=True)
    return None


def restart_loader(trainer, checkpoint: dict[str, Any], saved: dict[str, Any], why: str) -> None:
    """Start the training loader afresh, after the samples of its epoch trained on (the sampler's ``skip``), in place of
    the position its saved state holds, which torchdata restores only with as many worker processes."""
    place = epoch_place(checkpoint, saved)
    if place is None:
        return
    checkpoint["loops"]["fit_loop"]["state_dict"].pop("combined_loader", None)
    trainer.datamodule.resume_skip = (place[0], place[2])
    if trainer.is_global_zero and 0 < place[0] < place[1]:
        print(f"note: {why}: it resumes from sample {place[0] * saved['devices']:,} of {saved['samples']:,} of its epoch "
              f"{place[2] + 1} (the batches and their order do not depend on the workers)", file=sys.stderr, flush=True)


def count_anew(checkpoint: dict[str, Any], done: int, batch_size: int) -> None:
    """Lightning's batch progress in batches of ``batch_size``, and no saved loader position (it counts the checkpoint's
    batches): the sampler skips the ``done`` samples instead."""
    loop = checkpoint["loops"]["fit_loop"]
    progress = loop["epoch_loop.batch_progress"]
    ready = progress["current"]["ready"]
    batches = math.ceil(done / batch_size)
    for field in PROGRESS:  # each field's offset from ready kept: Lightning reads that pattern (a save at a batch's end
        # has completed one short of ready; a stop's before the validation due there, none: step_ends.mark_stop)
        new = batches - (ready - progress["current"][field])
        progress["total"][field] += new - progress["current"][field]
        progress["current"][field] = new
    loop["state_dict"].pop("combined_loader", None)


def val_check_note(trainer, saved: dict[str, Any], current: dict[str, Any]) -> str:
    """Lightning counts an integer ``val_check_interval`` in batches, not optimizer steps."""
    interval = getattr(trainer, "val_check_interval", None)
    before, now = saved.get("accumulate_grad_batches", 1), current.get("accumulate_grad_batches", 1)
    if not isinstance(interval, int) or isinstance(interval, bool) or before == now:
        return ""
    kept = f"; {interval * now // before} keeps it" if interval * now % before == 0 else ""
    return (f"; --trainer.val_check_interval {interval} counts batches: validation comes every {interval / now:g} "
            f"optimizer steps where it came every {interval / before:g}{kept}")


def earlier_order(checkpoint: dict[str, Any], saved: dict[str, Any]) -> str | None:
    """A checkpoint of an earlier release, which did not record its accumulation: it is counted from the batches and
    steps trained (into ``saved``). Why it cannot resume mid-epoch where that release grouped an epoch by length in
    single batches, not optimizer steps' (the same for one batch a step)."""
    if "accumulate_grad_batches" in saved:
        return None
    try:
        batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
        saved["accumulate_grad_batches"] = max(1, round(batches / checkpoint["global_step"])) if checkpoint["global_step"] else 1
    except (KeyError, TypeError):
        saved["accumulate_grad_batches"] = 1
    place = epoch_place(checkpoint, saved)
    if saved["accumulate_grad_batches"] == 1 or not saved.get("group_by_length") or place is None or place[0] in (0, place[1]):
        return None
    return ("an earlier release of mmcaption grouped an epoch's samples by length in single batches, where this one groups "
            "an optimizer step's together: with accumulate_grad_batches above 1, the rest of the epoch would repeat some "
            "samples and skip others. Finish the run with the release that began it, or start a new run from its weights "
            "with --model.init_from")


def save_where_a_worker_died(trainer, exception: BaseException, save: Callable[[Any], str]) -> str | None:
    """A data-loader worker killed (by the out-of-memory killer, most often) stops a fit; between optimizer steps, its
    weights are whole: saved there with ``save``, so that nothing since the last save is lost. The loader's own position would
    count a batch fetched and never trained on, so the checkpoint holds none, and its resume starts the loader after the
    samples trained on (:func:`restart_loader`). None where nothing is saved: not in training, inside an accumulation, on
    several processes (the others wait elsewhere), or saved at this step already."""
    if worker_killed(exception) is None or trainer.state.fn != "fit" or not trainer.training or trainer.world_size > 1 \
            or trainer.fast_dev_run or not trainer.global_step:
        return None
    # torch's SIGCHLD handler raises wherever the main process is: saved only between two batches, or after a batch's
    # optimizer step and its learning-rate update (in its step-end hooks, where Lightning's own step-end saves are made)
    loop = trainer.fit_loop.epoch_loop
    done = loop.batch_progress.current
    between = done.ready == done.started == done.processed == done.completed
    after_step = done.ready == done.started == done.processed == done.completed + 1 and \
        loop.scheduler_progress.total.completed == trainer.global_step
    if not (between or after_step) or loop._should_accumulate() or \
            getattr(trainer.checkpoint_callback, "_last_global_step_saved", None) == trainer.global_step:
        return None
    try:
        with mock.patch.object(trainer.fit_loop._combined_loader, "_state_dicts", list):
            return save(trainer)
    except Exception as error:  # the worker's error is what the run ends with, and the checkpoints before are kept
        print(f"note: no checkpoint could be saved as the worker died ({error})", file=sys.stderr, flush=True)
        return None
