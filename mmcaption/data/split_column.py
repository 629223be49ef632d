"""One table whose ``split`` column says which rows are which split, as Karpathy's splits of Flickr30k and COCO come in
their CSV and parquet copies (``nlphuji/flickr30k``'s ``flickr_annotations_30k.csv``: train, val and test in one
file): read as those splits, not as one split of which a share is held out (its test images were trained on).
Karpathy's ``restval`` rows train, as papers train on them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data import tables
from mmcaption.data.records import DataError
from mmcaption.data.stage_splits import VAL_NAMES

SPLIT_NAMES = ("train", "restval", "val", "validation", "valid", "dev", "test")  # a column of these is a split column
WITH_TRAIN = "restval"  # Karpathy's 'restval': the val images (of COCO 2014) that train


@dataclass(frozen=True)
class ColumnSplits:
    """The rows (the table's indices, in order) of each split a table's ``column`` names."""

    column: str
    rows: dict[str, list[int]]

    @property
    def names(self) -> list[str]:
        return list(self.rows)

    def part(self, data: datasets.Dataset, split: str) -> datasets.Dataset:
        """The rows of ``split`` (its indices written out: the image column is read from the Arrow table beneath)."""
        progress = datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()  # (a bar for each split of a small table: noise)
        try:
            return data.select(self.rows[split]).flatten_indices()
        finally:
            if not progress:
                datasets.utils.enable_progress_bars()

    def row(self, split: str, index: int) -> int:
        """The table's row of ``split``'s row ``index``, as its file numbers it."""
        return self.rows[split][index] if split in self.rows and index < len(self.rows[split]) else index


def column_splits(data: datasets.Dataset, source: str, line_of=lambda index: f"row {index}") -> ColumnSplits | None:
    """The splits ``data``'s ``split`` column (in any case; TextCaps' ``set_name``) names, when its values are split
    names (at least one of :data:`SPLIT_NAMES`: ``train``, ``val``, ``test``, ...) and there are two or more, or one
    to evaluate on; ``None`` for a table without one. A row without a split is refused by ``line_of`` it, as no split
    could be chosen for it."""
    named = [column for column in data.column_names if column.strip().casefold() == "split"] or [
        column for column in data.column_names if column == "set_name"]  # TextCaps' (train, val or test)
    if len(named) != 1 or not isinstance(data.features[named[0]], datasets.Value):
        return None
    values = data[named[0]]
    folded = [value.strip().casefold() if isinstance(value, str) else "" for value in values]
    if not any(value in SPLIT_NAMES for value in folded):  # a column of something else (a caption's split into parts)
        return None
    if "" in folded:
        empty = [index for index, value in enumerate(folded) if not value]
        raise DataError(f"{source}: {len(empty):,} of its rows have no value in the {named[0]!r} column that says the "
                        f"split of the others (first: {line_of(empty[0])}); give them one (train, val or test)")
    rows: dict[str, list[int]] = {}
    for index, value in enumerate(folded):
        rows.setdefault("train" if value == WITH_TRAIN else value, []).append(index)
    if len(rows) < 2 and not set(rows) & set(VAL_NAMES):
        return None  # one split: a share of it is held out, as for any single split
    if len(rows) < 2:  # TextCaps' val file: an evaluation set, scored whole (a share of it was held out to score)
        rank_zero_info(f"{source}: its {named[0]!r} column gives all its rows the split {next(iter(rows))}")
        return ColumnSplits(named[0], rows)
    restval = f"; its {WITH_TRAIN} rows ({folded.count(WITH_TRAIN):,}) train, as Karpathy's splits are trained on" \
        if WITH_TRAIN in folded else ""
    rank_zero_info(f"{source}: its {named[0]!r} column divides it into the splits "
                   + ", ".join(f"{name} ({len(indices):,} row{'s' * (len(indices) != 1)})" for name, indices in rows.items())
                   + restval)
    return ColumnSplits(named[0], rows)


class SplitColumnTable:
    """The split column side of :class:`~mmcaption.data.hub.HubCaptions` (``dataset``, ``_saved``, ``_named_columns``,
    ``_datasets_cache``, ``_unreadable``, ``_row``): one file, or one Dataset saved alone, divided by its column."""

    @functools.cached_property
    def _column_splits(self) -> ColumnSplits | None:
        saved = self._saved()
        try:
            if saved is not None and not isinstance(saved, datasets.DatasetDict):
                whole = self._named_columns(saved)
            elif saved is None and Path(self.dataset).is_file():
                whole = self._named_columns(tables.read_table_file(Path(self.dataset), self._datasets_cache))
            else:
                return None
        except datasets.exceptions.DatasetGenerationError as error:
            raise self._unreadable(error) from None
        return column_splits(whole, self.dataset, lambda index: self._row(index, str(index), ""))

    def _split_part(self, data: datasets.Dataset, split: str) -> datasets.Dataset:
        """``data`` (the whole table), or the rows its split column gives ``split``."""
        return self._column_splits.part(data, split) if self._column_splits else data

    def _table_row(self, index: int, split: str) -> int:
        """The table's own row of ``split``'s row ``index`` (the same, without a split column)."""
        found = self.__dict__.get("_column_splits")  # (not while it is being found: its refusals name the table's rows)
        return found.row(split, index) if found else index
