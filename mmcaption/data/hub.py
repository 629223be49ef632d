"""Captions from a Hugging Face ``datasets`` dataset: a hub id, a ``save_to_disk`` folder, or a local
folder of parquet files or webdataset tars (``datasets`` infers the splits from the file names).

Split names default to what the dataset has (``train``; ``validation``, ``val`` or ``test`` to
validate); a dataset with one split gets a stable held-out share for validation, with a note, never
the same rows for both. The image and caption columns are settings, so COCO (``jpg`` + ``txt``, as
``clip-benchmark/wds_mscoco_captions2017``), Flickr30k-style (``image`` + a list of captions) and
CC3M-style (one caption a row) datasets all read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data.records import BadRecords, DataError
from mmcaption.images import check_image

VAL_NAMES = ("validation", "val", "valid", "test")
REST, HELD_OUT = ".rest", ".heldout"  # the two sides of a single split


def held_out(key: str, fraction: float) -> bool:
    """Stable hash split: the same rows are held out on every run and every rank."""
    return zlib.crc32(key.encode()) % 10_000 < fraction * 10_000


@dataclass
class HubCaptions:
    """Where the captions come from and how its rows read.

    Args:
        dataset: hub id or local folder.
        image_column: the image (an ``Image`` feature, bytes, or a path).
        caption_column: the caption(s): a string (split at ``caption_separator``) or a list of strings.
        caption_separator: what separates several captions in one string.
        val_fraction: share held out for validation when the dataset has one split.
    """

    dataset: str
    image_column: str = "jpg"
    caption_column: str = "txt"
    caption_separator: str = "\n"
    val_fraction: float = 0.01

    def _saved(self) -> datasets.Dataset | datasets.DatasetDict | None:
        path = Path(self.dataset)
        if path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(path))
        return None

    def split_names(self) -> list[str]:
        saved = self._saved()
        if isinstance(saved, datasets.DatasetDict):
            return list(saved)
        if saved is not None:
            return ["train"]  # one Dataset saved alone
        try:
            return list(datasets.get_dataset_split_names(self.dataset))
        except Exception as error:  # noqa: BLE001 - datasets raises many kinds for a path or id it cannot read
            raise DataError(f"cannot read the dataset {self.dataset!r}: {type(error).__name__}: {error}") from None

    def stage_splits(self, train: str | None, val: str | None, test: str | None) -> dict[str, str]:
        """The split for each of train, val and test, from the configured names or the dataset's own."""
        names = self.split_names()
        for given in (train, val, test):
            if given is not None and given not in names:
                raise DataError(f"{self.dataset} has splits {names}, not {given!r} (set train_split / val_split, or null "
                                "for the dataset's own)")
        train = train or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if train is None:
            raise DataError(f"{self.dataset} has splits {names} and none is 'train': set train_split")
        val = val or next((name for name in VAL_NAMES if name in names and name != train), None)
        if val is None:
            rank_zero_info(f"{self.dataset} has one split ({train!r}): {self.val_fraction:.1%} of it is held out for "
                           "validation (val_fraction), by a stable hash of each row")
            return {"train": train + REST, "val": train + HELD_OUT, "test": test or train + HELD_OUT}
        return {"train": train, "val": val, "test": test or val}

    def load(self, split: str) -> datasets.Dataset:
        """A split as ``stage_splits`` names it (a held-out side selects its rows)."""
        side = next((suffix for suffix in (REST, HELD_OUT) if split.endswith(suffix)), None)
        base = split[: -len(side)] if side else split
        saved = self._saved()
        if isinstance(saved, datasets.DatasetDict):
            data = saved[base]
        elif saved is not None:
            data = saved
        else:
            data = datasets.load_dataset(self.dataset, split=base)
        if side is None:
            return data
        keys = data["__key__"] if "__key__" in data.column_names else [str(i) for i in range(len(data))]
        return data.select([i for i, key in enumerate(keys) if held_out(str(key), self.val_fraction) == (side == HELD_OUT)])

    def records(self, split: str, records: BadRecords) -> Iterator[tuple[int, str, bytes, list[tuple[int, str]]]]:
        """``(row, key, image bytes, captions)`` of each usable row; bad rows reported by name."""
        data = self.load(split)
        name = f"{self.dataset} [{split}]"
        missing = {self.image_column, self.caption_column} - set(data.column_names)
        if missing:
            raise DataError(f"{name} has no column(s) {sorted(missing)} (image_column, caption_column); its columns are "
                            f"{data.column_names}")
        if isinstance(data.features[self.image_column], datasets.Image):
            data = data.cast_column(self.image_column, datasets.Image(decode=False))
        for row_index, row in enumerate(data):
            key = str(row.get("__key__") or row_index)
            image = self._image_bytes(row[self.image_column])
            if image is None:
                records.bad("missing image", f"{name}: row {row_index} (key {key}) has no image")
                continue
            problem = check_image(image)
            if problem is not None:
                records.bad("unreadable image", f"{name}: row {row_index} (key {key}) has an image that cannot be decoded: {problem}")
                continue
            captions = self._captions(row[self.caption_column])
            if not captions:
                records.bad("empty caption", f"{name}: row {row_index} (key {key}) has no caption")
                continue
            yield row_index, key, image, [(row_index * 100 + i, c) for i, c in enumerate(captions)]

    @staticmethod
    def _image_bytes(value) -> bytes | None:
        if isinstance(value, dict):  # an Image feature, undecoded
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, bytes):
            return value
        if isinstance(value, str) and Path(value).is_file():
            return Path(value).read_bytes()
        return None

    def _captions(self, value) -> list[str]:
        texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        return [part.strip() for text in texts if isinstance(text, str) for part in text.split(self.caption_separator) if part.strip()]
