"""The ``aerec`` command line: ``train``, ``evaluate``, ``recommend``, ``similar``, ``embed``, ``models``, ``datasets``,
``demo``, ``benchmark``.

Results go to stdout (a table, or with ``--json`` exactly one JSON object) or to
the files named; progress goes to stderr. Bad input exits with code 2 and one
line on stderr, and never leaves a partial output file. Each command lives in
its own module here and registers its parser in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from aerec._version import __version__
from aerec.cli import (
    benchmark,
    common,
    datasets,
    demo,
    evaluate,
    models,
    recommend,
    similar,
    train,
)
from aerec.cli.common import CliError, OneLineParser

COMMANDS = (train, evaluate, recommend, similar, models, datasets, demo, benchmark)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="aerec", description="Autoencoder recommenders: train, evaluate and recommend.")
    parser.add_argument("--version", action="version", version=f"aerec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.register(commands)
    for subparser in leaf_parsers(commands):
        if not any("--quiet" in action.option_strings for action in subparser._actions):
            subparser.add_argument("--quiet", action="store_true", help="no progress messages or bars on stderr")
        subparser.add_argument("--threads", type=int,
                               help="CPU threads for torch and BLAS (default: torch's, one per core). On a shared "
                                    "or 2-core machine --threads 1 avoids the slow-down of threads waiting on "
                                    "each other when anything else runs")
    return parser


def leaf_parsers(subparsers) -> list:
    """The parsers of every command, those of ``aerec benchmark run|report|status`` included."""
    leaves = []
    for parser in subparsers.choices.values():
        nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        leaves += [leaf for action in nested for leaf in leaf_parsers(action)] if nested else [parser]
    return leaves


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    common.QUIET = bool(getattr(args, "quiet", False))
    try:
        with thread_limits(args.threads):
            return args.run(args)
    except (ValueError, TypeError, OSError, MemoryError, FloatingPointError) as exc:
        # OSError: a path too long, unreadable, not a folder; FloatingPointError: a loss that is not finite
        print(f"aerec {args.command}: error: {error_sentence(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not out_of_memory(exc):
            raise  # a bug: its traceback is the report
        print(f"aerec {args.command}: error: {error_sentence(MemoryError(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted_hint", None)
        print(f"aerec {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


def out_of_memory(exc: RuntimeError) -> bool:
    """torch's allocation failures (CPU allocator, CUDA out of memory) are RuntimeErrors."""
    text = str(exc).lower()
    return "can't allocate memory" in text or "out of memory" in text or "failed to allocate" in text


def error_sentence(exc: BaseException) -> str:
    """The error as one line; never empty (a bare ``MemoryError()`` says what ran out)."""
    message = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        if not message:
            return ("out of memory (MemoryError): the input or the model does not fit in this machine's memory; "
                    "use a smaller input, a smaller --memory-mib, or a machine with more memory")
        if "memory" not in message.lower():
            return f"out of memory (MemoryError): {message}"
    return message or f"{type(exc).__name__} without a message"


@contextlib.contextmanager
def thread_limits(threads):
    """``--threads N``: torch's intra-op threads and the BLAS pools at N while the command runs."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise CliError(f"--threads {threads}; expected an integer >= 1")
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


__all__ = ["CliError", "build_parser", "main"]
