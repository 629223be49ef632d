"""The console a run writes to, when it goes away: a terminal closed (SIGHUP), a pipe's reader gone (``| tee log``
killed, ``| head``). Training goes on to its checkpoints, its output sent nowhere, rather than stopping at its next
line without saving. And what a run says on it: once for all the processes of a multi-process run."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any


def leave_a_closed_terminal(signum: int) -> None:
    """After SIGHUP the terminal is gone, and writing to it fails (EIO), as writing to a pipe whose reader went
    with it does (``| tee log``: EPIPE): a progress bar's next line would stop the run before it saves. Output
    that went to a terminal or a pipe goes nowhere from then on; a file it was redirected to keeps it."""
    if signum != getattr(signal, "SIGHUP", None):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                mode = os.fstat(fd)
            except OSError:
                continue
            terminal = stat.S_ISCHR(mode.st_mode) and mode.st_rdev != os.fstat(null).st_rdev  # not /dev/null
            if terminal or stat.S_ISFIFO(mode.st_mode) or stat.S_ISSOCK(mode.st_mode):
                os.dup2(null, fd)
    finally:
        os.close(null)


class _ReaderMayGo:
    """A console stream (stdout, stderr) whose reader may go while training runs: ``| tee log`` killed, ``| head``. A
    write that finds the pipe closed sends this output nowhere from then on, as after SIGHUP
    (:func:`leave_a_closed_terminal`), and training goes on to its checkpoints: the progress line's
    ``BrokenPipeError`` ended the run (exit 141) without saving, 120 steps in."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._nowhere()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._nowhere()

    def _nowhere(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)
        with contextlib.suppress(OSError):
            self._stream.flush()  # what waits in the buffer goes nowhere too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def outlive_the_reader() -> Callable[[], None]:
    """``sys.stdout`` and ``sys.stderr`` go on when their reader goes (:class:`_ReaderMayGo`); returns what puts them
    back as they were."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (stream if stream is None else _ReaderMayGo(stream) for stream in streams)

    def put_back() -> None:
        sys.stdout, sys.stderr = streams

    return put_back


def draws_bars() -> bool:
    """Whether progress bars can be drawn on the standard error: a terminal that says how wide it is. Colab's ``!``
    runs a command on a pseudo-terminal of 0 columns, where tqdm drew empty frames: a run of hours showed no step, loss
    or validation at all. There, as off a terminal, progress goes as plain lines."""
    try:
        return sys.stderr.isatty() and min(os.get_terminal_size(sys.stderr.fileno())) > 0  # columns and lines
    except (OSError, ValueError, AttributeError):  # a stream without a descriptor (a notebook's, a test's)
        return False


def process_rank() -> int:
    """This process's place in a multi-process run (0 alone, and for the process that launched the others): the
    process group's once it is formed, else the launcher's variables in Lightning's order (a SLURM_PROCID that a
    shell inside ``srun`` passes to every process comes last), only where the run has more than one process."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank()
    if int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) <= 1:
        return 0
    return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_PROCID") or 0)


def said(line: str) -> None:
    """One line on stderr in one write (two processes' lines do not run into one another), marked with its process
    beside the first one's."""
    rank = process_rank()
    with suppress(OSError):
        sys.stderr.write(f"{f'[rank {rank}] ' if rank else ''}{line}\n")
        sys.stderr.flush()


_STARTED = time.time() - 1  # about when this process started (its first import of mmcaption): rank 0's own line is newer


def said_once(line: str) -> None:
    """:func:`said`, once for a multi-process run whose processes all meet the same error (a missing file, a refused
    resume: each said it, rank 1's often first): the first process says it, another one only when the first's differs
    or none came within a few seconds (an error of its own, or a process of another machine)."""
    rank, run = process_rank(), os.environ.get("MASTER_PORT")
    if run is None or rank == 0 and int(os.environ.get("WORLD_SIZE") or 1) <= 1:
        return said(line)
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "")  # (Windows has no uid: a traceback)
    first = Path(tempfile.gettempdir()) / f"mmcaption-said-{os.environ.get('MASTER_ADDR', '')}-{run}-{user}"
    if rank == 0:
        with suppress(OSError):
            first.write_text(line, encoding="utf-8")
        return said(line)
    waited = time.monotonic() + 3

    def this_runs() -> bool:  # not a file an earlier run on the same port left
        with suppress(OSError):
            return first.stat().st_mtime >= _STARTED
        return False

    def stopped(signum: int, _frame: Any) -> None:  # the launcher ends the others once one process has ended: said first
        with suppress(OSError):
            if not (this_runs() and first.read_text(encoding="utf-8") == line):
                said(line)
        with suppress(Exception):
            sys.stdout.flush()
        os._exit(128 + signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {signum: signal.signal(signum, stopped) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while time.monotonic() < waited and not this_runs():
            time.sleep(0.05)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    with suppress(OSError):
        if this_runs() and first.read_text(encoding="utf-8") == line:
            return None
    return said(line)


def reader_gone(stream: Any) -> bool:
    """Whether ``stream`` is a pipe whose reading end was closed (``| head`` once it has its lines)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file behind it, or no poll on this platform
        return False


def shell_word(value: object) -> str:
    """``value`` (a path) as a shell reads it back whole, for a command a message gives to copy: quoted when it holds a
    space or another character the shell splits at or reads (``runs/sp ace/last.ckpt``), else as it is."""
    return shlex.quote(str(value))


def kernel_command_line() -> bool:
    """Whether this process's arguments are a notebook kernel's (Jupyter's, VS Code's, Colab's launcher: ``-f
    kernel-....json``), not a command's: there, a command's arguments must be given to it (``sys.argv[1:] = [...]``, set
    in a cell, is a command's)."""
    arguments = sys.argv[1:]
    return arguments[:1] == ["-f"] and len(arguments) > 1 and arguments[1].endswith(".json") or (
        bool(arguments) and arguments[0].startswith("--f=") and arguments[0].endswith(".json"))
