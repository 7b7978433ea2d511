"""The ``python -m mpsysv`` command line: demo and (later) inspection and cleanup tools."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _demo(args) -> int:
    """A raw-primitive round trip: typed messages through a SysV queue and a fork child."""
    from .primitives import MessageQueue

    q = MessageQueue(create=True)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                for mtype, text in [(300, "a"), (100, "b"), (200, "c"), (400, "d"), (100, "e")]:
                    q.send(text.encode(), mtype)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        got = [q.receive(-300)[0].decode() for _ in range(4)]
        print(f"child sent (300,a) (100,b) (200,c) (400,d) (100,e); receive(-300) x4 -> {got}")
    finally:
        q.remove()
    return 0


# Modules that contribute subcommands, each with add_subcommands(subparsers).
_SUBCOMMAND_MODULES = ("_runner", "_admin")


def main(argv: Optional[Sequence[str]] = None) -> int:
    import importlib
    import importlib.util

    parser = argparse.ArgumentParser(prog="python -m mpsysv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the demonstration").set_defaults(func=_demo)
    for name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(f"mpsysv.{name}") is not None:
            importlib.import_module(f"mpsysv.{name}").add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)
