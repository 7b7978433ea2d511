"""``python -m mpsysv run``: run a program with ``mpsysv.patch()`` active.

Like ``python -m cProfile``: ``run SCRIPT [ARGS...]`` or ``run -m MODULE [ARGS...]``.
The program gets the ``sys.argv``, ``sys.path[0]`` and ``__main__`` module that
``python SCRIPT`` / ``python -m MODULE`` would give it (a real module that stays in
``sys.modules``, so spawn children and pickling find its functions), and its exit
status becomes the command's.
"""

from __future__ import annotations

import argparse
import builtins
import importlib.machinery
import importlib.util
import io
import os
import sys
import types
from typing import Any, Sequence

__all__ = ["add_subcommands", "run_path", "run_module"]


def add_subcommands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "run", help="run a program with multiprocessing's queues and shared memory "
                    "switched to mpsysv",
        description="Run SCRIPT (or -m MODULE) with mpsysv.patch() active, in this "
                    "process and in its child processes.",
        usage="%(prog)s [-h] (SCRIPT | -m MODULE) [ARGS ...]")
    parser.add_argument("-m", dest="module", action="store_true",
                        help="run library module MODULE as a script, like python -m")
    parser.add_argument("target", metavar="SCRIPT", help="the program (or module with -m)")
    parser.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER,
                        help="its arguments")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..patch import patch

    patch()
    runner = run_module if args.module else run_path
    try:
        runner(args.target, args.args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except _NotRunnable as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        # Report it as the interpreter would: without this runner's frames.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    return 0


class _NotRunnable(Exception):
    """The target cannot be found or run (reported without a traceback, exit 2)."""


def run_path(path: str, argv: Sequence[str] = ()) -> None:
    """Run the script *path* as ``__main__`` with ``sys.argv = [path, *argv]``."""
    if not os.path.isfile(path):
        raise _NotRunnable(f"can't open file {path!r}: not a regular file")
    with io.open_code(path) as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    module = _fresh_main(__file__=path, __cached__=None, __package__=None, __spec__=None,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.argv[:] = [path, *argv]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    _execute(code, module)


def run_module(name: str, argv: Sequence[str] = ()) -> None:
    """Run module *name* (a package: its ``__main__``) as ``python -m`` does."""
    spec = _find_spec(name)
    if spec.submodule_search_locations is not None:
        main = f"{name}.__main__"
        spec = _find_spec(main)
        if spec.submodule_search_locations is not None:
            raise _NotRunnable(f"No module named {main}; {name!r} is a package and cannot "
                               "be directly executed")
    loader: Any = spec.loader  # an InspectLoader for every module python -m can run
    code = loader.get_code(spec.name) if loader is not None else None
    if code is None:
        raise _NotRunnable(f"No code object available for {spec.name}")
    module = _fresh_main(__file__=spec.origin, __cached__=spec.cached,
                         __package__=spec.parent, __spec__=spec, __loader__=spec.loader)
    sys.argv[:] = [spec.origin or name, *argv]
    _execute(code, module)


def _find_spec(name: str) -> importlib.machinery.ModuleSpec:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise _NotRunnable(f"Error while finding module specification for {name!r} "
                           f"({type(exc).__name__}: {exc})") from None
    if spec is None:
        raise _NotRunnable(f"No module named {name}")
    return spec


def _fresh_main(**attrs: Any) -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__dict__.update(attrs, __builtins__=builtins)
    return module


def _execute(code: types.CodeType, module: types.ModuleType) -> None:
    # The program's module stays __main__ (and __mp_main__, the name multiprocessing
    # pickles main-module objects under) after it returns: atexit handlers and the
    # threads that outlive it may still pickle its functions.
    sys.modules["__main__"] = module
    sys.modules["__mp_main__"] = module
    exec(code, module.__dict__)
