"""A split given as a COCO captions file where it lies, not in COCO's own layout: nocaps' validation set
(``nocaps_val_4500_captions.json``, its photos in a folder beside it), a labelling tool's COCO export. Its images are
found in the folder that holds them: the file's own, a folder beside the file, COCO's ``<root>/<split>/`` for
``<root>/annotations/captions_<split>.json``, or ``data_dir`` (or a folder in it)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from mmcaption.data.cache import files_signature
from mmcaption.data.coco import coco2014_folders, other_caption_layout
from mmcaption.data.image_sources import folders_in, named_images
from mmcaption.data.records import DataError, read_json
from mmcaption.images import existing_spelling, local_file

LOOKED_AT = 20  # the file's first images that choose the folder
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")  # nocaps' images' domains, each scored on its own


def split_file(split: str | None) -> Path | None:
    """The COCO captions file a split setting names (a ``.json`` path, there or not: a stage that reads it says so),
    else None (a split's name)."""
    return local_file(Path(split).expanduser()) if split and split.lower().endswith(".json") else None


def check_split_settings(splits: tuple[str | None, ...], source: str) -> None:
    """A split setting that names a table of captions (``mine/captions.csv``) where a split's name or a COCO captions
    file is read: refused, saying how a table is read (it was looked for as ``annotations/captions_mine/captions.csv.json``,
    with advice about data_dir for a data_dir that was right)."""
    for setting, split in zip(("train_split", "val_split", "test_split"), splits):
        if source != "hub" and split and not split.lower().endswith(".json") and (
                Path(split).suffix.lower() in (".csv", ".tsv", ".txt", ".jsonl", ".parquet") or "/" in split or "\\" in split):
            raise DataError(f"{setting} {split}: a split is named (val2017) or given as a COCO captions file (.json); a table "
                            f"of captions is read as a dataset: --data.init_args.source hub --data.init_args.hub_dataset "
                            f"{split} (its columns: hub_image_column, hub_caption_column)")


def file_split_name(path: Path) -> str:
    """The split's name for its cache and its results' files: the file's name (``captions_`` off COCO's, and
    ``image_info_`` off its test split's)."""
    return path.stem.removeprefix("captions_").removeprefix("image_info_") or path.stem


def files_by_split_name(settings: tuple[str | None, ...], data_dir: Path, defaults: tuple[str | None, ...]) -> dict[str, Path]:
    """The split files of ``settings`` (train, val, test) by their splits' names. Two files of one name (``a/val.json``,
    ``b/val.json``), or a file named as a split given by name is (another root's ``captions_val2017.json`` beside the
    default ``val2017``), are refused: the split would be read from the one for both."""
    named: dict[str, Path] = {}
    for path in filter(None, map(split_file, settings)):
        if (other := named.setdefault(file_split_name(path), path)).resolve() != path.resolve():
            raise DataError(f"the splits {other} and {path} would both be called {file_split_name(path)!r} (their caches and "
                            "results are named by it): give one under another name (a link of another name does)")
    for setting, default in zip(settings, defaults):  # (COCO's test by default: the val split)
        name = None if split_file(setting) else setting or default
        own = data_dir / "annotations" / f"captions_{name}.json"  # (Karpathy's splits: in his file, none of these)
        if name in named and (named[name].resolve() != own.resolve() or defaults[0] == "train"):
            where = "of Karpathy's split file" if defaults[0] == "train" else f"read from {own}"
            raise DataError(f"the split file {named[name]} would be called {name!r}, as the split {name} {where} is: "
                            "give the file under another name (a link of another name does), or that split by its path too")
    return named


def coco_layout_folder(path: Path) -> Path | None:
    """``<root>/<split>/`` for ``<root>/annotations/captions_<split>.json`` given by its path, when it is there (or COCO
    2014's folders in its place, :func:`~mmcaption.data.coco.coco2014_folders`): read as the split of that name is."""
    folder = path.parent.parent / file_split_name(path)
    return folder if path.parent.name == "annotations" and (folder.is_dir() or coco2014_folders(folder)) else None


def file_image_folder(path: Path, data_dir: Path, setting: str = "--data.init_args.data_dir") -> Path:
    """The folder the captions file's images are found in: COCO's own layout's, else the first of the places above
    holding most of its first images, as the COCO reader finds them; refused, naming the places, when none holds any
    (a file not there: its own folder, which the start-up check refuses first)."""
    if not path.is_file() or (layout := coco_layout_folder(path)) is not None:
        return layout if path.is_file() else path.parent
    names = _file_names(path)
    root = [path.parent.parent, *folders_in(path.parent.parent)] if path.parent.name == "annotations" else []  # test-dev2017's
    places = [path.parent, *folders_in(path.parent), *root, data_dir, *folders_in(data_dir)]  # photos: in test2017/
    looked, found = names[:LOOKED_AT], {}
    for place in dict.fromkeys(place for place in places if place.is_dir()):
        found[place] = sum(_holds(place, name) for name in looked)
        if found[place] == len(looked):  # the first that holds them all
            return place
    best = max(found, key=found.get, default=None)  # else the first of the most
    if best is None or not found[best]:
        shown = ", ".join(map(str, list(found)[:6])) + (f" and {len(found) - 6} more folders" if len(found) > 6 else "")
        raise DataError(f"{path}: none of its first images ({looked[0]}, ...) is in {shown or 'any folder'}: put the photos "
                        "in a folder beside the file" + (f", or give the folder that holds them as {setting}" if setting else ""))
    return best


def listed_images(path: Path, folder: Path) -> list[tuple[str, str | None]]:
    """Each image the file names and where it is found from ``folder`` (None: not there): what the split's cache
    follows, rather than every file under a folder that may hold far more (a Downloads folder the file lies in)."""
    return [(name, str(found) if (found := folder / _found(folder, name)).is_file() else None)
            for name in dict.fromkeys(_file_names(path))]


class SplitFiles:
    """:class:`~mmcaption.data.CaptionDataModule`'s splits given as COCO captions files where they lie (``source: coco``,
    or ``karpathy`` for the others): each by its name, its captions file, its image folder, what its cache follows."""

    splits: tuple[str | None, str | None, str | None]
    data_dir: Path
    source: str

    def split_names(self) -> list[str | None]:
        return [file_split_name(path) if (path := split_file(split)) else split for split in self.splits]

    def split_files(self) -> dict[str, Path]:
        karpathy = self.source == "karpathy"  # (nocaps scored after training on Karpathy's splits, as papers report it)
        return files_by_split_name(self.splits, self.data_dir, ("train", "val", "test") if karpathy else ("train2017", "val2017",
                                   None)) if self.source in ("coco", "karpathy") else {}

    def karpathy_split(self, split: str) -> bool:
        """Whether ``split`` is read from Karpathy's split file (not a split file of its own)."""
        return self.source == "karpathy" and split not in self.split_files()

    def annotation_file(self, split: str) -> Path:
        return self.split_files().get(split) or self.data_dir / "annotations" / f"captions_{split}.json"

    def image_folder(self, split: str) -> Path:
        file = self.split_files().get(split)
        return file_image_folder(file, self.data_dir) if file else self.data_dir / split

    def image_domains(self, split: str) -> dict[Any, str]:
        """The domain of each image of a split file by its id (nocaps': in-, near- and out-domain, each scored on its own
        as nocaps' evaluation scores them; the file parsed once while unchanged); none for a split without them."""
        file = self.split_files().get(split)
        return _images(file)[1] if file is not None and file.is_file() else {}

    def listed_signature(self, split: str) -> dict | None:
        """The signature of a split file's own images (not COCO's layout, whose folder signs as a named split's does)."""
        file = self.split_files().get(split)
        if file is None or coco_layout_folder(file) is not None:
            return None
        return self.looked_at(("listed", file), lambda: files_signature(  # each photo stat-ed once per prepare_data
            listed_images(file, self.image_folder(split)), str(file.resolve()), self.cache_dir))


def _file_names(path: Path) -> list[str]:
    return _images(path)[0]


def _images(path: Path) -> tuple[list[str], dict[Any, str]]:
    stamp = path.stat()
    return _read_images(str(path.resolve()), stamp.st_size, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_images(name: str, *stamp: int) -> tuple[list[str], dict[Any, str]]:
    """The ``file_name`` of each of the file's images, and the ``domain`` of those with one by their ids (nocaps':
    ``in-domain``, ``near-domain``, ``out-domain``), parsed once while the file is unchanged."""
    path = Path(name)
    content = read_json(path, "COCO captions file")
    images = [entry for entry in (content.get("images") if isinstance(content, dict) else None) or [] if isinstance(entry, dict)]
    names = [entry["file_name"] for entry in images if isinstance(entry.get("file_name"), str)]
    if not names:
        raise DataError(f"{path} is not a COCO captions file: it needs an 'images' list whose entries have a 'file_name' "
                        f"(and 'annotations' with 'image_id' and 'caption').{other_caption_layout(content)}")
    domains: dict[int, str] = {}
    for entry in images:  # ids as the COCO reader reads them (text of ASCII digits too), the first entry of an id
        i = int(i) if isinstance(i := entry.get("id"), str) and i.strip().isascii() and i.strip().isdigit() else i
        if isinstance(i, int) and not isinstance(i, bool) and entry.get("domain") in NOCAPS_DOMAINS:
            domains.setdefault(i, entry["domain"])
    return names, domains


def _holds(place: Path, name: str) -> bool:
    return (place / _found(place, name)).is_file()


def _found(place: Path, name: str) -> str:
    """The image's name in ``place`` as the COCO reader finds it: as named (another case or Unicode form, Windows'
    backslashes), or without the folder's own name in front (``val/0013ea2087020901.jpg``)."""
    found = existing_spelling(place, name)
    parts = Path(found).parts
    return str(Path(*parts[1:])) if len(parts) > 1 and parts[0] == place.name and not (place / found).is_file() else found


def captioned_images(source: str, note=None, piped: dict[str, bytes] | None = None) -> list[tuple[dict[str, Any], Path]]:
    """``predict``'s images, each with its row's start: ``{"image": name}`` as :func:`named_images` names them, or, from a
    COCO image-info file (COCO's ``image_info_test2017.json``, nocaps' ``nocaps_test_image_info.json``: a test split
    whose captions go to an evaluation server), ``{"image": file_name, "image_id": id}`` with its photo found as a split
    file's are (:func:`file_image_folder`) - the id the server's results file names it by."""
    path = local_file(Path(source).expanduser())
    content = read_json(path, "COCO image-info file") if path.suffix.lower() == ".json" and path.is_file() else None
    entries = content.get("images") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not any(isinstance(e, dict) and "file_name" in e for e in entries):
        return [({"image": name}, image) for name, image in named_images(source, note=note, piped=piped)]
    bad = next((n for n, e in enumerate(entries) if not (isinstance(e, dict) and isinstance(e.get("file_name"), str)
                                                         and isinstance(e.get("id"), int) and not isinstance(e["id"], bool))), None)
    if bad is not None:
        raise DataError(f"{path}: images[{bad}] needs an integer 'id' and a 'file_name' (a COCO image-info file's images "
                        f"are captioned under their ids), not {json.dumps(entries[bad])[:200]}")
    folder = file_image_folder(path, path.parent, setting="")  # (predict has no data_dir)
    return [({"image": entry["file_name"], "image_id": entry["id"]}, folder / _found(folder, entry["file_name"]))
            for entry in entries]
