"""What a run read, by content: a file's sha256 (once per process for an unchanged file; a checkpoint's as it was
loaded), and an input's record - a file's path, sha256 and size, or a folder's (MME's release) one sha256 of its question
files' names and contents."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

_LOADED: dict[str, tuple[str, str]] = {}  # a checkpoint path as given -> (the file it named, its sha256) as last loaded


def file_sha256(path: str | Path) -> str:
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, modified: int) -> str:  # a checkpoint of GBs is read once per process
    with open(path, "rb") as handle:
        return _read_sha256(handle)


def _read_sha256(handle: BinaryIO) -> str:  # (hashlib.file_digest: Python 3.11+)
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def hash_before_loading(handle: BinaryIO, path: str | Path) -> None:
    """Hash the open file a checkpoint is then loaded from (rewound after): :func:`loaded_file` gives the file and the
    sha256 of the bytes loaded, whatever has replaced it since (a validate's results named the step-6 last.ckpt a fit
    saved over it as it ran, the step-3 weights scored; or a ``save_last: link`` pointed at another)."""
    digest = _read_sha256(handle)
    handle.seek(0)
    _LOADED[os.path.abspath(path)] = (str(Path(path).resolve()), digest)


def loaded_file(path: str | Path) -> tuple[str, str] | None:
    """The file the checkpoint path ``path`` named and its sha256, as this process last loaded it
    (:func:`hash_before_loading`), else as they are now (``None``: not loaded, and no file there now)."""
    if loaded := _LOADED.get(os.path.abspath(path)):
        return loaded
    return (str(Path(path).resolve()), file_sha256(path)) if Path(path).is_file() else None


def input_record(path: Path) -> dict[str, Any]:
    """A file's path, sha256 and size; a folder's path, one sha256 of its ``.txt`` files (their paths in it and their
    contents: MME's questions, not its images) and how many there are."""
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": path.stat().st_size}
    files = sorted(file for file in path.rglob("*.txt") if file.is_file() and not any(  # not macOS's ._ copies, nor __MACOSX/
        part.startswith(".") or part.lower() == "__macosx" for part in file.relative_to(path).parts))
    digest = hashlib.sha256("".join(f"{file.relative_to(path)}\0{file_sha256(file)}\n" for file in files).encode())
    return {"path": str(path.resolve()), "sha256": digest.hexdigest(), "files": len(files)}
