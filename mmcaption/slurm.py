"""Training under SLURM: the signal before a job's time limit, requeueing the job, and resuming the requeued run.

Lightning's own handling of ``#SBATCH --signal=SIGUSR1@90`` saves ``hpc_ckpt_N.ckpt`` from inside the
signal handler, in the middle of a step, into the working directory, and every later ``fit`` under
SLURM there resumes from the newest such file, whatever run wrote it. mmcaption's
:class:`~mmcaption.callbacks.ResumableStop` takes the signal instead: it saves the run's ``last.ckpt``
at the end of the step, as for SIGTERM, and requeues the job; the requeued run (``SLURM_RESTART_COUNT``
above 0) resumes from that checkpoint without being told.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

from mmcaption.errors import ResumeError
from mmcaption.terminal import shell_word


def slurm_requeue_signal(trainer) -> int | None:
    """The signal a SLURM job gets before its time limit (``#SBATCH --signal=SIGUSR1@90``) when Lightning would
    requeue the job on it (its default under SLURM), else None."""
    environment = trainer._accelerator_connector.cluster_environment  # Lightning < 2.7 (pinned)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal is not None:
        return environment.requeue_signal
    # a job Lightning does not take for SLURM's (no SLURM_NTASKS: a one-task script without --ntasks) still has its time
    # limit's warning, and requeues as well; not one Lightning was told not to requeue, nor an interactive session
    interactive = SLURMEnvironment.job_name() in ("bash", "interactive")
    if isinstance(environment, SLURMEnvironment) or interactive or not this_job() or not hasattr(signal, "SIGUSR1"):
        return None
    return signal.SIGUSR1


def this_job() -> str | None:
    """This SLURM job's id (an array job's own task: ``<array>_<task>``), which a requeued job keeps; None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if array else os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job (an array job's own task), as Lightning does; says what became of it."""
    job = this_job()
    if not job:
        return "Not requeued: SLURM_JOB_ID is not set"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"Not requeued: scontrol requeue {job} failed ({error})"
    if done.returncode:
        return f"Not requeued: scontrol requeue {job} failed ({(done.stderr or done.stdout).strip() or done.returncode})"
    return f"SLURM job {job} is requeued: it runs the same command again, which resumes from this checkpoint"


def requeued() -> bool:
    """Whether this is a SLURM job run again after a requeue (its time limit, a node's failure): the same run."""
    return bool(this_job()) and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def logger_checkpoint_folders(trainer) -> list[Path]:
    """The checkpoint folders of the run's logger's versions (``<save_dir>/<name>/version_*/checkpoints``), where a
    ModelCheckpoint without ``dirpath`` saves."""
    logger = getattr(trainer, "logger", None)
    save_dir, name = getattr(logger, "save_dir", None), getattr(logger, "name", None)
    return sorted(Path(save_dir, name or "").glob("*/checkpoints")) if save_dir else []


def requeued_checkpoint(trainer, saved_by: Callable[[Path], str | None], given: str | None = None) -> str | None:
    """For a ``fit``: the checkpoint a requeued SLURM job resumes from, said on rank 0 - this job's own newest save
    (``last*.ckpt`` or ``interrupted-step*.ckpt`` that records this job's id) in its checkpoint folder, over the command's
    ``--ckpt_path`` (``given``; a requeued job runs its command again, and went back to where it first started) - else
    None: a job that saved nothing yet starts as its command says, not from another job's ``last.ckpt`` in the folder.
    Without ``given``, refuses an ``hpc_ckpt_N.ckpt`` in the run's root folder, which Lightning would otherwise resume
    from unasked. ``saved_by``: the job a checkpoint records (:class:`~mmcaption.callbacks.ResumableStop` writes it), None
    if it records none, anything else for a file that cannot be read."""
    if not this_job():
        return None
    callback = trainer.checkpoint_callback
    if requeued():  # the checkpoint callback's folder, or without one the run's, where a stop saves (save_resumable_checkpoint)
        given_folder = isinstance(callback, ModelCheckpoint) and callback.dirpath
        folder = Path(callback.dirpath if given_folder else trainer.default_root_dir)
        # a ModelCheckpoint without dirpath saves into its logger's version folder, not resolved yet: looked for there
        folders = [folder] if given_folder else [folder, *folder.glob("lightning_logs/*/checkpoints"),
                                                 *logger_checkpoint_folders(trainer)]
        saved = [path for place in folders if place.is_dir()
                 for path in (*place.glob("last*.ckpt"), *place.glob("interrupted-step*.ckpt")) if path.exists()]
        jobs = {path: saved_by(path) for path in saved}
        ours = [path for path, job in jobs.items() if job == this_job()]
        # saved before checkpoints recorded their job (an earlier release, or a run upgraded while it ran): as before, the
        # newest of them, unless this job has saves of its own
        untold = [path for path, job in jobs.items() if job is None and given_folder]
        restart = f"SLURM requeued this job (restart {os.environ['SLURM_RESTART_COUNT']})"
        if ours or untold:
            newest = str(max(ours or untold, key=lambda p: p.stat().st_mtime))
            if trainer.global_rank == 0:
                whose = "its own last save" if ours else "the newest save, which records no job (an earlier release's)"
                instead = f", not --ckpt_path {given}, where its command started" if given and given != newest else ""
                print(f"note: {restart}: it resumes from {whose}, {newest}{instead}", file=sys.stderr, flush=True)
            return newest
        if saved and trainer.global_rank == 0:
            print(f"note: {restart}, which saved no checkpoint yet: it starts as its command says; the checkpoints in "
                  f"{folder} are other jobs'", file=sys.stderr, flush=True)
    if given is not None or not SLURMEnvironment.detect():
        return None
    hpc = trainer._checkpoint_connector._hpc_resume_path  # Lightning < 2.7 (pinned)
    if hpc is not None:
        raise ResumeError(
            f"{hpc} is a checkpoint Lightning saved on a SLURM requeue signal, in the middle of a step: under SLURM it would "
            f"resume this run from it unasked, whatever run wrote it (the newest hpc_ckpt_N.ckpt in {trainer.default_root_dir}). "
            f"To go on from it, add --ckpt_path {shell_word(hpc)}; otherwise move it out of that folder")
    return None


def nodes_unlaunched(nodes: object, plugins: object) -> str | None:
    """What is wrong with ``trainer.num_nodes`` above 1 in a process that no launcher started as one node of several (no
    torchrun, SLURM, LSF or MPI environment, no ``NODE_RANK``): it waited for the other nodes for ever, where only
    SIGKILL ended it; None when nothing is (one node, a launcher's environment, or a cluster plugin of the user's)."""
    from lightning.fabric.plugins.environments import LSFEnvironment, MPIEnvironment, TorchElasticEnvironment

    if not isinstance(nodes, int) or nodes <= 1 or plugins or {"NODE_RANK", "GROUP_RANK"} & set(os.environ) or any(
            environment.detect() for environment in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)):
        return None
    return (f"trainer.num_nodes is {nodes}, and nothing started this process as one of {nodes} machines (no torchrun, "
            "SLURM srun, LSF or MPI environment, no NODE_RANK): it would wait for the other nodes for ever. Start it "
            f"on each machine with torchrun --nnodes {nodes} --nproc_per_node <its GPUs, as trainer.devices> --node_rank "
            "<its rank> --master_addr <the first one's address> --master_port 29500 -m mmcaption fit ..., or with srun in "
            "an sbatch script (the README's examples); on one machine, leave num_nodes out and give --trainer.devices")
