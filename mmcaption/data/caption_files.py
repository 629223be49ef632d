"""A split given as a COCO captions file where it lies, not in COCO's own layout: nocaps' validation set
(``nocaps_val_4500_captions.json``, its photos in a folder beside it), a labelling tool's COCO export. Its images are
found in the folder that holds them: the file's own, a folder beside the file, COCO's ``<root>/<split>/`` for
``<root>/annotations/captions_<split>.json``, or ``data_dir`` (or a folder in it)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from mmcaption.data.coco import other_caption_layout
from mmcaption.data.image_sources import named_images
from mmcaption.data.records import DataError, read_json
from mmcaption.images import existing_spelling, local_file

LOOKED_AT = 20  # the file's first images that choose the folder


def split_file(split: str | None) -> Path | None:
    """The COCO captions file a split setting names (a ``.json`` path), else None (a split's name)."""
    if not split or not split.lower().endswith(".json"):
        return None
    path = local_file(Path(split).expanduser())
    if not path.is_file():
        raise DataError(f"{split}: no such file (a split given as a .json file is a COCO captions file with its images, as "
                        "nocaps' nocaps_val_4500_captions.json; a split's name, as val2017, reads "
                        "<data_dir>/annotations/captions_<split>.json)")
    return path


def file_split_name(path: Path) -> str:
    """The split's name for its cache and its results' files: the file's name (``captions_`` off COCO's, and
    ``image_info_`` off its test split's)."""
    return path.stem.removeprefix("captions_").removeprefix("image_info_") or path.stem


def files_by_split_name(files: list[Path]) -> dict[str, Path]:
    """Each split file by its split's name; two files of one name (``a/val.json``, ``b/val.json``) refused."""
    named: dict[str, Path] = {}
    for path in files:
        if (other := named.setdefault(file_split_name(path), path)).resolve() != path.resolve():
            raise DataError(f"the splits {other} and {path} would both be called {file_split_name(path)!r} (their caches and "
                            "results are named by it): give one under another name (a link of another name does)")
    return named


def file_image_folder(path: Path, data_dir: Path) -> Path:
    """The folder the captions file's images are found in (the first of the places above holding most of its first
    images, as the COCO reader finds them); refused, naming the places, when none holds any."""
    stamp = path.stat()
    return _image_folder(str(path.resolve()), str(data_dir), stamp.st_size, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _image_folder(name: str, data_dir: str, *stamp: int) -> Path:
    path, root = Path(name), Path(data_dir)
    content = read_json(path, "COCO captions file")
    images = content.get("images") if isinstance(content, dict) else None
    names = [entry["file_name"] for entry in images or [] if isinstance(entry, dict) and isinstance(entry.get("file_name"), str)]
    if not names:
        raise DataError(f"{path} is not a COCO captions file: it needs an 'images' list whose entries have a 'file_name' "
                        f"(and 'annotations' with 'image_id' and 'caption'){other_caption_layout(content)}")
    places = [path.parent, *_folders_in(path.parent)]
    if path.parent.name == "annotations":  # COCO's own layout, given by its path
        places.append(path.parent.parent / file_split_name(path))
    looked, found = names[:LOOKED_AT], {}
    for place in dict.fromkeys([*places, root, *_folders_in(root)]):
        found[place] = sum(_holds(place, name) for name in looked) if place.is_dir() else 0
        if found[place] == len(looked):  # the first that holds them all
            return place
    best = max(found, key=found.get)  # else the first of the most
    if not found[best]:
        raise DataError(f"{path}: none of its first images ({looked[0]}, ...) is in {', '.join(map(str, found))}: put the "
                        "photos in a folder beside the file, or give that folder as --data.init_args.data_dir")
    return best


def _folders_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith((".", "__MACOSX"))
                  and child.name != "preprocessed")


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
    folder = file_image_folder(path, path.parent)
    return [({"image": entry["file_name"], "image_id": entry["id"]}, folder / _found(folder, entry["file_name"]))
            for entry in entries]
