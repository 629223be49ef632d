"""What a run that failed for want of a resource is told: out of memory, where it was and which of its
settings take less; out of disk space, the checkpoint it resumes from. The console scripts print it on
one line with the error (:func:`~mmcaption.resources.resource_message`)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import RunningStage

from mmcaption.resources import add_note, disk_full, file_too_large, out_of_memory, worker_killed
from mmcaption.terminal import shell_word


class OutOfMemoryAdvice(Callback):
    """A run out of memory (a GPU's or the CPU's RAM) gets a note on its error: where it was, which of its
    settings take less memory, with their values, and the checkpoint kept. The console scripts print the
    error's first sentences and the note on one line, not PyTorch's traceback and allocator statistics.
    A training run stopped by a full disk gets the checkpoint kept: "the same command again" starts at step 0."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if out_of_memory(exception) is not None:
            add_note(exception, memory_advice(trainer, pl_module))
        elif worker_killed(exception) is not None:
            add_note(exception, memory_advice(trainer, pl_module, worker=True))
        elif (disk_full(exception) or file_too_large(exception)) is not None and trainer.state.fn == "fit" and (
                kept := kept_checkpoint(trainer)):
            add_note(exception, f"--ckpt_path {shell_word(kept)} resumes from its last whole checkpoint, not from step 0")


def kept_checkpoint(trainer) -> str:
    """This run's last checkpoint on disk (a save that failed left the one before it whole), or ``""``."""
    callback = trainer.checkpoint_callback
    kept = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return kept if kept and Path(kept).is_file() else ""


def memory_advice(trainer, pl_module, worker: bool = False) -> str:
    """Where the run ran out of memory, the settings that take less (``--key (this run's value)``) and the
    checkpoint kept. ``worker``: a data-loader worker was killed, and fewer workers come first (each holds its own
    copy of the batches it prepares, and of what it has read)."""
    where, ways = _where_and_ways(trainer, pl_module)
    workers = getattr(trainer.datamodule, "num_workers", None)
    if worker and workers:
        ways = [f"lower --data.num_workers ({workers})", *(way for way in ways if "batch_size" in way)]  # the workers' memory
    note = f"It {'died' if worker else 'ran out'} {where}. To fit: {', or '.join(ways or ['use a device with more memory'])}."
    kept = kept_checkpoint(trainer)
    if trainer.state.fn == "fit" and kept:
        callback = trainer.checkpoint_callback  # a worker's death is saved at the step it came after (ResumableStop)
        when = f"at step {trainer.global_step:,}" if getattr(callback, "_last_global_step_saved", None) == trainer.global_step \
            and trainer.global_step else "before"
        note += (f" Kept: {kept}, saved {when}; --ckpt_path {shell_word(kept)} resumes it, with the batch lowered and the accumulation "
                 f"raised as above (the same samples an optimizer step) or fewer workers too; --model.init_from {shell_word(kept)} starts "
                 "from its weights with other data settings.")
    return note


def _where_and_ways(trainer, pl_module) -> tuple[str, list[str]]:
    data, stage, step, config = trainer.datamodule, trainer.state.stage, trainer.global_step, getattr(pl_module, "config", None)

    def lower(key: str, name: str) -> list[str]:
        value = getattr(data, name, None)
        return [] if value is None else [f"lower --{key} ({value})"]

    beams = (getattr(pl_module, "generation", None) or {}).get("num_beams") or 1
    generating = [f"lower --model.generation.num_beams ({beams})"] if beams > 1 else []
    if getattr(pl_module, "model", True) is None:  # before the model is there, where fit's stage already says training
        if not getattr(pl_module, "loading", False):
            return "preparing the data, before the model loads", lower("data.num_workers", "num_workers")
        quantization = getattr(config, "quantization", "nf4")
        return "loading the model", [] if quantization in ("nf4", "fp4") else [f"set --model.config.quantization nf4 ({quantization})"]
    if stage == RunningStage.TRAINING:
        ways = [f"{way} and raise --trainer.accumulate_grad_batches ({trainer.accumulate_grad_batches}) by as much to keep "
                "the batch" for way in lower("data.batch_size", "batch_size")]
        if config is not None and not getattr(config, "gradient_checkpointing", True):
            ways.append("set --model.config.gradient_checkpointing true")
        return f"in training step {step + 1:,}", ways + lower("data.max_length", "max_length")
    if stage == RunningStage.PREDICTING:
        return "in predict", lower("data.batch_size", "batch_size") + generating
    where = {RunningStage.SANITY_CHECKING: "in the validation check before training", RunningStage.TESTING: "in test",
             RunningStage.VALIDATING: f"in validation after training step {step:,}" if trainer.state.fn == "fit" else "in validation"}
    if stage in where:
        return where[stage], lower("data.eval_batch_size", "eval_batch_size") + generating
    return "before the first batch", []


