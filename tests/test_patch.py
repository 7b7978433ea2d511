"""mpsysv.patch()/unpatch()/patched(): the switch, its reach into children, its undoing."""

import gc
import multiprocessing
import multiprocessing.managers
import multiprocessing.shared_memory as stdlib_shared
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from multiprocessing import context, resource_tracker, spawn

import mpsysv
from mpsysv import queues, shared

TIMEOUT = 60
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _originals():
    return [multiprocessing.Queue, multiprocessing.SimpleQueue, multiprocessing.JoinableQueue,
            context.BaseContext.__dict__["Queue"], context.BaseContext.__dict__["SimpleQueue"],
            context.BaseContext.__dict__["JoinableQueue"], stdlib_shared.SharedMemory,
            stdlib_shared.ShareableList, spawn.get_preparation_data, resource_tracker.register,
            resource_tracker.unregister, resource_tracker._CLEANUP_FUNCS.get("shared_memory")]


def _report_backends(out):
    import multiprocessing as mp
    from multiprocessing import shared_memory
    q = mp.Queue()
    out.put((type(q).__module__, type(mp.get_context("spawn").JoinableQueue()).__module__,
             type(mp.SimpleQueue()).__module__, shared_memory.SharedMemory.__module__))
    q.close()


class PatchTest(unittest.TestCase):
    def setUp(self):
        self.before = _originals()
        self.addCleanup(gc.collect)
        self.addCleanup(mpsysv.unpatch)

    def test_every_context_and_the_module_functions_switch(self):
        mpsysv.patch()
        for ctx in [multiprocessing] + [multiprocessing.get_context(m)
                                        for m in multiprocessing.get_all_start_methods()]:
            for name, cls in (("Queue", queues.Queue), ("SimpleQueue", queues.SimpleQueue),
                              ("JoinableQueue", queues.JoinableQueue)):
                q = getattr(ctx, name)()
                self.assertIsInstance(q, cls)
                q.close()
        self.assertIs(stdlib_shared.SharedMemory, shared.SharedMemory)
        self.assertIs(stdlib_shared.ShareableList, shared.ShareableList)

    def test_unpatch_restores_the_very_same_objects(self):
        mpsysv.patch()
        mpsysv.patch()  # idempotent
        mpsysv.unpatch()
        self.assertTrue(all(a is b for a, b in zip(_originals(), self.before)))
        mpsysv.unpatch()  # a no-op when not patched
        self.assertIsInstance(multiprocessing.Queue(), multiprocessing.queues.Queue)

    def test_patched_block_restores_the_previous_state(self):
        with mpsysv.patched():
            self.assertIsInstance(multiprocessing.SimpleQueue(), queues.SimpleQueue)
        self.assertTrue(all(a is b for a, b in zip(_originals(), self.before)))
        mpsysv.patch()
        with mpsysv.patched():
            pass
        self.assertIs(stdlib_shared.SharedMemory, shared.SharedMemory)  # still patched

    def test_children_of_every_start_method_are_patched(self):
        with mpsysv.patched():
            for method in multiprocessing.get_all_start_methods():
                with self.subTest(method):
                    ctx = multiprocessing.get_context(method)
                    out = ctx.Queue()
                    p = ctx.Process(target=_report_backends, args=(out,))
                    p.start()
                    self.assertEqual(out.get(timeout=TIMEOUT), ("mpsysv.queues",) * 3
                                     + ("mpsysv.shared",))
                    p.join(TIMEOUT)
                    self.assertEqual(p.exitcode, 0)
                    out.close()

    def test_stdlib_shared_memory_manager_runs_on_mpsysv_segments(self):
        with mpsysv.patched():
            with multiprocessing.managers.SharedMemoryManager() as smm:
                sm = smm.SharedMemory(64)
                self.assertIsInstance(sm, shared.SharedMemory)
                sl = smm.ShareableList([1, 2])
                self.assertIsInstance(sl, shared.ShareableList)
                names = [sm.name, sl.shm.name]
                sm.close()
                sl.shm.close()
            for name in names:
                with self.assertRaises(FileNotFoundError):
                    shared.SharedMemory(name)


class UnmodifiedProgramTest(unittest.TestCase):
    def test_a_program_that_patches_before_it_builds_a_pool(self):
        code = textwrap.dedent("""
            import multiprocessing, mpsysv
            def f(x):
                return x + 1
            if __name__ == "__main__":
                multiprocessing.set_start_method("spawn")
                mpsysv.patch()
                with multiprocessing.Pool(2) as pool:
                    print(type(pool._outqueue).__name__, pool.map(f, [1, 2, 3]))
        """)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "program.py")  # spawn children re-import it by path
            with open(path, "w") as f:
                f.write(code)
            proc = subprocess.run([sys.executable, path], capture_output=True, text=True,
                                  timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=REPO))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.strip(), "SimpleQueue [2, 3, 4]")
