"""Run CPython's own multiprocessing tests on mpsysv: a selection here, or the whole suites.

    python compat/cpython_suite.py [-v] [--json FILE] [--no-gc] [-k SUBSTRING]
    python compat/cpython_suite.py --whole [--python PY ...] [--suite NAME ...]
                                   [--backend stdlib|mpsysv ...] [--lib-test X.Y=DIR ...]
                                   [--out DIR] [--reuse] [--json FILE]

``--whole`` is described in ``compat/cpython_whole.py``; without it:

``mpsysv.patch()`` is applied, then ``test._test_multiprocessing`` (from the installed
``test`` package) is imported and its classes are built for the fork start method,
as ``test_multiprocessing_fork`` does; the classes in ``SELECTED`` run. Tests that
only exercise stdlib internals are excluded by name (``EXCLUDED``, each with its
reason, reported as skipped); tests that fail because of a reported mpsysv bug run
as expected failures (``KNOWN_FAILURES``). When the kernel allows it the run gets an
IPC namespace of its own and reports the System V objects it left behind.

Exit status: 0 when every other test passed (or the interpreter has no test package),
1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
import types
import unittest
import warnings

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SELECTED = (
    "WithProcessesTestQueue",
    "TestSimpleQueue",
    "WithProcessesTestPool",
    "WithProcessesTestPoolWorkerErrors",
    "WithProcessesTestPoolWorkerLifetime",
    "TestPoolNotLeakOnFailure",
    "WithProcessesTestSharedMemory",
)

_SHM = "WithProcessesTestSharedMemory"
EXCLUDED = {
    f"{_SHM}.test_shared_memory_basics":
        "mocks shared_memory._make_filename and reads _name/_flags/_USE_POSIX (the POSIX "
        "implementation's internals); its public-API checks are in compat/test_shared_memory.py",
    f"{_SHM}.test_shared_memory_recreate":
        "mocks shared_memory._make_filename and reads _name (POSIX internals)",
    f"{_SHM}.test_shared_memory_ShareableList_basics":
        "calls the private ShareableList._get_packing_format(); its public-API checks are "
        "in compat/test_shared_memory.py",
    f"{_SHM}.test_shared_memory_name_with_embedded_null":
        "sets the private _name attribute to reach shm_unlink() (3.13+)",
    f"{_SHM}.test_shared_memory_cleaned_after_process_termination":
        "a plain `python -E -c` child (not patched) makes a POSIX segment; the test checks "
        "the stdlib resource tracker, not the backend",
    f"{_SHM}.test_shared_memory_tracking":
        "a plain `python -I -c` child (not patched) attaches with the stdlib's class and "
        "the test checks the stdlib resource tracker's warnings (3.13+)",
    f"{_SHM}.test_shared_memory_untracking":
        "as test_shared_memory_tracking (3.13+)",
}

KNOWN_FAILURES = {}


class _Result(unittest.TextTestResult):
    """Collects garbage after every test: a Pool's reference cycles keep its queues alive,
    and a later test's fork children would inherit them (CPython's own tearDownModule
    collects once, at the end)."""

    collect = True

    def stopTest(self, test):
        super().stopTest(test)
        if self.collect:
            gc.collect()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--whole" in argv:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import cpython_whole
        return cpython_whole.main([a for a in argv if a != "--whole"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-k", dest="pattern", help="run only tests whose id contains this")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--no-gc", action="store_true",
                        help="do not collect garbage between tests")
    args = parser.parse_args(argv)
    label = f"Python {sys.version.split()[0]}"

    private_ns = _own_ipc_namespace()
    if _REPO not in sys.path:
        sys.path.insert(0, _REPO)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)
    import mpsysv

    mpsysv.patch()
    try:
        from test import _test_multiprocessing as cpython
    except ImportError as exc:
        return _report(args, {"python": label, "skipped": f"no CPython test package ({exc})"})

    module = types.ModuleType("mpsysv_cpython_suite")
    sys.modules[module.__name__] = module
    cpython.install_tests_in_module_dict(module.__dict__, "fork")
    suite, excluded, known = _build_suite(module, args.pattern)

    warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                            category=DeprecationWarning)
    _Result.collect = not args.no_gc
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2 if args.verbose else 1,
                                     resultclass=_Result)
    start = time.monotonic()
    module.setUpModule()
    try:
        result = runner.run(suite)
    finally:
        module.tearDownModule()
    elapsed = time.monotonic() - start
    gc.collect()
    # What this program's exit would collect (a queue whose other holders, fork children
    # of a terminated Pool, were killed after it let go): count what is left after that.
    from mpsysv._gc import collect as _gc
    if _gc._exit_collect[0] == os.getpid():
        _gc._collect_now(os.getpid())
    figures = {
        "python": label,
        "run": result.testsRun,
        "passed": (result.testsRun - len(result.failures) - len(result.errors)
                   - len(result.skipped) - len(result.expectedFailures)
                   - len(result.unexpectedSuccesses)),
        "failed": len(result.failures) + len(result.errors),
        "skipped": len(result.skipped) - len(excluded),
        "excluded": sorted(excluded),
        "known_failures": sorted(known),
        "expected_failures": len(result.expectedFailures),
        "unexpected_successes": [t.id() for t in result.unexpectedSuccesses],
        "failures": [t.id() for t, _ in result.failures + result.errors],
        "seconds": round(elapsed, 1),
        "sysv_left": _sysv_count() if private_ns else None,
    }
    return _report(args, figures)


def _build_suite(module, pattern):
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    excluded, known = [], []
    for name in SELECTED:
        cls = getattr(module, name, None)
        if cls is None:
            continue
        for test_name in loader.getTestCaseNames(cls):
            key = f"{name}.{test_name}"
            if pattern and pattern not in key:
                continue
            method = getattr(cls, test_name)
            if key in EXCLUDED:
                setattr(cls, test_name, unittest.skip(f"excluded: {EXCLUDED[key]}")(method))
                excluded.append(key)
            elif key in KNOWN_FAILURES:
                setattr(cls, test_name, unittest.expectedFailure(method))
                known.append(key)
            suite.addTest(cls(test_name))
    return suite, excluded, known


def _report(args, figures) -> int:
    if "skipped" in figures and "run" not in figures:
        print(f"cpython-suite: {figures['python']}: skipped: {figures['skipped']}")
        ok = True
    else:
        left = figures["sysv_left"]
        print(f"cpython-suite: {figures['python']}: {figures['run']} run, {figures['passed']} "
              f"passed, {figures['failed']} failed, {figures['skipped']} skipped, "
              f"{len(figures['excluded'])} excluded, {figures['expected_failures']} known "
              f"failures, {len(figures['unexpected_successes'])} unexpected successes in "
              f"{figures['seconds']}s; System V objects left: "
              f"{'not counted' if left is None else left}")
        for test_id in figures["failures"]:
            print(f"  FAILED {test_id}")
        ok = (not figures["failed"] and not figures["unexpected_successes"]
              and not figures["sysv_left"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0 if ok else 1


def _own_ipc_namespace() -> bool:
    """Move into a new IPC namespace (root only): leftovers are countable and vanish."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(0x08000000) == 0  # CLONE_NEWIPC


def _sysv_count() -> int:
    total = 0
    for kind in ("msg", "sem", "shm"):
        with open(f"/proc/sysvipc/{kind}") as f:
            total += sum(1 for line in f) - 1
    return total


if __name__ == "__main__":
    sys.exit(main())
