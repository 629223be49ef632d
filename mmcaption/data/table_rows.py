"""Where a row of a caption table is, said as the user finds it: a CSV's line as a spreadsheet numbers it, a JSON Lines
file's or a Flickr token file's line as an editor numbers it, in a folder of tables its table's name and line."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pandas as pd

from mmcaption.data import tables
from mmcaption.data.encodings import table_encoding
from mmcaption.data.folder_layouts import SPLIT_TABLE_SUFFIXES

REST, HELD_OUT = ".rest", ".heldout"  # the two sides of a single split
HEADED = (".csv", ".tsv", ".txt")  # a header line, then a row a line, as a spreadsheet numbers them


class TableRows:
    """The row side of :class:`~mmcaption.data.hub.HubCaptions` (``dataset``, ``_table_splits``, ``_table_row``)."""

    def _row(self, index: int, key: str, split: str) -> str:
        """A row as the user finds it: a CSV's line, as a spreadsheet numbers it (the header is line 1), a JSON Lines
        file's line, as an editor numbers it; in a folder of such tables, its table's name and line."""
        index = self._table_row(index, split.removesuffix(REST).removesuffix(HELD_OUT))
        if self.dataset.lower().endswith(".csv"):
            return f"line {index + 2}"
        if self.dataset.lower().endswith(".jsonl"):
            return f"line {tables.jsonl_line(self.dataset, index)}"
        if kind := tables.text_table_kind(Path(self.dataset)):  # a header line, or none (Flickr's token file)
            return f"line {index + (2 if kind == 'csv' else 1)}"
        within = index
        for table, rows in self._line_tables.get(split.removesuffix(REST).removesuffix(HELD_OUT), []):
            if within < rows:
                line = within + 2 if table.lower().endswith(HEADED) else tables.jsonl_line(os.path.join(self.dataset, table), within)
                return f"{table}, line {line}"
            within -= rows
        return f"row {index} (key {key})"

    @functools.cached_property
    def _line_tables(self) -> dict[str, list[tuple[str, int]]]:
        """A local folder of CSV (or TSV) or JSON Lines tables, or an image folder with one metadata table a split (looked at when
        a row is bad; its rows are the table's, in order): ``(table, rows)`` of each split's tables, in the order datasets
        reads them."""
        splits = {split: [file for file in files if Path(file).suffix.lower() in SPLIT_TABLE_SUFFIXES]
                  for split, files in (self._table_splits or (None, {}))[1].items()}
        photos = any(len(splits[split]) < len(files) for split, files in self._table_splits[1].items()) if splits else False
        if not splits or not all(Path(file).suffix.lower() in (*HEADED, ".jsonl") for files in splits.values() for file in files) \
                or photos and any(len(tables) != 1 for tables in splits.values()):  # several metadata files: datasets' order
            return {}

        def rows(file: str) -> int:
            if file.lower().endswith(HEADED):
                return len(pd.read_csv(file, usecols=[0], sep=tables.separator_of(Path(file)),
                                       encoding=table_encoding(Path(file)), **tables.CSV_OPTIONS))
            with open(file, "rb") as lines:
                return sum(1 for line in lines if line.strip())
        return {split: [(os.path.relpath(file, self.dataset), rows(file)) for file in files] for split, files in splits.items()}
