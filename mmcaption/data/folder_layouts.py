"""Local folders of the user's own photos that ``datasets`` reads wrong: photos with one table of them (an image folder
to ``datasets``, whose captions it does not know), and photos each with its caption in a ``.txt`` of its name beside it
(``photo1.jpg`` + ``photo1.txt``: the webdataset layout unpacked, which ``datasets`` reads as a text or an image folder).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets.data_files import _get_data_files_patterns
from fsspec.utils import glob_translate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.data.encodings import WINDOWS_1252, western_words
from mmcaption.data.image_sources import PATTERN_MARKS, unreadable_note
from mmcaption.data.json_values import caption_map_records, data_list_records
from mmcaption.data.records import DataError
from mmcaption.data.tables import caption_map_file, text_table_kind
from mmcaption.file_spellings import folded_name
from mmcaption.folders import is_cache_folder, walk_through_links
from mmcaption.images import IMAGE_SUFFIXES, check_image, is_hidden

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")  # a .tsv with a header line (a sheet saved tab-separated)
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")  # Excel's, LibreOffice's and Apple Numbers' own files
SPLIT_TABLE_SUFFIXES = (*TABLE_SUFFIXES, ".txt")  # a split's tables: a headed .txt too (Excel's "Text (Tab delimited)")


def refuse_pattern(dataset: str) -> None:
    """A pattern of files (``data/train-*.parquet``) given as the dataset, where a hub id or a folder is read: refused
    naming what it matches and the folder to give (it was taken for a hub id: "Repo id must use alphanumeric chars")."""
    if not PATTERN_MARKS.search(dataset) or Path(dataset).expanduser().exists():
        return
    matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(dataset), recursive=True))
    folders = sorted({str(p.parent) for p in matched})
    raise DataError(f"hub_dataset {dataset} is a pattern of files, and a dataset is a hub id, a folder or one file: " + (
        f"it matches {len(matched)} file(s) in {', '.join(folders[:3])}; give " + (
            "that folder, whose tables are read as splits by their names (train-*, validation-*, test-*), or move the "
            "files to read into a folder of their own" if len(folders) == 1 else "one folder that holds them all")
        if matched else f"it matches nothing from {Path.cwd()}"))


def folder_layout(path: Path, files: list[Path], columns: tuple[str, str]) -> tuple[Path | None, list[tuple[str, Path | None]] | None]:
    """What a local dataset folder holds (its ``files``: :func:`user_files`), when ``datasets`` would misread it: the
    one table of its photos to read in its place, or its photos each with its caption file (``(photo, its .txt or
    None)``); ``(None, None)`` otherwise."""
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    tables = photo_tables(files, images)
    captions = [f for f in files if f.suffix.lower() == ".txt"]
    texts = _caption_files(images, captions)
    # kohya's sd-scripts caption photos in photo1.caption (their captioner's sentences; its taggers' tags go in .txt):
    # read as the .txt files are, where they were left out and the photos read without captions
    kohya = [f for f in files if f.suffix.lower() == ".caption"]
    if kohya and (own := _caption_files(images, kohya)):
        if texts:  # the kind more photos have: a stray a.caption does not take 999 photos' .txt captions away
            kept, left = (".caption", ".txt") if len(own) >= len(texts) else (".txt", ".caption")
            rank_zero_info(f"{path}: its photos have .caption files beside them and .txt files too: the {kept} files are "
                           f"read as their captions, the {len(set((texts, own)[kept == '.txt'].values())):,} {left} files "
                           "left out (kohya's sd-scripts write captions in .caption files and tags in .txt files)")
        if not texts or len(own) >= len(texts):
            captions, texts = kohya, own
    if texts and (maps := [table for table in tables if caption_map_file(table)]):  # a captioner's output kept beside
        rank_zero_info(f"{path}: each photo's own caption file is read, and {maps[0].relative_to(path)}, a map of the photos' "
                       "captions beside them, is left out (give it as hub_dataset to read it instead)")
        tables = [table for table in tables if table not in maps]
    tsv = next((f for f in files if f.suffix.lower() == ".tsv"), None)  # datasets reads one as a CSV of its first line's
    if tsv and not texts and not tables and not any(f.suffix.lower() in OTHER_DATA for f in files):  # names: the data
        raise DataError(f"{tsv}: a .tsv without a header line (as Conceptual Captions' image URLs come) is not read: give "
                        "it a header line naming its columns (image<TAB>caption)")
    if captions and not images:  # captions beside scans (.dcm) or raw files: datasets would read the .txt as the data
        _refuse_captioned_others(path, files, captions)
    if texts:
        paired = set(texts.values())
        _say_captions_without_photos(path, [f for f in captions if f not in paired])
    _say_failed_downloads(path, [f for f in files if shard_record(f)])
    if texts and tables:
        raise DataError(f"{path} holds photos with caption files beside them ({next(iter(texts.values())).name}) and "
                        f"a table ({tables[0].relative_to(path)}): give the table itself as hub_dataset, or move it out")
    if len(tables) == 1 and not images and caption_map_file(tables[0]):  # its photos elsewhere: read alone, as datasets
        rank_zero_info(f"{path} holds one table, {tables[0].relative_to(path)}, a map of photos' captions: it is read")  # cannot
        return tables[0], None
    if len(tables) == 1 and tables[0].name.lower() not in METADATA_TABLES and images:  # (a metadata.json is no image folder's)
        rank_zero_info(f"{path} holds photos and one table of them, {tables[0].relative_to(path)}: the table is read "
                       f"(its image paths relative to {path}, or to the table's folder)")
        return tables[0], None
    listed = _caption_tables(captions) if not texts else []  # (not each photo's own caption file opened)
    if not texts and not tables and images and len(listed) == 1:
        rank_zero_info(f"{path} holds photos and one table of their captions, {listed[0].relative_to(path)}: the table is "
                       "read (" + ("Flickr's download: Flicker8k_Dataset/ and Flickr8k_text/Flickr8k.token.txt" if
                                   text_table_kind(listed[0]) == "token" else "Kaggle's Flickr8k: Images/ and captions.txt") + ")")
        return listed[0], None
    if not tables and len(listed) == 1 and text_table_kind(listed[0]) == "token":  # Flickr8k's text folder alone
        rank_zero_info(f"{path} holds Flickr's caption file {listed[0].relative_to(path)}: it is read")
        return listed[0], None
    workbooks = [f for f in files if f.suffix.lower() in WORKBOOK_SUFFIXES]
    if images and workbooks and not texts and not tables and not listed:  # left out, the photos read without captions
        raise DataError(f"{path} holds photos and a spreadsheet workbook, {workbooks[0].relative_to(path)}, which is not "
                        "read: save it beside them as CSV UTF-8 (File > Save As > CSV UTF-8), a column of the photos' "
                        "names or paths and one of their captions")
    if not texts:
        return None, None
    if undecodable := [image.relative_to(path) for image in images if not _in_utf8(str(image))]:
        shown = str(undecodable[0]).encode(errors="surrogateescape").decode(errors="backslashreplace")
        raise DataError(f"{path}: {len(undecodable)} photo name(s) are not UTF-8 text (the first: {shown}), as a zip made "
                        "on Windows names them unpacked elsewhere; rename them in UTF-8 (unzip -O cp437, or convmv -f cp850 "
                        f"-t utf-8 -r --notest {shlex.quote(str(path))})")
    bare = sorted(image for image in images if image not in texts)  # counted now, not found one by one as they are read
    rank_zero_info(f"{path}: {len(images)} photos, each captioned by the {captions[0].suffix} file of its name beside it (columns "
                   f"{columns[0]!r} and {columns[1]!r}; several lines: several captions; a photo without one is refused"
                   + (f", or left out with --data.init_args.on_bad_record skip: {len(bare):,} {'has' if len(bare) == 1 else 'have'} "
                      "none, the first "
                      f"{bare[0].relative_to(path)})"
                      if bare else ")"))
    return None, [(image.relative_to(path).as_posix(), texts.get(image)) for image in sorted(images)]


def _caption_tables(captions: list[Path]) -> list[Path]:
    """The ``.txt`` files of ``captions`` that are tables of captions (:func:`text_table_kind`); of Flickr's token files,
    the one that is not lemmatised (Flickr8k's ``Flickr8k.lemma.token.txt``, "a dog run", beside ``Flickr8k.token.txt``)."""
    listed = [f for f in captions if text_table_kind(f)]
    plain = [f for f in listed if text_table_kind(f) == "token" and "lemma" not in f.name.casefold()]
    return plain if len(listed) > 1 and len(plain) == 1 and all(text_table_kind(f) == "token" for f in listed) else listed


def _in_utf8(name: str) -> bool:
    """Whether a file's name is UTF-8 text (Python gives another's bytes as lone surrogates, which no table holds)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _refuse_captioned_others(path: Path, files: list[Path], captions: list[Path]) -> None:
    """Refuse caption files beside files of their names that are not images mmcaption reads, saying what they are."""
    named = {caption.with_suffix("") for caption in captions}
    others = [f for f in files if f.suffix.lower() not in (".txt", *TABLE_SUFFIXES) and f.with_suffix("") in named]
    for other in others:  # a table's text export beside it (products.csv, products.txt), a LICENSE: not what is meant
        with open(other, "rb") as file:
            problem = check_image(file.read(1 << 16)) or "an image whose name is not an image's"
        if not problem.endswith(("(text)", "(JSON text)")):
            raise DataError(f"{path}: its caption .txt files are beside {len(others)} files that are not images by their "
                            f"names ({', '.join(sorted({f.suffix.lower() or 'no suffix' for f in others}))}; {other.name}: "
                            f"{problem}); images are {', '.join(sorted(IMAGE_SUFFIXES))}")


def _say_captions_without_photos(path: Path, captions: list[Path]) -> None:
    """A note of the caption files that no photo has (a photo deleted, or renamed), which are left out."""
    if captions:
        rank_zero_info(f"{path}: {len(captions)} caption file(s) without a photo of the same name, left out (the first: "
                       f"{captions[0]})")


def _say_failed_downloads(path: Path, records: list[Path]) -> None:
    """A note of the samples img2dataset could not download, which its shards do not hold: its record of each shard
    (:func:`_shard_record`) lists every sample with its status and error."""
    why: Counter[str] = Counter()
    total = 0
    for record in records:
        try:
            table = pq.read_table(record, columns=["status", "error_message"]).to_pydict()
        except (OSError, ValueError, pa.ArrowException):  # another's parquet of that name: not img2dataset's record
            continue
        total += len(table["status"])
        why.update(f"{status}: {str(error or '').strip()[:80] or 'no message'}"
                   for status, error in zip(table["status"], table["error_message"], strict=True) if status != "success")
    if why:
        rank_zero_info(f"{path}: {sum(why.values())} of the {total} samples img2dataset listed are not in its shards, their "
                       f"download failed ({'; '.join(f'{n} x {w}' for w, n in why.most_common(3))}): left out")


def _caption_files(images: list[Path], texts: list[Path]) -> dict[Path, Path]:
    """Each photo's caption file: of its very name, else the one name that matches it as Windows and macOS match
    names, in either Unicode form (macOS writes ``Café.jpg`` decomposed, a caption typed elsewhere names it composed) and
    any case (``IMG_0001.JPG`` beside ``img_0001.txt``). Where ``Dog.jpg`` and ``dog.jpg`` are both there, each has
    only its own: one caption is never given to two photos."""
    def folded(file: Path) -> str:
        return folded_name(str(file.with_suffix("")))

    exact = {text.with_suffix(""): text for text in texts}
    by_folded: dict[str, list[Path]] = {}
    for text in texts:
        by_folded.setdefault(folded(text), []).append(text)
    photos = Counter(folded(image) for image in images)
    found = {}
    for image in images:
        alike = by_folded.get(folded(image), [])
        text = exact.get(image.with_suffix("")) or (alike[0] if len(alike) == 1 and photos[folded(image)] == 1 else None)
        if text is not None:
            found[image] = text
    return found


def photo_tables(files: list[Path], images: list[Path]) -> list[Path]:
    """The tables among ``files`` that may be a table of the photos: not one photo's own metadata (an unpacked
    webdataset's ``photo.json`` beside ``photo.jpg``, Google Takeout's ``IMG_0001.JPG.json``, an album's
    ``metadata.json``: one JSON object, no rows), img2dataset's shard statistics, or a predict output (with its
    ``.summary.json`` beside it)."""
    photos = set(images) | {f.with_suffix("") for f in images}
    return [f for f in files if f.suffix.lower() in TABLE_SUFFIXES and f.with_suffix("") not in photos and _headed(f)
            and not f.name.endswith(("_stats.json", ".summary.json")) and not f.with_name(f.name + ".summary.json").exists()
            and not shard_record(f) and not _one_object(f)]


def _headed(path: Path) -> bool:
    """Not a ``.tsv`` without a header line naming its columns (Conceptual Captions' ``caption<TAB>URL``): a sheet saved
    tab-separated (``image<TAB>caption``) is a table as its CSV is; beside the photos it was left out without a word, and
    a folder's ``train.tsv`` and ``test.tsv`` were left to ``datasets``, which typed a column of captions as numbers."""
    return path.suffix.lower() != ".tsv" or text_table_kind(path) == "csv"


def shard_record(path: Path) -> bool:
    """img2dataset's record of one shard it wrote beside it (``00000.parquet``: each sample's URL, status and error,
    beside the shard ``00000.tar`` or folder ``00000/``): not a table of the photos, whose captions are in the shard."""
    shard = re.fullmatch(r"(\d{5,})\.parquet", path.name)
    return bool(shard) and ((path.parent / shard[1]).is_dir() or (path.parent / f"{shard[1]}.tar").is_file())


def _one_object(path: Path) -> bool:
    """A ``.json`` file holding one JSON object that is not a table's columns (lists) nor a map of the photos' captions
    (``{"photo1.jpg": "a dog", ...}``, which was left out, the photos read without captions) nor TextCaps' rows: a record
    about something."""
    if path.suffix.lower() != ".json" or path.stat().st_size > 1 << 20:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):  # JSON Lines, or not text: read (and refused) as a table
        return False
    return isinstance(data, dict) and not all(isinstance(value, list) for value in data.values()) and \
        caption_map_records(data) is None and data_list_records(data) is None  # (TextCaps' rows in its 'data' list)


def user_files(path: Path, cache_dir: str | None) -> list[Path]:
    """The files under a local dataset folder that are the user's: not hidden, not in mmcaption's cache (``cache_dir``;
    by default ``<data_dir>/preprocessed``, which may be in the photos' own folder; or another stage's, as the instruct
    stage keeps its own beside its file) or another saved dataset. Linked
    folders are followed (an album linked in), each real folder once."""
    skip = {Path(cache_dir).expanduser().resolve()} if cache_dir else set()
    files, unreadable = [], []
    for root, folders, names in walk_through_links(path, unreadable):
        folders[:] = [name for name in folders if not is_hidden(Path(name)) and (Path(root) / name).resolve() not in skip
                      and not saved_dataset(Path(root) / name, marker="state.json") and not is_cache_folder(Path(root) / name)]
        files += [Path(root) / name for name in names if not is_hidden(Path(name))]
    if passed_over := unreadable_note(path, unreadable):
        rank_zero_info(passed_over)
    return files


def saved_dataset(folder: Path, marker: str | None = None) -> bool:
    """Whether ``folder`` is a dataset ``datasets`` saved (its ``dataset_dict.json`` or ``state.json``, or ``marker``
    alone); one that cannot be read is no such dataset, to be said as unreadable, not by a file the user never had."""
    try:
        return any((folder / name).is_file() for name in ([marker] if marker else ["dataset_dict.json", "state.json"]))
    except PermissionError:
        return False


METADATA_TABLES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # what datasets' image folder reads beside photos
OTHER_DATA = (".tar", ".arrow", ".zip", ".gz", ".tgz")  # files datasets reads (webdataset shards, archives)


_BUILDERS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}  # datasets'


def _text_sheets(files: list[Path], images: list[Path]) -> list[Path]:
    """The ``.txt`` files that are sheets with a header line naming an image column (Excel's "Text (Tab delimited)" save:
    ``train.txt``, ``test.txt``), not a photo's own caption: a folder's splits, which ``datasets`` read as lines of text
    ("its columns are ['text']"). One alone beside the photos is read as the table (:func:`folder_layout`)."""
    photos = {f.with_suffix("") for f in images}
    return [f for f in files if f.suffix.lower() == ".txt" and f.with_suffix("") not in photos and text_table_kind(f) == "csv"]


def local_splits(path: Path, files: list[Path], config: str | None = None) -> tuple[str, dict[str, list[str]]] | None:
    """The builder and each split's files (``train.csv``, ``data/validation-00000.parquet``, ``train/cat.jpg``) of a
    local folder of tables, or of photos with an image folder's ``metadata.csv``, as ``datasets`` names them - or as
    the folder's dataset card names them (:func:`card_patterns`, ``config`` among several) - among the user's own
    ``files`` only (linked folders included): its own look at the folder also takes the files of mmcaption's cache
    kept in it (``preprocessed/train-<key>/meta.json``, a "train" split of JSON files). ``None`` for a folder of other
    data (webdataset shards), without tables, or with tables of several kinds, which ``datasets`` is left to read."""
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    tables = photo_tables(files, images)  # not a photo's own metadata, nor an album's
    if any(f.name.lower() in METADATA_TABLES for f in tables):  # datasets' image folder: the photos and their tables
        kinds, tables = {"imagefolder"}, images + [f for f in tables if f.name.lower() in METADATA_TABLES]
    else:
        tables += _text_sheets(files, images)
        if maps := [f for f in tables if caption_map_file(f)]:  # datasets reads none of them; read alone, each is
            raise DataError(f"{path} holds {len(tables)} tables, and {maps[0].relative_to(path)} is a map of the photos' "
                            "captions, which is read alone: give it as hub_dataset (a folder's splits are tables of rows: "
                            "CSV, JSON Lines, parquet)")
        kinds = {_BUILDERS[f.suffix.lower()] for f in tables}
    others = {f.suffix.lower() for f in files if f.suffix.lower() in OTHER_DATA and f not in images}  # (a list: looked in last)
    if not tables and others == {".tar"}:  # webdataset's shards (img2dataset's, with its records of them left out)
        kinds, tables = {"webdataset"}, [f for f in files if f.suffix.lower() == ".tar"]
    elif not tables or len(kinds) > 1 or others:
        return None
    relative = {Path(os.path.relpath(f, path)).as_posix(): str(f) for f in tables}  # as datasets' patterns are written

    def resolved(pattern: str) -> list[str]:  # matched among these files, not globbed again on disk
        matches = re.compile(glob_translate(pattern)).fullmatch
        return [file for name, file in relative.items() if matches(name)]

    try:
        patterns = card_patterns(path, config) or _get_data_files_patterns(resolved)
    except (ValueError, FileNotFoundError) as error:  # a split name datasets refuses (train-v2-00000-of-00001)
        raise DataError(f"{path}: its files cannot be told apart into splits: {error}") from None
    splits = {str(split): list(dict.fromkeys(f for pattern in split_patterns for f in resolved(pattern)))
              for split, split_patterns in patterns.items()}
    read = {file for found in splits.values() for file in found}
    if kinds <= {"csv", "json", "parquet"} and not card_patterns(path, config) and (
            unread := [f for f in tables if str(f) not in read]):  # datasets drops them once a table names a split
        raise DataError(f"{path}: {', '.join(str(f.relative_to(path)) for f in unread[:3])}{' ...' * (len(unread) > 3)} would "
                        f"not be read: its tables are read as splits by their names ({', '.join(s for s in splits if splits[s])}), and "
                        f"{'these name' if len(unread) > 1 else 'it names'} none. Name each as its split's (train-coco.csv "
                        "trains beside train.csv), or move it out of the folder")
    return kinds.pop(), {split: found for split, found in splits.items() if found}


def card_patterns(path: Path, config: str | None) -> dict[str, list[str]] | None:
    """Each split's file patterns as a dataset folder's card (``README.md``, as the hub's datasets have one) declares
    them (``configs: [{config_name, data_files: [{split, path}]}]``), of ``config`` (or the only one, or ``default``);
    None without such a card. Read by file names alone, a folder's ``heldout-0.parquet`` that the card declares the
    validation split was trained on."""
    card = path / "README.md"
    try:
        text = card.read_text(encoding="utf-8-sig") if card.is_file() else ""
        header = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, IndexError):
        return None
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs) or not configs:
        return None
    names = [str(c.get("config_name", "default")) for c in configs]
    if config is None and len(configs) > 1 and "default" not in names:
        raise DataError(f"{path}: its card names the configurations {names}: set data.init_args.hub_config to the one to read")
    wanted = config if config is not None else "default" if "default" in names else names[0]
    if wanted not in names:
        raise DataError(f"{path}: its card names the configurations {names}, not {wanted!r} (hub_config)")
    files = configs[names.index(wanted)].get("data_files")
    entries = [{"split": "train", "path": files}] if isinstance(files, str | list) and not (
        isinstance(files, list) and files and isinstance(files[0], dict)) else files or []
    return {str(entry.get("split", "train")): [entry["path"]] if isinstance(entry.get("path"), str) else list(entry.get("path") or [])
            for entry in entries if isinstance(entry, dict)}


def sidecar_dataset(pairs: list[tuple[str, Path | None]], image_column: str, caption_column: str) -> datasets.Dataset:
    """The photos and their caption files as a dataset of paths (relative to the folder) and captions: UTF-8, or
    Windows-1252 as a Windows program writes text by default (a captioning script's ``open(..., "w")``), those said in
    one note for all of them; text of another code page is refused naming its file and line."""
    local: dict[Path, dict[str, int]] = {}  # the caption files read as Windows-1252, with their first words beyond ASCII
    captions = [_caption_file(text, local) if text else "" for _, text in pairs]
    if local and (key := frozenset((path, path.stat().st_mtime_ns) for path in local)) not in _SAID:  # once, not per side
        _SAID.add(key)
        first, words = next(iter(local.items()))
        shown = ", ".join(f"'{word}' (line {line})" for word, line in words.items()) or "its typographic marks"
        rank_zero_warn(f"{len(local):,} caption file(s) beside the photos are not UTF-8: read as Windows-1252, as Windows "
                       f"programs write text by default (the first, {first}: {shown}); if those words read wrong, save them "
                       "as UTF-8")
    names = [name for name, _ in pairs]
    return datasets.Dataset.from_dict({image_column: names, caption_column: captions, "__key__": names})


_SAID: set[frozenset] = set()  # the sets of caption files whose Windows-1252 note was said


def _caption_file(path: Path, local: dict[Path, dict[str, int]]) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        local[path] = western_words(path, table=False)  # refused unless Windows-1252 of a Western language
        return path.read_text(encoding=WINDOWS_1252)
