"""The data loaders' worker processes: what signals they leave to the main process, how they are seeded, the
generator a loader draws its order from, and their end at the process's exit."""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.queues
import os
import signal
import sys
import time
import traceback

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch._utils import ExceptionWrapper

from mmcaption.data.sampling import default_seed
from mmcaption.resources import handover_message


def usable_cores() -> int:
    """The cores this process may use (its affinity: a container's or a scheduler's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_for_cores(asked: int | None) -> int:
    """``asked`` worker processes, or as many as the cores this process may use when they are fewer, said once (None, the
    data modules' default: up to 4, unsaid): the configs' 8 (a GPU node's) on a 2-core machine (Colab's, a laptop's) ran 8
    workers per loader, training's and validation's kept alive side by side, each with its own memory, behind torch's
    warning of a freeze."""
    cores = usable_cores()
    if asked is None or asked <= cores:
        return min(4, cores) if asked is None else asked
    _say(f"note: data.num_workers is {asked}, and this process may use {cores} cores: {cores} worker processes load the "
         f"data (more would wait for the cores, each holding its own memory; --data.init_args.num_workers {cores} asks for "
         f"{cores} without this note)")
    return cores


@rank_zero_only
def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def worker_init(worker_id: int, rank: int = 0) -> None:
    """Data loader workers leave Ctrl-C, SIGTERM, SIGHUP and SLURM's SIGUSR1 to the main process, which stops the run cleanly
    and then ends them (a terminal's Ctrl-C, and some schedulers' SIGTERM, reach every process of the
    job: a worker that died of it would fail the checkpoint the main process is about to write).
    Seeded as Lightning seeds workers when ``seed_everything(workers=True)`` asked for it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    multiprocessing.queues.Queue._on_queue_feeder_error = _batch_not_handed_over  # this process's queues: its data queue
    for name in ("SIGUSR1", "SIGHUP"):  # SLURM's warning before the time limit (--signal=SIGUSR1@90), sent to every
        if hasattr(signal, name):       # process; a closed terminal's hang-up, sent to its whole foreground group
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)


def _batch_not_handed_over(queue, error: Exception, item: object) -> None:
    """A batch this worker could not send (its tensors are put in shared memory as they are sent, and /dev/shm was
    full: Docker's 64 MB): its error goes to the main process in its place, which raises it as a worker's own error.
    Python's queue printed a traceback and dropped the batch, and the main process waited for it for ever (a fit
    asked to stop by SIGTERM too: its save waits for the end of the step)."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int)):
        traceback.print_exc()  # another message of the worker's: as Python's queue says it
        return
    index, data = item
    stateful = isinstance(data, tuple) and len(data) == 3 and isinstance(data[1], int)  # torchdata's (batch, worker, state)
    if isinstance(data[0] if stateful else data, ExceptionWrapper):  # the error sent in its place failed too: said here
        traceback.print_exception(error)
        return
    try:
        raise RuntimeError(handover_message(error)) from error
    except RuntimeError:
        info = torch.utils.data.get_worker_info()
        wrapped = ExceptionWrapper(where=f"in DataLoader worker process {info.id if info else 0}")
    try:  # (torchdata's state left out: it may hold what failed too, and is not read before the error is raised)
        queue.put((index, (wrapped, data[1], None) if stateful else wrapped))
    except Exception:  # noqa: BLE001 - the queue closed as the worker ends: said as Python's queue says it
        traceback.print_exception(error)


@functools.cache
def end_workers_at_exit() -> None:
    """At the process's exit, end the loader workers still running: a run stopped by an error keeps its loaders (the
    error's frames hold them), and multiprocessing ends their workers with SIGTERM, which :func:`worker_init` has them
    ignore: the process printed its error and then waited on them for ever (a crashed job held its GPUs)."""
    atexit.register(_end_workers)  # after multiprocessing's own exit function, so it runs before it


def _end_workers() -> None:
    """What multiprocessing does to daemonic children at exit (SIGTERM), then SIGKILL, for those that ignore SIGTERM as
    loader workers do (all daemonic children where the system does not say: not Linux); others are left to it."""
    children = [child for child in multiprocessing.active_children() if child.daemon and _ignores_sigterm(child.pid) is not False]
    if children and hasattr(signal, "SIGCHLD"):  # torch's handler would say each worker's end as a failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + 2
    for child in children:
        child.join(max(deadline - time.monotonic(), 0))
        if child.is_alive():
            child.kill()


def loader_generator() -> torch.Generator:
    """A loader's own generator: each of its iterators draws a seed, from the process's generator when a loader has
    none. An evaluation loader's draw moved the training's dropout masks after each validation by how many evaluation
    loaders there were (``val_caption_images`` 0 or 40 gave two training curves under one seed); the training loader's,
    at each epoch's start, came before the random state a resume puts back when the run was saved at an epoch's end (the
    config's own last.ckpt after its end-of-epoch validation), and every later dropout mask differed."""
    return torch.Generator().manual_seed(default_seed())


def _ignores_sigterm(pid: int | None) -> bool | None:
    """Whether process ``pid`` ignores SIGTERM (Linux's ``/proc/<pid>/status``), None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
    except (OSError, StopIteration, ValueError):
        return None
    return bool(ignored >> (signal.SIGTERM - 1) & 1)
