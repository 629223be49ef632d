"""Folders a run writes: checked before any work starts, locked while a run writes them, and replaced
whole (never file by file) when the user asks for that.

- :func:`check_writable` creates a folder and writes a probe file in it, so a read-only mount or a missing permission
  is found in the first seconds, not at the first checkpoint hours later.
- :class:`FolderLock` keeps two runs from writing one checkpoint folder: the lock is an ``flock`` on ``.mmcaption.lock``
  in it, released by the operating system when the process ends however it ends (a kill leaves no stale lock); the
  file names the holder's PID, host, user and command.
- :func:`replace_folder` puts a folder written elsewhere (a temporary sibling) in place of another in two renames: a
  reader never sees a half-written folder, and nothing of the old one is left in it."""

from __future__ import annotations

import getpass
import itertools
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mmcaption.errors import ConfigError, FolderLockedError, NotWritableError, OutputExistsError, stops_held
from mmcaption.evaluation.report import server_results_paths, started_record, summary_path
from mmcaption.resources import owner_of

LOCK_FILE = ".mmcaption.lock"


def walk_through_links(folder: str | Path, unreadable: list[Path] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``folder`` into linked folders too (datasets are linked in as people share them), each
    real folder once: a link back up is not a loop. The caller may prune the folders it is given, as with
    ``os.walk``. The folders that cannot be listed (a teammate's private one: permission denied) are added to
    ``unreadable``, for the caller to say; ``os.walk`` passes them over without a word."""
    seen = set()
    said = None if unreadable is None else (lambda error: unreadable.append(Path(error.filename)))
    for root, folders, files in os.walk(folder, followlinks=True, onerror=said):
        real = os.path.realpath(root)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        yield root, folders, files


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` (and its parents) and write a probe file in it; refuse naming ``what`` it is for when that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".mmcaption-probe-"):
            pass
    except OSError as error:
        owner = f" ({owner_of(folder)})" if isinstance(error, PermissionError) else ""  # a teammate's: whose, its mode
        file = next((p for p in (folder, *folder.parents) if os.path.isfile(p)), None)  # was "File exists" / "Not a directory"
        why = f"{file} is a file, not a folder" if file else f"{error.strerror or error}{owner}"
        raise NotWritableError(f"cannot write {what} to {folder}: {why}") from None
    return folder


def lock_holder() -> str:
    """What a lock file says of the run holding it: on a cluster's shared disk a PID alone is of another node, whose
    user a teammate would look for (``4242 on node17, alice: mmcaption fit --config ...``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container's)
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"{os.getpid()} on {socket.gethostname()}, {user}: {' '.join(sys.argv)}"


def writing_run(folder: Path) -> str | None:
    """The run holding ``folder``'s lock (its PID, host, user and command), when another one does: a fit writing its
    checkpoints there now."""
    path = (Path(folder) / LOCK_FILE).resolve()
    if path in FolderLock.held():  # this process's own (a pipeline's earlier stage): not opened, as closing a file
        return None  # releases the process's POSIX locks on it (what flock is on NFS)
    try:
        import fcntl

        descriptor = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):  # no lock file: no run; Windows: not locked
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return os.read(descriptor, 1000).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(descriptor)


def being_written(folder: Path) -> str:
    """What a missing checkpoint's folder says, when a fit is writing it now (``--ckpt_path best`` named one that fit
    replaced before it was loaded): that run and the checkpoints there; else nothing."""
    if (run := writing_run(folder)) is None:
        return ""
    held = ", ".join(sorted(path.name for path in Path(folder).glob("*.ckpt"))) or "none yet"
    return (f" (a fit is writing that folder now, {run}: one it has not saved yet, or a best one it has replaced since "
            f"it was named; its checkpoints now: {held})")


IMAGE_HASHES = "image-hashes"  # in a cache folder: each image folder's hashes, by name, size and times
SPLIT_FOLDER = re.compile(r".+-[0-9a-f]{16}")  # a preprocessed split's folder: <split>-<fingerprint>


def is_cache_folder(folder: Path) -> bool:
    """Whether ``folder`` is a cache of mmcaption's (another stage's default ``preprocessed/`` beside its data, or a
    ``cache_dir``): its image hashes, or a preprocessed split (a ``meta.json`` in a ``<split>-<key>`` folder). A cache
    holds a few folders: of a photo folder (Visual Genome's 108k), its first thousand entries are looked at, not all."""
    try:
        return (folder / IMAGE_HASHES).is_dir() or any(SPLIT_FOLDER.fullmatch(child.name) and (child / "meta.json").is_file()
                                                       for child in itertools.islice(folder.iterdir(), 1000))
    except OSError:  # not a folder, or not to be listed: not one of ours to pass over
        return False


class FolderLock:
    """An exclusive lock on a folder (or, with ``name``, on one file's place in it) for this process's
    lifetime, re-entrant within the process. ``what`` and ``advice`` make the refusal's message."""

    _held: dict[Path, int] = {}  # lock file -> open descriptor, per process

    def __init__(self, folder: str | Path, name: str = LOCK_FILE, what: str | None = None,
                 advice: str = "give this run another --trainer.default_root_dir (the configs' folders are under it), or "
                               "another checkpoint folder (ModelCheckpoint's dirpath, in a copy of its config)") -> None:
        self.folder = Path(folder).resolve()
        self.path = self.folder / name
        self.what, self.advice = what or str(self.folder), advice

    def acquire(self) -> None:
        if self.path in self._held:
            return
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the folder is not locked
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = self._opened(fcntl)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(descriptor, 1000).decode(errors="replace").strip() or "unknown"
                os.close(descriptor)
                raise FolderLockedError(f"{self.what} is being written by another run (PID, host, user and command: {holder}); wait "
                                        f"for it to end, or {self.advice}") from None
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # a file another run took over and replaced while this one opened it: again
        os.ftruncate(descriptor, 0)
        os.write(descriptor, lock_holder().encode())
        self._held[self.path] = descriptor

    def _opened(self, fcntl) -> int:
        """The lock file, open: made as the umask allows (a teammate's run may take it after this one), and one another
        user's killed run left, that this user cannot open to write, taken over once no run holds it."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            left = os.open(self.path, os.O_RDONLY)  # a lock is taken on a file open to read too
        try:
            fcntl.flock(left, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return left  # held: refused by acquire, naming its run
        try:
            if _same_file(left, self.path):  # not one another run took over and replaced meanwhile
                self.path.unlink()
        finally:
            os.close(left)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)

    def release(self) -> None:
        self.release_file(self.path)

    @classmethod
    def release_file(cls, path: Path) -> None:
        descriptor = cls._held.pop(path, None)
        if descriptor is not None:
            path.unlink(missing_ok=True)
            os.close(descriptor)

    @classmethod
    def taken_again(cls, folder: str | Path) -> None:
        """The lock this process holds on ``folder``, taken again if the folder was removed under it (``rm -rf`` of a
        training run's checkpoints: the lock went with them, and a second fit started there trained beside this one,
        each deleting the other's best checkpoints of the same names); refused as :meth:`acquire` is if another run has
        taken the folder since. A look at two inodes: cheap enough for every step."""
        path = Path(folder).resolve() / LOCK_FILE
        descriptor = cls._held.get(path)
        if descriptor is None or _same_file(descriptor, path):
            return
        cls._held.pop(path)
        with suppress(OSError):  # (a stale handle)
            os.close(descriptor)
        FolderLock(folder).acquire()

    @classmethod
    def held(cls) -> set[Path]:
        """The lock files this process holds."""
        return set(cls._held)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path).st_ino
    except OSError:  # gone; or, on NFS, removed from another machine: a stale handle (ESTALE)
        return False


def take_checkpoint_folder(folder: str | Path) -> None:
    """Lock a run's checkpoint folder (:class:`FolderLock`), then remove the unfinished saves a killed run left there
    (``.<name>.ckpt.<random>.partial``: a save is written aside and renamed once whole), said once; no run writes there
    but this one now. They stayed for good, each as large as a checkpoint with its optimizer state."""
    lock = FolderLock(folder)
    lock.acquire()
    if lock.path not in FolderLock.held():  # no locking here (Windows): another run's save may be live
        return
    left = sorted(Path(folder).glob(".*.ckpt.*.partial"))
    for path in left:
        path.unlink(missing_ok=True)
    if left:
        print(f"note: removed {len(left)} unfinished checkpoint save{'s' * (len(left) > 1)} a killed run left in {folder} "
              f"({', '.join(p.name for p in left[:3])}{', ...' * (len(left) > 3)})", file=sys.stderr, flush=True)


def check_names_fit(output: Path) -> None:
    """Refuse an output whose name leaves no room for the files named from it (its summary, ...): was an OSError."""
    names = [started_record(output).name, *(f".{p.name}.partial" for p in (summary_path(output), *server_results_paths(output)))]
    folder = next((p for p in [output.parent, *output.parent.parents] if os.path.isdir(p)), Path("."))
    most = 255  # (Windows has no pathconf)
    with suppress(OSError, ValueError, AttributeError):
        most = os.pathconf(folder, "PC_NAME_MAX")
    longest, own = max(len(os.fsencode(name)) for name in names), len(os.fsencode(output.name))
    if longest > most:
        raise ConfigError(f"--data.output {output}: predict writes files beside it named from it, up to {longest - own} bytes longer "
                          f"({max(names, key=len).replace(output.name, '<name>')}), and its file system takes names of {most} "
                          f"bytes at most: give it a name of {most - longest + own} bytes or fewer (this one has {own})")


def output_lock(output: Path) -> FolderLock:
    """The lock a predict holds on its output's place while it writes it: two predicts into one output wrote
    one partial file, and left mixed rows under the second one's summary."""
    return FolderLock(output.parent, f".{output.name}.lock", what=f"output {output}", advice="give this run another --data.output")


@contextmanager
def locks_released_after() -> Iterator[None]:
    """Release, when the block ends however it ends, the folder locks taken inside it (a run's locks end
    with the run, also when several runs follow each other in one process)."""
    before = FolderLock.held()
    try:
        yield
    finally:
        for path in FolderLock.held() - before:
            FolderLock.release_file(path)


def check_new_folder(folder: str | Path, overwrite: bool, what: str, option: str, keep: tuple[str | Path, ...] = (),
                     marker: str | None = None, ignored: tuple[str, ...] = ()) -> Path:
    """Refuse a ``folder`` that exists with something in it, unless ``overwrite``; refuse a file; refuse, even with
    ``overwrite``, the working directory or a folder above it (it cannot be replaced), a folder that holds one of the
    inputs in ``keep`` (replacing it would delete them), and one without the file ``marker`` that an earlier output of
    the command holds (a mistyped parent folder of the user's). A link to a folder stands for the folder it points to,
    which is returned: replacing the link would leave the old model there. ``ignored``: names that do not count as
    content (a fresh Hub clone's ``.git``, which the caller keeps)."""
    folder = Path(folder)
    if folder.is_symlink() and folder.is_dir():
        folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{what} {folder} is a file, not a folder")
    resolved = folder.resolve()
    if Path.cwd().is_relative_to(resolved):
        raise OutputExistsError(f"{what} {folder} is the working directory or holds it; name a new folder, as {folder / 'export'}")
    for path in keep:
        if Path(path).resolve().is_relative_to(resolved):
            raise OutputExistsError(f"{what} {folder} holds {path}, which this command reads: replacing the folder would "
                                    "delete it; choose another folder")
    filled = folder.is_dir() and any(p.name not in ignored for p in folder.iterdir())
    if filled and marker is not None and not (folder / marker).is_file():  # said first: the option would not help
        held = sorted(p.name for p in folder.iterdir())
        raise OutputExistsError(f"{what} {folder} holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''} and no "
                                f"{marker}: it is not an earlier {what}'s, and {option} replaces only one of those; choose "
                                "another folder")
    if filled and not overwrite:
        raise OutputExistsError(f"{what} {folder} exists and is not empty; choose another folder, or replace it with {option}")
    check_writable(folder.parent if folder.parent != folder else folder, what)
    return folder


def staging_folder(folder: str | Path) -> Path:
    """An empty hidden sibling of ``folder`` to write into before :func:`replace_folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))


def umask() -> int:
    """The process's umask (reading it means setting it: put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions a new file gets here (the umask's): a temporary
    folder is private, and ``safetensors`` writes its files private too, which a folder to share is not."""
    mask = umask()
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def replace_folder(staging: Path, folder: str | Path) -> Path:
    """Put ``staging`` in place of ``folder`` (which may exist), leaving nothing of the old one. A Ctrl-C or SIGTERM
    between the two renames is acted on after both (it left neither folder in place, the old one hidden beside it)."""
    folder = Path(folder)
    old, swapped = None, False
    try:
        with stops_held():
            if folder.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
                os.replace(folder, old / folder.name)
            try:
                os.replace(staging, folder)
                swapped = True
            except BaseException:
                if old is not None:  # the old one back where it was
                    os.replace(old / folder.name, folder)
                raise
    finally:
        if old is not None and (swapped or not (old / folder.name).exists()):  # never the old one, unless replaced
            shutil.rmtree(old, ignore_errors=True)
    return folder


def claim_run_folders(loggers: list) -> list[Path]:
    """Make the run folders (``lightning_logs/NAME/version_N``) of a run's TensorBoard and CSV loggers now, each in one
    step that only one process can win: runs started at the same moment (a sweep, an array job) each read the same next
    free number, and wrote into one folder - each other's ``config.yaml``, two runs' curves in one place, and a run that
    failed at its start removed the other's event file. Loggers of one folder (TensorBoard's and CSV's, by default)
    share its version, as before. The folders this run made (not one a version given by name found there)."""
    made, versions = [], {}
    for logger in loggers:
        root = str(Path(logger.root_dir).resolve())
        if root in versions and getattr(logger, "_version", None) in (None, versions[root]):  # (a version named: its own)
            logger._version = versions[root]
            continue
        folder = _claimed(logger)
        versions[root] = logger.version
        if folder is not None:
            made.append(folder)
    return made


def check_named_runs_unused(loggers: list) -> None:
    """A fresh run given a logger version by name (``--trainer.logger.init_args.version lr3e-3``) whose folder holds a run
    already: refused, naming it. Lightning wrote the new run's config.yaml over the earlier one's and put both runs' curves
    in one folder; resuming (``--ckpt_path``) goes on in it as it should."""
    for logger in loggers:
        folder = Path(logger.log_dir) if getattr(logger, "_version", None) is not None else None
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            raise OutputExistsError(f"{folder} holds a run already (logger version {logger.version!r}): give this run another "
                                    "version name, resume that run with --ckpt_path, or remove the folder to start it afresh")


def _claimed(logger) -> Path | None:
    numbered = logger._version is None  # Lightning's next free number, read when log_dir is first asked for
    for _ in range(10_000):
        folder = Path(logger.log_dir)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            if not numbered:
                return None
            taken = logger.version  # another run took this number since it was read; Lightning's next counts folders
            logger._version = None  # only, and a file or a link to an unmounted disk has a version's name too
            logger._version = max(logger.version, taken + 1)
    raise NotWritableError(f"no free run folder under {Path(logger.log_dir).parent}")


def remove_unused_run(folder: str | Path) -> bool:
    """Remove a logger's run folder (``lightning_logs/NAME/version_N``) that holds only what a logger writes as
    a run starts: its ``config.yaml``, ``hparams.yaml`` and TensorBoard event files. Called for a folder this run made
    (:func:`claim_run_folders`: no other run writes there), when it failed before its first training step (a wrong setting, refused data): left, each such try
    took a version number and listed an empty run in TensorBoard. A folder holding anything else is kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any(not f.is_file() or not (f.name in ("config.yaml", "hparams.yaml") or f.name.startswith("events.out.tfevents."))
           for f in folder.iterdir()):
        return False
    shutil.rmtree(folder)
    with suppress(OSError):  # its name's folder, left empty (a resume that trained nothing, a first run refused)
        folder.parent.rmdir()
    return True
