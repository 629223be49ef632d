"""What a checkpoint is refused for by what it records, before anything loads or is preprocessed (and at its restore, for
what only the data module knows): no checkpoint of mmcaption fit's, settings this release lacks, another stage, data
preprocessed in another format."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

from mmcaption.errors import ConfigError, ResumeError
from mmcaption.model.config import check_known_settings
from mmcaption.terminal import shell_word

_LIGHTNING_KEYS = ("_instantiator", "_class_path")  # Lightning's own, beside the module's settings


def checkpoint_settings(checkpoint: dict[str, Any], ckpt_path: str, known: set[str], resume: bool = False) -> dict[str, Any]:
    """The module settings (hyper-parameters) of the checkpoint read from ``ckpt_path``, refused where it is no checkpoint of
    mmcaption fit's or holds settings this release's module (``known``) and model lack: the CLI blamed those on an option the
    user never typed ("does not accept option 'model.label_smoothing'"); to ``resume`` a fit, one of the weights alone."""
    saved = dict(checkpoint.get("hyper_parameters") or {})
    if not (lightning := "pytorch-lightning_version" in checkpoint) or (saved and "config" not in saved):
        who = (f"Lightning wrote it for another model, of settings {', '.join(map(str, sorted(saved)[:6]))}" if lightning
               else "Lightning did not write it")
        raise ConfigError(f"--ckpt_path {ckpt_path} is not a checkpoint of mmcaption fit ({who}): give a .ckpt file from a "
                          "run's checkpoint folder (checkpoints/<stage>/last.ckpt)")
    check_known_settings(saved.get("config") or {}, f"--ckpt_path {ckpt_path}")
    if resume and "optimizer_states" not in checkpoint:  # Lightning's KeyError, a traceback once the backbones had loaded
        raise ResumeError(f"--ckpt_path {ckpt_path} holds the trained weights alone (its ModelCheckpoint's save_weights_only: "
                          "no optimizer state, schedule or place in the epoch), so it cannot resume a run. Start a new run "
                          f"from its weights with --model.init_from {shell_word(ckpt_path)}")
    if unknown := sorted(set(saved) - known - set(_LIGHTNING_KEYS)):
        raise ConfigError(f"--ckpt_path {ckpt_path}: module settings {unknown} are unknown to this version of mmcaption (saved "
                          "by another version of mmcaption: install that version to use it)")
    return {key: value for key, value in saved.items() if key not in _LIGHTNING_KEYS}


def other_stage(source: str, saved: str | None, current: str | None) -> str | None:
    """The refusal of a checkpoint of the ``saved`` stage resumed by a run of the ``current`` one, or None where they agree."""
    if saved == current:
        return None
    return (f"{source} is a checkpoint of the {saved} stage, and this run trains the {current} stage: --ckpt_path resumes an "
            f"interrupted run of the same stage. To start this stage from its weights (fresh optimizer, schedule and step "
            f"count), use --model.init_from {shell_word(source)}")


def other_preprocessing(source: str, saved: int | None, current: int, earlier_cache: str | None) -> str:
    """The refusal of a checkpoint whose training data another release preprocessed (format ``saved``, None: before the
    format was kept): its place in the epoch means nothing in this release's cache."""
    if isinstance(saved, int) and saved > current:
        return (f"{source} was trained on data that a newer release of mmcaption preprocessed (format {saved}; this release's "
                f"is {current}): upgrade mmcaption (pip install -U mmcaption) to resume it, or start a new run from its weights "
                f"with --model.init_from {shell_word(source)}")
    earlier = f"format {saved}" if saved else "an earlier format"
    return (f"{source} was trained on data that an earlier release of mmcaption preprocessed ({earlier}; this release's is "
            f"{current}), and this one reads the same files anew, into a cache whose rows need not be the same: its place in "
            "the epoch would mean nothing there. Finish the run with the release that began it, or start a new run from its "
            f"weights with --model.init_from {shell_word(source)}" + (f"; the earlier cache ({earlier_cache}) may then be deleted"
                                                                      if earlier_cache else ""))


def check_resume(source: str, saved: dict[str, Any], stage: str | None, preprocessing: int) -> None:
    """Refuse the run a checkpoint records (``saved``: its ``training_data``) where it cannot go on as one of ``stage`` on
    data of format ``preprocessing``: said before the data is read (hours of preprocessing at COCO's size; then refused)."""
    if not stage or not saved.get("stage"):
        return
    if problem := other_stage(source, saved["stage"], stage):
        raise ResumeError(problem)
    if isinstance(saved.get("preprocessing"), int) and saved["preprocessing"] != preprocessing:
        raise ResumeError(other_preprocessing(source, saved["preprocessing"], preprocessing, saved.get("train_split")))


def check_same_resume(trainer, ckpt_path: str | None) -> None:
    """Refuse, in every process of a fit of several, a resume that some of them read from another checkpoint
    (``ckpt_path``: this process's) or from none: each process reads the checkpoint from its own disk, and only the first
    one saves, so with a checkpoint folder on each node's own disk (a requeued SLURM job's own last save, ``--ckpt_path
    last``) the first node resumed while the others started afresh, and they waited on one another for ever, in
    different steps of the start. A checkpoint is told by its name, size and last mebibyte (a zip's directory of its
    entries' CRCs: two saves of one model are of one size), wherever it is (a shared disk under other paths; a copy)."""
    import torch.distributed as dist

    if trainer.world_size < 2 or not dist.is_available() or not dist.is_initialized():
        return
    path = Path(ckpt_path) if ckpt_path else None
    own = None if path is None else (path.name, *_tail(path)) if path.is_file() else (path.name, path.is_dir())
    where = None if path is None else f"{path}{'' if path.exists() else ' (not there)'}"
    seen: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(seen, (own, where, socket.gethostname()))
    if len({found for found, _, _ in seen}) < 2:
        return
    each = "; ".join(f"process {rank} ({host}): {found or 'none, it starts afresh'}" for rank, (_, found, host) in enumerate(seen))
    raise ResumeError(f"the processes of this fit would resume from different checkpoints ({each}), and wait on one "
                      "another for ever: each reads it from its own disk, and the first process alone saves. Put the "
                      "checkpoint folder (ModelCheckpoint's dirpath, or trainer.default_root_dir) on a disk every node "
                      "shares, or copy the checkpoint to the same path on each node")


def _tail(path: Path) -> tuple[int, str]:
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        file.seek(max(size - 2**20, 0))
        return size, hashlib.blake2b(file.read(), digest_size=16).hexdigest()


def resuming_from(trainer, ckpt_path: str | None) -> None:
    """Tell the run's :class:`~mmcaption.callbacks.ResumableStop` the checkpoint its fit resumes from (compared across
    the processes once they are up, before any reads it: Lightning says it only then)."""
    for callback in trainer.callbacks:
        if hasattr(callback, "resume_told"):
            callback.resume_from, callback.resume_told = ckpt_path, True
