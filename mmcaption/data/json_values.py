"""JSON Lines' records with their lines, and JSON values one after another, as ``jq`` writes them without ``-c``
(pretty-printed records, each over several lines); COCO's ids as files write them."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path, PurePath
from typing import Any

from mmcaption.images import IMAGE_SUFFIXES

_BLANK = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


class JsonLines(list):
    """The records of a JSON Lines file, with the line each stands on (``lines``), for messages to name."""

    lines: list[int]

    def place(self, index: int) -> str:
        return f"line {self.lines[index]}"


def json_values(text: str, **options: Any) -> tuple[list, list[int]] | None:
    """The JSON values ``text`` holds one after another (blanks between them) and the line each starts on; None when
    it is not that (a value that is not JSON, or a single one)."""
    decoder, values, lines = json.JSONDecoder(**options), [], []
    index, line = 0, 1
    while True:
        start = _BLANK.match(text, index).end()
        line += text.count("\n", index, start)
        if start == len(text):
            return (values, lines) if len(values) > 1 else None
        try:
            value, index = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            return None
        values.append(value)
        lines.append(line)
        line += text.count("\n", start, index)


def pandas_records(data: object) -> list | None:
    """The records of a table pandas' ``to_json`` wrote in another layout than records: its default, a column each
    (``{"image": {"0": ..., "1": ...}, ...}``), ``orient="split"`` (``columns``, ``data``) or ``"table"`` (``schema``,
    ``data``); None for anything else (``orient="index"``, a row each under its number, is GQA's questions file's
    layout too, keyed by question ids)."""
    if not isinstance(data, dict) or not data:
        return None
    if {"columns", "data"} <= set(data) <= {"columns", "index", "data"} and isinstance(data["data"], list):
        return [dict(zip(data["columns"], row)) for row in data["data"]]
    if set(data) == {"schema", "data"} and isinstance(data["data"], list):
        return [{k: v for k, v in row.items() if k != "index"} if isinstance(row, dict) else row for row in data["data"]]
    columns = list(data.values())
    if all(isinstance(c, dict) and c and c.keys() == columns[0].keys() for c in columns) and all(
            str(key).isdigit() for key in columns[0]) and not all(str(name).isdigit() for name in data):
        return [{name: column[key] for name, column in data.items()} for key in columns[0]]
    return None


def caption_map_records(data: object) -> list[dict[str, Any]] | None:
    """The rows of a JSON object that maps each image's file name to its caption, its captions (a list) or a record of
    it (``{"photo1.jpg": "a dog on grass", ...}``, as captioning scripts save their output): an ``image`` and a
    ``caption`` column, or a record's own keys beside ``image``. None for any other object (a record about something,
    a table's columns)."""
    if not isinstance(data, dict) or not data or not all(isinstance(key, str) and PurePath(key).suffix.lower() in IMAGE_SUFFIXES
                                                         for key in data):
        return None
    values = list(data.values())
    if all(isinstance(value, dict) for value in values):  # every record with every key: a table's columns are the first
        keys = list(dict.fromkeys(key for value in values for key in value))  # row's, and a later row's caption was lost
        return [{**{key: value.get(key) for key in keys}, "image": name} for name, value in data.items()]
    if not all(isinstance(value, str) or isinstance(value, list) and all(isinstance(text, str) for text in value)
               for value in values):
        return None
    listed = any(isinstance(value, list) for value in values)  # one type a column: a caption alone as a list of one
    return [{"image": name, "caption": [value] if listed and isinstance(value, str) else value} for name, value in data.items()]


def data_list_records(data: object) -> list[dict[str, Any]] | None:
    """The rows of TextCaps' (and TextVQA's) files: a JSON object naming the dataset (``dataset_name``, ``dataset_type``:
    the split) with its rows in a ``data`` list, a caption each (``image_path``, ``caption_str``); None for any other."""
    if not isinstance(data, dict) or not {"dataset_name", "dataset_type"} & set(data) or not isinstance(data.get("data"), list):
        return None
    return data["data"] if all(isinstance(row, dict) for row in data["data"]) else None


def json_layout(path: Path) -> str | None:
    """``"map"`` for a map of each image's captions (:func:`caption_map_records`), ``"data"`` for TextCaps' layout
    (:func:`data_list_records`), else None; TextCaps' known from its first lines (its train file is 168 MB: parsed, it
    took 8 s and 3 GB), another parsed once as the file is (asked of each table of a folder, and again as the dataset is
    set up)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    stamp = path.stat()
    return _json_layout(str(path), stamp.st_size, stamp.st_mtime_ns)


# TextCaps' and TextVQA's files begin {"dataset_type": "train", "dataset_name": "textcaps", ..., "data": [
_DATA_LIST_HEAD = re.compile(rb'\s*\{\s*(?:"dataset_\w+"\s*:\s*(?:"[^"]*"|[\d.]+|null)\s*,\s*)+"data"\s*:\s*\[')


def data_list_name(path: Path) -> str | None:
    """The ``dataset_name`` at the head of a file in TextCaps' layout (``"textcaps"``, TextVQA's ``"textvqa"``; ``""``
    unnamed), read from its first lines; None for any other file."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(b"\xef\xbb\xbf")
    if (found := _DATA_LIST_HEAD.match(head)) is None:
        return None
    name = re.search(rb'"dataset_name"\s*:\s*"([^"]*)"', found.group(0))
    return name.group(1).decode("utf-8", "replace").lower() if name else ""


@functools.lru_cache(maxsize=64)
def _json_layout(name: str, *stamp: int) -> str | None:
    path = Path(name)
    if data_list_name(path) is not None:
        return "data"
    with path.open("rb") as handle:
        if handle.read(4096).lstrip()[:1] != b"{":
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError):  # said when it is read
        return None
    return "data" if data_list_records(data) is not None else "map" if caption_map_records(data) is not None else None


def coco_id(value: object, records: Any, where: str) -> int | None:
    """A COCO id: an integer, or the text of one ("000000397133", as a converter that took ids from file names writes
    them: refused as malformed, every record of such a file), read as the integer it spells, said once in a note
    (``records``: the file's :class:`~mmcaption.data.records.BadRecords`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        records.note("ids written as text, read as the integers they spell", example=f"{where}: {value!r}")
        return int(value)
    return None


def text_id_said(entry: object, key: str) -> str:
    """Why a text id is refused: it spells no integer, and COCO's ids are integers (its evaluation matches them as such)."""
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, str):
        return ""
    return (f" ({key} {value!r} is text that spells no integer: COCO's ids are integers; number the images and give each "
            "annotation its image's number)")
