"""The console scripts' entry points. Each parses its arguments before it imports its script, and so
torch, Lightning and the model: ``--help`` and a mistyped flag are answered in a moment, not after the
10-20 seconds those imports take. ``mmcaption``'s Lightning subcommands need the model's classes for
their help and are handed on at once.
"""

from __future__ import annotations

import argparse
import sys

from mmcaption.demo.options import demo_parser
from mmcaption.usage import app_parser, chat_parser, export_parser, pipeline_parser


def _parsed(argv: list[str] | None, parser: argparse.ArgumentParser, known: bool = False) -> list[str]:
    """The script's arguments, parsed once here (``--help`` and mistakes end the process now), to hand on whole.
    ``known``: a script that passes what it does not know on to ``fit``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (parser.parse_known_args if known else parser.parse_args)(argv)
    return argv


def mmcaption(argv: list[str] | None = None) -> None:
    """``mmcaption``: Lightning's subcommands and ``prepare`` (:func:`mmcaption.cli.main`), and ``chat``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["chat"]:
        _parsed(argv[1:], chat_parser())
    from mmcaption.cli import main

    main(argv)


def export(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, export_parser())
    from mmcaption.export import main

    main(argv)


def app(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, app_parser())
    from mmcaption.app import main

    main(argv)


def pipeline(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, pipeline_parser(), known=True)
    from mmcaption.pipeline import main

    main(argv)


def demo(argv: list[str] | None = None) -> None:
    argv = _parsed(argv, demo_parser(), known=True)
    from mmcaption.demo.run import main

    main(argv)
