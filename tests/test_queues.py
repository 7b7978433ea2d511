"""Queue, SimpleQueue and JoinableQueue: the stdlib's behaviour over SysV queues."""

import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing
import unittest

import pytest

import mpsysv
from mpsysv import JoinableQueue, Queue, SimpleQueue

from .helpers import fork, join_or_kill, spawn, sysv_counts, unique_name


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _drain(q, n, timeout=30):
    return [q.get(timeout=timeout) for _ in range(n)]


class QueueBasicsTest(unittest.TestCase):
    def setUp(self):
        self.q = Queue()

    def tearDown(self):
        self.q.close()
        self.q.join_thread()

    def test_fifo_order_and_nowait_variants(self):
        for i in range(10):
            self.q.put(i)
        self.q.put_nowait("x")
        self.assertEqual([self.q.get() for _ in range(10)], list(range(10)))
        self.assertEqual(self.q.get_nowait(), "x")
        with self.assertRaises(queue.Empty):
            self.q.get_nowait()
        with self.assertRaises(queue.Empty):
            self.q.get(False)

    def test_qsize_empty_full_are_exact(self):
        self.assertTrue(self.q.empty())
        self.assertEqual(self.q.qsize(), 0)
        for i in range(5):
            self.q.put(i)
        self.q.put(b"z" * 100_000)
        self.assertEqual(self.q.qsize(), 6)
        self.assertFalse(self.q.empty())
        self.assertFalse(self.q.full())
        _drain(self.q, 6)
        self.assertTrue(self.q.empty())

    def test_closed_queue_raises_value_error(self):
        self.q.close()
        self.q.close()  # idempotent
        with self.assertRaisesRegex(ValueError, "is closed"):
            self.q.put(1)
        with self.assertRaisesRegex(ValueError, "is closed"):
            self.q.get()

    def test_join_thread_requires_close(self):
        with self.assertRaises(AssertionError):
            self.q.join_thread()

    def test_repr_names_the_kernel_ids(self):
        c = self.q._chan
        r = repr(self.q)
        for ident in (c.ctl_id, c.main_qid, c.stream_qid, c.semid):
            self.assertIn(str(ident), r)

    def test_put_never_blocks_on_unbounded_queue(self):
        n = 20_000
        for i in range(n):
            self.q.put(i)
        self.assertEqual(_drain(self.q, n), list(range(n)))

    def test_objects_of_every_size_arrive_whole(self):
        sizes = [0, 1, 8000, 8191, 8192, 8193, 20_000, 1 << 20, (16 << 20) + 3]
        payloads = [os.urandom(n) for n in sizes]
        for p in payloads:
            self.q.put(p)
        for p in payloads:
            self.assertEqual(self.q.get(timeout=30), p)

    def test_bad_arguments_raise_clear_errors(self):
        with self.assertRaisesRegex(ValueError, "timeout"):
            self.q.get(timeout=-1)
        with self.assertRaisesRegex(ValueError, "mtype"):
            self.q.put(1, mtype=0)
        with self.assertRaisesRegex(ValueError, "mtype"):
            self.q.put(1, mtype=-5)
        with self.assertRaisesRegex(TypeError, "mtype"):
            self.q.put(1, mtype="a")
        with self.assertRaises(TypeError):
            Queue("3")
        self.q.put(1)
        self.assertEqual(self.q.get(), 1)


class BoundedQueueTest(unittest.TestCase):
    def test_put_blocks_and_raises_full_like_the_stdlib(self):
        q = Queue(3)
        try:
            for i in range(3):
                q.put(i)
            self.assertTrue(q.full())
            with self.assertRaises(queue.Full):
                q.put_nowait(3)
            t0 = time.monotonic()
            with self.assertRaises(queue.Full):
                q.put(3, timeout=0.3)
            self.assertGreaterEqual(time.monotonic() - t0, 0.29)
            self.assertEqual(q.get(), 0)
            self.assertFalse(q.full())
            q.put(3, timeout=1)
            self.assertEqual(_drain(q, 3), [1, 2, 3])
        finally:
            q.close()

    def test_blocked_put_wakes_when_a_consumer_gets(self):
        q = Queue(1)
        q.put("first")
        threading.Timer(0.2, q.get).start()
        t0 = time.monotonic()
        q.put("second", timeout=5)
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(q.get(timeout=1), "second")
        q.close()

    def test_a_blocked_putter_of_a_large_queue_gets_a_slot_freed_below_the_wake_up_batch(self):
        """Getters of a large queue wake blocked putters per batch of free slots (32 of
        1000 here); one slot freed without a wake-up still reaches a blocked put()
        within its look-again interval, and a timed put() at its deadline."""
        q = Queue(1000)
        try:
            for i in range(1000):
                q.put(i)
            for timeout in (None, 0.3):
                threading.Timer(0.1, q.get).start()
                t0 = time.monotonic()
                q.put("late", timeout=timeout)
                took = time.monotonic() - t0
                self.assertLess(took, 2.0)
                if timeout is not None:  # (no wake-up came: found at the deadline)
                    self.assertGreaterEqual(took, 0.1)
            self.assertTrue(q.full())
        finally:
            q.cancel_join_thread()
            q.close()

    def test_maxsize_beyond_a_sysv_semaphore(self):
        q = Queue(40_000)
        try:
            for i in range(33_000):
                q.put(i)
            self.assertEqual(q.qsize(), 33_000)
            self.assertEqual(_drain(q, 33_000)[-1], 32_999)
        finally:
            q.cancel_join_thread()
            q.close()


class PicklingErrorTest(unittest.TestCase):
    def test_unpicklable_object_is_reported_and_the_queue_carries_on(self):
        reported = []

        class RecordingQueue(Queue):
            @staticmethod
            def _on_queue_feeder_error(e, obj):
                reported.append((type(e), obj))

        q = RecordingQueue()
        lock = threading.Lock()
        q.put(lock)  # returns, like the stdlib's put
        q.put("ok")
        self.assertEqual(q.get(timeout=5), "ok")
        self.assertEqual(len(reported), 1)
        self.assertIs(reported[0][1], lock)
        q.close()

    def test_strict_mode_raises_in_put(self):
        q = Queue(2, strict=True)
        with self.assertRaises(TypeError):
            q.put(threading.Lock())
        q.put(1)
        q.put(2)  # the failed put took no slot
        self.assertEqual(_drain(q, 2), [1, 2])
        q.close()

    def test_handles_pickle_but_closed_handles_do_not(self):
        q = Queue()
        q2 = pickle.loads(pickle.dumps(q))
        q.put("via original")
        self.assertEqual(q2.get(timeout=5), "via original")
        q2.close()
        with self.assertRaises(ValueError):
            pickle.dumps(q2)
        q.close()


class TypedMessagesTest(unittest.TestCase):
    def test_seed_example_priorities(self):
        q = Queue()
        for mtype, text in [(300, "a"), (100, "b"), (200, "c"), (400, "d"), (100, "e")]:
            q.put(text, mtype=mtype)
        self.assertEqual([q.get(mtype=-300) for _ in range(4)], ["b", "e", "c", "a"])
        with self.assertRaises(queue.Empty):
            q.get(mtype=-300, timeout=0.05)
        self.assertEqual(q.get(mtype=400), "d")
        q.close()

    def test_exact_type_and_fifo_any(self):
        q = Queue()
        q.put("one", mtype=1)
        q.put("seven", mtype=7)
        q.put(b"L" * 50_000, mtype=7)
        q.put("two", mtype=2)
        self.assertEqual(q.get(mtype=7), "seven")
        self.assertEqual(len(q.get(mtype=7, timeout=10)), 50_000)
        self.assertEqual(q.get(), "one")
        self.assertEqual(q.get(mtype=0), "two")
        with self.assertRaises(ValueError):
            q.get(mtype=mpsysv.queues.MTYPE_MAX + 1)
        q.close()


class TimeoutTest(unittest.TestCase):
    def test_empty_timed_get_waits_in_the_kernel(self):
        q = Queue()
        cpu0, t0 = time.process_time(), time.monotonic()
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.5)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        self.assertGreaterEqual(elapsed, 0.5)
        self.assertLess(elapsed, 0.6)
        self.assertLess(cpu, 0.05)
        q.close()

    def test_waiting_get_wakes_promptly_when_another_process_puts(self):
        q = Queue()

        def later(q):
            time.sleep(0.3)
            q.put(time.monotonic())

        p = fork.Process(target=later, args=(q,))
        p.start()
        sent = q.get(timeout=10)
        self.assertLess(time.monotonic() - sent, 0.05)
        join_or_kill([p], 10)
        q.close()

    def test_several_timed_waiters_all_get_served(self):
        q = Queue()
        results = []

        def waiter():
            results.append(q.get(timeout=5))

        threads = [threading.Thread(target=waiter) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        for i in range(4):
            q.put(i)
        for t in threads:
            t.join(10)
        self.assertEqual(sorted(results), [0, 1, 2, 3])
        q.close()


def _producer(q, tag, sizes):
    for seq, n in enumerate(sizes):
        q.put((tag, seq, os.urandom(8) + b"p" * n))


def _consumer(q, out, count):
    got = []
    for _ in range(count):
        tag, seq, blob = q.get(timeout=60)
        got.append((tag, seq, len(blob)))
    out.put(got)


class ManyToManyTest(unittest.TestCase):
    """Mixed small and multi-MiB objects, several producers and consumers, each under a
    watchdog: exactly once, per-producer order, and no deadlock."""

    def run_mesh(self, producers, consumers, sizes_for):
        q, out = Queue(), Queue()
        plan = {f"p{i}": sizes_for(i) for i in range(producers)}
        total = sum(len(s) for s in plan.values())
        share = [total // consumers + (1 if i < total % consumers else 0)
                 for i in range(consumers)]
        procs = [fork.Process(target=_producer, args=(q, tag, sizes), name=tag)
                 for tag, sizes in plan.items()]
        procs += [fork.Process(target=_consumer, args=(q, out, n), name=f"c{i}")
                  for i, n in enumerate(share)]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in range(consumers)]
        join_or_kill(procs, 60)
        seen = [item for r in results for item in r]
        self.assertEqual(len(seen), total)
        self.assertEqual(len(set((t, s) for t, s, _ in seen)), total)
        for r in results:  # each consumer sees each producer's objects in order
            for tag in plan:
                seqs = [s for t, s, _ in r if t == tag]
                self.assertEqual(seqs, sorted(seqs))
        for tag, seq, n in seen:
            self.assertEqual(n, 8 + plan[tag][seq])
        q.close()
        out.close()

    def test_design_note_deadlock_one_consumer(self):
        self.run_mesh(3, 1, lambda i: [3 << 20] * 3 if i == 0 else [10] * 3000)

    def test_design_note_deadlock_several_consumers(self):
        self.run_mesh(4, 3, lambda i: [2 << 20, 10, 10, 100_000] * 3 if i % 2 else [50] * 2000)

    def test_mixed_sizes_up_to_16_mib(self):
        self.run_mesh(3, 2, lambda i: [16 << 20, 1, 9000, 1 << 20, 0, 70_000][i:] + [5] * 100)


class ManyToManyFramedTest(ManyToManyTest):
    """The same meshes with every large object framed through the stream queue (the
    path objects between one message and the parcel threshold take)."""

    def setUp(self):
        self._saved = mpsysv._queue.parcels.PARCEL_MIN
        mpsysv._queue.parcels.PARCEL_MIN = 1 << 62

    def tearDown(self):
        mpsysv._queue.parcels.PARCEL_MIN = self._saved


class ParcelTest(unittest.TestCase):
    def test_large_objects_outlive_their_producer(self):
        """A parcel belongs to the queue once sent: a producer may exit before anyone
        reads (a stream would need it alive)."""
        q = Queue()
        p = fork.Process(target=_producer, args=(q, "gone", [3 << 20, 50_000]))
        p.start()
        join_or_kill([p], 30)
        self.assertEqual(q.qsize(), 2)
        self.assertEqual([len(q.get(timeout=10)[2]) for _ in range(2)], [8 + (3 << 20), 50_008])
        q.close()

    def test_unread_parcels_are_removed_with_the_queue(self):
        before = sysv_counts()
        q = Queue()
        for _ in range(3):
            q.put(b"p" * 200_000)
        self.assertGreaterEqual(sysv_counts()["shm"], before["shm"] + 3)
        q.close()
        q.join_thread()
        self.assertEqual(sysv_counts(), before)


def _batch_producer(q, tag, n, step):
    for start in range(0, n, step):
        q.put_many([(tag, i) for i in range(start, min(start + step, n))])


class BatchTest(unittest.TestCase):
    def test_put_many_get_many_keep_order_and_count_exactly(self):
        q = Queue()
        q.put_many(list(range(1000)) + [b"x" * 30_000, "tail"])
        self.assertEqual(q.qsize(), 1002)
        first = q.get_many(100)
        self.assertEqual(first, list(range(100)))
        self.assertEqual(q.qsize(), 902)
        self.assertEqual(q.get(), 100)
        rest = q.get_many(10_000)
        self.assertEqual(rest[:-2], list(range(101, 1000)))
        self.assertEqual(rest[-2:], [b"x" * 30_000, "tail"])
        self.assertEqual(q.qsize(), 0)
        with self.assertRaises(queue.Empty):
            q.get_many(5, timeout=0.05)
        with self.assertRaises(ValueError):
            q.get_many(0)
        q.close()

    def test_put_many_takes_all_slots_or_none(self):
        q = Queue(5)
        with self.assertRaises(queue.Full):
            q.put_many(range(6), block=False)
        self.assertEqual(q.qsize(), 0)
        q.put_many(range(5))
        self.assertTrue(q.full())
        with self.assertRaises(queue.Full):
            q.put_many([1], timeout=0.1)
        self.assertEqual(q.get_many(10), [0, 1, 2, 3, 4])
        self.assertFalse(q.full())
        q.close()

    def test_blocking_put_many_of_more_objects_than_maxsize_raises_instead_of_hanging(self):
        q = Queue(3)
        with self.assertRaisesRegex(ValueError, "maxsize 3.*groups of at most 3"):
            q.put_many(range(300))
        self.assertEqual(q.qsize(), 0)
        q.put_many(range(3))  # (the queue is still usable, its slots intact)
        self.assertEqual(q.get_many(10), [0, 1, 2])
        q.close()

    def test_typed_batches(self):
        q = Queue()
        q.put_many(["a1", "a2"], mtype=5)
        q.put_many(["b1", "b2"], mtype=2)
        self.assertEqual(q.get(mtype=2), "b1")
        self.assertEqual(q.get(mtype=-10), "b2")  # the rest of the taken batch comes first
        self.assertEqual(q.get_many(5, mtype=5), ["a1", "a2"])
        q.close()

    def test_batches_cross_processes_exactly_once_in_order(self):
        q, out = Queue(), Queue()
        producers = [fork.Process(target=_batch_producer, args=(q, t, 3000, 97)) for t in "ab"]
        consumers = [fork.Process(target=_consumer_many, args=(q, out)) for _ in range(2)]
        for p in producers + consumers:
            p.start()
        join_or_kill(producers, 60)
        q.put(None)
        q.put(None)
        results = [out.get(timeout=60), out.get(timeout=60)]
        join_or_kill(consumers, 60)
        got = results[0] + results[1]
        self.assertEqual(sorted(got), sorted((t, i) for t in "ab" for i in range(3000)))
        for r in results:  # each consumer saw each producer's objects in order
            for t in "ab":
                seq = [i for tag, i in r if tag == t]
                self.assertEqual(seq, sorted(seq))
        q.close()
        out.close()

    def test_joinable_put_many_counts_every_task(self):
        jq = JoinableQueue()
        jq.put_many(range(10))
        self.assertEqual(jq._chan.counts.unfinished(), 10)
        for _ in jq.get_many(10):
            jq.task_done()
        jq.join()
        jq.close()


def _consumer_many(q, out):
    """Collect until a None; sentinels meant for the other consumer go back."""
    got, seen = [], 0
    while not seen:
        for item in q.get_many(100, timeout=60):
            if item is None:
                seen += 1
            else:
                got.append(item)
    for _ in range(seen - 1):
        q.put(None)
    out.put(got)


class ProcessSharingTest(unittest.TestCase):
    def test_fork_child_uses_the_parents_queue(self):
        q = Queue()
        p = fork.Process(target=_producer, args=(q, "f", [1, 100_000, 2]))
        p.start()
        got = [q.get(timeout=30)[1] for _ in range(3)]
        join_or_kill([p], 30)
        self.assertEqual(got, [0, 1, 2])
        q.close()

    def test_spawn_child_gets_the_queue_as_an_argument(self):
        q, out = Queue(), Queue()
        p = spawn.Process(target=_consumer, args=(q, out, 2))
        p.start()
        q.put(("s", 0, b"x"))
        q.put(("s", 1, b"y" * 30_000))
        self.assertEqual(out.get(timeout=60), [("s", 0, 1), ("s", 1, 30_000)])
        join_or_kill([p], 60)
        q.close()
        out.close()

    def test_a_queue_travels_through_another_queue(self):
        carrier, inner = Queue(), Queue()
        carrier.put(inner)
        received = carrier.get(timeout=5)
        received.put("hello")
        self.assertEqual(inner.get(timeout=5), "hello")
        received.close()
        carrier.close()
        inner.close()


_LIFETIME_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import mpsysv
    q = mpsysv.Queue()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)          # EOF: the parent has exited
        time.sleep(0.2)
        q.put("after parent exit")
        ok = q.get(timeout=5) == "after parent exit"
        print("child ok" if ok else "child bad", flush=True)
        sys.exit(0)            # normal exit: the last holder removes the queue
    os.close(r)
    q.put("from parent")
    assert q.get(timeout=5) == "from parent"
    print("parent exiting", flush=True)
""")


class LifetimeTest(unittest.TestCase):
    def test_child_keeps_using_a_queue_after_its_parent_exits(self):
        before = sysv_counts()
        out = subprocess.run([sys.executable, "-c", _LIFETIME_SCRIPT], capture_output=True,
                             text=True, timeout=60)
        deadline = time.monotonic() + 10
        while "child" not in out.stdout and time.monotonic() < deadline:
            time.sleep(0.1)  # the orphaned child prints after the parent returned
        time.sleep(1)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(sysv_counts(), before)

    def test_objects_vanish_when_the_last_holder_closes(self):
        before = sysv_counts()
        q = Queue()
        self.assertEqual(sysv_counts()["msg"], before["msg"] + 2)
        q.put("x")
        q.close()
        q.join_thread()
        self.assertEqual(sysv_counts(), before)

    def test_killed_holders_do_not_keep_the_queue_alive(self):
        before = sysv_counts()
        q = Queue()

        def hold(q):
            q.put("ready")
            time.sleep(60)

        kids = [fork.Process(target=hold, args=(q,)) for _ in range(3)]
        for k in kids:
            k.start()
        _drain(q, 3)
        for k in kids:
            os.kill(k.pid, signal.SIGKILL)
            k.join(10)
        q.put("still usable")
        self.assertEqual(q.get(timeout=5), "still usable")
        q.close()
        self.assertEqual(sysv_counts(), before)

    def test_last_holder_exiting_without_close_removes_the_queue(self):
        before = sysv_counts()
        code = "import mpsysv; q = mpsysv.Queue(); q.put(b'x' * 100000); print(q.get())"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       capture_output=True)
        self.assertEqual(sysv_counts(), before)


_RELEASE_SCRIPT = """
import gc, json, threading
from multiprocessing import util
import mpsysv

def counts():
    gc.collect()
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "SYSV" in line)
    threads = sum(1 for o in gc.get_objects()
                  if isinstance(o, threading.Thread) and o is not threading.main_thread())
    return [len(util._finalizer_registry), threads, maps]

def square(x):
    return x * x

if __name__ == "__main__":
    before = counts()
    held, feeders = [], 0
    for kind in ("Queue", "SimpleQueue", "JoinableQueue"):
        for _ in range(10):
            q = getattr(mpsysv, kind)()
            for i in range(5000):  # more than the kernel queue holds: the feeder runs
                q.put(i)
            feeders += q._feeder.thread is not None
            held.append(counts())
            for i in range(5000):
                q.get()
            q.close()
            q.join_thread()
            del q
    queues = counts()
    for _ in range(3):
        pool = mpsysv.get_context("fork").Pool(2)
        pool.map(square, range(3000), chunksize=1)
        pool.terminate()
        pool.join()
        del pool
    print(json.dumps([before, queues, counts(), feeders, max(h[2] for h in held)]))
"""


class ReleaseTest(unittest.TestCase):
    def test_closed_and_dropped_queues_and_terminated_pools_leave_nothing_behind(self):
        out = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, PYTHONPATH=_ROOT))
        self.assertEqual(out.returncode, 0, out.stderr)
        before, after_queues, after_pools, feeders, mapped = json.loads(out.stdout)
        self.assertEqual(feeders, 30)  # every queue's feeder thread ran
        self.assertGreater(mapped, before[2])  # the maps count sees a live queue
        # finalizers, thread objects, SysV mappings
        self.assertEqual(after_queues, before)
        self.assertEqual(after_pools, before)


class NamedQueueTest(unittest.TestCase):
    def test_create_open_unlink(self):
        name = unique_name("q")
        with self.assertRaises(FileNotFoundError):
            Queue(name=name)
        q = Queue(5, name=name, create=True)
        try:
            with self.assertRaises(FileExistsError):
                Queue(name=name, create=True)
            other = Queue(name=name)
            self.assertEqual(other.maxsize, 5)
            q.put("hi")
            self.assertEqual(other.get(timeout=5), "hi")
            with self.assertRaisesRegex(ValueError, "JoinableQueue"):
                JoinableQueue(name=name)
            other.close()
        finally:
            q.unlink()
            q.close()
        with self.assertRaises(FileNotFoundError):
            Queue(name=name)
        again = Queue(name=name, create=True)
        again.unlink()
        again.close()

    def test_unrelated_program_opens_by_name_and_the_queue_outlives_it(self):
        name = unique_name("jobs")
        code = textwrap.dedent(f"""
            import mpsysv
            q = mpsysv.Queue(name={name!r}, create=True)
            q.put(("made by", "creator"))
            q.put(b"B" * 7000)
            q.close(); q.join_thread()
        """)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        q = Queue(name=name)
        try:
            self.assertEqual(q.get(timeout=5), ("made by", "creator"))
            self.assertEqual(len(q.get(timeout=10)), 7000)
        finally:
            q.unlink()
            q.close()

    def test_bad_names(self):
        for bad, exc in [("", ValueError), ("a/b", ValueError), ("x" * 300, ValueError),
                         (5, TypeError)]:
            with self.assertRaises(exc):
                Queue(name=bad, create=True)


class RemovedQueueTest(unittest.TestCase):
    def test_blocked_get_reports_removal(self):
        q = Queue()
        chan = q._chan
        threading.Timer(0.3, lambda: os.system(f"ipcrm -q {chan.main_qid}")).start()
        with self.assertRaisesRegex(mpsysv.RemovedError, "removed") as caught:
            q.get(timeout=10)
        message = str(caught.exception)
        self.assertEqual(message.count("removed"), 2, message)  # "was removed ... (removed by"
        self.assertNotIn("removed while in use: it was removed while in use", message)
        with self.assertRaises(OSError):
            q.get()
        q.unlink()
        q.close()


_DROP_UNSENT = """
    import gc, mpsysv, sys, warnings
    warnings.simplefilter("always")
    q = mpsysv.Queue()
    for _ in range(100):
        q.put(b"x" * 1000)  # more than the kernel queue holds: most wait in the feeder
    {how}
    print("done")
"""


class UnsentObjectsAtExitTest(unittest.TestCase):
    def _run(self, how):
        code = textwrap.dedent(_DROP_UNSENT).format(how=how)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))

    def test_cancel_join_thread_drops_unsent_objects_without_blaming_anyone(self):
        for how in ("q.close(); q.cancel_join_thread()",
                    "q.close(); q.cancel_join_thread(); del q; gc.collect()"):
            out = self._run(how)
            self.assertEqual((out.returncode, out.stdout.strip()), (0, "done"), out.stderr)
            self.assertNotIn("Warning", out.stderr)
            self.assertNotIn("ipcrm", out.stderr)


def _worker(jq, results):
    while True:
        item = jq.get(timeout=30)
        if item is None:
            jq.task_done()
            return
        results.put(item * 2)
        jq.task_done()


class JoinableQueueTest(unittest.TestCase):
    def test_join_waits_for_every_task(self):
        jq, results = JoinableQueue(), Queue()
        procs = [fork.Process(target=_worker, args=(jq, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for i in range(50):
            jq.put(i)
        for _ in procs:
            jq.put(None)
        jq.join()
        self.assertEqual(results.qsize(), 50)
        self.assertEqual(sorted(_drain(results, 50)), [2 * i for i in range(50)])
        join_or_kill(procs, 30)
        jq.close()
        results.close()

    def test_task_done_too_many_times(self):
        jq = JoinableQueue()
        jq.put(1)
        jq.get()
        jq.task_done()
        with self.assertRaises(ValueError):
            jq.task_done()
        jq.join()
        jq.close()

    def test_more_unfinished_tasks_than_a_sysv_semaphore_holds(self):
        jq = JoinableQueue()
        n = 33_000
        for i in range(n):
            jq.put(i)
        self.assertEqual(jq._chan.counts.unfinished(), n)
        for _ in range(n):
            jq.get(timeout=10)
            jq.task_done()
        jq.join()
        jq.close()
        jq.join_thread()


class SimpleQueueTest(unittest.TestCase):
    def test_put_get_empty_close(self):
        q = SimpleQueue()
        self.assertTrue(q.empty())
        q.put([1, 2])
        q.put(b"s" * 50_000)
        self.assertFalse(q.empty())
        self.assertEqual(q.get(), [1, 2])
        self.assertEqual(len(q.get()), 50_000)
        self.assertTrue(q.empty())
        q.close()
        with self.assertRaisesRegex(OSError, "handle is closed"):  # as the stdlib's
            q.put(1)


def test_module_exports_match_the_stdlib_names():
    from mpsysv import queues
    for name in ("Queue", "SimpleQueue", "JoinableQueue"):
        assert getattr(queues, name) is getattr(mpsysv, name)
    assert mpsysv.Empty is queue.Empty and mpsysv.Full is queue.Full


def test_queues_are_the_stdlib_types_without_running_any_stdlib_queue_code():
    import multiprocessing.queues as stdlib
    plumbing = {"_reset", "_start_thread", "_feed", "_finalize_join", "_finalize_close",
                "_terminate_broken"}  # the stdlib's pipe feeder: reachable, never called
    for ours in (Queue, JoinableQueue, SimpleQueue):
        theirs = getattr(stdlib, ours.__name__)
        assert issubclass(ours, theirs)
        assert (ours.__module__, ours.__qualname__) == ("mpsysv.queues", ours.__name__)
        for name in set(vars(theirs)) - plumbing - {"__dict__", "__weakref__", "__module__",
                                                    "__doc__"}:
            owner = next(c for c in ours.__mro__ if name in vars(c))
            # (Queue[int]: the classes are typing.Generic, which answers the subscript.)
            assert owner.__module__ == "mpsysv.queues" or owner is typing.Generic, \
                f"{ours.__name__}.{name} is the stdlib's"
    assert issubclass(JoinableQueue, Queue)
    q = Queue()
    try:
        assert not any(hasattr(q, attr) for attr in ("_thread", "_buffer", "_notempty", "_opid"))
        data = pickle.dumps(q)  # a handle still pickles as mpsysv's class
        assert b"mpsysv.queues" in data and b"multiprocessing" not in data
    finally:
        q.close()


def test_a_queue_whose_other_holders_were_killed_is_removed_when_the_program_ends():
    # The parent lets go while a fork child still holds the queue; the child is then
    # SIGKILLed, so no holder is left to remove it: the parent's exit collects it.
    before = sysv_counts()
    program = textwrap.dedent("""
        import gc, os, signal, time
        import mpsysv
        q = mpsysv.Queue()
        q.put(1)
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        q.close()
        del q
        gc.collect()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with open("/proc/sysvipc/msg") as f:
            print(len(f.readlines()) - 1)
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= before["msg"] + 2, "the orphaned queue was not there to collect"
    assert sysv_counts() == before


def test_unlink_after_close_removes_the_named_queues_parcels_too():
    before = sysv_counts()
    q = Queue(name=unique_name("q"), create=True)
    q.put(b"p" * 100_000)  # a parcel segment, listed in the queue's table
    assert sysv_counts()["shm"] == before["shm"] + 2
    q.close()
    q.unlink()
    assert sysv_counts() == before


@pytest.mark.parametrize("parcels", [True, False])
def test_large_bytes_arrive_whole_as_parcels_or_streamed_when_no_parcel_is_free(
        monkeypatch, parcels):
    # bytes from the parcel size on are copied straight into the parcel (pieces of a
    # pickle); when no parcel can be had they must stream as a whole pickle instead.
    if not parcels:
        monkeypatch.setattr(mpsysv._queue.parcels.ParcelTable, "wrap", lambda self, payload: None)
    q = Queue()
    sizes = [mpsysv._queue.parcels.PARCEL_MIN - 1, mpsysv._queue.parcels.PARCEL_MIN, 100_001, 3 << 20]
    try:
        for n in sizes:
            q.put(bytes(range(251)) * (n // 251) + b"z" * (n % 251))
        for n in sizes:
            got = q.get(timeout=10)
            assert type(got) is bytes and len(got) == n
            assert got == bytes(range(251)) * (n // 251) + b"z" * (n % 251)
    finally:
        q.close()
        q.join_thread()
