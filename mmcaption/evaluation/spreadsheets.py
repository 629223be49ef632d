"""A prediction CSV as spreadsheets read it: columns only later rows had, and the byte-order mark Excel needs."""

from __future__ import annotations

import codecs
import csv
import os
from pathlib import Path
from typing import Any

from mmcaption.evaluation.report import NAMES_AS_BYTES


def finish_csv(partial: Path, encoding: str, late_columns: dict[int, dict[str, Any]], result_columns: tuple[str, ...]) -> None:
    """The CSV ``partial`` as written, with the columns only later rows had (``late_columns``: row -> its values of them)
    added before the ``result_columns``, and UTF-8's byte-order mark where it was written with it (``encoding``: a
    spreadsheet's questions) or holds text that is not ASCII (a caption's "café", of photos named in ASCII, or rows a
    resumed run took over): Excel reads a CSV without the mark in the local code page ("cafÃ©")."""
    marked = encoding == "utf-8-sig" or not partial.read_bytes().removeprefix(codecs.BOM_UTF8).isascii()
    if late_columns:
        add_late_columns(partial, "utf-8-sig" if marked else "utf-8", late_columns, result_columns)
    elif marked:
        mark_as_utf8(partial)


def add_late_columns(partial: Path, encoding: str, late_columns: dict[int, dict[str, Any]], result_columns: tuple[str, ...]) -> None:
    """Rewrite the CSV ``partial`` with the columns that only later rows had (``late_columns``: row -> its values of
    them), before the ``result_columns``."""
    with partial.open(newline="", encoding="utf-8-sig", errors=NAMES_AS_BYTES) as handle:
        reader = csv.DictReader(handle)
        header, rows = list(reader.fieldnames or []), list(reader)
    added = list(dict.fromkeys(k for late in late_columns.values() for k in late))
    results = [c for c in result_columns if c in header or c in added]  # last, in their usual order
    columns = [c for c in header if c not in result_columns] + [c for c in added if c not in result_columns] + results
    rewritten = partial.with_name(partial.name + ".columns")
    with rewritten.open("w", newline="", encoding=encoding, errors=NAMES_AS_BYTES) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**row, **late_columns.get(i, {})} for i, row in enumerate(rows))
    os.replace(rewritten, partial)


def mark_as_utf8(path: Path) -> None:
    """Put UTF-8's byte-order mark at the start of the CSV ``path`` (unless there), through a copy that replaces it: a
    full disk leaves the file as it was, not cut."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        return
    marked = path.with_name(path.name + ".marked")
    try:
        marked.write_bytes(codecs.BOM_UTF8 + data)
        os.replace(marked, path)
    finally:
        marked.unlink(missing_ok=True)
