"""What the machine's limits are said as: a full disk, memory run out, a file another user's permissions keep from
this one, each named with what to change to go on (:func:`resource_message`), not a traceback."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType


def add_note(exception: BaseException, note: str) -> None:
    """``exception.add_note(note)``, which Python 3.10 (supported) lacks; :func:`resource_message` says the notes after
    its line (how a run resumes from a full disk or running out of memory)."""
    exception.__notes__ = [*getattr(exception, "__notes__", []), note]


HANDOVER = "a data-loader worker could not hand a batch to the main process"


def handover_message(error: BaseException) -> str:
    """Why a worker's batch never reached the main process (:func:`~mmcaption.data.workers.worker_init`), on one line:
    its tensors travel through shared memory, which a container's 64 MB (Docker's default) or ``ulimit -f`` ran out."""
    said = " ".join(str(error).split())
    if not any(word in said for word in ("shared memory", "shm", "No space left", "File too large")):
        return f"{HANDOVER}: {type(error).__name__}: {said}"
    instead = "--data.init_args.num_workers 0 loads the data in the main process, without it"
    if "File too large" in said:  # `ulimit -f`, which limits the files shared memory is made of too
        return (f"{HANDOVER} ({said}): a batch goes through files in shared memory (/dev/shm), and this process may write "
                f"files of {_file_size_limit()} at most (`ulimit -f`): raise the limit, or {instead}")
    try:
        usage = shutil.disk_usage("/dev/shm")
        room = f", {usage.free / 2**20:,.1f} MB free of {usage.total / 2**20:,.1f} MB now"
    except OSError:
        room = ""
    return (f"{HANDOVER} ({said}): a batch goes through shared memory (/dev/shm{room}), and the batches the workers "
            "prepare ahead did not fit - a Docker container has 64 MB unless `docker run --shm-size 8g` (or `--ipc host`) "
            f"gives it more. {instead}")


def notes(error: BaseException) -> list[str]:
    """The notes :class:`~mmcaption.advice.OutOfMemoryAdvice` added to ``error`` or to an error behind it (how a run
    resumes): a worker's death can be raised twice, the second time (torch's SIGCHLD handler, wherever the process
    stands) while the first, which the run's callbacks were told of, was being handled."""
    found, seen = [], set()
    while error is not None and id(error) not in seen:  # (not through a context put aside: `raise ... from None`)
        seen.add(id(error))
        found += getattr(error, "__notes__", [])
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return list(dict.fromkeys(found))


def _noted(text: str, error: BaseException) -> str:
    """``text``, then the notes :class:`~mmcaption.advice.OutOfMemoryAdvice` added to ``error`` (how a run resumes)."""
    return text + "".join(f"; {note}" for note in notes(error))


def _file_size_limit() -> str:
    try:
        import resource  # (not on Windows)
    except ImportError:
        return "a size"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "a size" if limit == resource.RLIM_INFINITY else f"{limit:,} bytes"


def resource_message(error: BaseException) -> str | None:
    """One line for a command stopped by a full disk or by running out of memory (what the user changes
    to go on), or None when ``error`` is neither."""
    for cause in causes(error):  # (before the full disk its words name: the disk is /dev/shm's memory)
        if HANDOVER in str(cause) and "/dev/shm" in str(cause):  # (another error sent so is a bug's: its traceback)
            line = next(line for line in str(cause).splitlines() if HANDOVER in line)
            return _noted(line[line.index(HANDOVER):], error)
    full = disk_full(error)
    if full is not None:
        return disk_full_message(full, notes(error))
    memory = out_of_memory(error)
    if memory is not None:
        return out_of_memory_message(memory, notes(error))
    worker = worker_killed(error)
    if worker is not None:
        return worker_killed_message(*worker, notes(error))
    if (large := file_too_large(error)) is not None:  # a FAT32 drive's 4 GB, or `ulimit -f`
        return _noted(f"{large.filename or 'a file'} grew larger than its disk or this process may write ({large.strerror}): "
                      "FAT32 drives hold files of up to 4 GB, and `ulimit -f` limits them too. What was complete before "
                      "stays whole; write to another disk, or raise the limit", error)
    for cause in causes(error):
        if isinstance(cause, PermissionError) and cause.filename:
            return permission_message(Path(cause.filename), cause.strerror)
    return None


def permission_message(path: Path, why: str | None, advice: str = "") -> str:
    """A file or folder this user may not read or write (another user's cache, checkpoints or lock, made private by
    their umask), named with its owner and mode, not a traceback."""
    owner = owner_of(path)
    try:
        unreadable = path.is_file() and not os.access(path, os.R_OK)  # another's private checkpoint
    except OSError:  # inside another user's private folder
        unreadable = False
    return (f"permission denied: {path} ({why or 'not allowed'}){'; ' + owner if owner else ''}. " + (advice or (
        "It is read, not written: its owner can make it readable (chmod g+r, in a group the two of you share), or give "
        "you a copy" if unreadable else
        "Point the setting that names it (data.init_args.cache_dir, the checkpoint folder, the output) at a folder of your "
        "own; a team shares its files by working with umask 002 in a group folder")))


def owner_of(path: Path) -> str:
    """``"<path> belongs to alice, mode drwxr-xr-x"`` of ``path``, or of the nearest folder above it that this user may
    look at (inside another user's private folder even ``exists()`` is refused); ``""`` when none."""
    for place in (path, *path.parents):
        try:
            info = place.stat()
        except OSError:
            continue
        try:
            import pwd

            name = pwd.getpwuid(info.st_uid).pw_name
        except (ImportError, KeyError):
            name = str(info.st_uid)
        return f"{place} belongs to {name}, mode {stat.filemode(info.st_mode)}"
    return ""


def causes(error: BaseException | None, context: bool = True) -> Iterator[BaseException]:
    """``error`` and the errors behind it, each once: its ``__cause__`` (raised from it), else, with
    ``context``, its ``__context__`` (met while handling it)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (error.__context__ if context else None)


# PyTorch's words: torch.OutOfMemoryError (CUDA, XPU), the CPU allocator's and the Apple MPS backend's RuntimeErrors
_OUT_OF_MEMORY = ("out of memory", "DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def out_of_memory(error: BaseException) -> BaseException | None:
    """The out-of-memory error behind ``error`` (a GPU's or the CPU allocator's), if that stopped the command."""
    for cause in causes(error, context=False):  # a wrapper's cause; not an error met while handling another
        if type(cause).__name__ == "OutOfMemoryError" or (
            isinstance(cause, RuntimeError) and any(words in str(cause) for words in _OUT_OF_MEMORY)
        ):
            return cause
    return None


def out_of_memory_message(error: BaseException, notes: list[str]) -> str:
    """What ran out and how much was asked (PyTorch's first sentences: its allocator statistics and hints
    follow, and ``MMCAPTION_TRACEBACK=1`` shows them), then ``notes``: where the run was and which settings
    take less memory (:class:`~mmcaption.advice.OutOfMemoryAdvice` adds them)."""
    text = " ".join(str(error).split())
    if "DefaultCPUAllocator" in text:
        text = "out of memory in RAM: " + text.split("DefaultCPUAllocator: ", 1)[1].split(". Error code")[0]
    else:
        text = ". ".join(text.split(". ")[:3]).rstrip(".")
    return " ".join([f"{text}.", *notes]) if notes else (
        f"{text}. Close what else uses that memory, or use a device with more")


# PyTorch's (and torchdata's) words for a DataLoader worker that died: its signal, when the loader saw it first
_WORKER_KILLED = re.compile(r"DataLoader worker \(pid (\d+)\) is killed by signal: ([^.]+)\.")
_WORKER_GONE = re.compile(r"DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly")


def worker_killed(error: BaseException) -> tuple[str, str | None] | None:
    """``(pid, signal name or None)`` of the data-loader worker whose death stopped the command, if one did."""
    gone = None
    for cause in causes(error):
        if match := _WORKER_KILLED.search(str(cause)):
            return match[1], match[2].strip()
        if gone is None and (match := _WORKER_GONE.search(str(cause))):
            gone = (match[1], None)
        if gone is None and isinstance(cause, EOFError | ConnectionError):
            gone = _dead_loader_worker(cause.__traceback__)
    return gone


def _dead_loader_worker(traceback: TracebackType | None) -> tuple[str, str | None] | None:
    """``(pid, signal name)`` of a worker that the loader in ``traceback`` (its ``_try_get_data``) finds dead: a worker
    killed as it handed a batch over closes the pipe mid-read, a bare ``EOFError`` without PyTorch's words."""
    while traceback is not None:
        loader = traceback.tb_frame.f_locals.get("self") if traceback.tb_frame.f_code.co_name == "_try_get_data" else None
        deadline = time.monotonic() + 2  # the pipe closes as the worker dies: its exit may take a moment to be seen
        for worker in getattr(loader, "_workers", ()):
            with suppress(Exception):  # a worker object of another kind: not said
                worker.join(max(0.0, deadline - time.monotonic()))
                if not worker.is_alive() and worker.exitcode:
                    code = worker.exitcode
                    return str(worker.pid), signal.strsignal(-code) if code < 0 else None
        traceback = traceback.tb_next
    return None


def worker_killed_message(pid: str, signal_name: str | None, notes: list[str]) -> str:
    """A data-loader worker killed (``kill -9``, most often the out-of-memory killer's), then ``notes``: where the run
    was, which settings take less memory and the checkpoint kept (:class:`~mmcaption.advice.OutOfMemoryAdvice`)."""
    text = f"a data-loader worker (pid {pid}) " + (f"was killed by signal {signal_name}" if signal_name else "exited unexpectedly")
    if signal_name in (None, "Killed"):
        text += (": on Linux most often by the out-of-memory killer, when the machine (or a container's memory limit) ran out "
                 f"of RAM; `dmesg` or `journalctl -k` then say 'Out of memory: Killed process {pid.split(',')[0]}'")
    return " ".join([f"{text}.", *notes]) if notes else (
        f"{text}. Lower the data's num_workers, or close what else uses that memory")


def dangling(path: Path) -> bool:
    """A symbolic link whose target is not there (moved with a project, or deleted): a glob lists it, ``stat`` raises."""
    return path.is_symlink() and not path.exists()


def dangling_note(path: Path) -> str:
    return f"{path} is a link to {os.readlink(path)}, which is not there (moved or deleted?)"


def file_too_large(error: BaseException) -> OSError | None:
    """The "file too large" error behind ``error`` (a FAT32 drive's 4 GB, ``ulimit -f``), if that stopped the command."""
    return next((c for c in causes(error) if isinstance(c, OSError) and c.errno == errno.EFBIG), None)


def disk_full(error: BaseException) -> OSError | None:
    """The "no space left" (or "disk quota exceeded") error behind ``error``, if that is what stopped the
    command: found through the chain of causes (``datasets`` wraps what its writer raised; pyarrow's
    errors carry the errno in their message only)."""
    for cause in causes(error):
        said = "No space left on device" in str(cause) or "Disk quota exceeded" in str(cause)
        if isinstance(cause, OSError) and (cause.errno in (errno.ENOSPC, errno.EDQUOT) or said):
            return cause
        if said:  # safetensors' SafetensorError ("I/O error: No space left on device (os error 28)") is no OSError
            return OSError(errno.ENOSPC, "No space left on device", getattr(cause, "filename", None))
    return None


@contextmanager
def disk_full_named(folder: Path, why: str) -> Iterator[None]:
    """A full disk whose error names no file (pyarrow's, datasets' own) said with the ``folder`` being written and
    ``why`` it needs the room (it was "the disk is full (No space left on device)", naming nothing)."""
    try:
        yield
    except Exception as error:
        if (full := disk_full(error)) is None or full.filename:
            raise
        number = full.errno or errno.ENOSPC  # (pyarrow's: its errno in its text alone)
        raise OSError(number, f"{os.strerror(number)}; {why}", str(folder)) from error


def disk_full_message(error: OSError, notes: list[str] = ()) -> str:
    """A full disk said as such: the file being written and the space left where it is, not a traceback,
    then ``notes`` (how a training run resumes: :class:`~mmcaption.advice.OutOfMemoryAdvice` adds it).
    Whatever was being written is removed or left beside the complete copy (preprocessed splits and
    checkpoints are written to a temporary file or folder first and renamed when whole)."""
    where = Path(error.filename) if isinstance(error.filename, str) else None
    folder = next((p for p in ([where, *where.parents] if where else []) if p.is_dir()), None)
    free = ""
    if folder is not None:
        try:
            free = f"; {shutil.disk_usage(folder).free / 2**30:.1f} GB free there now"
        except OSError:
            pass
    writing = f" while writing {where}" if where else ""
    return (f"the disk is full{writing} ({error.strerror or error}){free}. What was complete before stays whole "
            "(preprocessed splits and checkpoints are written aside and renamed once whole). Free some space, or point "
            "the folder it was writing (data.init_args.cache_dir for preprocessed splits, the checkpoint folder, the "
            "output) at a larger disk, and run the same command again"
            + "".join(f"; {note}" for note in notes))


def rows_kept_note(error: BaseException, partial: Path, output: Path, resumable: bool) -> None:
    """For predict stopped by a full disk (``error``): the file it was writing named (a file's own write names none),
    and, ``resumable``, where the rows done are - the hidden ``partial`` file when even its close failed, as on a real
    full disk, else ``output`` - and that ``--data.resume`` goes on from them."""
    full = disk_full(error)
    if full is None:
        return
    if full.filename is None:
        full.filename = str(partial)
    if resumable:
        kept = f"in {partial}, hidden beside {output.name}" if partial.is_file() else f"in {output}"
        add_note(error, f"predict: the rows done are kept ({kept}); once there is room, the same command with "
                 "--data.resume true goes on from them")
