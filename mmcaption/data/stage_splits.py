"""Which of a dataset's splits each stage reads (train, val, test): the configured names, else the dataset's own - ``train``
to train on; ``validation``, ``val``, ``valid``, ``dev`` or ``test`` to validate on; a stable share of a single split's
images held out for validation (never the same image on both sides); a dataset of evaluation splits only (lmms-eval's
copies: nocaps' ``validation``, Flickr30k's ``test``) scored whole, ``fit`` refused."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
from contextlib import suppress
from pathlib import Path

import pyarrow.compute as pc
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.data.cache import folder_bytes, is_complete, load_table
from mmcaption.data.records import DataError
from mmcaption.data.table_rows import HELD_OUT, REST
from mmcaption.folders import SPLIT_FOLDER

VAL_NAMES = ("validation", "val", "valid", "dev", "test")


class EvaluationSplits(dict):
    """The splits of a dataset with none to train on: ``val`` and ``test``; ``train`` refused with ``said`` when
    ``fit`` (or anything else) asks for it, and a split a setting names that the dataset lacks with ``refused``'s."""

    def __init__(self, splits: dict[str, str], said: str, refused: dict[str, str] | None = None) -> None:
        super().__init__(splits)
        self.said, self.refused = said, refused or {}

    def __missing__(self, key: str) -> str:
        raise DataError(self.refused.get(key, self.said))


def stage_splits(dataset: str, names: list[str], given: tuple[str | None, str | None, str | None],
                 val_fraction: float) -> dict[str, str]:
    """The split of ``dataset`` (its splits: ``names``) for each of train, val and test, from the ``given`` names or the
    dataset's own; ``val_fraction``: the share of a single split's images held out for validation."""
    evaluation = bool(names) and set(names) <= set(VAL_NAMES) and given[0] not in names  # (nothing trained on)
    refused = {stage: f"{dataset} has splits {names}, not {name!r} (set train_split / val_split, or null for the dataset's "
               "own)" for stage, name in zip(("train", "val", "test"), given) if name is not None and name not in names}
    if refused and not evaluation:
        raise DataError(next(iter(refused.values())))
    train, val, test = (None if name not in names else name for name in given)  # an evaluation set's: refused by the stage
    train = train or ("train" if "train" in names else names[0] if len(names) == 1 and names[0] not in VAL_NAMES else None)
    if train is None and evaluation:  # its splits scored whole (test scored a 1% share of nocaps' validation split), a
        first = next(name for name in VAL_NAMES if name in names)  # config's other splits (COCO's) refused by the stage
        val = val or first
        test = test or val  # (its test split's captions held back for its server: validation's scored unless asked)
        splits = {stage: split for stage, split in (("val", val), ("test", test)) if stage not in refused}
        rank_zero_info(f"{dataset} has no split to train on ({names}): " + " and ".join(
            f"{'validation' if stage == 'val' else stage} reads {split!r}" for stage, split in splits.items()) + ", all of it")
        how = ("set train_split to it (hub_val_fraction of it is then held out for validation)" if len(names) == 1 else
               f"set train_split and val_split both to one ({first!r}: hub_val_fraction of it is then held out for "
               "validation), or val_split to another with captions")
        return EvaluationSplits(splits, f"{dataset} has splits {names}, none to train on: {how}", refused)
    if train is None:
        raise DataError(f"{dataset} has splits {names} and none is 'train': set train_split")
    val = val or next((name for name in VAL_NAMES if name in names and name != train), None)
    if val == train and not val_fraction:  # asked for: validation on the images it trains on (a check of fitting)
        rank_zero_info(f"{dataset}: val_split {val!r} is the training split and hub_val_fraction 0: it validates on "
                       "the images it trains on")
        return {"train": train, "val": val, "test": test or val}
    if val is None or val == train:  # val_split the training split's own name: part of it held out, not both sides
        has = f"one split ({train!r})" if len(names) == 1 else f"val_split {train!r}, its training split" if val else (
            f"splits {names}, none named {', '.join(VAL_NAMES)} (val_split names the one to validate on)")
        rank_zero_info(f"{dataset} has {has}: {val_fraction:.1%} of the images of {train!r} are held out "
                       "for validation (hub_val_fraction), by a stable hash of each image")
        return {"train": train + REST, "val": train + HELD_OUT, "test": test or train + HELD_OUT}
    # its own test split (Flickr8k's testImages list, a train/validation/test download), which test scored by val
    return {"train": train, "val": val, "test": test or ("test" if "test" in names and val != "test" else val)}


def scored_where_trained(trainer, training_data: dict) -> None:
    """Warn when ``validate`` or ``test`` scores a whole evaluation split with a checkpoint that trained on most of it (its
    ``training_data``): a run trained on such a split before evaluation sets were scored whole."""
    data = getattr(trainer, "datamodule", None)
    splits = data.stage_splits() if hasattr(data, "stage_splits") else {}
    scored, trained = splits.get("test" if trainer.state.fn == "test" else "val"), training_data.get("train_split") or ""
    if isinstance(splits, EvaluationSplits) and trained.startswith(f"{scored}{REST}-"):
        rank_zero_warn(f"the checkpoint trained on {scored!r} but for a {HELD_OUT[1:]} share ({trained}), and all of {scored!r} "
                       f"is scored, images it trained on: give train_split {scored} to score its held-out share")
    elif trained and scored in getattr(data, "datasets", {}) and is_complete(folder := Path(data.cache_dir) / trained) \
            and folder != data.folders.get(scored) and trainer.is_global_zero:  # its training split, preprocessed here
        try:
            images = load_table(folder / "images")
        except (OSError, ValueError):  # damaged, or removed meanwhile: nothing to say of it, and nothing of this run's
            return
        say_images_trained_on(data, scored, images, f"the training split {trained}", (
            "the scores measure pictures the checkpoint trained on. Score a split of other images, or train without them "
            "(Karpathy's test images are COCO 2014's, most of which COCO 2017's train2017 holds: configs/caption_karpathy.yaml "
            "trains on his train split)"))


def _stored(images) -> list[tuple[int, bytes]]:
    """Each stored image told apart cheaply whatever its name or path: its length and last 64 bytes (a JPEG's end is its
    coded picture; the same photo read from two places is stored as the same bytes)."""
    column = images.data.column("image") if "image" in images.column_names else None
    if column is None:
        return []
    return list(zip(pc.binary_length(column).to_pylist(), pc.binary_slice(column, -64).to_pylist()))


def shared_images(trained, scored) -> list[str]:
    """The file names of the images of ``scored`` (an images table) that ``trained`` holds too: the same stored bytes,
    those of the same length and end (:func:`_stored`) compared whole (uncompressed photos of one size, or JPEGs of a
    plain bottom edge, share their end)."""
    train_keys, scored_keys = _stored(trained), _stored(scored)
    if not (candidates := set(train_keys) & set(scored_keys)):
        return []
    def digest(column, index: int) -> bytes:
        return hashlib.blake2b(column[index].as_py(), digest_size=16).digest()
    train_column, scored_column = trained.data.column("image"), scored.data.column("image")
    held = {digest(train_column, i) for i, key in enumerate(train_keys) if key in candidates}
    names = scored.data.column("file_name").to_pylist()
    return [names[i] for i, key in enumerate(scored_keys) if key in candidates and digest(scored_column, i) in held]


def say_images_trained_on(data, split: str, trained, trained_name: str, advice: str = "", scored_name: str = "") -> None:
    """Warn when images of the split ``split`` scored (validation in fit; validate, test) are images trained on
    (``trained``: the training split's images table, this run's or the one a checkpoint records): the same photo under
    another name or path, a split file holding some of another's (a CSV's train.csv and test.csv), a caption stage of
    train2017 scored on Karpathy's test split (COCO 2014's val images, most of which train2017 holds) were said by no one."""
    scored = data.datasets[split].images
    if not (shared := shared_images(trained, scored)):
        return
    rank_zero_warn(f"{len(shared):,} of the {len(scored):,} images of {scored_name or 'split ' + split} "
                   f"({len(shared) / len(scored):.0%}) are in {trained_name} too (first: {shared[0]}): "
                   + (advice or "they measure pictures trained on, not how the model does on others"))


def say_shared_images(data, train_file: Path | None = None, val_file: Path | None = None) -> None:
    """In fit, warn when the split validated on holds images trained on (the same split named twice is said too), whose
    val/loss then picks the best checkpoint: an instruct stage's ``val_file`` (LLaVA-Instruct's ``detail_23k.json``,
    which ``llava_instruct_150k.json`` holds) or a caption set's."""
    if getattr(getattr(data, "trainer", None), "is_global_zero", True) is False:  # said by rank zero: read there alone
        return
    splits = data.stage_splits()
    train, val = splits.get("train"), splits.get("val")
    if train not in data.datasets or val not in data.datasets or val_file and Path(val_file).resolve() == Path(train_file).resolve():
        return  # (val_file train_file: said as it was given)
    advice = ("validation measures pictures trained on, and val/loss picks the best checkpoint by them. " + (
        "Give a val_file of other images, or val_file null to hold out val_fraction of train_file's images (a file that "
        "is a part of another, as LLaVA-Instruct's detail_23k.json is of llava_instruct_150k.json, is no validation of "
        "it)" + ("; val_file's image paths are read from image_root unless --data.init_args.val_image_root names the "
        "folder of its own photos" if getattr(data, "val_image_root", None) == getattr(data, "image_root", None) else "")
        if val_file else "The share held out is chosen by each image's path, and these photos are in train_file "
        "under other paths too (one photo in two folders, as LLaVA-1.5's mix has Visual Genome's under gqa/ and vg/): "
        "give a val_file of other images" if train_file else "Give val_split a split of other images"))
    if train == val:  # COCO's val_split train2017 (a hub dataset's says so itself: it holds out a share, or was asked)
        if getattr(data, "hub", None) is None and not isinstance(splits, EvaluationSplits):
            rank_zero_warn(f"the split validated on, {val}, is the training split: {advice}")
        return
    say_images_trained_on(data, val, data.datasets[train].images, f"train_file {train_file}" if train_file else
                          f"the training split {train}", advice, f"val_file {val_file}" if val_file else "")


def say_other_split_caches(folder: Path) -> None:
    """Say the other preprocessed folders of ``folder``'s split and source (COCO, LLaVA, a hub table) beside it, built
    from other inputs or settings: an edited annotation file left the old one (gigabytes of a large set's) unsaid."""
    def source(split_folder: Path) -> object:
        with suppress(OSError, ValueError, AttributeError):
            return json.loads((split_folder / "meta.json").read_text()).get("source")

    split, kind = folder.name.rsplit("-", 1)[0], source(folder)
    try:  # another run removing one meanwhile (as said) is no failure of this one
        others = sorted(p for p in folder.parent.iterdir() if p != folder and p.name.rsplit("-", 1)[0] == split
                        and SPLIT_FOLDER.fullmatch(p.name) and (p / "meta.json").is_file() and source(p) == kind)
        size = sum(map(folder_bytes, others))
    except OSError:
        return
    if others:
        names, them = ", ".join(p.name for p in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else ""), \
            "them" if len(others) > 1 else "it"
        print(f"note: {folder.parent} holds {len(others)} other preprocessed folder{'s' * (len(others) > 1)} of split {split}, "
              f"built from other inputs or settings ({names}; {size / 2**20:,.1f} MB): remove {them} unless a run of those "
              f"inputs and settings still reads {them}", file=sys.stderr, flush=True)
    # the features a damaged split's rebuild set aside, which it did not finish (a bad record refused), the settings
    for kept in sorted(folder.parent.glob(f".{glob.escape(split)}-*.features-kept")):  # changed since: gigabytes unsaid
        target = kept.name[1:-len(".features-kept")]  # (.<split>-<key>.features-kept)
        if target != folder.name and target.rsplit("-", 1)[0] == split and kept.is_dir():
            print(f"note: {kept} holds the vision features ({folder_bytes(kept) / 2**20:,.1f} MB) of split {split} as built "
                  f"from other inputs or settings ({target}), set aside by a rebuild of it that did not finish: they go back "
                  "if it is built again, else remove the folder", file=sys.stderr, flush=True)
    for kept in sorted(folder.parent.glob(f".{glob.escape(split)}.checked-images-*")):  # (this build's own chunks are
        if kept.is_dir():  # removed as it is published: another run's, or another image size's or release's, stopped)
            print(f"note: {kept} holds images of split {split} ({folder_bytes(kept) / 2**20:,.1f} MB) that a stopped build "
                  "read, checked and shrank (at another image size, by another release, or of other inputs or settings): "
                  "a build of those goes on from them, else remove the folder", file=sys.stderr, flush=True)


def remove_orphaned_builds(folder: Path) -> None:
    """Remove the unfinished builds of ``folder``'s split under other keys (other inputs or settings) that a killed
    process left, when no live build holds their lock: the out-of-memory killer ended a build, a run with a lower
    max_length built another key, and the hidden staging folder (gigabytes of a large set's images) stayed for good,
    unsaid (the next build of its own key removes it; no other did)."""
    try:
        import fcntl
    except ImportError:  # Windows: a live build's lock cannot be told from a leftover's
        return
    split = folder.name.rsplit("-", 1)[0]
    for leftover in sorted(folder.parent.glob(f".{glob.escape(split)}-*.partial")):
        target = leftover.name[1:-len(".partial")].rsplit(".", 1)[0]  # .<split>-<key>.<random>.partial
        if target == folder.name or not SPLIT_FOLDER.fullmatch(target) or target.rsplit("-", 1)[0] != split \
                or not leftover.is_dir():
            continue
        lock = folder.parent / f".{target}.lock"
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(descriptor).st_ino != os.stat(lock).st_ino:  # its holder removed it meanwhile: another's now
                raise BlockingIOError
        except OSError:  # a build of that key is running (or this disk has no working flock): left to it
            os.close(descriptor)
            continue
        try:
            size = folder_bytes(leftover)
            shutil.rmtree(leftover, ignore_errors=True)
            print(f"note: {'kept' if leftover.exists() else 'removed'} {leftover} ({size / 2**20:,.1f} MB), the unfinished "
                  f"build of {target} by a process that was killed" + (": this user cannot remove it (another's, in a "
                  "shared cache?)" if leftover.exists() else ""), file=sys.stderr, flush=True)
        finally:
            lock.unlink(missing_ok=True)
            os.close(descriptor)
