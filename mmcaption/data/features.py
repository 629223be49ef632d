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
    is_complete,
    load_table,
    publish_atomically,
    released,
    save_table,
)
from mmcaption.data.progress import Progress
from mmcaption.errors import ConfigError
from mmcaption.images import load_rgb


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
    if is_complete(target):
        problem = damage(target, {"data": "images"})
        if problem is None:
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
    size, free = len(images) * tokens * width * 2, shutil.disk_usage(split_folder).free  # (float16: 2 bytes a value)
    if 2 * size > free:  # found after hours of computing them (real CLIP on a CPU) as "no space left"
        raise ConfigError(f"the vision tower's features of the {len(images):,} images of {split_folder.name} take "
                          f"{_size(size)} ({tokens} x {width} float16 values an image), up to {_size(2 * size)} while they "
                          f"are built, and {_size(free)} is free on the disk of {split_folder}: free some "
                          "space, point data.init_args.cache_dir at a larger disk, or set data.init_args.cache_image_features "
                          "false (the tower then runs at every step)")
    rank_zero_info(f"caching the vision tower's features of the {len(images)} images of {split_folder.name} on {device} "
                   "(once; later runs reuse them) ...")
    start = time.perf_counter()
    progress = Progress(f"caching the vision tower's features of {split_folder.name}", len(images))  # hours on a CPU

    def rows():
        for first in range(0, len(images), batch_size):
            progress.at(first)
            pictures = [load_rgb(row) for row in images[first:first + batch_size]["image"]]
            pixels = processor(images=pictures, return_tensors="pt")["pixel_values"].to(device, tower.dtype)
            with torch.no_grad():
                hidden = select_features(tower(pixel_values=pixels, output_hidden_states=True).hidden_states, feature_layer)
            for array in hidden.to(torch.float16).cpu().numpy():
                yield {"features": array}

    with publish_atomically(target) as staging:
        if len(images):
            table = datasets.Dataset.from_generator(rows, features=schema, cache_dir=str(staging / "build"),
                                                    fingerprint=f"{target.name}-features")
        else:  # every record of the split is text-only
            table = datasets.Dataset.from_dict({"features": []}, features=schema)
        save_table(table, staging / "data")
        (staging / "meta.json").write_text(json.dumps(
            {"vision_model": vision_model, "feature_layer": feature_layer, "dtype": "float16",
             "shape": [tokens, width], "images": len(table)}, indent=2, default=str))
        del table
        released()
    rank_zero_info(f"caching the vision tower's features of {split_folder.name}: done in {time.perf_counter() - start:.0f} s")
    return target


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
