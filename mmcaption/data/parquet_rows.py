"""Parquet files of multiple-choice questions: MMBench's and ScienceQA's Hugging Face copies, or a user's own
``Dataset.to_parquet``. An image column is a ``{"bytes", "path"}`` struct, as ``datasets`` stores an image. The
Hugging Face copies carry each image's bytes. ``to_parquet`` of a dataset whose images were loaded from files (an
image folder, or ``cast_column("image", Image())`` over paths) writes the path alone, and such an image is read from
that file, as a CSV's ``img_path`` is: an absolute path as it is, a relative one from ``--data.image_root`` (else the
parquet file's folder)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmcaption.data.records import DataError


class ImageFile(str):
    """A parquet image that is a file's path and no bytes: read from that file."""


def image_cell(value: Any) -> Any:
    """An image struct's bytes, else the file it names (:class:`ImageFile`), else None (a struct of nulls); any other
    value as it is."""
    if not isinstance(value, dict):
        return value
    if value.get("bytes"):
        return value["bytes"]
    return ImageFile(value["path"]) if value.get("path") else None


def parquet_columns(path: Path) -> list[str]:
    """The column names of a parquet file; none for a file that is not one."""
    try:
        return list(pq.read_schema(path).names)
    except Exception:  # pyarrow's errors for a file that is not parquet have no common base
        return []


def read_parquet(path: Path, **options: Any) -> Any:
    """A parquet file's table (``options``: ``pq.read_table``'s, such as ``columns`` and ``filters``); refused, naming the
    file, when it is not one."""
    try:
        return pq.read_table(path, **options)
    except Exception as error:  # pyarrow's errors for a file that is not parquet have no common base
        raise DataError(f"{path}: not a parquet file: {error}") from error


def parquet_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A parquet file's columns and rows (numbered from 1), each cell as text as a TSV would hold it: an image's
    bytes as base64, an image that is a file's path as that path (an :class:`ImageFile`), a null as an empty cell."""
    table = read_parquet(path)

    def text(value: Any) -> str:
        value = image_cell(value)
        if isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        return "" if value is None else value if isinstance(value, ImageFile) else str(value)

    return table.column_names, [(number, [text(v) for v in row.values()]) for number, row in enumerate(table.to_pylist(), 1)]
