"""The ``python -m mpsysv`` command line (also installed as ``mpsysv``): a demo, running a
program on mpsysv, and tools that list, inspect and clean up mpsysv's kernel objects."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Optional, Sequence

# Modules that contribute subcommands, each with add_subcommands(subparsers).
_SUBCOMMAND_MODULES = ("_tools.runner", "_tools.admin")
_DESCRIPTION = ("multiprocessing's queues and shared memory over System V IPC: a demo, "
                "running a program on mpsysv, and tools that list, inspect and clean up "
                "mpsysv's kernel objects. 'COMMAND --help' describes each command.")


def _at_least(low: int) -> Callable[[str], int]:
    # argparse puts "argument --NAME: " before the message.
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def _demo(args: argparse.Namespace) -> int:
    from ._tools import demo

    return demo.run(args.jobs, args.workers)


def _prog() -> str:
    return "mpsysv" if os.path.basename(sys.argv[0]) == "mpsysv" else "python -m mpsysv"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (each records its own ``prog`` for error messages)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog=_prog(), description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"mpsysv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="a producer/consumer pipeline on multiprocessing and on mpsysv, side by side",
        description="One producer process, WORKERS worker processes and this process pass JOBS "
                    "jobs (small dicts, 20 KB strings, a 2 MiB blob every 500) through two "
                    "queues, first on multiprocessing.Queue, then unmodified under "
                    "mpsysv.patched(); prints the times and checks that both backends return "
                    "the same results (exit code 1 if not).")
    demo.add_argument("--jobs", type=_at_least(1), default=20000,
                      help="how many jobs go through the pipeline (default: %(default)s)")
    demo.add_argument("--workers", type=_at_least(1), default=3,
                      help="how many worker processes take jobs (default: %(default)s)")
    demo.set_defaults(func=_demo)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"mpsysv.{name}").add_subcommands(sub)
    for subparser in sub.choices.values():
        subparser.set_defaults(prog=subparser.prog)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # An option the command does not know: its own usage and "PROG COMMAND: error:",
        # not the top-level parser's.
        parser_of = getattr(args, "run_parser", None) or _subparser(parser, args.command)
        parser_of.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as a C tool killed by SIGPIPE does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return code
