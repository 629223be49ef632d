"""A file's name as Windows and macOS would find it on Linux: a Windows path's backslashes, either Unicode form of an
accented name (macOS writes decomposed ones), any case (a spreadsheet made on Windows says ``IMG_001.jpg`` where the
camera wrote ``IMG_001.JPG``), and a Windows machine's absolute path by the end of it that is here."""

from __future__ import annotations

import errno
import functools
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path, PureWindowsPath

PATTERN_MARKS = re.compile(r"[*?[]")  # the marks of a shell pattern


def existing_spelling(root: Path, name: str) -> str:
    """``name`` as written when ``root / name`` exists; else the first other spelling of it that exists there, as
    Windows and macOS would find it - a Windows path's backslashes read as separators, each part in either Unicode
    form (macOS writes decomposed names: ``é`` as ``e`` and an accent) and in any case (a spreadsheet made on Windows
    names ``IMG_001.jpg`` what the camera wrote ``IMG_001.JPG``), or a Windows machine's absolute path by its end
    (:func:`_from_windows`) - or ``name`` itself if none does."""
    if _exists(root / name):
        return name
    spelling = name.replace("\\", "/") if "\\" in name and os.sep == "/" else name
    if _exists(root / spelling):
        return spelling
    found, parts = root, Path(spelling).parts
    for part in parts:
        if part in ("/", "..", ".") or _exists(found / part):
            found = found / part
            continue
        matches = _names_in(os.path.abspath(found), _mtime(found)).get(folded_name(part), [])
        if len(matches) != 1:  # none there, or two that differ only in case: not guessed
            return _from_windows(root, name) or spelling
        found = found / matches[0]
    return str(found.relative_to(root)) if not Path(spelling).is_absolute() else str(found)


def home_expanded(name: str) -> str:
    """``name`` with a leading ``~/`` (or a Windows user's ``~\\``) read as the home folder, as the shell reads it in a list
    or a table written by hand (``~/photos/a.jpg``)."""
    return str(Path.home() / name[2:]) if name.startswith(("~/", "~\\")) else name


def _exists(path: Path) -> bool:
    """``path.exists()``, false for a name no file can have (a part over 255 bytes: an image's base64 text, a caption
    in the image column), which Python's raises on."""
    return _asked(path.exists)


def is_file(path: Path) -> bool:
    """``path.is_file()``, false for a name no file can have (see :func:`_exists`)."""
    return _asked(path.is_file)


def is_dir(path: Path) -> bool:
    """``path.is_dir()``, false for a name no file can have (see :func:`_exists`)."""
    return _asked(path.is_dir)


def _asked(question: Callable[[], bool]) -> bool:
    try:
        return question()
    except OSError as error:  # a name too long for any file; a folder that cannot be read is said where it is read
        if error.errno != errno.ENAMETOOLONG:
            raise
        return False


def _from_windows(root: Path, name: str) -> str | None:
    """A Windows machine's absolute path (``C:\\Users\\me\\coco\\train2017\\1.jpg``, a share's ``\\\\nas\\...``) read on Linux or
    macOS: the longest end of it that is under ``root`` (``1.jpg`` in the image folder), as the files were copied
    over; else None."""
    windows = PureWindowsPath(name)
    if os.sep != "/" or not windows.drive:
        return None
    parts = windows.parts[1:]
    # the file's name alone only where its folder is the image folder's name (...\train2017\1.jpg in train2017/): a
    # camera's IMG_0001.JPG of another year's folder is not this one
    alone_too = len(parts) > 1 and folded_name(parts[-2]) == folded_name(root.name)
    for start in range(len(parts) - (0 if alone_too else 1)):
        tail = existing_spelling(root, "/".join(parts[start:]))
        if is_file(root / tail):
            return tail
    return None


def folded_name(name: str) -> str:
    """``name`` as Windows and macOS compare names: in either Unicode form and any case."""
    return unicodedata.normalize("NFC", name).casefold()


def _mtime(folder: Path) -> int:
    try:
        return folder.stat().st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=64)
def _names_in(folder: str, mtime: int) -> dict[str, list[str]]:
    """A folder's names by their case-folded NFC spelling, read once per folder as it is (``mtime``)."""
    names: dict[str, list[str]] = {}
    try:
        for entry in os.scandir(folder):
            names.setdefault(folded_name(entry.name), []).append(entry.name)
    except OSError:
        pass
    return names
