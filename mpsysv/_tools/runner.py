"""``python -m mpsysv run``: run a program with ``mpsysv.patch()`` active.

``run SCRIPT [ARGS...]``, ``run -m MODULE [ARGS...]`` and ``run -c COMMAND [ARGS...]`` give
the program what ``python SCRIPT``/``-m``/``-c`` would: ``__file__``, ``sys.argv``,
``sys.path[0]``, ``__spec__``, the ``__main__`` module (a real module that stays in
``sys.modules``, so spawn children and pickling find its functions), its tracebacks and
its exit status. Python programs it starts with ``subprocess`` run patched too: the
directory of ``mpsysv._tools.subprocess_site`` goes first on ``PYTHONPATH``, and its
``sitecustomize`` patches each Python child that inherits the environment.
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
from typing import Any, Optional, Sequence

__all__ = ["add_subcommands", "run_path", "run_module", "run_command",
           "patch_python_subprocesses"]

_USAGE = ("%(prog)s [-h] [--no-subprocesses] (SCRIPT | -m MODULE | -c COMMAND) [ARGS ...]")


def add_subcommands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "run", help="run a program with multiprocessing's queues and shared memory "
                    "switched to mpsysv",
        description="Run SCRIPT (or -m MODULE, or -c COMMAND) as python would, with "
                    "mpsysv.patch() active in it, in its multiprocessing children (fork, "
                    "spawn, forkserver) and in the Python programs it starts that inherit "
                    "its environment (subprocess with the default env=; a child started "
                    "with -E or -I, or with env=... without PYTHONPATH, runs unpatched).",
        epilog="A child started with MPSYSV_NO_PATCH=1 in its environment runs unpatched. "
               "Exit status: the program's, or python's when it cannot start the program "
               "(2: no such file or module, 1: no __main__ module in a directory).",
        usage=_USAGE)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-m", dest="module", action="store_true",
                      help="run library module MODULE as a script, like python -m")
    mode.add_argument("-c", dest="command", action="store_true",
                      help="run the program passed in as the string COMMAND, like python -c")
    parser.add_argument("--no-subprocesses", dest="subprocesses", action="store_false",
                        help="patch only this program and its multiprocessing children, "
                             "not the Python programs it starts with subprocess")
    parser.add_argument("target", metavar="SCRIPT", nargs="?",
                        help="the program (the module with -m, the code with -c)")
    parser.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER,
                        help="the program's arguments (sys.argv[1:])")
    parser.set_defaults(func=_run, run_parser=parser)


def _run(args: argparse.Namespace) -> int:
    from ..patch import patch

    if args.target is None:
        args.run_parser.error("-m: the MODULE to run is missing" if args.module else
                              "-c: the COMMAND to run is missing" if args.command else
                              "the SCRIPT to run is missing (or -m MODULE, -c COMMAND)")
    patch()
    if args.subprocesses:
        patch_python_subprocesses()
    runner = run_module if args.module else run_command if args.command else run_path
    try:
        runner(args.target, args.args)
    except SystemExit:
        raise
    except KeyboardInterrupt as exc:
        # python reports it and, after atexit, ends by SIGINT: let it, with the program's
        # frames only in the report.
        _hide_runner_frames_when_reported(exc)
        raise
    except _NotRunnable as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return exc.status
    except BaseException as exc:
        # Report it as the interpreter would: without this runner's frames.
        tb = _program_part(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    return 0


def _program_part(tb: Optional[types.TracebackType]) -> Optional[types.TracebackType]:
    """Traceback *tb* from the program's top-level frame on; without the frames of this
    module when the program never started (its code did not compile)."""
    t = tb
    while t is not None and t.tb_frame.f_code is not _program_code:
        t = t.tb_next
    if t is not None:
        return t
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _hide_runner_frames_when_reported(exc: BaseException) -> None:
    hook = sys.excepthook

    def excepthook(kind: Any, value: BaseException, tb: Optional[types.TracebackType]) -> None:
        if value is exc:  # (the report shows value's own __traceback__)
            tb = _program_part(tb)
            value = value.with_traceback(tb)
        hook(kind, value, tb)

    sys.excepthook = excepthook


class _NotRunnable(Exception):
    """The target cannot be found or run: reported without a traceback, with python's
    exit status for that case (2 unless *status* says otherwise)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def patch_python_subprocesses(environ: Optional[Any] = None) -> None:
    """Put the directory of mpsysv's ``sitecustomize`` first on ``PYTHONPATH`` in
    *environ* (default ``os.environ``), so that Python children started with that
    environment run patched (``mpsysv._tools.subprocess_site`` says how)."""
    from . import subprocess_site

    environ = os.environ if environ is None else environ
    site_dir = os.path.dirname(os.path.abspath(subprocess_site.__file__))
    entries = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if site_dir not in entries:
        environ["PYTHONPATH"] = os.pathsep.join([site_dir, *entries])


def run_path(path: str, argv: Sequence[str] = ()) -> None:
    """Run the script *path* (or a directory or zip file holding ``__main__.py``) as
    ``__main__`` with ``sys.argv = [path, *argv]``, as ``python PATH`` does."""
    if not os.path.exists(path):
        raise _NotRunnable(f"can't open file {_joined_to_cwd(path)!r}: "
                           "[Errno 2] No such file or directory")
    if not os.path.isfile(path) or _is_zip(path):
        # A directory or zip application: PATH goes first on sys.path and its
        # __main__ module runs.
        # (python names a zip file's __main__ by its absolute path, a directory's as given)
        entry = os.path.abspath(path) if os.path.isfile(path) else path
        spec = importlib.machinery.PathFinder.find_spec("__main__", [entry])
        if spec is None or spec.loader is None:
            shown = os.path.abspath(path) if sys.version_info >= (3, 11) else _joined_to_cwd(path)
            raise _NotRunnable(f"can't find '__main__' module in {shown!r}", status=1)
        sys.argv[:] = [path, *argv]
        sys.path[0] = os.path.abspath(path)
        _run_spec(spec)
        return
    # Since 3.9 python makes the script's __file__ (and so its tracebacks) absolute, and
    # sys.path[0] is the directory of the script with symlinks resolved.
    filename = _joined_to_cwd(path)
    with io.open_code(filename) as f:
        source = f.read()
    code = compile(source, filename, "exec", dont_inherit=True)
    module = _fresh_main(__file__=filename, __cached__=None, __package__=None, __spec__=None,
                         __loader__=importlib.machinery.SourceFileLoader("__main__",
                                                                         filename))
    sys.argv[:] = [path, *argv]
    sys.path[0] = os.path.dirname(os.path.realpath(filename))
    _execute(code, module)


def run_module(name: str, argv: Sequence[str] = ()) -> None:
    """Run module *name* (a package: its ``__main__``) as ``python -m`` does."""
    sys.path[0] = os.getcwd()
    spec = _find_spec(name)
    if spec.submodule_search_locations is not None:
        main = f"{name}.__main__"
        spec = _find_spec(main)
        if spec.submodule_search_locations is not None:
            raise _NotRunnable(f"No module named {main}; {name!r} is a package and cannot "
                               "be directly executed")
    sys.argv[:] = [spec.origin or name, *argv]
    _run_spec(spec)


def run_command(command: str, argv: Sequence[str] = ()) -> None:
    """Run the program text *command* as ``python -c`` does."""
    code = compile(command, "<string>", "exec", dont_inherit=True)
    module = _fresh_main(__package__=None, __spec__=None,
                         __loader__=importlib.machinery.BuiltinImporter)
    sys.argv[:] = ["-c", *argv]
    sys.path[0] = ""
    _execute(code, module)


def _joined_to_cwd(path: str) -> str:
    # python's absolute path of a script: joined to the working directory, not normalised
    # ('/tmp/./a/../s.py' stays so in __file__ and in its messages).
    return os.path.join(os.getcwd(), path)


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _run_spec(spec: importlib.machinery.ModuleSpec) -> None:
    loader: Any = spec.loader  # an InspectLoader for every module python -m can run
    code = loader.get_code(spec.name) if loader is not None else None
    if code is None:
        raise _NotRunnable(f"No code object available for {spec.name}")
    module = _fresh_main(__file__=spec.origin, __cached__=spec.cached,
                         __package__=spec.parent, __spec__=spec, __loader__=spec.loader)
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


_program_code: Optional[types.CodeType] = None  # the top-level code of the running program


def _execute(code: types.CodeType, module: types.ModuleType) -> None:
    global _program_code
    _program_code = code
    # The program's module stays __main__ (and __mp_main__, the name multiprocessing
    # pickles main-module objects under) after it returns: atexit handlers and the
    # threads that outlive it may still pickle its functions.
    sys.modules["__main__"] = module
    sys.modules["__mp_main__"] = module
    exec(code, module.__dict__)
