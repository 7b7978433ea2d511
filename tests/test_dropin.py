"""``import mpsysv as multiprocessing``: the whole ``multiprocessing`` namespace, with
mpsysv's queues, pools and shared memory, proven on programs written for the stdlib that
run with only their imports changed."""

import multiprocessing
import multiprocessing.shared_memory
import os
import re
import subprocess
import sys
import tempfile
import unittest

import mpsysv
import mpsysv.shared_memory

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROGRAMS = os.path.join(HERE, "programs")
TIMEOUT = 180

# The only edits a user makes: the imports.
IMPORT_SWAPS = [
    (r"(?m)^import multiprocessing$", "import mpsysv as multiprocessing"),
    (r"(?m)^from multiprocessing import shared_memory$", "from mpsysv import shared_memory"),
    (r"(?m)^from multiprocessing\.shared_memory import", "from mpsysv.shared_memory import"),
]


def swap_imports(source):
    for pattern, replacement in IMPORT_SWAPS:
        source = re.sub(pattern, replacement, source)
    return source


def run_python(path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=os.path.dirname(path))
    return proc.returncode, proc.stdout, proc.stderr


class NamespaceTest(unittest.TestCase):
    def test_every_public_name_of_multiprocessing_is_there(self):
        for name in multiprocessing.__all__:
            with self.subTest(name):
                self.assertTrue(hasattr(mpsysv, name))
                self.assertIn(name, mpsysv.__all__)

    def test_queues_pools_and_shared_memory_are_mpsysv_s(self):
        for factory in (mpsysv.Queue, mpsysv.SimpleQueue, mpsysv.JoinableQueue):
            q = factory()
            self.assertEqual(type(q).__module__, "mpsysv.queues")
            q.close()
        self.assertIsInstance(mpsysv.get_context(), mpsysv.context._MpsysvContext)
        with mpsysv.Pool(1) as pool:
            self.assertEqual(type(pool._inqueue).__module__, "mpsysv.queues")
            self.assertEqual(pool.apply(abs, (-3,)), 3)
        self.assertIs(mpsysv.shared_memory.SharedMemory, mpsysv.SharedMemory)
        self.assertIs(mpsysv.shared_memory.ShareableList, mpsysv.ShareableList)
        self.assertEqual(sorted(mpsysv.shared_memory.__all__),
                         sorted(multiprocessing.shared_memory.__all__))

    def test_pool_goes_through_the_default_context_s_pool(self):
        calls = []
        ctx = mpsysv.get_context()
        original = type(ctx).Pool

        def recording_pool(self, *args):
            calls.append(args)
            return original(self, *args)

        type(ctx).Pool = recording_pool
        try:
            with mpsysv.Pool(1, None, (), 5) as pool:
                pool.apply(abs, (1,))
        finally:
            type(ctx).Pool = original
        self.assertEqual(calls, [(1, None, (), 5)])

    def test_everything_else_is_the_stdlib_s_own_object(self):
        for name in ("Process", "Lock", "Event", "Manager", "Value", "cpu_count",
                     "set_start_method", "current_process", "TimeoutError"):
            with self.subTest(name):
                self.assertEqual(getattr(mpsysv, name), getattr(multiprocessing, name))

    def test_submodules_are_reached_as_attributes(self):
        # mpsysv's pool module: its Pool survives killed workers; the stdlib's other names
        import mpsysv.pool as own_pool
        self.assertIs(mpsysv.pool, own_pool)
        self.assertTrue(issubclass(mpsysv.pool.Pool, multiprocessing.pool.Pool))
        self.assertIs(mpsysv.pool.ThreadPool, multiprocessing.pool.ThreadPool)
        self.assertIs(mpsysv.pool.AsyncResult, multiprocessing.pool.AsyncResult)
        self.assertIs(mpsysv.WorkerLostError, own_pool.WorkerLostError)
        with self.assertRaisesRegex(AttributeError, "'mpsysv.pool' has no attribute"):
            getattr(mpsysv.pool, "nope")
        self.assertIs(mpsysv.managers.SyncManager,
                      __import__("multiprocessing.managers").managers.SyncManager)
        self.assertIs(mpsysv.queues.Queue, mpsysv.Queue)
        # mpsysv's own context module lends the stdlib's names it does not define
        self.assertIs(mpsysv.context.TimeoutError, multiprocessing.context.TimeoutError)
        self.assertIs(mpsysv.context.BaseContext, multiprocessing.context.BaseContext)
        self.assertTrue(issubclass(mpsysv.context.ForkContext,
                                   multiprocessing.context.ForkContext))
        with self.assertRaisesRegex(AttributeError, "'mpsysv.context' has no attribute"):
            getattr(mpsysv.context, "nope")
        with self.assertRaisesRegex(AttributeError, "module 'mpsysv' has no attribute 'nope'"):
            getattr(mpsysv, "nope")


class ProgramsWithOnlyTheImportChangedTest(unittest.TestCase):
    """Each program of tests/programs/mp_*.py runs as written (stdlib) and with only its
    imports swapped; the outputs match except the line naming the backend."""

    def check(self, name, method):
        path = os.path.join(PROGRAMS, name)
        with open(path) as f:
            source = f.read()
        swapped = swap_imports(source)
        self.assertNotEqual(swapped, source)
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, name)
            with open(copy, "w") as f:
                f.write(swapped)
            code, out, err = run_python(path, method)
            self.assertEqual(code, 0, err)
            self.assertIn("backend: multiprocessing.", out)
            code, swapped_out, err = run_python(copy, method)
            self.assertEqual(code, 0, err)
        self.assertRegex(swapped_out, r"backend: mpsysv\.\w+")
        self.assertNotIn("multiprocessing.queues", swapped_out)
        self.assertNotIn("multiprocessing.shared_memory", swapped_out)
        self.assertEqual(err, "")
        strip = re.compile(r"(?m)^backend:.*$")
        self.assertEqual(strip.sub("", swapped_out), strip.sub("", out))

    def test_a_pool(self):
        for method in ("fork", "spawn"):
            with self.subTest(method):
                self.check("mp_pool.py", method)

    def test_a_pipeline_of_processes_and_queues(self):
        for method in ("fork", "spawn"):
            with self.subTest(method):
                self.check("mp_pipeline.py", method)

    def test_a_manager(self):
        self.check("mp_manager.py", "forkserver")

    def test_shared_memory(self):
        for method in ("fork", "spawn"):
            with self.subTest(method):
                self.check("mp_shared_memory.py", method)
