"""Queue, SimpleQueue and JoinableQueue: identical assertions on the stdlib and mpsysv."""

import os
import pickle
import queue
import signal
import sys
import threading
import time

from .support import TIMEOUT, CompatCase, get_items_and_report, install_cases, known_bug, \
    put_items


class Unpicklable:
    """Pickling raises a distinctive error, so both backends can be asked for it."""

    def __reduce__(self):
        raise _PickleRefused("refused")


class _PickleRefused(Exception):
    pass


def assert_empty(case, q):
    with case.assertRaises(queue.Empty):
        q.get_nowait()


def put_tagged(q, tag, n):
    for i in range(n):
        q.put((tag, i))


def work_through_tasks(q, done):
    while True:
        item = q.get(timeout=TIMEOUT)
        if item is None:
            q.task_done()
            return
        done.put(item)
        q.task_done()


class QueueCase(CompatCase):
    def test_fifo_order_and_nowait_variants(self):
        q = self.Queue()
        for i in range(20):
            q.put(i)
        q.put_nowait("last")
        self.assertEqual([q.get(timeout=TIMEOUT) for _ in range(20)], list(range(20)))
        # The stdlib's feeder thread may not have flushed yet: wait before get_nowait().
        self.assertEventually(lambda: not q.empty())
        self.assertEqual(q.get_nowait(), "last")
        assert_empty(self, q)
        with self.assertRaises(queue.Empty):
            q.get(False)

    def test_qsize_counts_items_put_and_not_yet_got(self):
        q = self.Queue()
        self.assertEqual(q.qsize(), 0)
        for i in range(5):
            q.put(i)
        self.assertEqual(q.qsize(), 5)
        q.get(timeout=TIMEOUT)
        self.assertEqual(q.qsize(), 4)

    def test_empty_reflects_the_queue(self):
        q = self.Queue()
        self.assertTrue(q.empty())
        q.put("x")
        # The stdlib's empty() may lag a put by the feeder thread's flush.
        self.assertEventually(lambda: not q.empty())
        q.get(timeout=TIMEOUT)
        self.assertTrue(q.empty())

    def test_bounded_queue_raises_full(self):
        q = self.Queue(3)
        for i in range(3):
            q.put(i)
        self.assertTrue(q.full())
        self.assertEqual(q.qsize(), 3)
        with self.assertRaises(queue.Full):
            q.put_nowait(3)
        with self.assertRaises(queue.Full):
            q.put(3, False)
        start = time.monotonic()
        with self.assertRaises(queue.Full):
            q.put(3, timeout=0.2)
        self.assertGreaterEqual(time.monotonic() - start, 0.15)
        self.assertEqual(q.get(timeout=TIMEOUT), 0)
        self.assertFalse(q.full())
        q.put(3)
        self.assertEqual([q.get(timeout=TIMEOUT) for _ in range(3)], [1, 2, 3])

    def test_blocked_put_resumes_when_a_consumer_gets(self):
        q = self.Queue(1)
        q.put("first")
        t = threading.Timer(0.2, q.get)
        t.start()
        q.put("second", timeout=TIMEOUT)
        t.join()
        self.assertEqual(q.get(timeout=TIMEOUT), "second")

    def test_zero_and_negative_maxsize_mean_unbounded(self):
        for maxsize in (0, -3):
            q = self.Queue(maxsize)
            for i in range(100):
                q.put_nowait(i)
            self.assertFalse(q.full())
            self.assertEqual(q.qsize(), 100)

    def test_put_never_blocks_on_an_unbounded_queue(self):
        q = self.Queue()
        start = time.monotonic()
        for i in range(5000):
            q.put(("item", i, "x" * 20))
        self.assertLess(time.monotonic() - start, 20)
        self.assertEqual([q.get(timeout=TIMEOUT)[1] for _ in range(5000)], list(range(5000)))

    def test_objects_of_every_size_arrive_whole(self):
        q = self.Queue()
        sizes = [0, 1, 8000, 8200, 100_000, 3 << 20]
        for n in sizes:
            q.put(os.urandom(n))
        for n in sizes:
            self.assertEqual(len(q.get(timeout=TIMEOUT)), n)

    def test_closed_queue_refuses_put_and_get(self):
        q = self.ctx.Queue()
        q.put(1)
        q.close()
        q.close()
        with self.assertRaisesRegex(ValueError, "is closed"):
            q.put(2)
        with self.assertRaisesRegex(ValueError, "is closed"):
            q.get()
        q.join_thread()

    def test_join_thread_requires_close(self):
        q = self.Queue()
        with self.assertRaises(AssertionError):
            q.join_thread()

    def test_cancel_join_thread_lets_close_return(self):
        q = self.ctx.Queue()
        q.put("x")
        q.cancel_join_thread()
        q.close()
        q.join_thread()


class QueueTimeoutCase(CompatCase):
    def test_get_timeout_raises_empty_after_the_timeout(self):
        q = self.Queue()
        start = time.monotonic()
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.2)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.15)
        self.assertLess(elapsed, 10)

    def test_get_with_timeout_returns_an_item_put_meanwhile(self):
        q = self.Queue()
        t = threading.Timer(0.1, q.put, args=("late",))
        t.start()
        self.assertEqual(q.get(timeout=TIMEOUT), "late")
        t.join()

    def test_negative_timeout(self):
        q = self.Queue()
        if self.differs("negative-timeout"):
            with self.assertRaisesRegex(ValueError, "timeout"):
                q.get(timeout=-1)
        else:
            with self.assertRaises(queue.Empty):
                q.get(timeout=-1)


class QueuePicklingCase(CompatCase):
    def test_unpicklable_object_reports_and_queue_carries_on(self):
        q = self.Queue()
        reported = []
        q._on_queue_feeder_error = lambda exc, obj: reported.append((type(exc), obj))
        bad = Unpicklable()
        q.put(bad)
        if self.differs("unpicklable-put"):
            self.assertEqual(reported, [(_PickleRefused, bad)])
        self.assertEventually(lambda: reported == [(_PickleRefused, bad)])
        q.put("next")
        self.assertEqual(q.get(timeout=TIMEOUT), "next")


class QueueLifetimeCase(CompatCase):
    def test_queue_pickles_outside_process_start(self):
        q = self.Queue()
        if self.differs("pickle-anywhere"):
            other = pickle.loads(pickle.dumps(q))
            other.put("through a pickled handle")
            self.assertEqual(q.get(timeout=TIMEOUT), "through a pickled handle")
            other.close()
        else:
            with self.assertRaises(RuntimeError):
                pickle.dumps(q)


    def test_fork_context_queue_given_to_a_spawn_child(self):
        q = self.Queue()  # this case's context is fork
        spawn = self.get_context("spawn")
        p = spawn.Process(target=put_items, args=(q, ["from spawn"]), daemon=True)
        if self.differs("mixed-start-methods"):
            p.start()
            self.assertEqual(q.get(timeout=TIMEOUT), "from spawn")
            self.join(p)
        elif sys.version_info >= (3, 11):
            with self.assertRaisesRegex(RuntimeError, "fork context"):
                p.start()
        else:
            # Before 3.11 the stdlib does not refuse: the child cannot open the parent's
            # fork-only semaphores and dies with SIGSEGV, and nothing arrives.
            p.start()
            p.join(TIMEOUT)
            self.assertEqual(p.exitcode, -signal.SIGSEGV)
            with self.assertRaises(queue.Empty):
                q.get(timeout=0.5)


class CrossProcessQueueCase(CompatCase):
    START_METHODS = ("fork", "spawn", "forkserver")

    def test_child_puts_parent_gets_in_order(self):
        q = self.Queue()
        p = self.Process(put_items, q, list(range(50)))
        p.start()
        self.assertEqual([q.get(timeout=TIMEOUT) for _ in range(50)], list(range(50)))
        self.join(p)

    def test_parent_puts_child_gets(self):
        q, out = self.Queue(), self.Queue()
        put_items(q, ["a", b"b", 3, None, (4.5,)])
        self.start_and_join(get_items_and_report, q, out, 5)
        self.assertEqual(out.get(timeout=TIMEOUT), ["a", b"b", 3, None, (4.5,)])

    def test_simple_and_joinable_queues_cross_processes(self):
        sq, jq = self.SimpleQueue(), self.JoinableQueue()
        p = self.Process(put_items, sq, ["s1", "s2"])
        p.start()
        self.assertEqual([sq.get(), sq.get()], ["s1", "s2"])
        self.join(p)
        p = self.Process(put_items, jq, ["j1"])
        p.start()
        self.assertEqual(jq.get(timeout=TIMEOUT), "j1")
        jq.task_done()
        jq.join()
        self.join(p)

    def test_large_objects_cross_processes(self):
        q = self.Queue()
        blobs = [b"a" * (3 << 20), b"b" * 100_000]
        p = self.Process(put_items, q, blobs)
        p.start()
        # Get before join: a child cannot exit while its queue's buffer is unflushed.
        self.assertEqual([q.get(timeout=TIMEOUT) for _ in blobs], blobs)
        self.join(p)


class ManyProcessesQueueCase(CompatCase):
    def test_each_producers_order_is_kept(self):
        q = self.Queue()
        producers = [self.Process(put_tagged, q, tag, 300) for tag in range(3)]
        for p in producers:
            p.start()
        got = [q.get(timeout=TIMEOUT) for _ in range(900)]
        for p in producers:
            self.join(p)
        for tag in range(3):
            self.assertEqual([i for t, i in got if t == tag], list(range(300)))

    def test_several_consumers_share_the_items(self):
        q, out = self.Queue(), self.Queue()
        consumers = [self.Process(get_items_and_report, q, out, 50) for _ in range(3)]
        for p in consumers:
            p.start()
        put_items(q, range(150))
        results = [out.get(timeout=TIMEOUT) for _ in consumers]
        for p in consumers:
            self.join(p)
        self.assertEqual(sorted(sum(results, [])), list(range(150)))
        for r in results:
            self.assertEqual(r, sorted(r))


class JoinableQueueCase(CompatCase):
    def test_join_returns_once_every_task_is_done(self):
        q, done = self.JoinableQueue(), self.Queue()
        workers = [self.Process(work_through_tasks, q, done) for _ in range(2)]
        for w in workers:
            w.start()
        for i in range(40):
            q.put(i)
        q.put(None)
        q.put(None)
        q.join()
        self.assertEqual(sorted(done.get(timeout=TIMEOUT) for _ in range(40)), list(range(40)))
        for w in workers:
            self.join(w)

    def test_join_on_a_queue_without_tasks_returns_at_once(self):
        q = self.JoinableQueue()
        q.join()
        q.put(1)
        q.get(timeout=TIMEOUT)
        q.task_done()
        q.join()

    def test_task_done_too_many_times_raises_value_error(self):
        q = self.JoinableQueue()
        q.put("x")
        q.get(timeout=TIMEOUT)
        q.task_done()
        with self.assertRaises(ValueError):
            q.task_done()


class SimpleQueueCase(CompatCase):
    def test_put_get_empty(self):
        q = self.SimpleQueue()
        self.assertTrue(q.empty())
        q.put(["payload", 1])
        self.assertFalse(q.empty())
        self.assertEqual(q.get(), ["payload", 1])
        self.assertTrue(q.empty())

    def test_put_raises_when_the_object_cannot_be_pickled(self):
        q = self.SimpleQueue()
        with self.assertRaises(_PickleRefused):
            q.put(Unpicklable())
        q.put("still usable")
        self.assertEqual(q.get(), "still usable")

    def test_close_twice_is_harmless(self):
        q = self.ctx.SimpleQueue()
        q.close()
        q.close()

    def test_use_after_close_raises_oserror(self):
        q = self.ctx.SimpleQueue()
        q.close()
        with self.assertRaises(OSError):
            q.get()
        with self.assertRaises(OSError):
            q.put(1)


install_cases(globals())
