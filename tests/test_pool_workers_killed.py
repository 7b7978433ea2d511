"""mpsysv's Pool survives its workers' deaths: every worker here dies of a real SIGKILL.

The task a dead worker held fails with ``WorkerLostError`` (naming the task, the
worker's pid and the signal), every other task completes, the worker is replaced and
the pool stays usable; a worker killed while it holds nothing loses nothing. The
stdlib's Pool waits forever in each of these cases. ``ProcessPoolExecutor`` keeps the
stdlib's ``BrokenProcessPool``.
"""

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import threading
import unittest
from concurrent.futures.process import BrokenProcessPool

import mpsysv
from mpsysv.pool import Pool, WorkerLostError

from .helpers import wait_until

TIMEOUT = 60  # a hang guard only: a lost task fails within moments
VICTIM = 7


def double(x):
    return x * 2


def die_at_victim(x):
    if x == VICTIM:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def add_or_die(a, b):
    return die_at_victim(a) // 2 + b


def die(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def die_later(delay):
    """Return at once; the worker is killed *delay* seconds later, idle."""
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return "done"


def pid_of_worker(_=None):
    return os.getpid()


class KilledWhilePickled:
    """A result whose pickling kills the worker: it dies while sending its result."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def die_while_sending(x):
    return KilledWhilePickled() if x == VICTIM else x * 2


class _PoolCase(unittest.TestCase):
    METHOD = "fork"

    def new_pool(self, processes=2, **kwargs):
        pool = mpsysv.get_context(self.METHOD).Pool(processes, **kwargs)
        self.addCleanup(pool.join)
        self.addCleanup(pool.terminate)
        return pool

    def assert_lost(self, exc, task_index, items=None):
        self.assertIsInstance(exc, WorkerLostError)
        self.assertEqual(exc.task_index, task_index)
        self.assertEqual(exc.exitcode, -signal.SIGKILL)
        self.assertEqual(exc.signal, signal.SIGKILL)
        self.assertIsInstance(exc.pid, int)
        self.assertEqual(exc.items, items)
        self.assertIn(f"pid {exc.pid}", str(exc))
        self.assertIn("SIGKILL", str(exc))
        self.assertIn(f"task {task_index}", str(exc))

    def assert_usable(self, pool, processes=2):
        self.assertEqual(pool.map(double, range(100)), [x * 2 for x in range(100)])
        self.assertTrue(wait_until(lambda: len(pool._pool) == processes
                                   and all(p.is_alive() for p in pool._pool)))

    @staticmethod
    def each(iterator, n):
        """The next *n* results of *iterator*, an exception standing for a failed one."""
        out = []
        for _ in range(n):
            try:
                out.append(iterator.next(TIMEOUT))
            except WorkerLostError as exc:
                out.append(exc)
        return out


class KilledWhileRunningTest(_PoolCase):
    def test_map_raises_for_the_lost_task_once_every_other_task_is_done(self):
        pool = self.new_pool()
        pids = {p.pid for p in pool._pool}
        with self.assertRaises(WorkerLostError) as caught:
            pool.map(die_at_victim, range(20), chunksize=1)
        self.assert_lost(caught.exception, VICTIM)
        self.assertIn(caught.exception.pid, pids)
        self.assert_usable(pool)
        self.assertNotIn(caught.exception.pid, {p.pid for p in pool._pool})

    def test_a_chunked_map_names_the_chunk_and_its_items(self):
        pool = self.new_pool()
        with self.assertRaises(WorkerLostError) as caught:
            pool.map(die_at_victim, range(20), chunksize=5)
        self.assert_lost(caught.exception, 1, (5, 9))
        self.assert_usable(pool)

    def test_map_async_calls_the_error_callback(self):
        pool = self.new_pool()
        errors = []
        result = pool.map_async(die_at_victim, range(20), chunksize=2,
                                error_callback=errors.append)
        with self.assertRaises(WorkerLostError):
            result.get(TIMEOUT)
        self.assertEqual(len(errors), 1)
        self.assert_lost(errors[0], VICTIM // 2, (6, 7))
        self.assert_usable(pool)

    def test_imap_yields_every_other_result_in_order(self):
        pool = self.new_pool()
        out = self.each(pool.imap(die_at_victim, range(20)), 20)
        self.assert_lost(out[VICTIM], VICTIM)
        self.assertEqual(out[:VICTIM] + out[VICTIM + 1:],
                         [x * 2 for x in range(20) if x != VICTIM])
        self.assert_usable(pool)

    def test_a_chunked_imap_yields_the_items_before_the_lost_chunk_then_raises(self):
        pool = self.new_pool()
        got = []
        with self.assertRaises(WorkerLostError) as caught:
            for x in pool.imap(die_at_victim, range(20), 3):
                got.append(x)
        self.assert_lost(caught.exception, VICTIM // 3)
        self.assertEqual(got, [x * 2 for x in range(VICTIM // 3 * 3)])
        self.assert_usable(pool)

    def test_imap_unordered_yields_every_other_result(self):
        pool = self.new_pool()
        out = self.each(pool.imap_unordered(die_at_victim, range(20)), 20)
        lost = [x for x in out if isinstance(x, WorkerLostError)]
        self.assertEqual(len(lost), 1)
        self.assert_lost(lost[0], VICTIM)
        self.assertEqual(sorted(x for x in out if not isinstance(x, WorkerLostError)),
                         [x * 2 for x in range(20) if x != VICTIM])
        with self.assertRaises(WorkerLostError):
            list(pool.imap_unordered(die_at_victim, range(20), 4))
        self.assert_usable(pool)

    def test_starmap_raises_for_the_lost_task(self):
        pool = self.new_pool()
        with self.assertRaises(WorkerLostError) as caught:
            pool.starmap(add_or_die, [(i, 1) for i in range(20)], chunksize=1)
        self.assert_lost(caught.exception, VICTIM)
        self.assertEqual(pool.starmap(add_or_die, [(1, 2), (3, 4)]), [3, 7])

    def test_apply_async_calls_the_error_callback_and_the_others_their_callback(self):
        pool = self.new_pool()
        done, errors = [], []
        results = [pool.apply_async(die_at_victim, (i,), callback=done.append,
                                    error_callback=errors.append) for i in range(20)]
        for i, result in enumerate(results):
            if i == VICTIM:
                with self.assertRaises(WorkerLostError) as caught:
                    result.get(TIMEOUT)
                self.assert_lost(caught.exception, 0)
            else:
                self.assertEqual(result.get(TIMEOUT), i * 2)
        self.assertEqual(sorted(done), [i * 2 for i in range(20) if i != VICTIM])
        self.assertEqual(len(errors), 1)
        self.assertIs(errors[0], caught.exception)
        self.assertEqual(pool.apply(double, (21,)), 42)

    def test_every_task_of_several_dead_workers_fails_and_the_rest_complete(self):
        pool = self.new_pool(3)
        out = self.each(pool.imap(die_at_victim_or_multiple, range(40)), 40)
        self.assertEqual([i for i, x in enumerate(out) if isinstance(x, WorkerLostError)],
                         [0, 7, 14, 21, 28, 35])
        self.assert_usable(pool, 3)

    def test_with_maxtasksperchild(self):
        pool = self.new_pool(maxtasksperchild=1)
        with self.assertRaises(WorkerLostError) as caught:
            pool.map(die_at_victim, range(12), chunksize=1)
        self.assert_lost(caught.exception, VICTIM)
        self.assertEqual([r.get(TIMEOUT) for r in
                          [pool.apply_async(double, (i,)) for i in range(6)]],
                         [0, 2, 4, 6, 8, 10])

    def test_a_closed_pool_still_finishes_and_joins(self):
        pool = self.new_pool()
        result = pool.map_async(die_at_victim, range(20), chunksize=1)
        pool.close()
        with self.assertRaises(WorkerLostError):
            result.get(TIMEOUT)
        pool.join()


def die_at_victim_or_multiple(x):
    if x % VICTIM == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


class KilledElsewhereTest(_PoolCase):
    def test_a_worker_killed_while_sending_its_result_fails_that_task_only(self):
        pool = self.new_pool()
        out = self.each(pool.imap(die_while_sending, range(20)), 20)
        self.assert_lost(out[VICTIM], VICTIM)
        self.assertEqual(out[:VICTIM] + out[VICTIM + 1:],
                         [x * 2 for x in range(20) if x != VICTIM])
        self.assert_usable(pool)

    def test_a_worker_killed_while_idle_loses_nothing(self):
        pool = self.new_pool()
        victim = pool._pool[0].pid
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: victim not in {p.pid for p in pool._pool}
                                   and len(pool._pool) == 2))
        self.assert_usable(pool)

    def test_a_worker_killed_between_tasks_loses_nothing(self):
        pool = self.new_pool(1)
        first = pool._pool[0].pid
        self.assertEqual(pool.apply_async(die_later, (0.2,)).get(TIMEOUT), "done")
        self.assertTrue(wait_until(lambda: pool._pool and pool._pool[0].pid != first))
        self.assertEqual(pool.apply(pid_of_worker), pool._pool[0].pid)
        self.assert_usable(pool, 1)

    def test_a_killed_worker_is_replaced_while_the_others_keep_working(self):
        pool = self.new_pool()
        slow = pool.map_async(double, range(2000), chunksize=1)
        os.kill(pool._pool[1].pid, signal.SIGKILL)
        try:
            self.assertEqual(slow.get(TIMEOUT), [x * 2 for x in range(2000)])
        except WorkerLostError as exc:
            self.assertEqual(exc.signal, signal.SIGKILL)  # it held a task when killed
        self.assert_usable(pool)


class SpawnKilledWhileRunningTest(_PoolCase):
    METHOD = "spawn"

    def test_map_raises_for_the_lost_task_and_the_pool_goes_on(self):
        pool = self.new_pool()
        with self.assertRaises(WorkerLostError) as caught:
            pool.map(die_at_victim, range(20), chunksize=1)
        self.assert_lost(caught.exception, VICTIM)
        self.assert_usable(pool)


class HandedOutTest(unittest.TestCase):
    def test_a_patched_program_gets_the_pool_that_survives(self):
        with mpsysv.patched():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                self.assertIsInstance(pool, Pool)
                with self.assertRaises(WorkerLostError):
                    pool.apply(die)
                self.assertEqual(pool.apply(double, (4,)), 8)

    def test_the_error_pickles_with_its_fields(self):
        exc = WorkerLostError(3, 1234, -9, (30, 39))
        again = pickle.loads(pickle.dumps(exc))
        self.assertEqual((again.task_index, again.pid, again.exitcode, again.signal,
                          again.items), (3, 1234, -9, 9, (30, 39)))
        self.assertEqual(str(again), str(exc))
        self.assertIn("exited with code 3", str(WorkerLostError(0, 1, 3)))

    def test_process_pool_executor_keeps_broken_process_pool(self):
        ctx = mpsysv.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
            future = executor.submit(die)
            with self.assertRaises(BrokenProcessPool):
                future.result(TIMEOUT)
