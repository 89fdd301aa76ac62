"""The ``aerec`` command line: ``train``, ``evaluate``, ``recommend``, ``similar``, ``embed``, ``models``, ``datasets``,
``demo``, ``benchmark``.

Results go to stdout (a table, or with ``--json`` exactly one JSON object) or to
the files named; progress goes to stderr. Bad input exits with code 2 and one
line on stderr, and never leaves a partial output file. Each command lives in
its own module here and registers its parser in :func:`build_parser`.
"""

from __future__ import annotations

import sys

from aerec._version import __version__
from aerec.cli import benchmark, datasets, demo, evaluate, models, recommend, similar, train
from aerec.cli.common import CliError, OneLineParser

COMMANDS = (train, evaluate, recommend, similar, models, datasets, demo, benchmark)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="aerec", description="Autoencoder recommenders: train, evaluate and recommend.")
    parser.add_argument("--version", action="version", version=f"aerec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, MemoryError) as exc:  # OSError: a path too long, unreadable, not a folder
        message = " ".join(str(exc).split())
        print(f"aerec {args.command}: error: {message}", file=sys.stderr)
        return 2


__all__ = ["CliError", "build_parser", "main"]
