"""Preprocessed data on disk: content-addressed folders, published atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fingerprint(**parts) -> str:
    """A short stable hash of everything that determines a preprocessed folder's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_signature(path: Path) -> dict:
    """Path, size and modification time: enough to notice that an input file changed."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@contextmanager
def publish_atomically(target: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``target``; rename it to ``target`` only if the block completes.

    A run killed half-way leaves a ``.partial`` folder that is never mistaken for a complete one
    (and is removed by the next run's clean-up of its own staging folder, or by hand).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        shutil.rmtree(staging / "build", ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "meta.json").is_file():  # someone else's complete copy is fine; else fail
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file()
