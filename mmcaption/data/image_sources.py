"""Where the images to predict come from: a folder (searched recursively), one image or URL, or a text file listing
them, one per line (``ls *.jpg > list.txt``, or piped in as ``/dev/stdin``); and the images a questions file's rows
name, relative to its folder. Names are found as Windows and macOS find them (:func:`mmcaption.images.existing_spelling`).
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data.caption_cells import INVISIBLE
from mmcaption.data.records import DataError, existing_spelling, not_utf8, packed_file
from mmcaption.errors import unexpanded_variable
from mmcaption.file_kinds import kind_of_file
from mmcaption.file_spellings import PATTERN_MARKS, home_expanded, is_file
from mmcaption.folders import IMAGE_HASHES, SPLIT_FOLDER, walk_through_links
from mmcaption.images import (
    IMAGE_SUFFIXES,
    InlineImage,
    RemoteImage,
    check_image,
    file_uri_path,
    is_hidden,
    is_inline_image,
    is_url,
    local_file,
)
from mmcaption.resources import owner_of
from mmcaption.terminal import shell_word

# a one-column list saved from a spreadsheet starts with its column's name
COLUMN_NAMES = {"image", "images", "img_path", "image_path", "path", "file", "filename", "file_name", "photo", "url", "urls",
                "image_url", "src", "uri", "link"}  # a CMS's or pandas' export of a URL column


def _folder_files(folder: Path) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """The files under ``folder`` and its subfolders, linked ones included (each real folder once: a link
    back up is not a loop), hidden files and folders and mmcaption's own caches left out; the links that point nowhere;
    the folders that cannot be read; and the caches left out."""
    files, broken, unreadable, caches = [], [], [], []
    for root, folders, names in walk_through_links(folder, unreadable):
        splits = [name for name in folders if SPLIT_FOLDER.fullmatch(name) and (Path(root) / name / "meta.json").is_file()]
        if splits:  # a data folder's preprocessed/ (trained on from this folder), or a cache_dir given here: not photos
            caches.append(Path(root))
            folders[:] = [name for name in folders if name not in {*splits, IMAGE_HASHES, "datasets"}]
        folders[:] = sorted(name for name in folders if not is_hidden(Path(name)))
        for name in names:
            file = Path(root) / name
            if not is_hidden(file):
                (files if file.is_file() else broken if not file.exists() else []).append(file)
    return files, broken, unreadable, caches


def _pattern_images(source: str, note) -> list[tuple[str, Path]] | None:
    """The images a shell pattern names (``photos/*.jpg``, ``shoot/**/*.JPG``) where no shell expanded it: in quotes, in
    a config, on Windows. Matched as the shell does, else in any case, as Windows and macOS match names (``*.jpg`` of
    an iPhone's ``IMG_0001.JPG``); hidden files only by a pattern that names them. None for a source without a
    pattern's marks; a pattern that matches no image is refused, saying what it matches."""
    if not PATTERN_MARKS.search(source):
        return None
    pattern = home_expanded(source)
    exact = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    either = sorted(Path(p) for p in glob.glob(_any_case(pattern), recursive=True))
    found = exact or either
    images = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    others = Counter(p.suffix.lower() or "no suffix" for p in found if p.is_file() and p not in images)
    if not images:
        raise DataError(f"no image matches the pattern {source} (looked for from {Path.cwd()}" + (
            f"; it matches {_counted(others)}" if others else "") + f"); images are {', '.join(sorted(IMAGE_SUFFIXES))}")
    if others and note is not None:
        note(f"{source}: {sum(others.values())} files it matches left out, not images by their names ({_counted(others)})")
    cased = [p for p in either if p not in exact and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES] if exact else []
    if cased and note is not None:  # as a shell on Linux leaves them out; Windows' and macOS' own matching would not
        note(f"{source}: {len(cased)} images that it matches only in another case are left out, as a shell leaves them (the "
             f"first: {cased[0]}); a pattern of either case takes them too "
             f"({source[:len(source) - len(Path(source).name)]}{_any_case(Path(source).name)})")
    return [(str(image), image) for image in images]


def _any_case(pattern: str) -> str:
    """``pattern`` with each letter outside a ``[...]`` class matching either case (``*.jpg`` -> ``*.[jJ][pP][gG]``)."""
    out, inside = [], False
    for char in pattern:
        if char == "[" and not inside:
            inside = True
        elif char == "]" and inside:
            inside = False
        elif not inside and char.lower() != char.upper():
            char = f"[{char.lower()}{char.upper()}]"
        out.append(char)
    return "".join(out)


def unreadable_note(folder: Path, unreadable: list[Path]) -> str | None:
    """A note of the folders under ``folder`` that could not be read (their images are not there to be used), None
    when there are none; ``folder`` itself unreadable is refused, naming its owner."""
    if folder in unreadable:
        raise DataError(f"folder {folder} cannot be read (permission denied): {owner_of(folder)}")
    return (f"{folder}: {len(unreadable)} folder{'s' if len(unreadable) > 1 else ''} could not be read (permission denied, "
            f"the first: {unreadable[0]}): the images in {'them' if len(unreadable) > 1 else 'it'} are left out"
            ) if unreadable else None


def find_images(source: str, note=rank_zero_info, piped: dict[str, bytes] | None = None) -> list[Path]:
    """Images named by ``source``: a folder (searched recursively; hidden files and folders left out, and
    ``note`` told how many other files were), a text file with one path per line (relative to the
    file; as Windows writes it: a byte-order mark, quoted paths, backslashes; ``http(s)://`` URLs), or a
    single image (a file or a URL)."""
    return [path for _, path in named_images(source, note, piped)]


def named_images(source: str, note=rank_zero_info, piped: dict[str, bytes] | None = None) -> list[tuple[str, Path]]:
    """:func:`find_images`, each image with the name the user gave it: a list's line as written (what a join of the
    captions back onto the list matches; the file found may be spelled otherwise, or lie relative to the list's
    folder), the image or URL given, or the path in the folder given."""
    if is_url(source):
        return [(source, RemoteImage(source))]
    # in another case or Unicode form, as Windows and macOS find it; "-" is the standard input, as in `ls | ... -`
    path = local_file(Path("/dev/stdin" if source == "-" else source))
    if path.is_dir():
        files, broken, unreadable, caches = _folder_files(path)
        passed_over = unreadable_note(path, unreadable)
        images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
        others = Counter(p.suffix.lower() or "no suffix" for p in files if p.suffix.lower() not in IMAGE_SUFFIXES)
        if broken:
            others["links to nothing"] = len(broken)
        if not images:  # images under hidden names only (.IMG_0001.JPG, .thumbnails/): left out, and said so
            hidden = sorted(entry.name for entry in path.iterdir() if is_hidden(entry))
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in folder {path}"
                            + (f"; it has {_counted(others)}" if others else "")
                            + (f"; hidden files and folders ({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}) "
                               "are left out, as the system's own: rename those that are photos" if hidden else ""))
        dangling = others.pop("links to nothing", 0)
        if others and note is not None:
            note(f"{path}: {sum(others.values())} files left out, not images by their names ({_counted(others)}); "
                 f"images are {', '.join(sorted(IMAGE_SUFFIXES))}")
        if dangling and note is not None:
            note(f"{path}: {dangling} link{'s' if dangling > 1 else ''} left out that point{'' if dangling > 1 else 's'} to "
                 f"nothing (the first: {broken[0]})")
        if passed_over and note is not None:
            note(passed_over)
        if caches and note is not None:
            note(f"{path}: mmcaption's preprocessed data left out ({', '.join(map(str, caches))}), not photos")
        return [(str(image), image) for image in images]
    if not path.exists():
        if (matched := _pattern_images(source, note)) is not None:
            return matched
        raise DataError(f"image source not found: {path}{unexpanded_variable(path)}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [(source, path)]
    if path.suffix.lower() in (".json", ".jsonl"):
        raise DataError(f"{path} is JSON (a predict output?), not an image list: give a folder of images, one image, "
                        "a text file with one image path per line, or a COCO image-info file (an 'images' list of 'id' and "
                        "'file_name': COCO's image_info_test2017.json, nocaps' nocaps_test_image_info.json)")
    regular = path.is_file()
    if regular and (packed := packed_file(path)):  # a zip of the photos: said before it is read whole
        raise DataError(packed)
    # a list piped in (/dev/stdin, <(ls)) is kept in ``piped`` when given, and read from there when asked for again: a
    # second read of /dev/stdin from a terminal would wait for more
    data = path.read_bytes() if regular or piped is None or str(path) not in piped else piped[str(path)]
    if not regular and piped is not None:
        piped[str(path)] = data
    header = data.split(b"\n", 1)[0].decode("utf-8-sig", "replace").strip()  # a table's header: of questions, most likely
    if path.suffix.lower() in (".csv", ".tsv") and ("," in header or "\t" in header) and not (
            is_url(header) or _there(user_path(header, path.parent))):
        captioned = "caption" in header.lower()  # an image,caption sheet: captioned and scored against its captions by test
        raise DataError(f"{path} is a table, not an image list: " + (
                        f"a table of images and their captions is captioned and scored by mmcaption test with "
                        f"--data.init_args.source hub --data.init_args.hub_dataset {shell_word(path)} (see the README's Data)" if captioned else
                        "questions about images go to --data.csv_file with --config configs/predict/multiple_choice.yaml "
                        "(multiple choice) or --data.questions_file with configs/predict/questions.yaml") +
                        "; --data.images takes a folder of images, one image, or a text file with one image path per line")
    if check_image(data) is None:  # an image under another name (a download's .jpg_large, no suffix)
        return [(source, path)]
    if (kind := kind_of_file(data)) != "text" and not kind.startswith(("JSON", "its first bytes")):  # (a PDF's lines were
        raise DataError(f"{path} is {kind}; images are given as a folder of them, one image, or a text file with one "
                        "image path per line")  # looked for as images: "'%PDF-1.4' not found")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if regular and (data[:2] in (b"\xff\xfe", b"\xfe\xff") or _TEXT_LIKE.fullmatch(data[:4096])):  # a list in another encoding
            raise not_utf8(path, table=False) from None  # its line, and how to save it as UTF-8
        raise DataError(f"{path} is neither an image nor a list of image paths in UTF-8 text (byte {error.start} is "
                        f"{data[error.start:error.start + 1]!r}): give a folder of images, one image, or a text file with "
                        "one image path per line, saved as UTF-8") from None
    # lines end at \n, \r\n or (an old Mac's) \r, not at U+2028 or \x1c as splitlines() ends them
    names = [line.strip().strip('"').strip("'").strip() for line in re.split(r"\r\n|\r|\n", text)]
    root = path.parent if regular else Path(".")
    if names and names[0].lower() in COLUMN_NAMES and not _there(user_path(names[0], root)):  # a spreadsheet's column
        if note is not None:
            note(f"{path}: its first line {names[0]!r} names the column, not an image: left out")
        names = names[1:]
    # a comment written by hand ("# my list", as shell scripts' lists have them) read as an image: "image not found"
    comments = {name for name in names if name.startswith("#") and not _there(user_path(name, root))}
    if comments and note is not None:
        note(f"{path}: {len(comments)} line(s) beginning with # read as comments, left out (first: {next(n for n in names if n in comments)!r})")
    names = [name for name in names if name and name not in comments]
    if not names:
        raise DataError(f"image list {path} is empty")
    return list(zip(names, image_paths(names, root, path, where="a line gives an absolute path", beside=False)))


def _counted(suffixes: Counter) -> str:
    return ", ".join(f"{count} x {suffix}" for suffix, count in suffixes.most_common())


_TEXT_LIKE = re.compile(rb"[^\x00-\x08\x0e-\x1f\x7f]*")  # no control characters but blanks: text, not a PDF or an archive
# blanks and invisible marks at a path's edges: a caption's (zero-width characters, byte order marks) and direction marks
_EDGE_MARKS = " \t" + INVISIBLE + "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def user_path(name: str, root: Path) -> Path | RemoteImage | InlineImage:
    """The image a file names: relative to ``root`` unless absolute, a URL, or the image itself (a ``data:`` URL, base64
    text: :func:`~mmcaption.images.is_inline_image`) as it is. When the name as
    written is not there, a Windows path's backslashes are read as separators, and an accented name is
    looked for in its other Unicode form (macOS writes decomposed names: ``é`` as ``e`` and an accent)."""
    # Windows' Properties dialog copies a path with U+202A in front ("image not found"); a file manager, a file:// URI
    name = file_uri_path(name.strip(_EDGE_MARKS))
    if is_url(name):
        return RemoteImage(name)
    if is_inline_image(name):  # a dataframe's export of its images, as MMBench's TSVs carry theirs
        return InlineImage(name)
    name = home_expanded(name)  # a list written by hand: ~/photos/a.jpg, as the shell would read it
    return root / existing_spelling(root, name)


def image_paths(names: list[str], root: Path, file: Path, where: str = "--data.image_root gives their folder",
                given: bool = False, beside: bool = True) -> list[Path | RemoteImage | InlineImage]:
    """The images of a questions file's rows, relative to ``root`` (``given``: by ``--data.image_root``, else the
    file's folder); refused, naming the first, when not one of them is there (a wrong folder would otherwise give a
    run of "image not found" rows), with a folder above ``root`` that holds it (LLaVA's scripts take
    ``images/test`` where the file names ``test/5/image.png``)."""
    paths = [user_path(name, root) for name in names]
    if paths and not any(_there(p) for p in paths[:COCO2014_LOOKED_FOR]):
        paths = coco2014_read_from_2017(names, root, file) or paths
    holding = _folders_beside(names, root) if paths and beside and not given and not any(_there(p) for p in paths) else []
    named = [place for place in holding if place.name.lower() == file.stem.lower()]  # (val/ for val.json)
    if found := named[0] if len(named) == 1 else holding[0] if len(holding) == 1 else None:
        rank_zero_info(f"{file}: its images are read from {found}, a folder beside it that holds them (unless {where})")
        paths = [user_path(name, found) for name in names]  # (VizWiz's Annotations/val.json, its photos in val/)
    if paths and not any(_there(p) for p in paths):
        from_here = user_path(names[0], Path("."))
        above = next((folder for folder in list(root.parents)[:2] if is_file(folder / names[0])), None)
        hint = (f"; {from_here} is there relative to the working directory" if _there(from_here) else
                f"; it is under {above}: give that folder" if above else
                f"; {', '.join(map(str, holding[:3]))} beside it each hold them: give the one as --data.image_root" if holding
                else "")
        raise DataError(f"none of the {len(paths)} images of {file} was found: the first, {names[0]!r}, was looked for at "
                        f"{paths[0]}. Images are relative to {root} " +
                        ("(given by --data.image_root)" if given else f"(the file's folder, unless {where})") + hint)
    return paths


def _folders_beside(names: list[str], root: Path) -> list[Path]:
    """The folders in ``root`` or beside it that hold every one of the first images a file names."""
    places = [folder for place in dict.fromkeys((root, root.parent)) for folder in folders_in(place) if folder != root]
    looked = list(dict.fromkeys(names))[:20]  # (several questions of one photo: its name once)
    return [place for place in places if all(_there_or_not(user_path(name, place)) for name in looked)]


def folders_in(folder: Path) -> list[Path]:
    """The folders in ``folder`` that may hold a file's photos, in order: not hidden, not macOS' zip leftovers, not a
    cache's; none when it is not there or may not be listed (another user's)."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [child for child in children if not child.name.startswith((".", "__MACOSX")) and child.name != "preprocessed"
            and _is_dir(child)]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _there_or_not(image: Path | RemoteImage | InlineImage) -> bool:
    """:func:`_there`, a folder that may not be looked in (another user's) read as not holding it."""
    try:
        return _there(image)
    except OSError:
        return False


def _there(image: Path | RemoteImage | InlineImage) -> bool:
    """Whether an image a file names is there to read (a URL's is read when its row is)."""
    return not isinstance(image, Path) or is_file(image)


def coco2017_copy(root: Path, image_id: int) -> str | None:
    """COCO 2017's copy of a COCO 2014 image (``train2014/COCO_train2014_<id>.jpg``) under ``root``: 2017's train
    and val folders hold the same 123,287 photos, named by their id alone (``val2017/<id, 12 digits>.jpg``), so
    Karpathy's and VQAv2's files read with the images the COCO 2017 download gave."""
    for folder in COCO2017_FOLDERS:
        name = f"{folder}/{image_id:012d}.jpg"
        if (root / name).is_file():
            return name
    return None


COCO2017_FOLDERS = ("train2017", "val2017")


COCO2014_NAME = re.compile(r"(?:.*[/\\])?COCO_(?:train|val)2014_(\d+)\.jpg")
COCO2014_LOOKED_FOR = 50  # the first images tried before COCO 2017's copies are looked for


def coco2014_read_from_2017(names: list[str], root: Path, file: Path) -> list[Path] | None:
    """COCO 2017's copies of the COCO 2014 photos ``names`` gives (POPE's and other benchmarks'
    ``COCO_val2014_000000310196.jpg``) when ``root`` holds 2017's download: its ``train2017/`` and ``val2017/``, or is one
    of them (val2014's photos went to both). None when the first names are no 2014 names, or none has a copy there."""
    ids = [int(match.group(1)) if (match := COCO2014_NAME.fullmatch(name)) else None for name in names]
    if all(image_id is None for image_id in ids[:COCO2014_LOOKED_FOR]):
        return None
    homes = [root, *([root.parent] if root.name in COCO2017_FOLDERS else [])]

    def copy(image_id: int) -> Path | None:
        if (root / f"{image_id:012d}.jpg").is_file():
            return root / f"{image_id:012d}.jpg"
        return next((home / name for home in homes if (name := coco2017_copy(home, image_id))), None)

    if not any(copy(image_id) for image_id in ids[:COCO2014_LOOKED_FOR] if image_id is not None):
        return None
    copies = {image_id: copy(image_id) for image_id in dict.fromkeys(ids) if image_id is not None}
    found = sum(path is not None for path in copies.values())
    first = next(name for name, image_id in zip(names, ids) if image_id is not None)
    rank_zero_info(f"{file}: its images are named as COCO 2014's ({first}, ...); read "
                   f"from COCO 2017's copies of the same photos under {root} ({found} of {len(copies)} found)")
    return [copies[image_id] or user_path(name, root) if image_id is not None else user_path(name, root)
            for name, image_id in zip(names, ids)]


COCO2017_NAME = re.compile(r"(\d{12})\.jpg")  # a COCO 2017 photo, named by its id alone
_SAID_COPIES: set[str] = set()


def coco2014_download(root: Path) -> bool:
    """Whether ``root`` is COCO 2014's download, or one of its folders: ``train2014/`` or ``val2014/`` in it, or it."""
    return root.name in COCO2014_FOLDERS or any((root / folder).is_dir() for folder in COCO2014_FOLDERS)


COCO2014_FOLDERS = ("train2014", "val2014")


def coco2014_copies(names: list[str], root: Path, file: Path) -> dict[str, str]:
    """COCO 2014's copies, under ``root``, of the COCO 2017 photos ``names`` gives by their id alone and ``root`` lacks
    (LLaVA-Instruct-150k's ``000000215677.jpg``, or ``coco/train2017/000000215677.jpg``): ``COCO_train2014_<id>.jpg`` or
    ``COCO_val2014_<id>.jpg``, in ``root`` or in its ``train2014/`` and ``val2014/`` (2017's train photos are 2014's train
    photos and most of its val ones). Each name found, with its copy's path relative to ``root``; none when none has
    one there. The folders are listed once (not a look per photo: 81,479 of them in LLaVA-Instruct-150k). Said once (not
    for each split built), with where the others are when some are not found."""
    ids = {name: match.group(1) for name in dict.fromkeys(names) if (match := COCO2017_NAME.fullmatch(Path(name).name))}
    if not ids or not coco2014_download(root) and not any(is_file(root / f"COCO_{split}2014_{image_id}.jpg")
                                                          for image_id in list(ids.values())[:COCO2014_LOOKED_FOR]
                                                          for split in ("train", "val")):
        return {}
    places = [("", "train"), ("", "val"), ("train2014/", "train"), ("val2014/", "val")]  # (folder, the split its names say)

    def names_in(folder: str) -> set[str] | None:
        try:
            return set(os.listdir(root / folder)) if (root / folder).is_dir() else set()
        except OSError:  # a folder that may be read but not listed (a shared cluster's): its photos looked for one by one
            return None

    listed = {folder: names_in(folder) for folder in dict.fromkeys(folder for folder, _ in places)}

    def there(folder: str, photo: str) -> bool:
        return photo in listed[folder] if listed[folder] is not None else is_file(root / folder / photo)

    copies = {name: next((f"{folder}{photo}" for folder, split in places
                          if there(folder, photo := f"COCO_{split}2014_{image_id}.jpg")), None) for name, image_id in ids.items()}
    copies = {name: found for name, found in copies.items() if found}
    if not copies:
        return {}
    first = next(iter(copies))
    lacking = [folder for folder in COCO2014_FOLDERS if listed[f"{folder}/"] == set()]
    where = ("give the folder above it, which holds both, as image_root" if root.name in COCO2014_FOLDERS else
             f"{root} has no {lacking[0]}/" if len(lacking) == 1 else "")
    others = f"; COCO 2017's train photos are in 2014's train2014/ and val2014/: {where}" if len(copies) < len(ids) and where else ""
    said = (f"{file}: its images are named as COCO 2017 names them ({first}, ...) and are not in {root}; read from COCO "
            f"2014's copies of the same photos there ({copies[first]}, ...; {len(copies)} of {len(ids)} found){others}")
    if (key := f"{file}\n{root}\n{others}") not in _SAID_COPIES:  # once, not for each split built
        _SAID_COPIES.add(key)
        rank_zero_info(said)
    return copies
