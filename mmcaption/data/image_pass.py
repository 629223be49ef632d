"""The image pass of preprocessing: every image read, decoded once to check it, and shrunk, by a pool of
threads (Pillow decodes, resizes and encodes without holding the GIL), in the readers' order.

At COCO's scale (118k photos) this pass is most of a first run: one core checked and shrank them in about
half an hour. Readers hand over each image unchecked (:class:`Unchecked`), with how to name its records if
it cannot be decoded, so that the check runs in the pool too, not in the reader's loop. What the pass has done is
kept as it goes (:class:`CheckedImages`): a run stopped half-way goes on from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL
import pyarrow as pa

from mmcaption import images, pixel_levels
from mmcaption.data.chunks import build_prefix, building_elsewhere
from mmcaption.data.records import BadRecords
from mmcaption.data.workers import usable_cores
from mmcaption.folders import umask
from mmcaption.images import DECODE_ERRORS, check_image, load_rgb, opened, shrink_image

UNREADABLE = "unreadable image"
TINY = 8  # pixels on the shorter side
TINY_NOTE = f"images smaller than {TINY} pixels on a side (a web page's tracking pixel or spacer?), trained on"
CHECKED_BYTES = 64 * 2**20  # the checked images held at a time before they are kept: a stopped run goes on after them
CHECKED_IMAGES = 4096  # (or this many: those stored as they are, read again from their files)
CHECKED = pa.schema([("source", pa.string()), ("image", pa.binary()), ("problem", pa.string())])


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


def _prepared(image: bytes | Unchecked, image_size: int | None) -> tuple[bytes, str | None, bool]:
    """The bytes to store, why they cannot be decoded (``None`` when they can), and whether they are the image's own
    (not shrunk)."""
    data = _read(image)
    stored, problem = _checked(image, data, image_size)
    return stored, problem, stored is data


def _read(image: bytes | Unchecked) -> bytes:
    source = image.source if isinstance(image, Unchecked) else image
    return source.read_bytes() if isinstance(source, Path) else source


def _checked(image: bytes | Unchecked, data: bytes, image_size: int | None) -> tuple[bytes, str | None]:
    """The bytes to store of ``data``, ``image``'s, and why they cannot be decoded (``None`` when they can). A photo
    that is shrunk is decoded whole to be: that is its check, not a second decode (the pass's main cost at COCO's scale)."""
    if not isinstance(image, Unchecked):
        return (data if image_size is None else shrink_image(data, image_size)), None
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


class CheckedImages:
    """The image pass's results (each image's bytes as stored and why it cannot be decoded, if it cannot) kept in
    ``folder`` beside the split's, in chunks of about :data:`CHECKED_BYTES`, while a split is built: a run stopped
    half-way (Ctrl-C, ``docker stop``, a kill, a bad record refused) started COCO's half hour of images over. Each result
    is found by its image's source (its file's path, size and times; a digest of the bytes a table holds), not by its
    place: the next build of the split reads again only the images not kept, of these inputs or of edited ones (the
    bad record mended). The chunks it read from or wrote are removed once the split is built (:meth:`remove`); another
    run's, building the split under other settings meanwhile, are left to it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.found, self.held, self.held_bytes, self.kept_now, self.said = folder, {}, [], 0, 0, False
        self.chunks: list[tuple[Path, pa.Table]] = []
        self.used: set[int] = set()  # the chunks read from, and written (by their place in ``chunks``)
        for chunk in sorted(folder.glob("chunk-*.arrow")) if folder.is_dir() else []:
            try:  # (Arrow's file format ends in a footer: one cut short by a power cut or a full disk does not open)
                table = pa.ipc.open_file(pa.memory_map(str(chunk))).read_all()
                if table.schema != CHECKED:
                    raise ValueError(f"another layout: {table.schema}")
            except (OSError, ValueError, pa.ArrowException):
                with contextlib.suppress(OSError):  # (another user's, in a shared cache: left)
                    chunk.unlink(missing_ok=True)
                continue
            self.found.update((source, (len(self.chunks), row)) for row, source in enumerate(table.column("source").to_pylist()))
            self.chunks.append((chunk, table))
        for leftover in folder.glob(".build-*") if folder.is_dir() else []:  # a chunk half-written by a kill
            if not building_elsewhere(leftover):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        self.kept_before = len(self.found)

    @staticmethod
    def source(image: bytes | Unchecked, image_size: int | None) -> str | None:
        """What identifies an image's result (``None``: one not worth keeping, bytes stored as they are)."""
        source = image.source if isinstance(image, Unchecked) else image
        if isinstance(source, Path):
            try:
                stat = source.stat()
            except OSError:
                return None
            return f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"  # (ctime: a rewrite that kept the time)
        if image_size is None and not isinstance(image, Unchecked):
            return None
        return f"blake2b:{hashlib.blake2b(source, digest_size=16).hexdigest()}|{len(source)}"

    def get(self, source: str | None, image: bytes | Unchecked) -> tuple[bytes, str | None, bool] | None:
        """``image``'s result as kept (its own bytes read again where they were stored as they are), or ``None``."""
        if source not in self.found:
            return None
        index, row = self.found[source]
        self.used.add(index)
        table = self.chunks[index][1]
        kept, problem = table.column("image")[row].as_py(), table.column("problem")[row].as_py()
        return (_read(image) if kept is None else kept), problem, kept is None

    def add(self, source: str, data: bytes, problem: str | None, own: bool) -> None:
        """Keep an image's result: its bytes as stored, unless they are its ``own`` (read again from it: a full-size
        COCO kept twice over while it is built, at ``resize_images: false``). One that cannot be written (a full disk,
        the folder removed by a run of other settings that finished) is not kept: the build goes on."""
        self.held.append({"source": source, "image": None if own else data, "problem": problem})
        self.held_bytes += 0 if own else len(data)
        if self.held_bytes >= CHECKED_BYTES or len(self.held) >= CHECKED_IMAGES:
            try:
                self.keep()
            except OSError as error:
                if not self.said:
                    print(f"note: the images checked so far are not kept in {self.folder} ({error}): a stopped build "
                          "reads them again", file=sys.stderr, flush=True)
                    self.said = True

    def keep(self) -> None:
        """Write the results held as a chunk (each process's and time's own name: runs of other inputs may share it),
        readable as the cache's other files are (a teammate's run goes on from it)."""
        if not self.held:
            return
        held, self.held, self.held_bytes = self.held, [], 0
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor, build = tempfile.mkstemp(prefix=build_prefix(), suffix=".arrow", dir=self.folder)
        try:
            with os.fdopen(descriptor, "wb") as file, pa.ipc.new_file(file, CHECKED) as writer:
                writer.write_table(pa.Table.from_pylist(held, schema=CHECKED))
            os.chmod(build, 0o666 & ~umask())  # (mkstemp's file is private)
            chunk = self.folder / f"chunk-{time.time_ns()}-{os.getpid()}.arrow"
            os.replace(build, chunk)  # whole, or not there
        finally:
            Path(build).unlink(missing_ok=True)
        self.used.add(len(self.chunks))
        self.chunks.append((chunk, None))
        self.kept_now += len(held)

    @property
    def kept(self) -> int:
        """The images whose results are kept, by earlier runs and this one."""
        return self.kept_before + self.kept_now

    def remove(self) -> None:
        """Remove the chunks this build read from or wrote, and the folder once empty."""
        paths = [self.chunks[index][0] for index in self.used]
        self.found.clear()
        self.chunks.clear()  # (the files they map let go of: Windows does not delete a mapped file)
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # (another run's chunks in it still: left to it)
            self.folder.rmdir()


CHECK_CODE = hashlib.blake2b(b"".join(Path(module.__file__).read_bytes() for module in (images, pixel_levels))
                             + Path(__file__).read_bytes() + PIL.__version__.encode(), digest_size=4).hexdigest()


def checked_images_folder(target: Path, image_size: int | None) -> Path:
    """Where the image pass of ``target`` (``<split>-<key>``) keeps its results: one folder for the split's builds
    of any key (edited inputs reuse them) at this ``image_size``, by this code (:data:`CHECK_CODE`: another release's
    checks and shrinking, or Pillow's decoding, made other results)."""
    return target.with_name(f".{target.name.rsplit('-', 1)[0]}.checked-images-{image_size or 'full'}-{CHECK_CODE}")


def checked_and_shrunk(
    entries: Iterator[tuple[dict | None, Any]], image_size: int | None, records: BadRecords,
    checked: CheckedImages | None = None,
) -> Iterator[tuple[dict | None, Any]]:
    """``entries`` in their order, each image row's image checked if it came :class:`Unchecked` and shrunk to
    ``image_size`` if given (:func:`shrink_image`). An image that cannot be decoded is left out, with its
    records named through ``records`` (:data:`UNREADABLE`, deferred). With ``checked``, an image found there is
    not read again, and the others' results are kept in it as they are done (all of them when the pass stops)."""
    threads = preprocessing_threads()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mmcaption-images")
    # a few images ahead, in order: each with its result (kept by an earlier run) or its future, and its source
    window: deque[tuple[dict | None, Any, Future | tuple | None, str | None]] = deque()

    def done(image_row: dict | None, items: Any, result: Future | tuple | None,
             source: str | None) -> Iterator[tuple[dict | None, Any]]:
        if image_row is None:
            yield None, items
            return
        data, problem, own = result if isinstance(result, tuple) else result.result()
        if checked is not None and source is not None and not isinstance(result, tuple):
            checked.add(source, data, problem, own)
        if problem in (None, TINY_NOTE):
            if problem:  # trained on, as the record gives it
                records.note(TINY_NOTE, example=str(image_row.get("file_name") or image_row.get("image_id") or ""))
            yield dict(image_row, image=data), items
            return
        for message in image_row["image"].blame(problem):
            records.defer(UNREADABLE, message)

    def started(image_row: dict | None) -> tuple[Future | tuple | None, str | None]:
        if image_row is None:
            return None, None
        source = None if checked is None else CheckedImages.source(image_row["image"], image_size)
        kept = None if checked is None else checked.get(source, image_row["image"])
        return kept or pool.submit(_prepared, image_row["image"], image_size), source

    try:
        for image_row, items in entries:
            window.append((image_row, items, *started(image_row)))
            if len(window) > 4 * threads:
                yield from done(*window.popleft())
        while window:
            yield from done(*window.popleft())
    finally:  # Ctrl-C, or a bad record refused: the images queued are dropped, not read first; those done are kept
        pool.shutdown(wait=True, cancel_futures=True)
        if checked is not None:
            with contextlib.suppress(Exception):  # (a full disk: the stop's own error is the one to see)
                for _, _, result, source in window:  # (read ahead of the stop)
                    if source is not None and isinstance(result, Future) and not result.cancelled() \
                            and result.exception() is None:
                        checked.add(source, *result.result())
                checked.keep()
