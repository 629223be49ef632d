"""Work kept in chunks while it is computed, for a stopped run to go on from: the vision tower's features
(:mod:`~mmcaption.data.features`) and the image pass's checked images (:mod:`~mmcaption.data.image_pass`).

Each chunk is built in a hidden ``.build-<pid>-<host>-...`` folder beside the others and renamed into place once
whole, so a kill (SIGKILL, a power cut, the OOM killer) loses the chunk it was writing at most; what it left is told
from a live run's build by the process and host its name gives.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets

from mmcaption.data.cache import load_table, released, save_table


def build_prefix() -> str:
    return f".build-{os.getpid()}-{socket.gethostname()}-"  # whose: a kill's leftover told from a live run's


def building_elsewhere(folder: Path) -> bool:
    """Whether ``folder`` (or file) is a chunk another live process is computing (where no lock is held: NFS without lockd, Lustre
    without flock, Windows, two nodes' first runs): removed as a kill's leftover, that run stopped at 'Cannot find data
    file'. Its process is looked for on this host; another host's (or on Windows) is taken as live while written to."""
    if not folder.name.startswith(".build-") or not folder.exists():
        return False

    def written_within(seconds: float) -> bool:  # (a chunk's rows are written as they are computed)
        try:
            paths = [folder, *folder.rglob("*")] if folder.is_dir() else [folder]
            return time.time() - max(p.stat().st_mtime for p in paths) < seconds
        except (OSError, ValueError):
            return False

    pid, _, rest = folder.name[len(".build-"):].partition("-")  # <pid>-<host>-<mkdtemp's 8 characters>
    if pid.isdigit() and int(pid) == os.getpid():
        return False  # this process's own, left by a stop
    if pid.isdigit() and rest[:-9] == socket.gethostname() and os.name == "posix":
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # ended; or another container's, of this host's name: written to lately
            return written_within(600)
        except OSError:  # another user's process
            return True
        return True
    return written_within(3600)


def chunk_damage(folder: Path, rows: int) -> str | None:
    """``None`` if a chunk's table loads, holds ``rows`` rows and reads to its last; else what is wrong."""
    try:
        table = load_table(folder)
        held = len(table)
        if held == rows and held:
            table[held - 1]  # (a file cut short by a power cut fails here)
        del table
    except Exception as error:  # (any failure to read it back: it is computed again)
        return str(error)
    released()
    return None if held == rows else f"{held} rows, not {rows}"


def write_chunk(chunks: Path, name: str, rows: Callable[[], Iterator[dict]], count: int, schema: datasets.Features) -> None:
    """Compute chunk ``name`` (``count`` rows) in ``chunks`` and rename it into place whole."""
    build = Path(tempfile.mkdtemp(prefix=build_prefix(), dir=chunks))
    try:
        table = datasets.Dataset.from_generator(rows, features=schema, cache_dir=str(build / "cache"),
                                                fingerprint=f"{chunks.name}-{name}")
        save_table(table, build / "table")
        del table
        released()
        try:
            os.replace(build / "table", chunks / name)
        except OSError:
            if chunk_damage(chunks / name, count) is not None:
                raise  # (where no lock is held, Windows: another run's whole chunk in its place is as good)
    finally:
        shutil.rmtree(build, ignore_errors=True)
