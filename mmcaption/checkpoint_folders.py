"""The checkpoint ``--ckpt_path last|best`` names, and the folder of checkpoints a resumed ``fit`` writes into: its
files followed where the folder has moved, and a newer ``last.ckpt`` than the checkpoint resumed from kept (its state
named it, and the resumed run wrote over it)."""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from mmcaption.checkpoint import _recorded, load_checkpoint_file, saved_time
from mmcaption.errors import ConfigError, MMCaptionError
from mmcaption.lightning_tools import check_tuned_resume, tuners_checkpoint
from mmcaption.resources import dangling, dangling_note
from mmcaption.terminal import shell_word

SAID: set[str] = set()  # the notes this process has said once


def checkpoint_folder_on_resume(trainer, checkpoint: dict[str, Any]) -> None:
    """Both, in ``on_load_checkpoint`` of ``fit``: the state is rewritten before Lightning restores the callbacks. A
    tuner's own checkpoint of the run's start is none of its folder's (and a tuner cannot resume: refused)."""
    check_tuned_resume(trainer)
    if tuners_checkpoint(trainer.ckpt_path):
        return
    follow_a_moved_checkpoint_folder(trainer, checkpoint)
    say_a_resume_saved_elsewhere(trainer, checkpoint)
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


def say_a_resume_saved_elsewhere(trainer, checkpoint: dict[str, Any]) -> None:
    """Resuming a run's checkpoint from another folder's settings (``--ckpt_path runs/b/checkpoints/x/last.ckpt`` without
    that run's ``--trainer.default_root_dir runs/b``): this run saves and logs where its own settings say, beside other
    runs' checkpoints maybe; Lightning said only that "the dirpath has changed", in a warning naming its own source file."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    states = checkpoint.get("callbacks") or {}
    for callback in trainer.checkpoint_callbacks:
        state = states.get(callback.state_key) if isinstance(callback, ModelCheckpoint) else None
        old, new = (state or {}).get("dirpath"), callback.dirpath
        if not old or not new or old == new or not trainer.is_global_zero:
            continue
        root = Path(old).parents[1] if Path(old).parent.name == "checkpoints" else None  # <root>/checkpoints/<name>
        gone = not Path(old).is_dir()  # moved, renamed or deleted since (the advice below asks only that its root be there)
        again = f"; to go on in that run's folders, give the same --trainer.default_root_dir it had ({shell_word(root)})" \
            if root is not None and root.is_dir() else ""
        print(f"note: the checkpoint resumed from saved its run's checkpoints in {old}{' (not there now: moved?)' * gone}; this run saves its own in {new}, "
              f"with its curves under {trainer.log_dir}{again}", file=sys.stderr, flush=True)


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
                    saved_time(last) > saved_time(resumed, checkpoint):
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


def keyword_checkpoint(ckpt_path: Any, folders: list[Path] | None, subcommand: str) -> Path | None:
    """The file ``--ckpt_path last`` names: the newest ``last*.ckpt`` in the config's checkpoint ``folders`` (also when
    fast_dev_run leaves the ModelCheckpoint out), by the time each recorded (a copy's file times are the copy's), the
    others named with their steps; without one, fit starts afresh saying where it looked, and validate, test and predict
    are refused, as ``best``: the best checkpoint the newest ``last*.ckpt`` that records one there recorded (per run)."""
    if ckpt_path not in ("last", "best"):
        return None
    found = sorted(p for folder in folders or [] if folder.is_dir() for p in folder.rglob("*.ckpt"))  # a {val/CIDEr} name: a folder
    if broken := [p for p in found if p.name.startswith("last") and dangling(p)]:  # which is newest cannot be told
        raise ConfigError(f"{subcommand} --ckpt_path {ckpt_path}: {dangling_note(broken[0])}. Point the link at the "
                          "checkpoint, remove it, or give the checkpoint's path")
    found = [p for p in found if not dangling(p)]
    lasts = newest_first([p for p in found if p.name.startswith("last")])
    if ckpt_path == "last" and lasts:
        if (note := _taken_of_several(lasts)) and (key := f"last {lasts[0][0].resolve()}") not in SAID and rank_zero_only.rank == 0:
            SAID.add(key)  # said once a process: the CLI resolves it twice, from folders spelled two ways
            print(note, file=sys.stderr, flush=True)
        return lasts[0][0]
    gone: list[str] = []  # the best checkpoints recorded that are not there (deleted to make room)
    for last, recorded in lasts if ckpt_path == "best" else []:  # a re-run stopped before validating records none
        if best := _recorded_best(last, gone):
            if last != lasts[0][0] and rank_zero_only.rank == 0 and (key := f"other {best.resolve()}") not in SAID:  # another run's
                SAID.add(key)  # once, with the newest that has none
                print(f"note: --ckpt_path best: {lasts[0][0]}, the newest run's last checkpoint (step "
                      f"{lasts[0][1].get('global_step')}), records no best checkpoint; {best} is {last.name}'s run's, of "
                      f"step {recorded.get('global_step')}", file=sys.stderr, flush=True)
            return best
    if ckpt_path == "last" and subcommand == "fit":  # said once a process (the CLI asks twice); Lightning's warning, which
        said = f"--ckpt_path last: no last*.ckpt in {', '.join(str(f.absolute()) for f in folders or []) or 'a folder'}"
        if said not in SAID and not SAID.add(said):  # blamed save_last (the configs set it), is filtered in the CLI
            warnings.warn(f"{said}: this fit starts at step 0", stacklevel=1)
        return None
    holds = f"; it holds {', '.join(p.name for p in found[:4])}" if found else ""
    why = "there is no last.ckpt in" if ckpt_path == "last" else "no last.ckpt records a best checkpoint that is there" + (
        f" ({gone[0]})" if gone else "") + ", in"
    where = (f"{why} {', '.join(str(folder) for folder in folders)}, under {Path.cwd()}{holds}" if folders else
             "the config has no ModelCheckpoint folder to look in")
    raise ConfigError(f"{subcommand} --ckpt_path {ckpt_path}: {where}. Give the checkpoint's path")


def _recorded_best(last: Path, gone: list[str] | None = None) -> Path | None:
    """The best checkpoint the run that saved ``last`` recorded (its ModelCheckpoint's ``best_model_path``, looked for
    beside ``last`` too: a project moved), said as it is taken; None if it recorded none that is there (one recorded
    and not there is added to ``gone``, said)."""
    import torch

    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a file torch cannot read records nothing to go by
        return None
    for key, value in (state.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(value, dict) and value.get("best_model_path"):
            path, dirpath = Path(value["best_model_path"]), value.get("dirpath") or ""  # in the run's folder: as it is
            beside = last.parent / path.relative_to(dirpath) if dirpath and path.is_relative_to(dirpath) else None  # now
            path = beside if beside and beside.is_file() else path if path.is_file() else last.parent / path.name  # (a copy)
            if path.is_file():
                score = value.get("best_model_score")
                said = f"note: --ckpt_path best: {path} ({value.get('monitor') or 'its monitor'}" + (
                    f" {float(score):.4f}" if score is not None else "") + f", as {last.name} recorded it)"
                if (key := f"best {path.resolve()}") not in SAID and rank_zero_only.rank == 0 and not SAID.add(key):  # the
                    # CLI resolves it twice, from folders spelled two ways
                    print(said, file=sys.stderr, flush=True)
                return path
            if gone is not None:
                gone.append(f"{last.name} records {path.name}, which is not there")
    return None


def newest_first(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Checkpoints, the newest save first (by the time each recorded, else its file's), each with its step and save time
    (``{}``: a file torch cannot read, said where it is loaded)."""
    read = []
    for path in paths:
        try:
            recorded = load_checkpoint_file(path, mmap=True)
        except (MMCaptionError, OSError):  # (a colleague's, unreadable to this user: by its file's time)
            recorded = {}
        read.append((path, {"global_step": recorded.get("global_step"), "saved_at": saved_time(path, recorded)}))
    return sorted(read, key=lambda pair: pair[1]["saved_at"], reverse=True)


def _taken_of_several(lasts: list[tuple[Path, dict[str, Any]]]) -> str:
    """The note for ``--ckpt_path last`` when a folder holds several runs' last checkpoints ("" for one): the one taken,
    and the others, each with its step and save time - a re-run stopped at its first step saved the newest."""
    if len(lasts) < 2:
        return ""
    def described(path: Path, recorded: dict[str, Any], name: str = "") -> str:
        step = recorded.get("global_step")
        return f"{name or path.name} (step {'?' if step is None else step}, saved " \
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(recorded['saved_at']))})"
    (taken, recorded), others = lasts[0], lasts[1:]
    further = [path.name for path, other in others if (other.get("global_step") or 0) > (recorded.get("global_step") or 0)]
    return (f"note: --ckpt_path last: {described(taken, recorded, str(taken))}, the newest of {len(lasts)} runs' last "
            f"checkpoints; the others: {', '.join(described(*other) for other in others)}" +
            (f" - {further[0]} is further on" if further else "") + ". To continue another, give its path as --ckpt_path")


def earlier_checkpoints_note(folder: Path, saves_last: bool = True) -> None:
    """Say so when a new ``fit`` (no ``--ckpt_path``) saves into a folder holding an earlier run's
    checkpoints: it starts at step 0 and Lightning names its files beside them (``last-v1.ckpt``), so
    ``last.ckpt`` stays the earlier run's - which ``init_from`` or a script may point at. ``saves_last``:
    whether this run's checkpoint callback writes a ``last`` checkpoint."""
    earlier = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    for link in filter(dangling, earlier):  # Lightning writes a checkpoint of that name in its place
        print(f"note: {dangling_note(link)}; a checkpoint this run saves under its name replaces the link", file=sys.stderr)
    if not (earlier := [p for p in earlier if not dangling(p)]):
        return
    last = folder / "last.ckpt"
    step = ""
    names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
    if last.is_file():  # Lightning's next free version of the name: last-v1.ckpt, last-v2.ckpt when a third run writes
        # with several runs' last-vN.ckpt, the one to continue is the newest (it was last.ckpt, the oldest run's)
        newest = max((p for p in folder.glob("last*.ckpt") if not dangling(p)), key=saved_time)
        which = "last.ckpt" if newest == last else f"the newest, {newest.name},"
        with contextlib.suppress(MMCaptionError):
            step = f"; {which} is at step {load_checkpoint_file(newest, mmap=True).get('global_step')}"
        ours = next(name for name in (f"last-v{n}.ckpt" for n in itertools.count(1)) if not (folder / name).exists())
        # named by its file: Lightning's "last" is the newest last*.ckpt, which is this run's once it saved (a validation,
        # or the stop the note asks for, writes last-v1.ckpt), and resumed the run stopped a few steps in
        earlier_run = f"last.ckpt stays the earlier run's. To continue {'that' if newest == last else 'the newest'} run " \
                      f"instead, stop and add --ckpt_path {shell_word(newest)}"
    else:  # only named checkpoints (epoch=..., interrupted-step...): this run's last is last.ckpt
        ours = "last.ckpt"
        newest = max(earlier, key=saved_time)
        earlier_run = f"to continue that run instead, stop and add --ckpt_path {shell_word(newest)}"
    beside = f"under new names ({ours}, ...)" if saves_last else "under its own names"
    print(f"note: {folder} holds an earlier run's checkpoints ({names}{step}). This run starts at step 0 and saves "
          f"beside them {beside}; {earlier_run}; to keep the runs apart, give this one another "
          "checkpoint folder.",
          file=sys.stderr, flush=True)
