"""The folder of checkpoints a resumed ``fit`` writes into: its files followed where the folder has moved, and a newer
``last.ckpt`` than the checkpoint resumed from kept (its state named it, and the resumed run wrote over it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from mmcaption.checkpoint import _recorded


def checkpoint_folder_on_resume(trainer, checkpoint: dict[str, Any]) -> None:
    """Both, in ``on_load_checkpoint`` of ``fit``: the state is rewritten before Lightning restores the callbacks."""
    follow_a_moved_checkpoint_folder(trainer, checkpoint)
    keep_a_newer_last(trainer, checkpoint)


def follow_a_moved_checkpoint_folder(trainer, checkpoint: dict[str, Any]) -> None:
    """Resuming from a checkpoint folder that has moved since it was written (the project moved or copied, a
    container mounting it elsewhere): each ``ModelCheckpoint``'s state names its files at the old absolute
    path, so Lightning forgot them - it wrote ``last-v1.ckpt`` beside ``last.ckpt`` and never removed the old
    best. When the checkpoint resumed from lies in that callback's folder, its files are taken as moved with
    it: the state is rewritten to the folder's present place (call from ``on_load_checkpoint``, in ``fit``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    resumed = Path(trainer.ckpt_path).resolve().parent if trainer.ckpt_path else None
    states = checkpoint.get("callbacks") or {}
    for callback in trainer.checkpoint_callbacks:
        state = states.get(callback.state_key) if isinstance(callback, ModelCheckpoint) else None
        old, new = (state or {}).get("dirpath"), callback.dirpath
        if not old or not new or old == new or resumed != Path(new).resolve():
            continue

        state["dirpath"] = new
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = _moved_file(state.get(key), old, new)
        moved_best = {_moved_file(path, old, new): score for path, score in (state.get("best_k_models") or {}).items()}
        state["best_k_models"] = {path: score for path, score in moved_best.items() if path}
        rank_zero_info(f"{new} was {old} when this checkpoint was written: its best and last checkpoints are followed here")


def _moved_file(path: str | None, old: str, new: str) -> str:
    """A file of folder ``old`` where it is now, in folder ``new``; "" when it is not there."""
    moved = Path(new) / Path(path).relative_to(old) if path and Path(old) in Path(path).parents else None
    return str(moved) if moved is not None and moved.is_file() else ""


def keep_a_newer_last(trainer, checkpoint: dict[str, Any]) -> None:
    """Resuming from a checkpoint older than the folder's last one (a best one, ``--ckpt_path best``, or a copy kept
    aside): Lightning takes the last file its state names for its own and writes over it - a run's newer steps lost
    without a word. The newer file is kept: this run's last checkpoint goes beside it (``last-v1.ckpt``). Decided by the
    first process for all (each saving differently would leave them waiting for one another)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    resumed = Path(trainer.ckpt_path).resolve() if trainer.ckpt_path else None
    states = checkpoint.get("callbacks") or {}
    for callback in trainer.checkpoint_callbacks:
        state = states.get(callback.state_key) if isinstance(callback, ModelCheckpoint) else None
        last = Path(state.get("last_model_path") or "") if state and state.get("dirpath") == callback.dirpath else None
        newer = None
        if trainer.is_global_zero and last and last.name and last.is_file() and resumed and last.resolve() != resumed:
            step = _recorded(last, "global_step", None)  # None: unreadable, kept all the same
            if not isinstance(step, int) or step > checkpoint.get("global_step", 0) or \
                    last.stat().st_mtime > resumed.stat().st_mtime:
                newer = f"{last} (step {step})" if isinstance(step, int) else str(last)
        newer = trainer.strategy.broadcast(newer, src=0)
        if newer is None:
            continue
        if not getattr(callback, "_enable_version_counter", True):  # it would name this run's last as that one
            rank_zero_info(f"note: {newer} is newer than the checkpoint resumed from, and this run's last checkpoint "
                           "replaces it (the checkpoint callback's enable_version_counter is false)")
            continue
        state["last_model_path"] = ""  # so its next save takes a name of its own
        rank_zero_info(f"note: {newer} is newer than the checkpoint resumed from (step {checkpoint.get('global_step', 0)}): "
                       "it is kept, and this run's last checkpoint is saved beside it")
