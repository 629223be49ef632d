"""The console scripts' entry points. Each parses its arguments before it imports its script, and so
torch, Lightning and the model: ``--help`` and a mistyped flag are answered in a moment, not after the
10-20 seconds those imports take. ``mmcaption``'s Lightning subcommands need the model's classes for
their help and are handed on at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mmcaption.demo.options import demo_parser
from mmcaption.usage import RELEASE, app_parser, chat_parser, export_parser, pipeline_parser


def _standard_streams() -> None:
    """Each console script's first step: standard output written line by line, and standard input, output and error that
    a launcher closed (``>&- 2>&- <&-``, some daemons and cron setups) opened on the null device, as daemons do: the first
    file the run opened took their numbers (the checkpoint folder's lock became standard output, which native code and
    child processes write to), and a validation's Java tools, whose messages are held back through standard error, ended
    the run with no message anywhere."""
    for number, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(number)
        except OSError:
            opened = os.open(os.devnull, mode)  # the lowest number free: this one, as those below it are open
            if opened != number:
                os.dup2(opened, number)
                os.close(opened)
            os.set_inheritable(number, True)  # (os.open's are not): the processes it starts get it too
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:  # Python's own, where the number was closed as it started
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # noqa: SIM115 (the process's, for its life)
    if hasattr(sys.stdout, "reconfigure"):  # a log file (nohup, SLURM's, `> run.log 2>&1`) gets each printed line at once, in
        sys.stdout.reconfigure(line_buffering=True)  # its place among standard error's (the demo's report came last, or late)


def _arguments(argv: list[str] | None) -> list[str]:
    """The script's arguments; one that the locale could not read refused, saying which and how to run (under
    ``LC_ALL=POSIX`` with ``PYTHONUTF8=0`` a ``café`` arrives as undecodable bytes: the parser's message said only
    ``Parser key "data":``, and its reason, that the text could not be encoded, named nothing; under UTF-8 a Latin-1 file
    name ended the run in a traceback where its name was written into the folder's lock)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    utf8 = sys.getfilesystemencoding().lower().replace("-", "") == "utf8"
    for number, argument in enumerate(argv, 1):
        if any("\udc80" <= character <= "\udcff" for character in argument):
            # its bytes (the terminal shows no more), as they came, and any other text's in UTF-8
            shown = argument.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            fix = ("rename it in UTF-8 (a name in another encoding, as a Latin-1 archive's unzipped: convmv -f latin1 -t utf8)"
                   if utf8 else "run with a UTF-8 locale (LANG=C.UTF-8) or PYTHONUTF8=1")
            sys.stderr.write(f"error: argument {number} ({shown}) is not text the locale reads (its encoding: "
                             f"{sys.getfilesystemencoding()}): {fix}\n")
            sys.exit(2)
    return argv


def _parsed(argv: list[str] | None, parser: argparse.ArgumentParser, known: bool = False) -> list[str]:
    """The script's arguments, parsed once here (``--help`` and mistakes end the process now), to hand on whole.
    ``known``: a script that passes what it does not know on to ``fit``."""
    argv = _arguments(argv)
    (parser.parse_known_args if known else parser.parse_args)(argv)
    return argv


@contextmanager
def _starting() -> Iterator[None]:
    """Ctrl-C or SIGTERM while torch and Lightning import (seconds): one line and 130 / 143, as once the command runs,
    not a traceback from inside Python's import machinery. Nothing has been done yet, so the process ends at once: a
    SystemExit raised inside a C extension's import was caught on its way out (numpy's), and the next import of the
    module failed with a traceback ("cannot load module more than once per process") and exit status 1."""
    def stop(signum: int, frame: object) -> None:
        print(f"stopped by {signal.Signals(signum).name} while starting: nothing was done", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's to set
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def mmcaption(argv: list[str] | None = None) -> None:
    """``mmcaption``: Lightning's subcommands and ``prepare`` (:func:`mmcaption.cli.main`), and ``chat``."""
    _standard_streams()
    argv = _arguments(argv)
    if argv == ["--version"]:  # answered before the imports, as the other scripts answer it (it took 13 s)
        print(f"mmcaption {RELEASE}")
        return
    if argv[:1] == ["chat"]:
        _parsed(argv[1:], chat_parser())
    with _starting():
        from mmcaption.cli import main

    main(argv)


def export(argv: list[str] | None = None) -> None:
    _standard_streams()
    argv = _parsed(argv, export_parser())
    with _starting():
        from mmcaption.export import main

    main(argv)


def app(argv: list[str] | None = None) -> None:
    _standard_streams()
    argv = _parsed(argv, app_parser())
    with _starting():
        from mmcaption.app import main

    main(argv)


def pipeline(argv: list[str] | None = None) -> None:
    _standard_streams()
    argv = _parsed(argv, pipeline_parser(), known=True)
    with _starting():
        from mmcaption.pipeline import main

    main(argv)


def demo(argv: list[str] | None = None) -> None:
    _standard_streams()
    argv = _parsed(argv, demo_parser(), known=True)
    with _starting():
        from mmcaption.demo.run import main

    main(argv)
