"""The image pass of preprocessing: every image read, decoded once to check it, and shrunk, by a pool of
threads (Pillow decodes, resizes and encodes without holding the GIL), in the readers' order.

At COCO's scale (118k photos) this pass is most of a first run: one core checked and shrank them in about
half an hour. Readers hand over each image unchecked (:class:`Unchecked`), with how to name its records if
it cannot be decoded, so that the check runs in the pool too, not in the reader's loop.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcaption.data.records import BadRecords
from mmcaption.data.workers import usable_cores
from mmcaption.images import DECODE_ERRORS, check_image, load_rgb, opened, shrink_image

UNREADABLE = "unreadable image"
TINY = 8  # pixels on the shorter side
TINY_NOTE = f"images smaller than {TINY} pixels on a side (a web page's tracking pixel or spacer?), trained on"


@dataclass(frozen=True)
class Unchecked:
    """An image as a reader found it: its bytes, or the file that holds them, not yet decoded; and what names
    the record(s) it belongs to when it cannot be (the problem -> one message per record, all deferred to the
    pass's end, see :meth:`BadRecords.defer`)."""

    source: bytes | Path
    blame: Callable[[str], list[str]]


def preprocessing_threads() -> int:
    """Threads of the image pass: the cores this process may use, up to 8."""
    return max(1, min(8, usable_cores()))


def _prepared(image: bytes | Unchecked, image_size: int | None) -> tuple[bytes, str | None]:
    """The bytes to store, and why they cannot be decoded (``None`` when they can). A photo that is shrunk is decoded
    whole to be: that is its check, not a second decode (the pass's main cost at COCO's scale)."""
    if not isinstance(image, Unchecked):
        return (image if image_size is None else shrink_image(image, image_size)), None
    data = image.source.read_bytes() if isinstance(image.source, Path) else image.source
    with contextlib.suppress(*DECODE_ERRORS), opened(data) as header:  # a web page's tracking pixel or spacer: said
        if min(header.size) < TINY:
            return data, check_image(data) or TINY_NOTE
    # read as training, predict and the features' pass read it (turned upright, converted): what fails there, any of
    # Pillow's errors (an EXIF it could not write back raised a TypeError), is this record's, named now, not hours into
    # training as a bare traceback
    try:
        if image_size is not None and (shrunk := shrink_image(data, image_size)) is not data:
            return shrunk, None
        load_rgb(data)  # stored as it is (small enough): decoded here, once
    except Exception as error:  # noqa: BLE001 - named as check_image names it
        return data, check_image(data) or f"{type(error).__name__}: {error}"
    return data, None


def checked_and_shrunk(
    entries: Iterator[tuple[dict | None, Any]], image_size: int | None, records: BadRecords
) -> Iterator[tuple[dict | None, Any]]:
    """``entries`` in their order, each image row's image checked if it came :class:`Unchecked` and shrunk to
    ``image_size`` if given (:func:`shrink_image`). An image that cannot be decoded is left out, with its
    records named through ``records`` (:data:`UNREADABLE`, deferred)."""
    threads = preprocessing_threads()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mmcaption-images")
    window: deque[tuple[dict | None, Any, Future | None]] = deque()  # a few images ahead, in order

    def done(image_row: dict | None, items: Any, future: Future | None) -> Iterator[tuple[dict | None, Any]]:
        if image_row is None:
            yield None, items
            return
        data, problem = future.result()
        if problem in (None, TINY_NOTE):
            if problem:  # trained on, as the record gives it
                records.note(TINY_NOTE, example=str(image_row.get("file_name") or image_row.get("image_id") or ""))
            yield dict(image_row, image=data), items
            return
        for message in image_row["image"].blame(problem):
            records.defer(UNREADABLE, message)

    try:
        for image_row, items in entries:
            window.append((image_row, items, None if image_row is None else pool.submit(_prepared, image_row["image"],
                                                                                         image_size)))
            if len(window) > 4 * threads:
                yield from done(*window.popleft())
        while window:
            yield from done(*window.popleft())
    finally:  # Ctrl-C, or a bad record refused: the images queued are dropped, not read first
        pool.shutdown(wait=True, cancel_futures=True)
