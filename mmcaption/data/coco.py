"""COCO Captions: read the official layout or the hub layout, check it, and preprocess it once into
memory-mapped Arrow folders (each image stored once, captions tokenized)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from mmcaption.data.caption_cells import caption_text, note_html
from mmcaption.data.image_pass import Unchecked
from mmcaption.data.image_sources import COCO2014_FOLDERS, COCO2017_NAME, coco2014_copies, coco2017_copy
from mmcaption.data.json_values import coco_id, text_id_said
from mmcaption.data.records import (
    BadRecords,
    DataError,
    Uncaptioned,
    archive_hint,
    escapes_root,
    existing_spelling,
    may_name_unsigned_images,
    read_json,
    unsigned_images,
)
from mmcaption.data.split_build import write_image_text_split
from mmcaption.prompts import text_ids
from mmcaption.terminal import shell_word

IMAGE_FEATURES = datasets.Features(
    {"image_id": datasets.Value("int64"), "file_name": datasets.Value("string"), "image": datasets.Value("binary")}
)
CAPTION_FEATURES = datasets.Features(
    {
        "image_index": datasets.Value("int32"),
        "caption_id": datasets.Value("int64"),
        "caption": datasets.Value("string"),
        "token_ids": datasets.Sequence(datasets.Value("int32")),
    }
)


@dataclass
class CocoImage:
    image_id: int
    file_name: str
    captions: list[tuple[int, str]]  # (annotation id, caption)


def require_annotation_file(annotation_file: Path, setting: str = "val_split") -> None:
    info = annotation_file.with_name(annotation_file.name.replace("captions_", "image_info_", 1))
    if not annotation_file.is_file() and info.name != annotation_file.name and info.is_file():  # image_info_test2017.json
        raise held_back_split(info, None, annotation_file.parent.parent / info.stem[len("image_info_"):], setting=setting)
    if not annotation_file.is_file():
        raise DataError(
            f"COCO annotation file not found: {annotation_file} (the official layout is "
            f"<data_dir>/annotations/captions_<split>.json with images in <data_dir>/<split>/)."
            f"{archive_hint(annotation_file)}{other_splits(annotation_file)}{misplaced_data_dir(annotation_file.parent.parent)}"
        )


def misplaced_data_dir(data_dir: Path) -> str:
    """What a ``data_dir`` that is not COCO's root is instead - a captions file, or COCO's ``annotations/`` folder (the
    paths under it said doubled: ``annotations/annotations/captions_train2017.json``) -, and what to give; else ``""``."""
    root = f": --data.init_args.data_dir {shell_word(data_dir.parent.parent)}" if data_dir.parent.name == "annotations" else \
        "; a captions file of its own is given as its split, --data.init_args.train_split <it> (val_split, test_split)"
    return f" data_dir {data_dir} is a file: data_dir is the folder that holds annotations/ and the image folders{root}" \
        if data_dir.is_file() else f" data_dir {data_dir} is COCO's annotations folder: give the folder above it, --data." \
        f"init_args.data_dir {shell_word(data_dir.parent)}" if data_dir.name == "annotations" and any(data_dir.glob("captions_*.json")) else ""


def other_splits(annotation_file: Path) -> str:
    """The splits whose captions the folder holds instead (a COCO 2014 download's ``captions_train2014.json``, where the
    configs name 2017's), with the settings that read them; else ``""``."""
    folder = annotation_file.parent
    found = sorted(path.name[len("captions_"):-len(".json")] for path in folder.glob("captions_*.json")) if folder.is_dir() else []
    if not found:
        return ""
    train = next((split for split in found if split.startswith("train")), None)
    val = next((split for split in found if split.startswith("val")), None)
    settings = " ".join(f"--data.init_args.{key}_split {split}" for key, split in (("train", train), ("val", val)) if split)
    return f" {folder} holds the captions of {', '.join(found)}" + (f": to train on them, {settings}" if settings else "")


# VizWiz-Captions' captions a reviewer rejected, and its stock one for a photo too poor to describe ("Quality issues are
# too severe to recognize visual content."): its evaluation, as its API is called, and its users' training leave them out
MARKED_LEFT_OUT = "captions marked is_rejected or is_precanned (VizWiz-Captions') left out, as VizWiz's evaluation leaves them"


def read_coco_annotations(annotation_file: Path, image_dir: Path, records: BadRecords, coco2014_home: str = "",
                          setting: str = "val_split") -> list[CocoImage]:
    """Parse and check ``captions_*.json``: structure, captions, and that every image file exists.

    Missing images are counted all at once, so the message says how many there are. COCO 2017's names are read from
    COCO 2014's copies under ``image_dir`` when it has them; ``coco2014_home``, the COCO 2014 folder a COCO 2017 split is
    read from first (:func:`coco2014_folders`), names a photo missing there as it was looked for; ``setting``, the
    split setting that named the file, is the one a split without captions is refused for.
    """
    require_annotation_file(annotation_file, setting)
    content = read_json(annotation_file, "COCO annotation file")
    if isinstance(content, dict) and isinstance(content.get("images"), list) and "annotations" not in content \
            and not _karpathy(content):
        raise held_back_split(annotation_file, len(content["images"]), image_dir, " has no 'annotations' list:", setting)  # image_info_*
    if not isinstance(content, dict) or not isinstance(content.get("images"), list) or not isinstance(
        content.get("annotations"), list
    ):
        raise DataError(f"{annotation_file} has no 'images' and 'annotations' lists: is it a COCO captions file?"
                        f"{other_caption_layout(content)}")

    images: dict[int, CocoImage] = {}
    ambiguous: set[int] = set()  # ids given to two images of different files
    for position, entry in enumerate(content["images"]):
        image_id = coco_id(entry.get("id"), records, f"images[{position}]") if isinstance(entry, dict) else None
        if image_id is None or not isinstance(entry.get("file_name"), str):
            records.defer("malformed image entry", f"images[{position}] needs an integer 'id' and a 'file_name'"
                          + text_id_said(entry, "id"))
            continue
        entry = {**entry, "id": image_id}
        file_name = existing_spelling(image_dir, entry["file_name"])  # or with a Windows exporter's backslashes
        parts = Path(file_name).parts
        if len(parts) > 1 and parts[0] == image_dir.name and not (image_dir / file_name).exists():
            file_name = str(Path(*parts[1:]))  # "train2017/x.jpg", as some exporters write it
        if entry["id"] in images:
            records.defer("duplicate image id", f"images[{position}] repeats image id {entry['id']}")
            first = images[entry["id"]].file_name  # two images (files merged): whose caption is whose is unknown; one
            if first != file_name and (image_dir / first).resolve() != (image_dir / file_name).resolve():  # spelled two
                ambiguous.add(entry["id"])  # ways (./x.jpg, its absolute path) is one image, its captions kept
            continue
        images[entry["id"]] = CocoImage(entry["id"], file_name, [])
    for image_id in ambiguous:  # the first of them too: its captions would be trained on with the other's
        del images[image_id]

    seen: dict[object, set[tuple[int, str]]] = {}  # annotation id -> the (image id, caption) pairs given it
    for position, entry in enumerate(content["annotations"]):
        image_id = coco_id(entry.get("image_id"), records, f"annotations[{position}]") if isinstance(entry, dict) else None
        if image_id is None:
            records.defer("malformed annotation", f"annotations[{position}] needs an integer 'image_id'"
                          + text_id_said(entry, "image_id"))
            continue
        entry = {**entry, "image_id": image_id}
        annotation_id = entry.get("id", position)
        caption = entry.get("caption")
        if not isinstance(caption, str):
            records.defer("malformed annotation", f"annotation id {annotation_id}: 'caption' is not a string")
            continue
        if not caption_text(caption):  # blank, or only invisible characters copied from a web page
            records.defer("empty caption", f"annotation id {annotation_id} (image id {entry['image_id']}) has an empty caption")
            continue
        if entry.get("is_rejected") is True or entry.get("is_precanned") is True:  # VizWiz-Captions' marks
            records.note(MARKED_LEFT_OUT, example=f"annotation id {annotation_id} (image id {entry['image_id']})")
            continue
        image = images.get(entry["image_id"])
        if entry["image_id"] in ambiguous:  # (under skip, the other image's captions went to the first image)
            records.defer("caption of an image id given to two images (which one it describes cannot be told)",
                          f"annotation id {annotation_id} of image id {entry['image_id']}")
            continue
        if image is None:
            records.defer("unknown image id", f"annotation id {annotation_id} refers to image id {entry['image_id']}, which is not in 'images'")
            continue
        if isinstance(entry.get("id"), (int, str)):  # a file merged twice, or edited by hand: the same annotation again, or one id for two
            key, given = (entry["image_id"], caption_text(caption)), seen.setdefault(annotation_id, set())
            if key in given:
                records.note("duplicate annotations skipped (same id, image and caption as an earlier one)")
                continue
            if given:
                records.note("annotation ids given to more than one caption (each caption kept)")
            given.add(key)
        # stored by its id; a labelling tool's string id ("ann-1", a UUID) by its place in the file
        if any(text == caption_text(caption) for _, text in image.captions):  # a crowd worker's copy: trained on twice
            records.note("captions that repeat an earlier caption of their image word for word (each kept)",
                         example=f"annotation id {annotation_id} (image id {entry['image_id']})")
        image.captions.append((annotation_id if isinstance(annotation_id, int) else position, caption_text(caption)))
        note_html(records, caption, f"annotation id {annotation_id}")

    captioned = [image for image in images.values() if image.captions]
    if images and not captioned:  # "nothing usable is left (bad records: none)", or its missing images, said instead
        records.raise_deferred()  # its annotations, if it has any, named
        if content["annotations"]:
            raise DataError(f"{annotation_file}: none of its {len(images):,} images has a usable caption: its "
                            f"{len(content['annotations']):,} annotations were left out")
        raise held_back_split(annotation_file, len(images), image_dir, setting=setting)
    # only a captioned image is read: one without a caption is left out whether its file is there or not
    missing = [image for image in captioned if not (image_dir / image.file_name).is_file()]
    if missing and (copies := coco2014_copies([image.file_name for image in missing], image_dir, annotation_file)):
        still = [image for image in missing if image.file_name not in copies]
        for image in missing:  # one not there is named as it was first looked for, not as a 2017 name beside the 2014 folders
            name, home = Path(image.file_name).name, coco2014_home
            image.file_name = copies.get(image.file_name) or (f"{home}/COCO_{home}_{name}" if home and COCO2017_NAME.fullmatch(name) else image.file_name)
        missing = still
    records.missing_images(  # with every bad annotation found above, kept till now: each kind at once, not one per run
        [(f"image id {image.image_id}", image_dir / image.file_name) for image in missing],
        len(captioned), "referenced images are", image_dir)
    uncaptioned = [image for image in images.values() if not image.captions]
    if uncaptioned:  # nothing to learn from, but the user should know they are not trained on
        first = uncaptioned[0]
        records.note(f"images without a caption left out (first: image id {first.image_id}, {first.file_name})", len(uncaptioned))
    missing_ids = {image.image_id for image in missing}
    return [image for image in captioned if image.image_id not in missing_ids]


def held_back_split(annotation_file: Path, count: int | None, image_dir: Path, what: str = ":", setting: str = "val_split") -> Uncaptioned:
    """A split none of whose images has a caption (COCO's test2017, whose references are held back): it cannot be
    trained or scored on (``setting`` named it: training's split or a scored one); predict captions it."""
    counted = "" if count is None else f"{count:,} "
    reads = "training learns from" if setting == "train_split" else "validation and test score captions against"
    return Uncaptioned(f"{annotation_file}{what} none of its {counted}images has a caption (a test split whose references "
                     f"are held back, as COCO's test2017): {reads} them, so give --data.init_args.{setting} a split with "
                     f"captions. To caption these images: mmcaption predict "
                     f"--config <the stage's config> --config configs/predict/captions.yaml --ckpt_path <checkpoint> "
                     f"--data.images {shell_word(annotation_file)} (its images, found in {image_dir} or beside it, each captioned under "
                     "its image id, and the results file COCO's evaluation server takes written beside the output)")


def _karpathy(content: object) -> bool:
    """Whether a JSON file's ``content`` is Karpathy's split file (its images carry their ``sentences``)."""
    return isinstance(content, dict) and isinstance(content.get("images"), list) and any(
        isinstance(entry, dict) and "sentences" in entry for entry in content["images"][:100])


def other_caption_layout(content: object) -> str:
    """What a captions file that is not COCO's is, and the settings that read it; ``""`` when unknown."""
    if _karpathy(content):
        return (" It is Karpathy's split file (dataset_coco.json: images with their sentences): add --config "
                "configs/caption_karpathy.yaml after the stage's config, with --data.init_args.karpathy_file <it>")
    if isinstance(content, list) and content and isinstance(content[0], dict):  # BLIP's coco_karpathy_*.json, an export
        keys = sorted(content[0])
        return (f" It is a list of records (the first has {keys}): read it as a table with --data.init_args.source hub "
                "--data.init_args.hub_dataset <it> --data.init_args.hub_image_column <its image key> "
                "--data.init_args.hub_caption_column <its caption key>")
    return ""


def coco_unsigned_images(annotation_file: Path, image_dir: Path) -> list[tuple[str, str | None]]:
    """The images ``annotation_file`` names that ``image_dir``'s signature does not follow (:func:`unsigned_images`: a
    labelling tool's absolute paths, names without an image's suffix), for the cache to follow their content too."""
    if not annotation_file.is_file() or not may_name_unsigned_images(annotation_file, rb'"file_name"\s*:\s*'):
        return []
    content = read_json(annotation_file, "COCO annotation file")
    entries = content.get("images") if isinstance(content, dict) else None
    names = (entry.get("file_name") for entry in entries or [] if isinstance(entry, dict))
    return unsigned_images((name for name in names if isinstance(name, str)), image_dir)


# where COCO 2014's download holds a COCO 2017 split's photos: 2017's train photos are 2014's train and most of its val
COCO2014_HOMES = {"train2017": ("train2014", "val2014"), "val2017": ("val2014",)}


def coco2014_folders(image_dir: Path) -> list[Path]:
    """COCO 2014's folders beside a COCO 2017 split's folder that is not there (or holds nothing: an unzip not done),
    when all that hold its photos are (``train2014/`` and ``val2014/`` for ``train2017/``, ``val2014/`` for
    ``val2017/``): the same photos under COCO 2014's names, which its annotations are then read with; else none."""
    homes = [image_dir.parent / name for name in COCO2014_HOMES.get(image_dir.name, ())]
    if not homes or not all(home.is_dir() for home in homes):
        return []
    if image_dir.is_dir():
        with os.scandir(image_dir) as entries:
            if next(entries, None) is not None:
                return []
    return homes


def coco_image_folder(image_dir: Path) -> tuple[Path, str]:
    """The folder a split's images are read under (its own, or COCO 2014's download in its place: its parent), and what
    a refusal calls it: naming COCO 2014's folder that is lacking, when the other is there."""
    if coco2014_folders(image_dir):
        return image_dir.parent, "COCO image folder"
    there = [name for name in COCO2014_FOLDERS if (image_dir.parent / name).is_dir()]
    lacking = [name for name in COCO2014_HOMES.get(image_dir.name, ()) if name not in there]
    return image_dir, "COCO image folder" + (f" (COCO 2014's {there[0]}/ is beside it, but {image_dir.name}'s photos are also in "
                                             f"its {lacking[0]}/, which is not)" if there and lacking else "")


def coco_records(annotation_file: Path, image_dir: Path, records: BadRecords, setting: str = "val_split") -> ImageRecords:
    """``(image_id, file_name, image, captions)`` of the official layout (see :class:`ImageRecords`); with COCO 2014's
    download in place of the split's folder, its photos (:func:`coco2014_folders`)."""
    homes = coco2014_folders(image_dir)
    folder = image_dir.parent if homes else image_dir
    return ImageRecords(read_coco_annotations(annotation_file, folder, records, homes[0].name if homes else "", setting), folder)


class ImageRecords:
    """``(image_id, file_name, image, captions)``: each image read and checked by the image pass's threads; its
    ``len``, the number of images (what a job's log hears the image pass's progress out of)."""

    def __init__(self, images: list[CocoImage], image_dir: Path) -> None:
        self.images, self.image_dir = images, image_dir

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[int, str, Unchecked, list[tuple[int, str]]]]:
        for image in self.images:
            path = self.image_dir / image.file_name
            yield image.image_id, image.file_name, Unchecked(path, functools.partial(_undecodable, path, image.image_id)), image.captions


def _undecodable(path: Path, image_id: int, problem: str) -> list[str]:
    return [f"{path} (image id {image_id}) cannot be decoded: {problem}"]


# Karpathy's splits of COCO 2014: "train" is his train and restval (113,287 images), as papers train on.
KARPATHY_SPLITS = {"train": ("train", "restval")}


def read_karpathy(split_file: Path, image_root: Path, split: str, records: BadRecords) -> list[CocoImage]:
    """The images of ``split`` in Karpathy's ``dataset_coco.json`` (``images``: ``filepath``, ``filename``,
    ``split`` in train/restval/val/test, ``sentences`` with ``raw``, ``cocoid``), with their captions;
    images are found at ``<image_root>/<filepath>/<filename>`` (COCO 2014's ``train2014/``, ``val2014/``), or COCO
    2017's copies of them (:func:`~mmcaption.data.image_sources.coco2017_copy`).
    Split ``train`` is train + restval, as the papers that report on Karpathy's test split train."""
    content = read_json(split_file, "Karpathy split file")
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DataError(f"{split_file} has no 'images' list: is it Karpathy's dataset_coco.json?")
    wanted = KARPATHY_SPLITS.get(split, (split,))
    images: dict[int, CocoImage] = {}
    id_name = "cocoid"  # Flickr30k's and Flickr8k's files in the same format number their images by imgid only
    for position, entry in enumerate(content["images"]):
        where = f"images[{position}]"
        if not isinstance(entry, dict) or entry.get("split") not in {"train", "restval", "val", "test"}:
            records.defer("malformed image entry", f"{where} needs a 'split' of train, restval, val or test")
            continue
        if entry["split"] not in wanted:
            continue
        id_name = "cocoid" if "cocoid" in entry else "imgid"
        image_id = entry.get(id_name)
        names = (entry.get("filepath", ""), entry.get("filename"))
        if not isinstance(image_id, int) or not all(isinstance(n, str) for n in names) or not names[1]:
            records.defer("malformed image entry", f"{where} needs an integer 'cocoid' (or 'imgid') and a 'filename' (in its 'filepath' if it has one)")
            continue
        where += f" ({id_name} {image_id})"
        file_name = f"{names[0]}/{names[1]}" if names[0] else names[1]
        if escapes_root(file_name):
            records.defer("image path escapes root", f"{where}: {file_name!r} escapes the image folder")
            continue
        if image_id in images:
            records.defer("duplicate image id", f"{where} repeats {id_name} {image_id}")
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            records.defer("malformed image entry", f"{where} has no 'sentences' list")
            continue
        captions = []
        for number, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not caption_text(raw):
                records.defer("empty caption", f"{where}, sentences[{number}] has no 'raw' text")
                continue
            captions.append((sentence.get("sentid", image_id * 100 + number), caption_text(raw)))
            note_html(records, raw, f"{where}, sentences[{number}]")
        if captions:
            images[image_id] = CocoImage(image_id, file_name, captions)
    if not images:  # (the bad records found above, kept, go with the missing images below, else)
        records.raise_deferred()
        raise DataError(f"{split_file} has no images of split {split!r} (Karpathy's splits: train (with restval), val, test)")
    for image in images.values():  # in another case or Unicode form, as Windows and macOS find it
        image.file_name = existing_spelling(image_root, image.file_name)
        if id_name == "cocoid" and not (image_root / image.file_name).is_file():  # only COCO 2017's download
            image.file_name = coco2017_copy(image_root, image.image_id) or image.file_name
    missing = [image for image in images.values() if not (image_root / image.file_name).is_file()]
    records.missing_images([(f"{id_name} {image.image_id}", image_root / image.file_name) for image in missing],
                           len(images), f"images of Karpathy's {split} split are", image_root)
    missing_ids = {image.image_id for image in missing}
    return [image for image in images.values() if image.image_id not in missing_ids]


def write_caption_split(
    entries: Iterable[tuple[int, str, bytes | Unchecked, list[tuple[int, str]]]],
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    records: BadRecords,
    metadata: dict,
    image_size: int | None = None,
) -> Path:
    """Write ``target/images`` (one row per image, shrunk to ``image_size`` if given) and
    ``target/captions`` (one row per caption, with its image's row index and its tokens), atomically."""

    def images():
        for image_id, file_name, data, captions in entries:
            yield {"image_id": image_id, "file_name": file_name, "image": data}, captions

    def caption_rows(image_index: int, captions: list[tuple[int, str]]):
        token_ids = text_ids(tokenizer, [c for _, c in captions])
        for (caption_id, caption), ids in zip(captions, token_ids):
            yield {"image_index": image_index, "caption_id": caption_id, "caption": caption, "token_ids": ids}

    return write_image_text_split(target, images(), caption_rows, IMAGE_FEATURES, "captions", CAPTION_FEATURES, records,
                                  metadata, image_size, image_total=len(entries) if isinstance(entries, Sized) else None)
