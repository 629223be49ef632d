"""Frozen vision-tower outputs, computed once per image at preprocessing and stored in float16.

The CLIP tower is frozen, so its output for an image never changes: with ``cache_image_features``
the data modules run it once over each preprocessed split (on a GPU when there is one) and training
reads ``(image_tokens, vision_width)`` float16 arrays instead of decoding, resizing and encoding
images every step. The cache sits inside the split's folder, named by the vision model's files and
the feature layer, and is published atomically like the split itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import suppress
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data.cache import (
    damage,
    discard,
    file_signature,
    fingerprint,
    folder_bytes,
    is_complete,
    load_table,
    publish_atomically,
    released,
    save_table,
)
from mmcaption.data.chunks import building_elsewhere, chunk_damage, write_chunk
from mmcaption.data.progress import Progress
from mmcaption.errors import ConfigError
from mmcaption.images import load_rgb
from mmcaption.resources import disk_full_named

CHUNK_BYTES = 512 * 2**20  # the features kept at a time while they are computed: a stopped run goes on after them


def model_signature(name_or_path: str) -> dict:
    """What identifies a vision model's weights: the content of its folder's config and weight files (not the folder's
    path: a moved project kept its features, and recomputed them all). Their times are not it either: a copy staged to a
    node's scratch disk at each job's start (new times) computed every feature again, and other weights of the same size
    with the time set back (a retrained tower) were read as the old. A Hub id is signed by its name: its files are
    fetched between the looks of a first run (keyed by them, a first fit computed the features, then did not find them)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return {"name": name_or_path}
    return {"content": {p.name: file_signature(p)["sha256"] for p in _tower_files(path)}}


def _tower_files(folder: Path) -> list[Path]:
    """A vision model folder's config and weight files, which identify its features."""
    return sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin"} and p.is_file())


def features_folder(split_folder: Path, vision_model: str, feature_layer: int | list[int]) -> Path:
    key = fingerprint(vision=model_signature(vision_model), layer=feature_layer, dtype="float16")
    return split_folder / f"features-{key}"


def _earlier_features_folder(split_folder: Path, vision_model: str, feature_layer: int | list[int]) -> Path | None:
    """Where an earlier release kept the features of this tower folder (keyed by its files' names, sizes and times)."""
    path = Path(vision_model)
    if not path.is_dir():
        return None
    signature = {"files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in _tower_files(path)}}
    return split_folder / f"features-{fingerprint(vision=signature, layer=feature_layer, dtype='float16')}"


def write_image_features(
    split_folder: Path, vision_model: str, feature_layer: int | list[int], batch_size: int = 64, device: str | None = None
) -> Path:
    """Compute the features of every image of a preprocessed split (if not cached yet); returns their folder."""
    from mmcaption.model.backbones import load_image_processor, load_vision_model
    from mmcaption.model.multimodal import feature_layers, select_features

    target = features_folder(split_folder, vision_model, feature_layer)
    for other in sorted(set(split_folder.glob(".features-*.chunks")) - {_chunks_folder(target)}):  # another tower's or
        # layer's, stopped: said at each use
        print(f"note: {other} holds features ({_size(folder_bytes(other))}) a stopped run computed with another vision tower or feature "
              "layer, for it to go on from: delete it if it will not", file=sys.stderr, flush=True)
    if is_complete(target):
        problem = damage(target, {"data": "images"})
        if problem is None:
            shutil.rmtree(_chunks_folder(target), ignore_errors=True)  # (a kill as its chunks were removed left them)
            return target
        rank_zero_info(f"the feature cache {target} is damaged ({problem}); computing it again")
        discard(target)
    earlier = _earlier_features_folder(split_folder, vision_model, feature_layer)  # the tower's files unchanged since
    if earlier is not None and is_complete(earlier) and damage(earlier, {"data": "images"}) is None:
        with suppress(OSError):  # an upgrade computed every feature again (GPU hours at COCO scale), the old ones left
            os.rename(earlier, target)
            rank_zero_info(f"the feature cache {earlier.name} of an earlier release is {target.name} now (the same tower)")
            return target
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    images = load_table(split_folder / "images")
    processor = load_image_processor(vision_model)
    tower = load_vision_model(vision_model, device=device)
    if device != "cpu":
        tower = tower.half()
    config = tower.config
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    width = config.hidden_size * len(feature_layers(feature_layer))
    schema = datasets.Features({"features": datasets.Array2D((tokens, width), "float16")})
    chunk = max(1, CHUNK_BYTES // (tokens * width * 2))  # images a chunk (float16: 2 bytes a value)
    chunks = _chunks_folder(target)
    meta = {"images": len(images), "shape": [tokens, width], "dtype": "float16", "chunk": chunk}
    kept = _kept_chunks(chunks, meta)
    done = min(kept * chunk, len(images))  # (the features of an earlier run, stopped while it computed them)
    size, free = len(images) * tokens * width * 2, shutil.disk_usage(split_folder).free
    if 2 * size - done * tokens * width * 2 > free:  # found after hours of computing them (real CLIP on a CPU) as "no space left"
        raise ConfigError(f"the vision tower's features of the {len(images):,} images of {split_folder.name} take "
                          f"{_size(size)} ({tokens} x {width} float16 values an image), up to {_size(2 * size)} while they "
                          f"are built, and {_size(free)} is free on the disk of {split_folder}: free some "
                          "space, point data.init_args.cache_dir at a larger disk, or set data.init_args.cache_image_features "
                          "false (the tower then runs at every step)")
    _start_chunks(chunks, meta)
    rank_zero_info(f"caching the vision tower's features of the {len(images)} images of {split_folder.name} on {device} "
                   + ("(once; later runs reuse them) ..." if not done else f"from image {done + 1:,}: those before it were "
                      "cached by a run stopped while it cached them ..." if done < len(images) else "from what a run stopped "
                      "while it put them together computed ..."))
    start = time.perf_counter()
    progress = Progress(f"caching the vision tower's features of {split_folder.name}", len(images), already=done)

    def rows(first_row: int, end: int):
        for first in range(first_row, end, batch_size):
            progress.at(first)
            pictures = [load_rgb(row) for row in images[first:min(first + batch_size, end)]["image"]]
            pixels = processor(images=pictures, return_tensors="pt")["pixel_values"].to(device, tower.dtype)
            with torch.no_grad():
                hidden = select_features(tower(pixel_values=pixels, output_hidden_states=True).hidden_states, feature_layer)
            for array in hidden.to(torch.float16).cpu().numpy():
                yield {"features": array}

    count = -(-len(images) // chunk)
    try:
        with disk_full_named(target, "the features take up to twice their size while they are built"):
            for index in range(kept, count):  # each chunk kept once done: Ctrl-C, docker stop or a kill loses one at most
                first = index * chunk
                end = min(first + chunk, len(images))
                write_chunk(chunks, f"{index:05d}", lambda first=first, end=end: rows(first, end), end - first, schema)
    except BaseException:
        if (now := min(len(_chunk_folders(chunks)) * chunk, len(images))) > done:
            print(f"note: the vision tower's features of {now:,} of the {len(images):,} images of {split_folder.name} are "
                  "kept: the next run caches the others", file=sys.stderr, flush=True)
        raise
    with publish_atomically(target) as staging:
        if len(images):
            table = datasets.concatenate_datasets([load_table(folder) for folder in _chunk_folders(chunks)])
        else:  # every record of the split is text-only
            table = datasets.Dataset.from_dict({"features": []}, features=schema)
        save_table(table, staging / "data")
        (staging / "meta.json").write_text(json.dumps(
            {"vision_model": vision_model, "feature_layer": feature_layer, "dtype": "float16",
             "shape": [tokens, width], "images": len(table)}, indent=2, default=str))
        del table
        released()
    shutil.rmtree(chunks, ignore_errors=True)
    rank_zero_info(f"caching the vision tower's features of {split_folder.name}: done in {time.perf_counter() - start:.0f} s")
    return target


def _chunks_folder(target: Path) -> Path:
    """Where the chunks of ``target``'s features wait while they are computed (hidden, beside it): a run stopped (Ctrl-C,
    SIGTERM, SIGHUP) or killed half-way through COCO's images (an hour of a GPU, days of a CPU) leaves them for the next."""
    return target.with_name(f".{target.name}.chunks")


def _chunk_folders(chunks: Path) -> list[Path]:
    """The chunks done, in order: ``00000``, ``00001``, ..., each renamed into place once whole."""
    return sorted(p for p in chunks.glob("[0-9]" * 5) if p.is_dir()) if chunks.is_dir() else []


def _kept_chunks(chunks: Path, meta: dict) -> int:
    """How many chunks of an earlier run can be gone on from: those of the same shape and size, in order from the first,
    each whole; the rest (and a folder of other features: another chunk size) removed."""
    try:
        same = json.loads((chunks / "meta.json").read_text()) == meta
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(chunks, ignore_errors=True)
        return 0
    kept = 0
    for index, folder in enumerate(_chunk_folders(chunks)):
        rows = min(meta["chunk"], meta["images"] - index * meta["chunk"])
        if folder.name != f"{index:05d}" or chunk_damage(folder, rows) is not None:
            break
        kept += 1
    for leftover in chunks.iterdir():  # a chunk half-written by a kill, those after a damaged one
        if leftover.name != "meta.json" and not (leftover.name.isdigit() and int(leftover.name) < kept) \
                and not building_elsewhere(leftover):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return kept


def _start_chunks(chunks: Path, meta: dict) -> None:
    if not (chunks / "meta.json").is_file():
        chunks.mkdir(parents=True, exist_ok=True)
        (chunks / "meta.json").write_text(json.dumps(meta))


def _size(count: int) -> str:
    return next(f"{count / 2**power:.1f} {unit}" for power, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "bytes"))
                if count >= 2**power or not power)


def load_image_features(folder: Path) -> datasets.Dataset:
    """The cached features, read as float16 tensors (``datasets`` would upcast them to float32 unasked)."""
    return load_table(folder / "data").with_format("torch", dtype=torch.float16)


def gather_features(features: datasets.Dataset, indices: list[int]) -> torch.Tensor:
    """Rows ``indices`` of the cached features as one ``(rows, image_tokens, width)`` float16 tensor:
    one Arrow ``take`` and one conversion (``datasets``' formatting converts row by row, 2.7x slower
    on a batch of 32: 9.7 vs 3.6 ms with the demo's features)."""
    if features._indices is not None:  # a selected or shuffled view: datasets maps its rows
        return torch.stack(list(features[indices]["features"]))
    column = features.data.column("features").take(pa.array(indices, type=pa.int64()))
    arrays = [chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return torch.from_numpy(np.concatenate(arrays)).to(torch.float16)


def set_features_aside(split_folder: Path) -> Path:
    """Before a damaged split is rebuilt (a table of it deleted to make room, cut short by a full disk): its feature
    caches and stopped builds, which it does not make again, go aside (a hidden folder beside it) for
    :func:`put_features_back`. Discarded with it, every tower's and layer's features were computed again (GPU hours at
    COCO's size), those of another layer lost without a word. Returns ``split_folder``."""
    kept = [*split_folder.glob("features-*"), *split_folder.glob(".features-*.chunks")]
    aside = split_folder.with_name(f".{split_folder.name}.features-kept")
    for path in kept:
        aside.mkdir(exist_ok=True)
        if not (aside / path.name).exists():  # (one set aside by a rebuild that failed is the same)
            os.replace(path, aside / path.name)
    return split_folder


def put_features_back(split_folder: Path) -> Path:
    """The feature caches :func:`set_features_aside` kept, in the rebuilt split: the same inputs and settings (its
    folder's name says so) give the same images in the same order; any of another number of images is removed, said.
    Returns ``split_folder``."""
    aside = split_folder.with_name(f".{split_folder.name}.features-kept")
    if not aside.is_dir():
        return split_folder
    images = json.loads((split_folder / "meta.json").read_text()).get("images")
    for path in sorted(aside.iterdir()):
        try:
            held = json.loads((path / "meta.json").read_text()).get("images")
        except (OSError, ValueError):
            held = None
        if held == images and not (split_folder / path.name).exists():
            os.replace(path, split_folder / path.name)
        else:
            print(f"note: removed {path.name} of {split_folder.name}: its features are of {held} images, the rebuilt split "
                  f"holds {images}", file=sys.stderr, flush=True)
            shutil.rmtree(path, ignore_errors=True)
    kept = sorted(p.name for p in split_folder.glob("features-*"))
    if kept:
        rank_zero_info(f"the rebuilt split {split_folder.name} keeps its cached features ({', '.join(kept)})")
    shutil.rmtree(aside, ignore_errors=True)
    return split_folder
