"""Preprocessed data on disk: folders named by what their content was made from, published atomically, checked whole."""

from __future__ import annotations

import contextlib
import functools
import gc
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import datasets

from mmcaption.folders import IMAGE_HASHES, is_cache_folder, lock_holder, umask, walk_through_links
from mmcaption.images import IMAGE_SUFFIXES
from mmcaption.resources import disk_full_named


def fingerprint(**parts) -> str:
    """A short stable hash of everything that determines a preprocessed folder's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_signature(path: Path) -> dict:
    """What an input file holds: the sha256 of its content, so an edit is noticed even when the file
    keeps its size and time (``cp -p``, ``rsync -a``). Hashed once per process and file version (the
    change time, which no copy tool can set back, tells versions apart)."""
    stat = path.stat()
    return {"sha256": _content_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns), "size": stat.st_size}


@functools.lru_cache(maxsize=32)
def _content_hash(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return _file_hash(path, hashlib.sha256())


def _file_hash(path: str, digest: Any) -> str:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_signature(folder: Path, exclude: Path | None = None) -> dict:
    """What an image folder holds: its images' names and contents (recursively, through linked folders), so
    images added after a partial download, removed or replaced make a new cache, and the same images copied
    anew - ``cp -r`` to a node's scratch disk at each job's start, a download on a new machine, ``touch`` -
    do not (a requeued job resumes). An image's hash is remembered in ``exclude`` (this data module's cache, when
    given) and in this process by name, size and times: later runs read only files that are new, changed or
    copied anew (a fresh copy is read once, to be known as the same). Other
    files, ``exclude``, any ``preprocessed`` folder (another's) and hidden folders are left out."""
    if not folder.is_dir():
        return {"folder": "missing"}
    excluded = exclude.resolve() if exclude is not None else None
    images = []
    for root, folders, files in walk_through_links(folder):  # LLaVA-1.5's mixes link coco/, gqa/ ... into one root
        folders[:] = sorted(f for f in folders if not f.startswith(".") and f != "preprocessed"
                            and (Path(root) / f).resolve() != excluded and not is_cache_folder(Path(root) / f))
        for name in sorted(f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES):
            path = os.path.join(root, name)
            images.append((os.path.relpath(path, folder), path))
    return _content_signature(images, _memo_file(exclude, str(folder.resolve())))


def files_signature(files: list[tuple[str, str | None]], owner: str, exclude: Path | None = None) -> dict:
    """What the image files a dataset's rows name hold, as :func:`folder_signature` signs a folder's:
    ``(name as written, where it was found or None)`` each, the hashes remembered for ``owner`` (the dataset)
    in ``exclude``. A file missing, added or replaced makes a new cache."""
    return _content_signature(files, _memo_file(exclude, owner))


def _memo_file(cache: Path | None, owner: str) -> Path | None:
    return None if cache is None else cache.resolve() / IMAGE_HASHES / f"{fingerprint(folder=owner)}.json"


def _content_signature(images: list[tuple[str, str | None]], memo_file: Path | None) -> dict:
    memo = _read_memo(memo_file)
    digest, count, known = hashlib.sha256(), 0, {}
    for relative, path in images:
        try:
            if path is None:
                raise FileNotFoundError(relative)
            stat = os.stat(path)
            stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
            content = _image_hash(path, stamp, memo, relative)
        except OSError:  # not there, or a link that points nowhere: no image the data can use
            digest.update(f"{relative}\0missing\n".encode(errors="surrogateescape"))
            continue
        known[relative] = [*stamp, content]
        digest.update(f"{relative}\0{content}\n".encode(errors="surrogateescape"))  # a name of a Windows zip's bytes
        count += 1
    if memo_file is not None and known != memo:
        _write_memo(memo_file, known)
    return {"files": count, "sha256": digest.hexdigest()}


_IMAGE_HASHES: dict[tuple, str] = {}  # this process's: also when the cache cannot be written (a read-only one)


def _image_hash(path: str, stamp: list[int], memo: dict[str, list], relative: str) -> str:
    entry = memo.get(relative)
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stamp and isinstance(entry[3], str):
        return entry[3]
    key = (os.path.realpath(path), *stamp)
    if key not in _IMAGE_HASHES:
        _IMAGE_HASHES[key] = _file_hash(path, hashlib.blake2b(digest_size=16))
    return _IMAGE_HASHES[key]


def _read_memo(path: Path | None) -> dict[str, list]:
    try:
        memo = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):  # none yet, or damaged: the hashes are made again
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(path: Path, memo: dict[str, list]) -> None:
    """Written whole or not at all (several processes, on several nodes, may write it at once: each has the
    same hashes)."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp's is private: in a shared cache, others would hash every image again
        with os.fdopen(descriptor, "w") as handle:
            json.dump(memo, handle)
        os.replace(temporary, path)
    except OSError:  # a read-only cache: this process keeps the hashes; another run makes them again
        if temporary is not None:
            with suppress(OSError):
                os.unlink(temporary)


try:
    import fcntl

    _flock = fcntl.flock
except ImportError:  # Windows
    _flock = None


@contextmanager
def built_once(target: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock beside ``target`` for the block, waiting (and saying so) while another process holds it:
    the ranks of a multi-node run on a shared disk, or two runs started together, build a preprocessed folder once -
    the others wait, then find it complete and reuse it. The lock file is removed when the block ends. While it is
    held, what a killed build of ``target`` left behind is nobody's: :func:`publish_atomically` removes it."""
    if _flock is None:  # Windows: no flock; publish_atomically still keeps the folder whole
        yield
        return
    path = target.parent / f".{target.name}.lock"
    said = False
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # as the umask allows: a teammate's run may wait on it
        except OSError:
            try:  # a teammate's lock this user may not write: waited on all the same (a lock holds on a file open to read)
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:  # a read-only cache (reading a complete folder needs no lock; building fails by name)
                yield
                return
        try:
            try:
                _flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:  # whose run: on a cluster's shared disk, perhaps a teammate's job on another node
                    holder = os.pread(descriptor, 1000, 0).decode(errors="replace").strip() or "unknown"
                    print(f"waiting for another process to finish {what} (PID, host, user and command: {holder}) ...",
                          file=sys.stderr, flush=True)
                    said = True
                _flock(descriptor, fcntl.LOCK_EX)
        except OSError:  # a disk without working flock (NFS without lockd, Lustre without -o flock)
            os.close(descriptor)
            path.unlink(missing_ok=True)  # nobody can hold it there
            yield  # unlocked, as before: publish_atomically still keeps each folder whole
            return
        try:  # the file we locked is still the one at the path (not removed by the holder before us)
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    with contextlib.suppress(OSError):  # who holds it, for a run that waits (not written to a lock open to read)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, lock_holder().encode(), 0)
    _LOCKED.add(target.resolve())
    try:
        yield
    finally:
        _LOCKED.discard(target.resolve())
        with contextlib.suppress(OSError):  # a teammate's lock file, in a folder this user may not write to
            path.unlink(missing_ok=True)
        os.close(descriptor)


_LOCKED: set[Path] = set()  # the targets this process holds built_once's lock for


def remove_leftovers(target: Path) -> None:
    """Remove the staging folders of ``target`` that a killed build (SIGKILL, a power cut, the OOM killer) left, and
    ``target`` without its ``meta.json`` (a removal killed half-way), when this process holds the lock for ``target``
    or a folder above it: no live build owns them."""
    if not any(target.resolve() == held or held in target.resolve().parents for held in _LOCKED):
        return
    if target.is_dir() and not is_complete(target):
        print(f"note: removed {target}, left incomplete (no meta.json) by an interrupted removal", file=sys.stderr)
        discard(target)
    for leftover in sorted(target.parent.glob(f".{glob.escape(target.name)}.*.partial")):
        if leftover.is_dir():
            size = folder_bytes(leftover)
            shutil.rmtree(leftover, ignore_errors=True)
            print(f"note: removed {leftover} ({size / 2**20:.1f} MB), the unfinished build of a process that was killed",
                  file=sys.stderr, flush=True)


def folder_bytes(folder: Path) -> int:
    """What the files below ``folder`` take (a linked file not counted: it is another folder's)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def discard(folder: Path) -> None:
    """Remove ``folder``, gone at once for every reader: renamed to a hidden ``.partial`` name (the next build under
    :func:`built_once` removes it, should this be killed), then deleted. Removed in place, a kill left a folder without
    ``meta.json`` over which no build could be renamed (each run rebuilt the split, then failed: 'Directory not empty')."""
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    shutil.rmtree(aside, ignore_errors=True)


def released() -> None:
    """The tables a build made let go of the files they map in its staging folder, before it is published: Windows
    neither deletes a mapped file nor renames a folder that holds one (the first preprocessing failed there)."""
    gc.collect()


@contextmanager
def publish_atomically(target: Path, need: str = "a folder takes up to twice its size while it is built") -> Iterator[Path]:
    """Yield a staging folder beside ``target``; rename it to ``target`` only if the block completes. A run stopped
    half-way by an error, Ctrl-C or SIGTERM (:func:`~mmcaption.errors.signals_stop`) removes it; one killed outright
    (SIGKILL, a power cut) leaves a hidden ``.partial`` folder that is never mistaken for a complete one; the next build
    of ``target`` under :func:`built_once` removes it. ``need``: the room it takes, said with a full disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:  # a full disk said with what was built (datasets' writer names no file), and its need
        with disk_full_named(target, need):
            yield staging
            shutil.rmtree(staging / "build", ignore_errors=True)
            # mkdtemp's folder is private; a shared cache must be readable as others' files are (a setgid bit is kept)
            os.chmod(staging, (os.stat(staging).st_mode & 0o7000) | (0o777 & ~umask()))
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / "meta.json").is_file():  # someone else's complete copy is fine; else fail
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_table(table: datasets.Dataset, folder: Path) -> None:
    """``save_to_disk``, or for a table without rows (a split whose records are all text-only) its schema
    alone: ``datasets`` cannot load back an empty table it saved."""
    if len(table):
        table.save_to_disk(str(folder))
        return
    folder.mkdir(parents=True)
    (folder / EMPTY_TABLE).write_text(json.dumps(table.features.to_dict()))


def load_table(folder: Path) -> datasets.Dataset:
    """A table written by :func:`save_table`, memory-mapped."""
    if (folder / EMPTY_TABLE).is_file():
        features = datasets.Features.from_dict(json.loads((folder / EMPTY_TABLE).read_text()))
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    return datasets.load_from_disk(str(folder))


EMPTY_TABLE = "empty_table.json"


def is_complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def damage(folder: Path, tables: dict[str, str]) -> str | None:
    """``None`` if a complete folder is whole, else what is wrong with it: each table (name -> the
    ``meta.json`` count of its rows) must load, hold that many rows and read to its last row."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as error:
        return f"meta.json cannot be read: {error}"
    for table, count_key in tables.items():
        try:
            data = load_table(folder / table)
            if len(data) != meta.get(count_key):
                return f"{table} holds {len(data)} rows where meta.json says {meta.get(count_key)}"
            if len(data):
                data[len(data) - 1]
        except Exception as error:  # noqa: BLE001 - whatever a damaged Arrow folder raises, it is damage
            return f"{table} cannot be read ({type(error).__name__}: {error})"
    return None
