"""Captions from a Hugging Face ``datasets`` dataset: a hub id, a ``save_to_disk`` folder, a local
folder of parquet files or webdataset tars (``datasets`` infers the splits from the file names), or
one parquet, JSON Lines or CSV file.

Split names default to what the dataset has (:mod:`~mmcaption.data.stage_splits`). The image and caption columns are
settings, so COCO (``jpg`` + ``txt``, as ``clip-benchmark/wds_mscoco_captions2017``), Flickr30k-style (``image`` + a list
of captions), CC3M-style (one caption a row) and one-row-per-caption copies of COCO (rows of the same image are one image
with all its captions) all read.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data import caption_cells, tables
from mmcaption.data.caption_cells import HTML_NOTE, SPLIT_NOTE, caption_settings, column_and_key, html_in, texts_of
from mmcaption.data.folder_layouts import (
    SPLIT_TABLE_SUFFIXES,
    TABLE_SUFFIXES,
    folder_layout,
    local_splits,
    refuse_pattern,
    saved_dataset,
    shard_record,
    sidecar_dataset,
    user_files,
)
from mmcaption.data.hub_images import RowImages
from mmcaption.data.image_pass import Unchecked
from mmcaption.data.json_values import data_list_name, json_layout
from mmcaption.data.records import BadRecords, DataError, Uncaptioned, not_utf8, read_json_list
from mmcaption.data.sampling import held_out, held_out_keys
from mmcaption.data.split_column import SplitColumnTable
from mmcaption.data.stage_splits import stage_splits
from mmcaption.data.table_rows import HELD_OUT, REST, TableRows
from mmcaption.errors import one_line
from mmcaption.resources import causes


def downloaded_snapshot(name: str) -> str | None:
    """Offline, the folder a hub dataset id was downloaded to (``hf download <id> --repo-type dataset``: its snapshot in
    the Hugging Face cache), which ``datasets`` does not look in (it knows only its own cache of what it loaded); else
    None."""
    from huggingface_hub import constants, snapshot_download

    if not constants.HF_HUB_OFFLINE or Path(name).expanduser().exists() or name.count("/") != 1:
        return None  # online, datasets reads the hub (and its newer revisions) itself

    try:
        return snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # noqa: BLE001 - not downloaded (LocalEntryNotFoundError), or not an id at all
        return None


# a row per caption (Flickr30k's CSV, the hub's copies of COCO): a table's usual layout, said rather than warned of
GROUPED_ROWS = "rows that repeat an earlier row's image: their captions go with that image"


@dataclass
class HubCaptions(RowImages, SplitColumnTable, TableRows):
    """Where the captions come from and how its rows read.

    Args:
        dataset: hub id or local folder.
        image_column: the image (an ``Image`` feature, bytes, or a path).
        caption_column: the caption(s): a string (split at ``caption_separator``; a JSON list), a list of strings,
            objects (``sentences.raw``: the ``raw`` of each), or several columns (a list of names); see
            :mod:`~mmcaption.data.caption_cells`.
        caption_separator: what separates several captions in one string (None or empty: a string is one caption).
        val_fraction: share held out for validation when the dataset has one split.
    """

    dataset: str
    image_column: str = "jpg"
    caption_column: str | list[str] = "txt"
    caption_separator: str | None = "\n"
    val_fraction: float = 0.01

    cache_dir: str | None = None  # a folder inside the dataset's that is never read as its files (the data module's cache)
    config: str | None = None  # the dataset's configuration (subset), for one that has several

    def __post_init__(self) -> None:
        refuse_pattern(self.dataset)
        if (snapshot := downloaded_snapshot(self.dataset)) is not None:  # `hf download --repo-type dataset`, offline
            rank_zero_info(f"{self.dataset}: read from its download in the Hugging Face cache, {snapshot}")
            self.dataset = snapshot
        self._given: Path | None = None  # the folder given, when the one table in it is read
        self._pairs: list[tuple[str, Path | None]] | None = None  # a folder of photos with caption .txt files: (photo, .txt)
        path = Path(self.dataset).expanduser()
        if path.is_file() and shard_record(path):
            raise DataError(f"{path} is img2dataset's record of the shard beside it (each sample's URL, status and error), "
                            f"not its photos: give the folder of its output, {path.parent}")
        # a local folder's own files (user_files: not the cache kept in it), walked once for its layout and its splits
        self._files: list[Path] = []
        if path.is_dir() and not saved_dataset(path):
            self._files = sorted(user_files(path, self.cache_dir))
            if any(data_list_name(file) == "textcaps" for file in self._files if file.parent == path):
                self._files = self._textcaps_files(path)
            table, self._pairs = folder_layout(path, self._files, (self.image_column, caption_settings(self.caption_column)[0]))
            if table is not None:
                self.dataset, self._given = str(table), path
        defaults = (self.image_column, self.caption_column) == ("jpg", "txt")
        if defaults and (tables.text_table_kind(Path(self.dataset)) == "token" or tables.caption_map_file(Path(self.dataset))):
            self.image_column, self.caption_column = "image", "caption"  # Flickr's token file, a map of captions: its
            # columns are ours to name
        elif defaults and self._pairs is None and any(json_layout(file) == "data" for file in (  # (a folder's own tables)
                Path(self.dataset), *(file for file in self._files if file.parent == Path(self.dataset)))):
            self.image_column, self.caption_column = "image_path", "caption_str"  # TextCaps' files: its columns known

    def _textcaps_files(self, path: Path) -> list[Path]:
        """TextCaps' folder without TextVQA's files of the same layout beside them (its photos' download holds them: read
        as captions with TextCaps' splits, datasets refused a cast naming neither); said."""
        others = [file for file in self._files if data_list_name(file) not in (None, "textcaps")]
        if others:
            rank_zero_info(f"{path}: {', '.join(file.name for file in others)} beside TextCaps' files left out (not TextCaps': "
                           "TextVQA's questions are answered by mmcaption predict, --data.questions_file)")
        return [file for file in self._files if file not in others]

    def _saved(self) -> datasets.Dataset | datasets.DatasetDict | None:
        path = Path(self.dataset)
        if path.is_dir() and saved_dataset(path):
            return datasets.load_from_disk(str(path))
        return None

    def split_names(self) -> list[str]:
        if self._pairs is not None:
            return ["train"]
        saved = self._saved()
        if isinstance(saved, datasets.DatasetDict):
            return list(saved)
        if saved is not None or Path(self.dataset).is_file():  # one Dataset saved alone, or one file: its split column's
            return self._column_splits.names if self._column_splits else ["train"]
        if self._table_splits:
            return list(self._table_splits[1])
        try:
            return list(datasets.get_dataset_split_names(self.dataset, self.config))
        except Exception as error:  # noqa: BLE001 - datasets raises many kinds for a path or id it cannot read
            if Path(self.dataset).is_dir() and "config" not in str(error).lower():  # a metadata.csv not UTF-8, a line not parsed
                raise self._unreadable(error) from None
            several = "; set data.init_args.hub_config to the one to read" if "config" in str(error).lower() else ""
            raise DataError(f"cannot read the dataset {self.dataset!r}: {type(error).__name__}: {one_line(error)}{several}") from None

    def stage_splits(self, train: str | None, val: str | None, test: str | None) -> dict[str, str]:
        """The split for each of train, val and test, from the configured names or the dataset's own."""
        return stage_splits(self.dataset, self.split_names(), (train, val, test), self.val_fraction)

    def load(self, split: str) -> tuple[datasets.Dataset, str | None]:
        """The dataset split that ``split`` (as ``stage_splits`` names it) comes from, and the side of it
        (:data:`REST`, :data:`HELD_OUT`, or ``None`` for all of it)."""
        side = next((suffix for suffix in (REST, HELD_OUT) if split.endswith(suffix)), None)
        base = self._split_now = split[: -len(side)] if side else split  # (its tables' folder: where bare names are first)
        if self._pairs is not None:
            return sidecar_dataset(self._pairs, self.image_column, caption_settings(self.caption_column)[0]), side
        saved = self._saved()
        if isinstance(saved, datasets.DatasetDict):
            return self._named_columns(saved[base]), side
        if saved is not None:
            return self._split_part(self._named_columns(saved), base), side
        try:
            if Path(self.dataset).is_file():  # one file, as a single parquet (or JSON Lines) download
                return self._split_part(self._named_columns(tables.read_table_file(Path(self.dataset), self._datasets_cache)),
                                        base), side
            if self._table_splits:
                builder, splits = self._table_splits  # each file as itself: datasets reads its name as a pattern ("[2024]")
                files = {split: [glob.escape(file) for file in found] for split, found in splits.items()}
                return self._named_columns(datasets.load_dataset(builder, data_files=files, split=base, cache_dir=self._datasets_cache,
                                                                 **self._csv_options)), side
            return self._named_columns(datasets.load_dataset(self.dataset, self.config, split=base)), side
        except datasets.exceptions.DatasetGenerationError as error:
            raise self._unreadable(error) from None

    @functools.cached_property
    def _csv_options(self) -> dict:
        """How a local folder of CSV tables (train.csv, test.csv), or an image folder's metadata.csv, reads: every
        column as text, as one CSV is read (:func:`~mmcaption.data.tables.csv_text_options`)."""
        builder, read = (self._table_splits or (None,))[0], self._split_tables
        if builder == "json" and read and all(json_layout(table) == "data" for table in read):
            return {"field": "data"}  # TextCaps' train, val and test files: each one's rows in its 'data' list
        if builder not in ("csv", "imagefolder") or not all(table.suffix.lower() in (".csv", ".tsv", ".txt") for table in read):
            return {}  # an image folder's metadata.jsonl or .parquet: its own types
        return tables.csv_text_options(read, tables.SEVERAL_CAPTIONS, image_folder=builder == "imagefolder")

    @functools.cached_property
    def _table_splits(self) -> tuple[str, dict[str, list[str]]] | None:
        """A local folder of tables (or an image folder): the builder and each split's files, among the user's own
        (:func:`~mmcaption.data.folder_layouts.local_splits`)."""
        found = local_splits(Path(self.dataset).expanduser(), self._files, self.config) if self._files and self._given is None \
            else None
        named = {split: [os.path.relpath(f, self.dataset) for f in files if Path(f).suffix.lower() in SPLIT_TABLE_SUFFIXES]
                 for split, files in (found or (None, {}))[1].items()}
        if sum(map(len, named.values())) > 1:  # which table is which split: two copies of one table are both read
            rank_zero_info(f"{self.dataset}: its tables are read as "
                           + "; ".join(f"split {split}: {', '.join(names)}" for split, names in named.items()))
        return found

    def _named_columns(self, data: datasets.Dataset) -> datasets.Dataset:
        return tables.columns_named(data, (self.image_column, *caption_settings(self.caption_column)))

    @property
    def _datasets_cache(self) -> str | None:
        """Where ``datasets`` keeps its reading of the user's own files: in mmcaption's cache (a cluster's shared
        ``HF_DATASETS_CACHE`` is often read-only, and a run whose cache was complete failed there)."""
        return str(Path(self.cache_dir).expanduser() / "datasets") if self.cache_dir else None

    @property
    def _split_tables(self) -> list[Path]:
        """The tables :attr:`_table_splits` reads (an image folder's metadata tables, not its photos)."""
        splits = (self._table_splits or (None, {}))[1]
        return [Path(file) for files in splits.values() for file in files if Path(file).suffix.lower() in SPLIT_TABLE_SUFFIXES]

    def _unreadable(self, error: BaseException) -> DataError:
        """What ``datasets`` could not read, said as the user can act on it: the file (in a folder, the first of its
        tables that does not read alone), its line, and what is wrong there."""
        path = Path(self.dataset)
        if path.is_dir():
            columns: dict[Path, list[str]] = {}
            for table in (self._split_tables or [f for f in self._files if f.suffix.lower() in TABLE_SUFFIXES])[:100]:
                try:
                    columns[table] = tables.read_table_file(table, self._datasets_cache).column_names
                except datasets.exceptions.DatasetGenerationError as inner:
                    return HubCaptions(str(table))._unreadable(inner)
            if len(kinds := {tuple(sorted(names)): table for table, names in columns.items()}) > 1:  # (LLaVA-Pretrain's
                said = "; ".join(f"{table.relative_to(path)}: {', '.join(names)}" for names, table in kinds.items())  # _meta)
                return DataError(f"{self.dataset}: its tables are read as the rows of one dataset, and their columns differ "
                                 f"({said}): give the one to read as hub_dataset (its file), or move the others out")
        found = list(causes(error))
        if path.is_file() and any(isinstance(cause, UnicodeDecodeError) for cause in found):  # Excel's plain "CSV"
            return not_utf8(path, table=path.suffix.lower() == ".csv")
        if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
            read_json_list(path, "dataset")  # refuses the file naming the line that is not JSON
        cause = found[-1]
        text = str(cause).strip()
        hint = ""
        if "Expected" in text and "fields" in text:  # a caption holding the separator, unquoted
            mark = tables.SEPARATOR_MARKS[tables.separator_of(path)] if path.is_file() else "comma"
            hint = f"; a caption with a {mark} (or a quote) must be in quotes, as a spreadsheet saves it"
        return DataError(f"{self.dataset}: cannot be read as a dataset: {type(cause).__name__}: {text}{hint}")

    def records(self, split: str, records: BadRecords) -> Iterator[tuple[int, str, Unchecked, list[tuple[int, str]]]]:
        """``(row, name, image, captions)`` of each usable image (its name: the path the row gives it, else the
        row's key); bad rows reported by name.

        Rows that hold the same image (the same bytes, or the same file) are one image with all their
        captions: many copies of COCO on the hub have a row per caption, and read row by row every
        reference would be scored alone and one image could be trained on and held out at once. A
        single split's held-out side is chosen by image for the same reason, at least one image held out."""
        data, side = self.load(split)
        read = [column_and_key(name, data.column_names) for name in caption_settings(self.caption_column)]
        missing = {self.image_column, *(column for column, _ in read)} - set(data.column_names)
        if missing:
            raise DataError(f"{records.source} has no column(s) {sorted(missing)} (hub_image_column, hub_caption_column); its "
                            f"columns are {data.column_names}"
                            f"{tables.columns_hint(missing, data.column_names, self.image_column)}")
        if isinstance(data.features[self.image_column], datasets.Image):
            data = data.cast_column(self.image_column, datasets.Image(decode=False))
        columns = list(dict.fromkeys([self.image_column, *(column for column, _ in read),
                                      *(["__key__"] if "__key__" in data.column_names else [])]))
        # image digest -> first row, its key, captions, and what its later rows brought (counted on its side)
        images: dict[str, tuple[int, str, list[tuple[int, str]], Counter]] = {}
        counts, not_found, short = Counter(), [], []
        examples: defaultdict[str, dict[str, str]] = defaultdict(dict)  # image digest -> note -> its first example
        base = split.removesuffix(REST).removesuffix(HELD_OUT)
        short_rows = functools.cache(lambda: tables.short_rows(Path(self.dataset)))  # read once, when a row has an empty cell
        csv = self.dataset.lower().endswith(".csv")
        for row_index, row in enumerate(self._rows(data.select_columns(columns))):
            key = str(row.get("__key__") or row_index)
            if csv and "" in row.values() and self._table_row(row_index, base) in short_rows():  # a row short of
                short.append((side is None or held_out(f"row {key}", self.val_fraction) == (side == HELD_OUT),  # fields: its
                              self._row(row_index, key, split)))  # caption in another column (Kaggle's Flickr30k)
                continue
            cut: list[int] = []  # a cell of several lines is several captions: Localized Narratives' paragraphs are not
            try:
                texts = [text for column, key in read for text in texts_of(row[column], key, self.caption_separator, column, cut)]
            except DataError as error:
                raise DataError(f"{records.source}: {error}") from None
            image = self._image_bytes(row[self.image_column])
            if image is None:
                ours = side is None or held_out(f"row {key}", self.val_fraction) == (side == HELD_OUT)  # counted on one side,
                if not texts and self._named(row[self.image_column]) is None:
                    counts["empty rows (no image, no caption) left out"] += ours  # a spreadsheet's cleared line
                else:  # all named in the one message that refuses them; those of this side counted when skipped
                    not_found.append((ours, f"{self._row(row_index, key, split)}: its {self.image_column!r} is "
                                            f"{self._described(row[self.image_column])}", self._cell_kind(row[self.image_column])))
                continue
            digest = hashlib.blake2b(image, digest_size=16).hexdigest()
            first, _, captions, later = images.setdefault(digest, (row_index, key, [], Counter()))
            if first != row_index:  # a caption that an earlier row already gave this image is that row again
                known = {c for _, c in captions}
                again = sum(c in known for c in texts)
                earlier, this = self._named(data[first][self.image_column]), self._named(row[self.image_column])
                if earlier and this and earlier != this and texts:  # one photo under two names (an album's copy, photo(1).jpg)
                    kind = "rows whose image is the same file as an earlier row's under another name: their captions go " \
                           "with that image, which evaluation and predictions name by the earlier row's name"
                    later[kind] += 1
                    examples[digest].setdefault(kind, f" (first: {this!r} is {earlier!r})")
                    later["captions skipped that an earlier row gave the same image"] += again
                elif texts and again == len(texts):  # the same row twice (a file joined twice, a row pasted again)
                    later["rows that repeat an earlier row, its image and its captions: left out"] += 1
                elif not texts:
                    later["rows that repeat an earlier row's image without a caption of their own"] += 1
                else:
                    later[GROUPED_ROWS] += 1
                    later["captions skipped that an earlier row gave the same image"] += again
                texts = [c if c not in known else None for c in texts]
            captions += [(row_index * 100 + i, c) for i, c in enumerate(texts) if c is not None]
            if cut:  # counted on its side
                later[SPLIT_NOTE] += len(cut)
                examples[digest].setdefault(SPLIT_NOTE, f" (first: {self._row(row_index, key, split)}, {cut[0]} captions)")
            if html := [(found, c) for c in texts if c is not None and (found := html_in(c))]:  # counted on its side
                later[HTML_NOTE] += len(html)
                examples[digest].setdefault(HTML_NOTE, f" (first: {self._row(row_index, key, split)}: {html[0][0]!r} in {html[0][1][:60]!r})")
        records.all_at_once("short row", named := [said for ours, said in short if ours or records.on_bad_record == "error"],
                            f"{len(named)} of {len(data):,} rows have fewer fields than the header {data.column_names}, so "
                            "their cells are not under their columns' names", "Add the missing separators (or remove the rows)")
        named = [said for ours, said, _ in not_found if ours or records.on_bad_record == "error" or not images]
        cells = not_found and all(kind for *_, kind in not_found)  # lists or arrays alone: no path to fix
        records.all_at_once("missing image", named, f"{len(named)} of {len(data):,} rows " + (
            "hold no image that can be read" if cells else "name no image that is there"), "Give each row one image (a "
            "file's path, its bytes, or its pixels) or remove the rows" if cells else "Fix their paths (relative to the "
            "dataset's folder) or remove the rows", every=not images)
        if side != HELD_OUT:  # counted once, not by both sides of a single split: on the training side, read first
            self._note_unlisted(data, records)
        if side is not None:
            captioned = {digest for digest, (_, _, captions, _) in images.items() if captions}
            held = held_out_keys(captioned, self.val_fraction)  # at least one, in a small set
            if len(captioned) == 1:
                raise DataError(f"{records.source}: one image with captions cannot be split into training and validation; "
                                "give the dataset more images, or a validation split")
            if captioned and (not held or len(held) == len(captioned)):  # (no image at all: each row was reported above)
                other = "raise hub_val_fraction" if not held else "lower hub_val_fraction"
                raise DataError(f"{records.source}: with hub_val_fraction {self.val_fraction}, "
                                f"{'none' if not held else 'every one'} of its {len(captioned):,} images falls on the held-out "
                                f"side (chosen by a hash of each image); {other}, or give the dataset a validation split")
            # an image without captions (refused below) is on the side its hash gives
            images = {digest: image for digest, image in images.items()
                      if (digest in held or digest not in captioned and held_out(digest, self.val_fraction)) == (side == HELD_OUT)}
        for *_, later in images.values():
            counts.update(later)
        for kind, count in counts.items():  # the example the first image of this side gives (each image's, by digest)
            if count:
                records.note(kind + next((e[kind] for d in images if kind in (e := examples.get(d, {}))), ""), count,
                             warn=kind != GROUPED_ROWS)  # a row per caption: the usual layout, nothing to act on
        if images and not any(captions for _, _, captions, _ in images.values()) and side is None:
            raise Uncaptioned(f"{records.source}: none of its {len(images):,} images has a caption (a benchmark's test split "
                            "keeps its references to itself): validate on a split with captions (val_split), or give "
                            "val_split the training split's name to hold out hub_val_fraction of it"
                            + ("; mmcaption test reads the dataset's own test split: test_split names another" if split == "test"
                               else ""))
        empty = [f"{self._row(row_index, key, split)} has no caption" for row_index, key, captions, _ in images.values() if not captions]
        records.all_at_once("empty caption", empty, f"{len(empty)} of its images have no caption", "Give them one, or remove their rows",
                            every=len(empty) == len(images) and records.on_bad_record == "error")  # (skipped: none left)
        kept = [image for image in images.values() if image[2]]  # (skipped, each counted)
        ids = self._own_ids(data, [row_index for row_index, *_ in kept], records)
        for row_index, key, captions, _ in kept:
            value = data[row_index][self.image_column]
            named = self._named(value)
            # checked by the image pass's threads; one that cannot be decoded is named at the pass's end
            blame = functools.partial(self._undecodable, row_index, key, split, named)
            yield ids.get(row_index, row_index), named or key, Unchecked(self._image_bytes(value), blame), captions  # a path as written

    @staticmethod
    def own_id_column(data: datasets.Dataset) -> str | None:
        """A COCO copy's own image id column (``image_id``, ``cocoid``: HuggingFaceM4/COCO's, Karpathy's copies'), whose
        ids its images keep in the results - COCO's toolkit and server score by them - for rows' numbers."""
        return next((column for column in ("image_id", "cocoid") if column in data.column_names), None)

    def _own_ids(self, data: datasets.Dataset, rows: list[int], records: BadRecords) -> dict[int, int]:
        """Each kept image's own id (its first row's, a whole number), when the table has them, one per image; else none."""
        if (column := self.own_id_column(data)) is None or not rows:
            return {}
        given = list(data.select(rows)[column])
        values = [caption_cells.whole_number(value) for value in given]
        if None in values or len(set(values)) < len(values):  # one id for two photos: no results file could tell them apart
            bad = next((repr(value) for value, number in zip(given, values) if number is None), "one id for two of them")
            records.note(f"images named in the results by their rows' numbers, since the table's {column!r} column does not "
                         f"give each one a whole number of its own (first: {bad}), which COCO's toolkit would score by", len(rows))
            return {}
        return dict(zip(rows, values))

    def _rows(self, data: datasets.Dataset) -> Iterator[dict]:
        """The rows of ``data``; a file whose text is not UTF-8, found only as its rows are read (a JSON file saved in
        Windows' code page), is refused naming it, as :meth:`_unreadable` names it."""
        try:
            yield from data
        except UnicodeDecodeError as error:
            raise self._unreadable(error) from None

    def _undecodable(self, index: int, key: str, split: str, named: str | None, problem: str) -> list[str]:
        return [f"{self._row(index, key, split)}: {'its image ' + repr(named) if named else 'its image'} cannot be decoded: "
                f"{problem}"]
