"""Training speed and memory in TensorBoard: Lightning's ``ThroughputMonitor`` on the training steps,
with the step time and the peak memory beside it."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

# Dense peak FLOP/s of the H200 (NVIDIA's datasheet; its headline tensor figures are with 2:4 sparsity, which
# training does not use). Lightning 2.6 knows the chip only as "h200 sxm1" / "h200 nvl1" and then gives the sparse
# figures, twice the dense ones (halving the MFU); the device's own name, "NVIDIA H200" (or "... NVL"), it does not
# match at all, so no MFU was logged there.
H200_DENSE_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    "sxm": {torch.float32: 67e12, "tfloat32": 494.7e12, torch.bfloat16: 989.4e12, torch.float16: 989.4e12},
    "nvl": {torch.float32: 60e12, "tfloat32": 417.5e12, torch.bfloat16: 835.5e12, torch.float16: 835.5e12},
}


def available_flops(device: torch.device, dtype: torch.dtype | str) -> int | None:
    """The device's dense peak FLOP/s in ``dtype``: Lightning's table, except for an H200 (``H200_DENSE_FLOPS``)."""
    if device.type == "cuda" and "h200" in (name := torch.cuda.get_device_name(device).lower()):
        if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
            dtype = "tfloat32"  # float32 matmuls on tensor cores, as Lightning counts them
        flops = H200_DENSE_FLOPS["nvl" if "nvl" in name else "sxm"].get(dtype)
        return None if flops is None else int(flops)
    return get_available_flops(device, dtype)


def batch_samples(batch: dict[str, Any]) -> int:
    return batch["input_ids"].size(0)


def batch_real_tokens(batch: dict[str, Any]) -> int:
    """Tokens that are not padding: what ``train/items_per_sec`` counts."""
    return int(batch["attention_mask"].sum())


def peak_memory_gb(device: torch.device) -> float:
    """The most memory this process has held: CUDA's max allocated on a GPU, the peak resident set
    size on the CPU (Linux reports it in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource  # not on Windows, where every config's callback failed to import and no command ran
    except ImportError:
        import psutil  # Windows reports the peak working set (psutil comes with peft's dependencies)

        return getattr(psutil.Process().memory_info(), "peak_wset", 0) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class TrainingThroughput(ThroughputMonitor):
    """Logs, every ``log_every_n_steps`` training steps once ``window_size`` steps have run, this
    process's ``train/device/samples_per_sec``, ``train/device/items_per_sec`` (real tokens, padding
    excluded), ``train/device/batches_per_sec``, ``train/device/flops_per_sec`` and, on a GPU whose peak
    FLOPs Lightning knows, ``train/device/mfu`` (from the module's ``flops_per_batch``); under DDP also
    rank 0's rates times the number of processes (``train/samples_per_sec``, ...) and its running counts as
    ``train/device/samples``, ``train/device/lengths``, ``train/device/batches`` (all processes' ``train/samples``); and every logged step
    ``train/step_seconds`` (that optimizer step's wall time, all its accumulated batches, data loading excluded) and ``train/peak_memory_gb``.
    Validation time is left out of the rates (the checkpoint saved after a validation is not);
    validation batches (a loss loader beside a generation loader) are not measured.
    """

    def __init__(self, window_size: int = 50) -> None:
        super().__init__(batch_size_fn=batch_samples, length_fn=batch_real_tokens, window_size=window_size, separator="/")
        self._batch_started = self._step_seconds = 0.0
        self._validation_started: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """As Lightning's, with the H200's dense peak FLOP/s (``available_flops``)."""
        self.available_flops = available_flops(trainer.strategy.root_device, _plugin_to_compute_dtype(trainer.precision_plugin))
        stages = [trainer.state.stage] + ([RunningStage.VALIDATING] if stage == TrainerFn.FITTING and trainer.enable_validation else [])
        for each in stages:
            self._throughputs[each] = Throughput(available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The running counts and the training time so far: a resumed run's ``train/samples``, ``train/lengths``,
        ``train/batches`` and ``train/time`` went back to 0 at the resume (a sawtooth over a requeued run's curves)."""
        stage = RunningStage.TRAINING
        if stage not in self._samples or stage not in self._t0s:
            return {}
        return {"samples": self._samples[stage], "lengths": self._lengths.get(stage, 0), "batches": self._batches[stage],
                "seconds": time.perf_counter() - self._t0s[stage]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed = dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if resumed := self.__dict__.pop("_resumed", None):  # they go on from the checkpoint's
            stage = RunningStage.TRAINING
            self._samples[stage], self._lengths[stage], self._batches[stage] = (resumed["samples"], resumed["lengths"],
                                                                                 resumed["batches"])
            self._t0s[stage] -= resumed["seconds"]

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()
        if batch_idx % trainer.accumulate_grad_batches == 0:  # a step's first batch: under accumulation the step is all
            self._step_seconds = 0.0  # of its batches (the last one's time alone was logged, a half or a third of it)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        size = batch_samples(batch)
        self._step_seconds += time.perf_counter() - self._batch_started
        pl_module.log("train/step_seconds", self._step_seconds, batch_size=size)
        pl_module.log("train/peak_memory_gb", peak_memory_gb(pl_module.device), batch_size=size)

    def _compute(self, trainer, iter_num: int | None = None) -> None:
        """Under DDP, the running counts Lightning logs as ``train/samples``, ``train/lengths`` and ``train/batches``
        are rank 0's alone: logged as ``train/device/...``, and ``train/samples`` as all processes' (each takes a batch
        of the same size a step)."""
        if trainer.world_size == 1 or not trainer._logger_connector.should_update_logs:
            return super()._compute(trainer, iter_num)
        throughput = self._throughputs[trainer.state.stage]
        metrics = throughput.compute()
        for name in ("samples", "lengths", "batches"):
            if name in metrics:
                metrics[f"device{throughput.separator}{name}"] = metrics.pop(name)
        metrics["samples"] = metrics[f"device{throughput.separator}samples"] * trainer.world_size
        trainer._logger_connector.log_metrics({f"{trainer.state.stage.value}{throughput.separator}{k}": v
                                               for k, v in metrics.items()}, step=iter_num)

    def on_validation_start(self, trainer, *_: Any) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_end(self, trainer, *_: Any) -> None:
        started, self._validation_started = self._validation_started, None
        if started is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if RunningStage.TRAINING in self._t0s:  # the rates count training time only
            self._t0s[RunningStage.TRAINING] += time.perf_counter() - started
