"""Backends, start methods and the helpers every compat case uses.

A case is a plain class of ``test_*`` methods (not a ``TestCase``, so pytest does not
collect it unbound). ``install_cases(globals())`` binds every case of a module to each
backend and each of its ``START_METHODS``, as ``WithStdlibForkQueueCase``,
``WithMpsysvSpawnQueueCase``, ...; a case reaches the objects under test through
``self.ctx`` and the backend's factories only, so both backends run identical code.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import multiprocessing.managers
import multiprocessing.shared_memory
import os
import signal
import time
import unittest

import mpsysv
from mpsysv import shared as mpsysv_shared

from .differences import DIFFERENCES, KNOWN_BUGS

TIMEOUT = 60.0  # seconds for any single wait on another process


class StdlibBackend:
    backend = "stdlib"

    @staticmethod
    def get_context(method):
        return multiprocessing.get_context(method)

    SharedMemory = multiprocessing.shared_memory.SharedMemory
    ShareableList = multiprocessing.shared_memory.ShareableList

    def SharedMemoryManager(self):
        return multiprocessing.managers.SharedMemoryManager(ctx=self.ctx)


class MpsysvBackend:
    backend = "mpsysv"

    @staticmethod
    def get_context(method):
        return mpsysv.get_context(method)

    SharedMemory = mpsysv_shared.SharedMemory
    ShareableList = mpsysv_shared.ShareableList

    def SharedMemoryManager(self):
        return self.ctx.SharedMemoryManager()


BACKENDS = (StdlibBackend, MpsysvBackend)


class CompatCase:
    """Helpers shared by all cases (mixed in before the backend and ``TestCase``)."""

    START_METHODS = ("fork",)  # a case can add "spawn" and "forkserver"

    def setUp(self):
        # Garbage of earlier cases (a Pool keeps reference cycles) must be gone before
        # this case forks: a fork child holds every queue its parent holds. Registered
        # first, the collection after the case runs after every other cleanup.
        gc.collect()
        self.addCleanup(gc.collect)
        self.ctx = self.get_context(self.start_method)

    # -- the backend's objects ------------------------------------------------------------

    def Queue(self, maxsize=0):
        q = self.ctx.Queue(maxsize)
        self.addCleanup(_close_queue, q)
        return q

    def JoinableQueue(self, maxsize=0):
        q = self.ctx.JoinableQueue(maxsize)
        self.addCleanup(_close_queue, q)
        return q

    def SimpleQueue(self):
        q = self.ctx.SimpleQueue()
        self.addCleanup(q.close)
        return q

    def Process(self, target, *args, **kwargs):
        p = self.ctx.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        self.addCleanup(_reap, p)
        return p

    # -- assertions ---------------------------------------------------------------------

    def start_and_join(self, target, *args, timeout=TIMEOUT):
        p = self.Process(target, *args)
        p.start()
        self.join(p, timeout)

    def join(self, p, timeout=TIMEOUT):
        p.join(timeout)
        if p.is_alive():
            _reap(p)
            self.fail(f"{p.name} still running after {timeout}s")
        self.assertEqual(p.exitcode, 0, f"{p.name} failed")

    def assertEventually(self, predicate, timeout=10.0, msg=None):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(msg or f"condition not met within {timeout}s")
            time.sleep(0.01)

    def differs(self, key: str) -> bool:
        """True on the backend whose behaviour the table ``DIFFERENCES[key]`` describes
        as mpsysv's; the case asserts the stdlib's behaviour otherwise."""
        row = DIFFERENCES[key]
        self.assertEqual(row.case, f"{type(self).__case_name__}.{self._testMethodName}",
                         f"DIFFERENCES[{key!r}] names another case")
        return self.backend == "mpsysv"


def known_bug(key: str):
    """Decorator: the case asserts the stdlib's behaviour; mpsysv fails it for now."""
    def decorate(test):
        test.__known_bug__ = key
        return test
    return decorate


def install_cases(namespace: dict) -> None:
    """Add a ``TestCase`` per case class, backend and start method to *namespace*."""
    cases = [obj for name, obj in list(namespace.items())
             if isinstance(obj, type) and issubclass(obj, CompatCase) and obj is not CompatCase
             and name.endswith("Case")]
    available = multiprocessing.get_all_start_methods()
    for case in cases:
        for backend in BACKENDS:
            for method in case.START_METHODS:
                name = f"With{backend.backend.capitalize()}{method.capitalize()}{case.__name__}"
                attrs = {"start_method": method, "__case_name__": case.__name__,
                         "__module__": namespace["__name__"], "__qualname__": name}
                for attr, test in vars(case).items():
                    key = getattr(test, "__known_bug__", None)
                    if key is None:
                        continue
                    if KNOWN_BUGS[key][0] != f"{case.__name__}.{attr}":
                        raise AssertionError(f"KNOWN_BUGS[{key!r}] names another case")
                    if backend.backend == "mpsysv":
                        attrs[attr] = unittest.expectedFailure(_copy_of(test))
                cls = type(name, (case, backend, unittest.TestCase), attrs)
                if method not in available:
                    cls = unittest.skip(f"start method {method!r} not available")(cls)
                namespace[name] = cls


def _copy_of(test):
    """A wrapper to mark (``expectedFailure`` sets an attribute on what it is given)."""
    @functools.wraps(test)
    def wrapper(self):
        return test(self)
    return wrapper


def _close_queue(q) -> None:
    q.close()
    q.join_thread()


def _reap(p) -> None:
    if p._popen is None:
        return
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join(TIMEOUT)


# Module-level targets, so that spawn and forkserver children can find them.

def put_items(q, items):
    for item in items:
        q.put(item)


def get_items_and_report(q, out, n):
    out.put([q.get(timeout=TIMEOUT) for _ in range(n)])


def square(x):
    return x * x


def raise_value_error(x):
    raise ValueError(x)
