"""CSV and TSV tables as spreadsheets write them: a byte-order mark (Excel's "CSV UTF-8"), Windows-1252 (its plain "CSV"),
cells that look like numbers, a separator other than the comma; what cannot be read right is refused with the file and
the line."""

from __future__ import annotations

import ast
import csv
import functools
import json
import math
import os
import re
from contextlib import suppress
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.data.encodings import one_encoding, table_encoding
from mmcaption.data.json_values import caption_map_records, json_layout, pandas_records
from mmcaption.data.records import DataError, not_utf8, packed_file

# pandas' options for a caption table: an empty cell, or one reading "NA" or "null", is that text (an empty caption is
# reported as one), and a blank line is a row (its line number is the file's)
CSV_OPTIONS = {"keep_default_na": False, "skip_blank_lines": False}
SEPARATOR_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "vertical bars"}
SEPARATOR_MARKS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
SEVERAL_CAPTIONS = "; several captions of a photo go one row each, or in one cell, one line each (hub_caption_separator)"


def separator_in(header: list[str]) -> str:
    """The separator of a CSV whose header, read at commas, is ``header``: the comma, or the semicolon (Excel's "CSV"
    where the comma is the decimal mark: most of Europe), the tab (a ``.tsv``, a tab-separated save) or the vertical bar
    (Kaggle's Flickr30k ``results.csv``: ``image_name| comment_number| comment``) when that header is one cell of them;
    no table of one column holds any of them in its name."""
    counts = {mark: header[0].count(mark) for mark in (";", "\t", "|")} if len(header) == 1 else {}
    mark = max(counts, key=counts.get, default=",")
    return mark if counts.get(mark) else ","


def separator_of(path: Path) -> str:
    """A CSV file's separator (:func:`separator_in`)."""
    return separator_in(header_of(path, ","))


# the names tables give their image and caption columns (a CMS's export, a spreadsheet's, datasets' imagefolder)
IMAGE_COLUMNS = ("image", "images", "img", "img_path", "image_path", "file_name", "filename", "file", "path", "photo", "jpg",
                 "png", "image_url", "url")
CAPTION_COLUMNS = ("caption", "captions", "text", "txt", "description", "alt", "alt_text", "sentence", "sentences",
                   "conversations", "annotations_captions")  # LLaVA-Pretrain's (a request, the caption); nocaps' copies


def columns_hint(missing: set[str], columns: list[str], image_column: str) -> str:
    """``"; give ... --data.init_args.hub_image_column image ..."`` for the missing columns that a column of the
    table's, by its name, likely is (case and spaces aside), else ``""``."""
    by_name = {column.strip().lower(): column for column in columns}
    if {"images", "annotations"} <= set(by_name):  # nocaps' nocaps_val_4500_captions.json, a labelling tool's export
        return ("; it is a COCO captions file: source coco reads it where it is, its images in a folder beside it or in "
                "data_dir, as a split given by its path (--data.init_args.source coco --data.init_args.test_split <file>; "
                "val_split and train_split alike)")
    if {"data", "annotations"} <= set(by_name):  # its tasks nest the image and the texts: no column holds either
        return ("; it is a Label Studio export (tasks with 'data' and 'annotations'): export the project as CSV or JSON-MIN "
                "instead (a row per image, its path and caption in columns)")
    settings = []
    for missing_column in sorted(missing):
        names = IMAGE_COLUMNS if missing_column == image_column else CAPTION_COLUMNS
        found = next((by_name[name] for name in names if name in by_name), None)
        numbered = [column for column in columns if _NUMBERED_CAPTION.fullmatch(column.strip())]
        if found is None and names is CAPTION_COLUMNS and len(numbered) > 1:  # caption_1 ... caption_5: a photo's several
            found = f"'[{', '.join(numbered)}]'"  # captions, a column each (a spreadsheet's, Flickr8k's copies)
        if found is not None:
            settings.append(f"--data.init_args.{'hub_image_column' if names is IMAGE_COLUMNS else 'hub_caption_column'} {found}")
    return f"; its columns by their names: {' '.join(settings)}" if settings else ""


_NUMBERED_CAPTION = re.compile(rf"(?:{'|'.join(CAPTION_COLUMNS)})[ _-]?\d+", re.IGNORECASE)  # caption_1, Caption 2, text3


def read_table_rows(path: Path, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (names stripped) and the rows, each with its first physical line, of a CSV or TSV as spreadsheets
    write it (UTF-8, a byte-order mark accepted, or Windows-1252: :func:`~mmcaption.data.encodings.table_encoding`;
    separated by commas, or by semicolons or tabs as :func:`separator_of` finds, unless ``delimiter`` says); undecodable
    text or broken quoting is refused with the file and the line."""
    delimiter = delimiter or separator_of(path)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        with path.open(newline="", encoding=table_encoding(path)) as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            rows, start = [], reader.line_num + 1
            for fields in reader:
                rows.append((start, fields))
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not valid {kind}: {error}") from error
    return header, rows


def short_rows(path: Path) -> frozenset[int]:
    """The rows (from 0, as pandas reads them) of a CSV that have fewer fields than its header: pandas reads the
    missing ones as empty cells, so Kaggle's Flickr30k row ``2199200615.jpg| 4 A dog runs ...`` was a caption-less row."""
    stamp = path.stat()
    return _short_rows(str(path), stamp.st_size, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _short_rows(path: str, *stamp: int) -> frozenset[int]:
    header, rows = read_table_rows(Path(path))
    return frozenset(index for index, (_, fields) in enumerate(rows) if fields and len(fields) < len(header))


def unnamed_kept(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> set[int]:
    """The columns without a name that a predict's output keeps: the first, when it holds values (pandas' ``to_csv``
    writes its index there, the key a user joins the output back on; it was left out without a word). Columns
    without a name further on (a spreadsheet's trailing cells) are left out, and said when they hold anything."""
    filled = [i for i, name in enumerate(header) if not name and any(i < len(f) and f[i].strip() for _, f in rows)]
    if later := [i for i in filled if i]:
        line = next(number for number, fields in rows if any(i < len(fields) and fields[i].strip() for i in later))
        rank_zero_warn(f"{path}: column(s) {', '.join(str(i + 1) for i in later)} have no name in the header and are left "
                       f"out of the output (the first value on line {line}); give them a name to keep them")
    return {0} & set(filled)


def field_count_problem(path: Path, line: int, fields: list[str], header: list[str]) -> DataError | None:
    """A row whose number of fields is not the header's, said with its likely cause; ``None`` for a row that fits."""
    if len(fields) == len(header):
        return None
    why = f"a {SEPARATOR_MARKS[separator_of(path)]} inside a field must be quoted" if len(fields) > len(header) else "a field is missing"
    return DataError(f"{path}, line {line}: {len(fields)} fields where the header has {len(header)} ({why})")


def refuse_duplicate_columns(path: Path, header: list[str], hint: str = "") -> None:
    """A header naming a column twice (in any case) is refused: which of them is meant cannot be known (pandas reads
    the second ``caption`` as ``caption.1``, and its cells were left out without a word)."""
    folded = [name.strip().casefold() for name in header]
    duplicates = sorted({name.strip() for name, low in zip(header, folded) if low and folded.count(low) > 1})
    if duplicates:
        raise DataError(f"{path}: column(s) {duplicates} appear more than once in the header{hint}")


def csv_text_options(files: list[Path], hint: str = "", image_folder: bool = False) -> dict:
    """``datasets``' options for reading caption tables: :data:`CSV_OPTIONS`, and every column as text (an image
    folder's ``metadata.csv``: its columns as text beside the images). Left to guess, ``datasets`` types a column by
    the first 10,000 rows, and refused a whole table whose spare ``rating`` column is empty further down
    (``ArrowInvalid``); a caption or a file name of digits (``1984``) was a number, so no caption. The tables of one
    dataset have the same columns; one that differs is named (``datasets`` failed on a column no file was named for)."""
    names: list[str] = []
    for file in files if image_folder else ():  # datasets reads an image folder's metadata.csv as UTF-8 only
        table_encoding(file, reader="datasets' image folder")
    separators = {file: separator_of(file) for file in files}
    for file in files:
        if image_folder and separators[file] != ",":  # datasets reads an image folder's metadata.csv at commas only
            raise DataError(f"{file}: an image folder's metadata.csv is read at commas, and this one is separated by "
                            f"{SEPARATOR_NAMES[separators[file]]}: save it comma-separated")
        if separators[file] != separators[files[0]]:
            raise DataError(f"{file} is separated by {SEPARATOR_NAMES[separators[file]]}, and {files[0]} by "
                            f"{SEPARATOR_NAMES[separators[files[0]]]}: the tables of one dataset are read with one separator")
        refuse_duplicate_columns(file, header_of(file, separators[file]), hint)
        columns = list(pd.read_csv(file, nrows=0, encoding=table_encoding(file), sep=separators[file], **CSV_OPTIONS).columns)
        if names and set(columns) != set(names):
            raise DataError(f"{file} has the columns {columns}, and {files[0]} has {names}: the tables of one dataset "
                            "have the same columns")
        names = names or columns
    text = {name: datasets.Value("string") for name in names}
    if image_folder:  # datasets reads the images its file_name column names into an image column
        return {"features": datasets.Features({"image": datasets.Image(), **{k: v for k, v in text.items() if k != "file_name"}})}
    return {**CSV_OPTIONS, "sep": separators[files[0]] if files else ",", "encoding": one_encoding(files),
            "features": datasets.Features(text)}


# a line of Flickr's own caption files (Flickr8k.token.txt, Flickr30k's results_20130124.token): photo#n<TAB>caption
FLICKR_TOKEN = re.compile(r"[^\t#]+\.(?:jpe?g|png)#\d+\t", re.IGNORECASE)


def text_table_kind(path: Path) -> str | None:
    """How a ``.txt`` (or ``.token``, or ``.tsv``) file of captions reads: ``"csv"``, a header naming an image column and
    others, then rows (Kaggle's Flickr8k ``captions.txt``: ``image,caption``; a sheet saved tab-separated,
    ``image<TAB>caption``); ``"token"``, Flickr's own token file (``1000268201_693b08cb0e.jpg#0<TAB>A child ...``, no
    header); ``None`` for any other file (a ``.tsv`` without a header: Conceptual Captions' ``caption<TAB>URL``)."""
    if path.suffix.lower() not in (".txt", ".token", ".tsv") or not path.is_file():
        return None
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        first = handle.readline()
    if FLICKR_TOKEN.match(first):
        return "token"
    header = [cell.strip().casefold() for cell in header_of(path)] if first.strip() else []
    return "csv" if len(header) >= 2 and any(cell in IMAGE_COLUMNS for cell in header) and max(map(len, header)) <= 40 else None


def _token_table(path: Path) -> datasets.Dataset:
    """Flickr's token file as a table of ``image`` and ``caption``, a row a line (its ``#n`` taken off the photo's name;
    a blank line an empty row, so a row's line is its number); with the official split lists beside it (Flickr8k's
    ``Flickr_8k.trainImages.txt``, ``devImages``, ``testImages``), a ``split`` column of theirs, ``unlisted`` for a photo
    none lists (:mod:`~mmcaption.data.split_column` reads it as those splits)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").removesuffix("\n").split("\n")
    except UnicodeDecodeError:
        raise not_utf8(path, table=False) from None
    cells = [line.rstrip("\r").partition("\t")[::2] for line in lines]
    table = {"image": [re.sub(r"#\d+$", "", name) for name, _ in cells], "caption": [c for _, c in cells]}
    if lists := token_split_lists(path):
        split_of = {}
        for split, listed in lists.items():
            try:
                split_of.update(dict.fromkeys((line.strip() for line in listed.read_text(encoding="utf-8-sig").splitlines()
                                               if line.strip()), split))
            except UnicodeDecodeError:
                raise not_utf8(listed, table=False) from None
        table["split"] = [split_of.get(name.strip(), UNLISTED) for name in table["image"]]
        unlisted = sorted({name for name, split in zip(table["image"], table["split"]) if split == UNLISTED and name.strip()})
        if unlisted and (said := f"{path.resolve()} unlisted") not in SAID:  # (read once a split)
            SAID.add(said)
            rank_zero_info(f"note: {path}: {len(unlisted):,} of its photos are in none of its split lists "
                           f"({', '.join(f.name for f in lists.values())}), so their rows, split {UNLISTED!r}, neither "
                           f"train nor validate (first: {unlisted[0]})")
    return datasets.Dataset.from_dict(table, features=datasets.Features({name: datasets.Value("string") for name in table}))


SAID: set[str] = set()  # the notes this process has said once
UNLISTED = "unlisted"  # the split of a token file's photo that none of its split lists names
SPLIT_LISTS = {"train": "trainimages", "dev": "devimages", "test": "testimages"}  # Flickr_8k.<name>.txt, in any case


def token_split_lists(path: Path) -> dict[str, Path]:
    """The official split lists beside a Flickr token file (Flickr8k's ``Flickr_8k.trainImages.txt``, ``devImages``,
    ``testImages``: a photo's file name a line), by split; ``{}`` unless its train list and another are there."""
    found = {}
    for file in sorted(path.parent.glob("*.txt")) if path.parent.is_dir() else []:
        split = next((split for split, end in SPLIT_LISTS.items() if file.stem.casefold().endswith(end)), None)
        if split is not None and split not in found:
            found[split] = file
    return found if "train" in found and len(found) > 1 else {}


def read_table_file(path: Path, cache_dir: str | None = None) -> datasets.Dataset:
    """One file of captions (a parquet download, JSON Lines, a CSV as :func:`csv_text_options` reads it), read through
    ``datasets``' cache in ``cache_dir`` when given (else its own); a workbook, an archive or a ``.tsv`` given in its
    place is refused saying what to do."""
    kind = text_table_kind(path)
    if kind == "token":
        return _token_table(path)
    builder = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix.lower(), kind)
    if builder is None:
        tsv = "; a .tsv without a header line (as Conceptual Captions' image URLs come) is not read: give it a header " \
              "line naming its columns (image<TAB>caption)" if path.suffix.lower() == ".tsv" else ""
        packed = packed_file(path)  # a workbook, a zip
        raise DataError(packed or f"{path}: a dataset is a hub id, a folder, or a .parquet, .json(l) or .csv file (or a "
                                   f".txt of captions as Flickr8k's come){tsv}")
    if builder == "json" and json_layout(path) == "data":  # TextCaps': read once into datasets' cache, its rows from there
        return datasets.load_dataset("json", data_files=str(path), field="data", split="train", cache_dir=cache_dir)
    if builder == "json" and (records := _pandas_layout(path)) is not None:
        return datasets.Dataset.from_list(records)
    options = csv_text_options([path], SEVERAL_CAPTIONS) if builder == "csv" else {}
    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir, **options)


def caption_map_file(path: Path) -> bool:
    """Whether ``path`` is a JSON object mapping each image's file name to its captions
    (:func:`~mmcaption.data.json_values.caption_map_records`), whose columns have no names of the user's to set."""
    return json_layout(path) == "map"


def _pandas_layout(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a ``.json`` table pandas' ``to_json`` wrote in its default layout, a column each (``{"image": {"0":
    ...}, "caption": {"0": ...}}``), or as ``orient="split"``, ``"table"`` (:func:`~mmcaption.data.json_values.
    pandas_records`) or ``"index"``: ``datasets`` read it as one row of whole columns; a map of each image's caption
    (:func:`~mmcaption.data.json_values.caption_map_records`), read as a row of columns named by file names. None for any
    other file (TextCaps' rows in its ``data`` list are read by :func:`read_table_file` before)."""
    with path.open("rb") as handle:
        if handle.read(4096).lstrip()[:1] != b"{":
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError):  # said as datasets' reading of it says it
        return None
    records = pandas_records(data) or caption_map_records(data)
    if records is None and isinstance(data, dict) and data and all(str(key).isdigit() for key in data):
        records = list(data.values())  # orient="index": a row each under its number
    return records if records and all(isinstance(record, dict) for record in records) else None


def columns_named(data: datasets.Dataset, wanted: tuple[str, ...]) -> datasets.Dataset:
    """The ``wanted`` columns as the settings name them, where the table heads them in another case or with spaces
    around (a sheet typed ``Image,Caption ``), as the other CSV readers take them."""
    loose = {}
    for name in wanted:
        if name not in data.column_names:
            found = [column for column in data.column_names if column.strip().casefold() == name.strip().casefold()]
            if len(found) == 1:
                loose[found[0]] = name
    return data.rename_columns(loose) if loose else data


def header_of(path: Path, delimiter: str | None = None) -> list[str]:
    """A CSV's header line, its cells as written, separated as :func:`separator_of` finds unless ``delimiter`` says (the
    rest of the file is not read)."""
    try:
        with path.open(newline="", encoding=table_encoding(path)) as handle:
            return next(csv.reader(handle, delimiter=delimiter or separator_of(path)), [])
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def jsonl_line(path: str, index: int) -> int:
    """The line (from 1) of a JSON Lines file's row ``index`` (from 0): blank lines are not rows."""
    stamp = os.stat(path)
    lines = _jsonl_lines(path, stamp.st_size, stamp.st_mtime_ns)
    return lines[index] if index < len(lines) else index + 1


@functools.lru_cache(maxsize=8)
def _jsonl_lines(path: str, *stamp: int) -> list[int]:
    """The line of each row of a JSON Lines file (as it is: ``stamp``, its size and time), read once for its bad rows."""
    with open(path, "rb") as lines:
        return [number for number, line in enumerate(lines, start=1) if line.strip()]


def literal_in_cell(text: str) -> list | dict | None:
    """The list or object a table's cell spells, in JSON (``["a", "b"]``, as ``mmcaption predict`` writes a list) or in
    Python (``['a', "it's"]``, ``{'bytes': None, 'path': 'a.png'}``, as pandas' and datasets' ``to_csv`` write a list or
    an image); None when it spells neither."""
    text = text.strip()
    if (text[:1], text[-1:]) not in (("[", "]"), ("{", "}")):
        return None
    for read in (json.loads, ast.literal_eval):  # literal_eval reads literals only: nothing in a cell is run
        with suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = read(text)
            return value if isinstance(value, list | dict) else None
    return None


def image_file_of(value: Any) -> Any:
    """The file an image value names: datasets writes an image column's file as ``{"bytes": null, "path": ...}``
    (``to_json``; in a CSV cell Python spells it, ``{'bytes': None, 'path': ...}``); an image held as its bytes is that
    object (for its reader to refuse); any other value as it is."""
    held = literal_in_cell(value) if isinstance(value, str) else value
    if not (isinstance(held, dict) and held and set(held) <= {"bytes", "path"}):
        return value
    return held["path"] if isinstance(held.get("path"), str) and held["path"].strip() else held


_DECIMAL = re.compile(r"-?[0-9]+\.[0-9]+")


def whole_numbers_read(path: Path, header: list[str], rows: list[tuple[int, list[str]]], names: tuple[str, ...]) -> None:
    """Read ``3.0`` as ``3`` in the columns ``names`` (lower case) whose every filled cell is a decimal number: pandas
    writes a column of whole numbers with a missing value so (its numbers become floats), and ``3.0`` was scored against
    an answer ``3`` as wrong. A JSON file's ``3.0`` is read as ``3`` alike. Said in a note; ``rows`` change in place."""
    for column in (i for i, name in enumerate(header) if name in names):
        cells = [fields[column].strip() for _, fields in rows if column < len(fields) and fields[column].strip()]
        if not cells or not all(_DECIMAL.fullmatch(cell) for cell in cells):
            continue
        changed = 0
        for _, fields in rows:
            if column < len(fields) and (cell := fields[column].strip()) and float(cell).is_integer():
                fields[column], changed = str(int(float(cell))), changed + 1
        if changed:
            rank_zero_warn(f"{path}: column {header[column]!r} holds its numbers as pandas writes a column of whole numbers "
                           f"with a missing value ({cells[0]}): {changed} of them read as whole numbers (3.0 as 3)")


ANSWER_KEY_NAMES = ("correct_answer", "answer_key", "label", "gt", "ground_truth", "gt_answer", "key", "solution")


def answer_key_columns(names: list[str]) -> list[str]:
    """The columns whose name says they may be an answer key (``correct_answer``; ``Correct Answer``, ``GT-Answer`` as
    sheets head them): kept as they are, and said, as ``answer`` alone is read as the key."""
    return [name for name in names if re.sub(r"[\s\-]+", "_", str(name).strip().casefold()) in ANSWER_KEY_NAMES]


def number_text(value: Any) -> Any:
    """A JSON number as the text a CSV cell would hold (``2`` -> ``"2"``, ``2.0`` -> ``"2"``; ``NaN``, as pandas
    writes a missing value, -> None); anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if math.isnan(value):
        return None
    return str(int(value)) if float(value).is_integer() else str(value)
