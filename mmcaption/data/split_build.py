"""One preprocessed split written: its images (each once, checked and shrunk by the image pass) and the text rows that
point at them, published atomically (:func:`~mmcaption.data.cache.publish_atomically`)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import datasets
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data.cache import folder_bytes, publish_atomically, released, save_table
from mmcaption.data.image_pass import CheckedImages, checked_and_shrunk, checked_images_folder
from mmcaption.data.progress import Progress
from mmcaption.data.records import BadRecords, DataError, NothingUsable

SPLIT_NEED = "a split takes up to three times its images' size while it is built (the image pass's work kept till then)"


def write_image_text_split(
    target: Path,
    entries: Iterator[tuple[dict, Any]],
    text_rows: Callable[[int, Any], Iterator[dict]],
    image_features: datasets.Features,
    text_table: str,
    text_features: datasets.Features,
    records: BadRecords,
    metadata: dict,
    image_size: int | None = None, image_total: int | None = None,
) -> Path:
    """Write one preprocessed split: ``target/images`` (each image once) and ``target/<text_table>`` (rows that point
    at their image by ``image_index``), plus ``meta.json``; ``image_total``: the images ``entries`` holds, for the
    progress a job's log hears (:class:`~mmcaption.data.progress.Progress`).

    With ``image_size``, images whose shorter side is larger are stored shrunk to it (``shrink_image``). An image row's
    image may come :class:`~mmcaption.data.image_pass.Unchecked`: it is then read and checked by the image pass's
    threads, and left out, its records named, if it cannot be decoded. ``entries`` yields ``(image row, items)``;
    ``text_rows(image_index, items)`` turns the items into text rows in a second pass, so only raw items, not
    tokenized rows, are held in memory. The folder appears complete or not at all; until it does, the image pass's work
    is kept (:class:`~mmcaption.data.image_pass.CheckedImages`) for the next build of the split to go on from."""
    checked = CheckedImages(checked_images_folder(target, image_size))
    if checked.kept:
        rank_zero_info(f"preprocessing {target.name}: {checked.kept:,} images a stopped run read, checked and shrank are "
                       f"kept in {checked.folder}; those unchanged since are not read again")
    items_by_image: list[Any] = []
    without_image: list[Any] = []  # items of text-only records (``entries`` yields them with ``None``)
    produced = {"images": 0, "rows": 0}

    def image_rows():
        progress = Progress(f"preprocessing {target.name}: images read and checked", image_total)
        for image_row, items in checked_and_shrunk(entries, image_size, records, checked):
            progress.at(produced["images"])
            if image_row is None:
                without_image.append(items)
                continue
            items_by_image.append(items)
            produced["images"] += 1
            yield image_row

    def all_text_rows():
        groups = [*enumerate(items_by_image), *((-1, items) for items in without_image)]  # -1: no image
        progress = Progress(f"preprocessing {target.name}: tokenizing the {text_table} of each image", len(groups))
        for done, (image_index, items) in enumerate(groups):
            progress.at(done)
            for row in text_rows(image_index, items):
                produced["rows"] += 1
                yield row

    def build(generator, features, name):
        # datasets' bar says "Generating <split> split": the split and the pass ("train2017.images"), not "train" for all
        shown = datasets.NamedSplit(re.sub(r"\W", "_", target.name.rsplit("-", 1)[0]) + "." + name)
        try:
            return datasets.Dataset.from_generator(generator, features=features, cache_dir=str(staging / "build"),
                                                   fingerprint=f"{target.name}-{name}", split=shown)
        except ValueError:
            records.raise_deferred()  # no image at all may be because none could be decoded: say which
            if name == "images" and not produced["images"] and without_image:  # every record is text-only
                return datasets.Dataset.from_dict({key: [] for key in features}, features=features)
            if produced["images"] and produced["rows"]:
                raise
            raise NothingUsable(f"{records.source}: nothing usable is left (bad records: {records.summary() or 'none'})") from None

    try:
        with publish_atomically(target, SPLIT_NEED) as staging, _unwrap_generation_errors():
            images = build(image_rows, image_features, "images")
            records.raise_deferred()  # every image that could not be decoded, at once
            texts = build(all_text_rows, text_features, text_table)
            save_table(images, staging / "images")
            save_table(texts, staging / text_table)
            metadata = dict(metadata, image_size=image_size, images=len(images), rows=len(texts),
                            skipped=records.summary(), skipped_examples=dict(records.examples), notes=dict(records.notes),
                            note_examples=dict(records.note_examples))
            (staging / "meta.json").write_text(json.dumps(metadata, indent=2, default=str))  # paths given as Path
            del images, texts
            released()
    except BaseException:  # Ctrl-C, docker stop, a bad record refused, a full disk: the images done are kept
        with suppress(Exception):  # (those the pass held, should datasets' writer have been stopped, not the pass)
            checked.keep()
        if checked.kept:
            size = folder_bytes(checked.folder) if checked.folder.is_dir() else 0
            print(f"note: {checked.kept:,} images of split {target.name.rsplit('-', 1)[0]} read, checked and shrunk are "
                  f"kept in {checked.folder} ({size / 2**20:,.1f} MB): the next run goes on from them", file=sys.stderr,
                  flush=True)
        raise
    checked.remove()
    records.warn_if_any()
    return target


@contextmanager
def _unwrap_generation_errors() -> Iterator[None]:
    """``datasets`` wraps errors raised by a generator; users should see the record-naming one."""
    try:
        yield
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise
