"""The console scripts' entry points. Each parses its arguments before it imports its script, and so
torch, Lightning and the model: ``--help`` and a mistyped flag are answered in a moment, not after the
10-20 seconds those imports take. ``mmcaption``'s Lightning subcommands need the model's classes for
their help and are handed on at once.
"""

from __future__ import annotations

import sys

from mmcaption.demo.options import demo_parser
from mmcaption.usage import app_parser, chat_parser, export_parser, pipeline_parser


def _arguments(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else list(argv)


def mmcaption(argv: list[str] | None = None) -> None:
    """``mmcaption``: Lightning's subcommands and ``prepare`` (:func:`mmcaption.cli.main`), and ``chat``."""
    argv = _arguments(argv)
    if argv[:1] == ["chat"]:
        chat_parser().parse_args(argv[1:])
    from mmcaption.cli import main

    main(argv)


def export(argv: list[str] | None = None) -> None:
    argv = _arguments(argv)
    export_parser().parse_args(argv)
    from mmcaption.export import main

    main(argv)


def app(argv: list[str] | None = None) -> None:
    argv = _arguments(argv)
    app_parser().parse_args(argv)
    from mmcaption.app import main

    main(argv)


def pipeline(argv: list[str] | None = None) -> None:
    argv = _arguments(argv)
    pipeline_parser().parse_known_args(argv)
    from mmcaption.pipeline import main

    main(argv)


def demo(argv: list[str] | None = None) -> None:
    argv = _arguments(argv)
    demo_parser().parse_known_args(argv)
    from mmcaption.demo.run import main

    main(argv)
