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
import subprocess
import sys
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

from mmcaption.errors import ResumeError


def slurm_requeue_signal(trainer) -> int | None:
    """The signal a SLURM job gets before its time limit (``#SBATCH --signal=SIGUSR1@90``) when Lightning would
    requeue the job on it (its default under SLURM), else None."""
    environment = trainer._accelerator_connector.cluster_environment  # Lightning < 2.7 (pinned)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal is not None:
        return environment.requeue_signal
    return None


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job (an array job's own task), as Lightning does; says what became of it."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if array else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return "Not requeued: SLURM_JOB_ID is not set"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"Not requeued: scontrol requeue {job} failed ({error})"
    if done.returncode:
        return f"Not requeued: scontrol requeue {job} failed ({(done.stderr or done.stdout).strip() or done.returncode})"
    return f"SLURM job {job} is requeued: it runs the same command again, which resumes from this checkpoint"


def requeued_checkpoint(trainer) -> str | None:
    """For a ``fit`` given no ``--ckpt_path``: the checkpoint a requeued SLURM job resumes from, said on rank 0 (the newest
    ``last*.ckpt`` or ``interrupted-step*.ckpt`` in its checkpoint folder), else None. Refuses an
    ``hpc_ckpt_N.ckpt`` in the run's root folder, which Lightning would otherwise resume from unasked."""
    if not SLURMEnvironment.detect():
        return None
    callback = trainer.checkpoint_callback
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and isinstance(callback, ModelCheckpoint) and callback.dirpath:
        folder = Path(callback.dirpath)
        saved = [*folder.glob("last*.ckpt"), *folder.glob("interrupted-step*.ckpt")] if folder.is_dir() else []
        if saved:
            newest = str(max(saved, key=lambda p: p.stat().st_mtime))
            if trainer.global_rank == 0:
                print(f"note: SLURM requeued this job (restart {os.environ['SLURM_RESTART_COUNT']}): it resumes from {newest}",
                      file=sys.stderr, flush=True)
            return newest
    hpc = trainer._checkpoint_connector._hpc_resume_path  # Lightning < 2.7 (pinned)
    if hpc is not None:
        raise ResumeError(
            f"{hpc} is a checkpoint Lightning saved on a SLURM requeue signal, in the middle of a step: under SLURM it would "
            f"resume this run from it unasked, whatever run wrote it (the newest hpc_ckpt_N.ckpt in {trainer.default_root_dir}). "
            f"To go on from it, add --ckpt_path {hpc}; otherwise move it out of that folder")
    return None
