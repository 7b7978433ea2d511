"""The ``python -m mpsysv`` command line: demo and (later) inspection and cleanup tools."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def _demo(args) -> int:
    from ._tools import demo

    return demo.run(args.jobs, args.workers)


# Modules that contribute subcommands, each with add_subcommands(subparsers).
_SUBCOMMAND_MODULES = ("_tools.runner", "_tools.admin")


def main(argv: Optional[Sequence[str]] = None) -> int:
    import importlib
    import importlib.util

    parser = argparse.ArgumentParser(prog="python -m mpsysv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a producer/consumer pipeline on multiprocessing and "
                                       "on mpsysv, side by side")
    demo.add_argument("--jobs", type=int, default=20000)
    demo.add_argument("--workers", type=int, default=3)
    demo.set_defaults(func=_demo)
    for name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(f"mpsysv.{name}") is not None:
            importlib.import_module(f"mpsysv.{name}").add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)
