"""The console a run writes to, when it goes away: a terminal closed (SIGHUP), a pipe's reader gone (``| tee log``
killed, ``| head``). Training goes on to its checkpoints, its output sent nowhere, rather than stopping at its next
line without saving."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from collections.abc import Callable
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
