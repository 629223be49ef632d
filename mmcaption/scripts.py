"""The console scripts' entry points. Each parses its arguments before it imports its script, and so
torch, Lightning and the model: ``--help`` and a mistyped flag are answered in a moment, not after the
10-20 seconds those imports take. ``mmcaption``'s Lightning subcommands need the model's classes for
their help and are handed on at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mmcaption.demo.options import demo_parser
from mmcaption.usage import RELEASE, app_parser, chat_parser, export_parser, pipeline_parser


def _parsed(argv: list[str] | None, parser: argparse.ArgumentParser, known: bool = False) -> list[str]:
    """The script's arguments, parsed once here (``--help`` and mistakes end the process now), to hand on whole.
    ``known``: a script that passes what it does not know on to ``fit``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (parser.parse_known_args if known else parser.parse_args)(argv)
    return argv


@contextmanager
def _starting() -> Iterator[None]:
    """Ctrl-C or SIGTERM while torch and Lightning import (seconds): one line and 130 / 143, as once the command runs,
    not a traceback from inside Python's import machinery. Nothing has been done yet."""
    def stop(signum: int, frame: object) -> None:
        print(f"stopped by {signal.Signals(signum).name} while starting: nothing was done", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # answered before the imports, as the other scripts answer it (it took 13 s)
        print(f"mmcaption {RELEASE}")
        return
    if argv[:1] == ["chat"]:
        _parsed(argv[1:], chat_parser())
    with _starting():
        from mmcaption.cli import main

    main(argv)


def export(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, export_parser())
    with _starting():
        from mmcaption.export import main

    main(argv)


def app(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, app_parser())
    with _starting():
        from mmcaption.app import main

    main(argv)


def pipeline(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, pipeline_parser(), known=True)
    with _starting():
        from mmcaption.pipeline import main

    main(argv)


def demo(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, demo_parser(), known=True)
    with _starting():
        from mmcaption.demo.run import main

    main(argv)
