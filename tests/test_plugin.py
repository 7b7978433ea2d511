"""The plugin: mpsysv contexts, and what Pool and ProcessPoolExecutor reach for in a queue.

The Reader/Writer/ReadLock under a queue's ``_reader``/``_writer``/``_rlock`` are
tested here directly; compat/ runs Pool and ProcessPoolExecutor on top of them.
"""

import gc
import multiprocessing
import multiprocessing.context
import pickle
import threading
import time
import unittest
from multiprocessing.connection import wait

import mpsysv
from mpsysv import shared
from mpsysv.queues import JoinableQueue, Queue, SimpleQueue

from .helpers import fork, join_or_kill, spawn

TIMEOUT = 60


def _put_later(q, delay, obj):
    time.sleep(delay)
    q.put(obj)


def _wait_in_child(q, out):
    ready = wait([q._reader], TIMEOUT)
    out.put((len(ready), q._reader.recv()))


def _square(x):
    return x * x


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("not today")


def _watchers():
    return [t for t in threading.enumerate() if t.name == "mpsysv.ReaderWatcher"]


class ContextTest(unittest.TestCase):
    def test_contexts_are_stdlib_contexts_with_mpsysv_queues(self):
        for method in multiprocessing.get_all_start_methods():
            ctx = mpsysv.get_context(method)
            self.assertIsInstance(ctx, multiprocessing.context.BaseContext)
            self.assertIsInstance(ctx, type(multiprocessing.get_context(method)))
            self.assertEqual(ctx.get_start_method(), method)
            for factory, cls in (("Queue", Queue), ("SimpleQueue", SimpleQueue),
                                 ("JoinableQueue", JoinableQueue)):
                q = getattr(ctx, factory)()
                self.assertIsInstance(q, cls)
                q.close()

    def test_default_is_the_stdlib_start_method(self):
        self.assertEqual(mpsysv.get_context().get_start_method(),
                         multiprocessing.get_start_method())

    def test_unknown_method(self):
        with self.assertRaisesRegex(ValueError, "cannot find context for 'nope'"):
            mpsysv.get_context("nope")

    def test_shared_memory_factories(self):
        ctx = mpsysv.get_context("fork")
        sm = ctx.SharedMemory(create=True, size=100)
        self.assertIsInstance(sm, shared.SharedMemory)
        sl = ctx.ShareableList([1, "a"])
        self.assertIsInstance(sl, shared.ShareableList)
        with ctx.SharedMemoryManager() as smm:
            self.assertIsInstance(smm, shared.SharedMemoryManager)
            self.assertEqual(smm.ShareableList([3])[0], 3)
        for segment in (sm, sl.shm):
            segment.close()
            segment.unlink()

    def test_simple_queue_raises_on_unpicklable_objects_like_the_stdlib(self):
        q = mpsysv.get_context("fork").SimpleQueue()
        with self.assertRaisesRegex(TypeError, "not today"):
            q.put(_Unpicklable())
        q.close()

    def test_context_pickles_by_reference(self):
        ctx = mpsysv.get_context("spawn")
        self.assertIs(pickle.loads(pickle.dumps(ctx)).__class__, type(ctx))

    def test_pool_runs_on_mpsysv_queues(self):
        with mpsysv.get_context("fork").Pool(2) as pool:
            self.assertIsInstance(pool._inqueue, SimpleQueue)
            self.assertIsInstance(pool._outqueue, SimpleQueue)
            # Only the pool's own threads use its change notifier: no kernel queue.
            self.assertNotIsInstance(pool._change_notifier, SimpleQueue)
            self.assertEqual(pool.map(_square, range(10)), [x * x for x in range(10)])
        del pool
        gc.collect()

    def _mpsysv_threads(self):
        return [t.name for t in threading.enumerate() if t.name.startswith("mpsysv")]

    def test_no_mpsysv_thread_outlives_a_with_pool_block(self):
        self.assertEqual(self._mpsysv_threads(), [])
        with mpsysv.get_context("fork").Pool(2) as pool:
            self.assertEqual(pool.map(_square, range(10)), [x * x for x in range(10)])
            # Its worker handler waits for nothing a queue must make readable.
            self.assertEqual(self._mpsysv_threads(), [])
        # The pool object is still referenced here: its threads must be gone anyway.
        self.assertEqual(self._mpsysv_threads(), [])
        del pool
        gc.collect()

    def test_no_mpsysv_thread_outlives_a_with_pool_block_of_a_patched_program(self):
        with mpsysv.patched():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                self.assertIsInstance(pool._outqueue, SimpleQueue)
                self.assertEqual(pool.map(_square, range(4)), [0, 1, 4, 9])
            self.assertEqual(self._mpsysv_threads(), [])
        del pool
        gc.collect()


class ReaderTest(unittest.TestCase):
    def setUp(self):
        self.q = SimpleQueue(strict=True)
        self.addCleanup(gc.collect)
        self.addCleanup(self.q.close)

    def test_recv_and_poll(self):
        r = self.q._reader
        self.assertFalse(r.poll())
        self.q.put("a")
        self.q.put(b"b" * 200_000)
        self.assertTrue(r.poll())
        self.assertTrue(r.poll(0))
        self.assertEqual(r.recv(), "a")
        self.assertEqual(len(r.recv()), 200_000)
        self.assertFalse(r.poll(0))
        self.assertFalse(r.closed)
        self.assertIs(self.q._reader, r)

    def test_poll_with_timeout_waits_in_the_kernel_for_the_timeout(self):
        start = time.monotonic()
        self.assertFalse(self.q._reader.poll(0.3))
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 5)

    def test_poll_wakes_promptly_when_another_process_puts(self):
        p = fork.Process(target=_put_later, args=(self.q, 0.3, "late"))
        p.start()
        start = time.monotonic()
        self.assertTrue(self.q._reader.poll(TIMEOUT))
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(self.q._reader.recv(), "late")
        join_or_kill([p], TIMEOUT)

    def test_wait_sees_the_queue_level(self):
        r = self.q._reader
        self.assertEqual(wait([r], 0.1), [])
        self.q.put(1)
        self.assertEqual(wait([r], TIMEOUT), [r])
        self.assertEqual(wait([r], TIMEOUT), [r])  # level-triggered: still there
        self.assertEqual(self.q.get(), 1)  # taken through the queue, not the reader
        self.assertEqual(wait([r], 0.1), [])
        self.q.put(2)
        self.assertEqual(wait([r], TIMEOUT), [r])
        self.assertEqual(r.recv(), 2)
        self.assertEqual(wait([r], 0.1), [])

    def test_wait_wakes_when_another_process_puts(self):
        r = self.q._reader
        self.assertEqual(wait([r], 0.05), [])
        p = fork.Process(target=_put_later, args=(self.q, 0.3, "x"))
        p.start()
        start = time.monotonic()
        self.assertEqual(wait([r], TIMEOUT), [r])
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(r.recv(), "x")
        join_or_kill([p], TIMEOUT)

    def test_a_spurious_wake_up_leaves_recv_waiting_for_the_next_object(self):
        r = self.q._reader
        other = pickle.loads(pickle.dumps(self.q))  # a second consumer
        self.q.put("first")
        self.assertEqual(wait([r], TIMEOUT), [r])
        self.assertEqual(other.get(), "first")  # taken before this reader got to it
        got = []
        t = threading.Thread(target=lambda: got.append(r.recv()))
        t.start()
        time.sleep(0.2)
        self.assertEqual(got, [])
        self.q.put("second")
        t.join(TIMEOUT)
        self.assertEqual(got, ["second"])
        self.assertEqual(wait([r], 0.1), [])
        other.close()

    def test_waiting_in_fork_and_spawn_children(self):
        for ctx in (fork, spawn):
            with self.subTest(ctx.get_start_method()):
                wait([self.q._reader], 0.01)  # this process's watcher exists at fork
                out = Queue()
                p = ctx.Process(target=_wait_in_child, args=(self.q, out))
                p.start()
                self.q.put(("hello", ctx.get_start_method()))
                self.assertEqual(out.get(timeout=TIMEOUT), (1, ("hello", ctx.get_start_method())))
                join_or_kill([p], TIMEOUT)
                out.close()

    def test_close_of_the_reader_leaves_the_queue_usable(self):
        r = self.q._reader
        wait([r], 0.01)
        r.close()
        r.close()
        self.assertTrue(r.closed)
        for call in (r.recv, r.poll, r.fileno):
            with self.assertRaisesRegex(OSError, "closed"):
                call()
        self.q.put(5)
        self.assertEqual(self.q.get(), 5)

    def test_close_of_the_queue_closes_its_reader_and_writer(self):
        q = SimpleQueue()
        r, w = q._reader, q._writer
        wait([r], 0.01)
        q.close()
        self.assertTrue(r.closed)
        self.assertTrue(w.closed)
        with self.assertRaises(OSError):
            r.recv()
        with self.assertRaises(OSError):
            w.send(1)

    def test_watcher_and_its_mapping_go_with_the_queue(self):
        q = SimpleQueue()
        before = len(_watchers())
        wait([q._reader], 0.01)
        self.assertEqual(len(_watchers()), before + 1)
        q.close()
        del q
        gc.collect()
        deadline = time.monotonic() + 10
        while len(_watchers()) > before and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(len(_watchers()), before)

    def test_removed_queue_wakes_the_waiter_and_recv_reports_it(self):
        q = SimpleQueue()
        r = q._reader
        self.assertEqual(wait([r], 0.05), [])
        q.unlink()
        self.assertEqual(wait([r], TIMEOUT), [r])
        with self.assertRaises(OSError):
            r.recv()
        q.close()


class ReadLockTest(unittest.TestCase):
    def test_poll_under_the_lock_reserves_the_object(self):
        q = SimpleQueue()
        other = pickle.loads(pickle.dumps(q))
        q.put("mine")
        lock = q._rlock
        self.assertTrue(lock.acquire())
        self.assertTrue(q._reader.poll())
        self.assertTrue(other.empty())  # already taken out of the kernel queue
        self.assertTrue(q._reader.poll())
        self.assertEqual(q._reader.recv(), "mine")
        self.assertFalse(q._reader.poll())
        lock.release()
        with self.assertRaises(ValueError):
            lock.release()
        with lock:
            self.assertFalse(lock.acquire(False))
        q.close()
        other.close()


class WriterTest(unittest.TestCase):
    def test_send_pickles_in_the_caller_even_on_a_lenient_queue(self):
        q = SimpleQueue(strict=False)  # put() would report, not raise
        with self.assertRaisesRegex(TypeError, "not today"):
            q._writer.send(_Unpicklable())
        q._writer.send(("ok", b"x" * 300_000))
        q._writer.send(("ok", b"x" * 30_000))
        self.assertEqual(q.get(), ("ok", b"x" * 300_000))
        self.assertEqual(q.get(), ("ok", b"x" * 30_000))
        q.close()

    def test_send_waits_for_room_instead_of_buffering(self):
        q = SimpleQueue()
        sent = []

        def sender():
            for i in range(50):
                q._writer.send(b"%d" % i + b"." * 4000)
                sent.append(i)

        t = threading.Thread(target=sender)
        t.start()
        time.sleep(0.3)
        self.assertLess(len(sent), 50)  # blocked: the kernel queue holds about 16 KiB
        self.assertLessEqual(q._feeder.unsent(), 1)  # only the object being sent
        got = [q.get() for _ in range(50)]
        t.join(TIMEOUT)
        self.assertEqual([int(g.split(b".")[0]) for g in got], list(range(50)))
        q.close()

    def test_send_keeps_order_after_buffered_puts(self):
        q = SimpleQueue()
        for i in range(10):
            q.put(b"p" * 4000)  # more than the kernel queue holds: some wait in the feeder
        got = []
        t = threading.Thread(target=lambda: got.extend(q.get() for _ in range(11)))
        t.start()
        q._writer.send("after")
        t.join(TIMEOUT)
        self.assertEqual(len(got), 11)
        self.assertEqual(got[-1], "after")
        q.close()

    def test_joinable_and_bounded_queues_count_sent_objects(self):
        jq = JoinableQueue(2)
        jq._writer.send(1)
        jq._writer.send(2)
        self.assertTrue(jq.full())
        self.assertEqual([jq.get(), jq.get()], [1, 2])
        jq.task_done()
        jq.task_done()
        jq.join()
        jq.close()

    def test_closed_writer(self):
        q = SimpleQueue()
        w = q._writer
        w.close()
        self.assertTrue(w.closed)
        with self.assertRaisesRegex(OSError, "closed"):
            w.send(1)
        q.put(1)
        self.assertEqual(q.get(), 1)
        q.close()


if __name__ == "__main__":
    unittest.main()
