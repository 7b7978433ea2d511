"""multiprocessing.Pool and ProcessPoolExecutor on each backend's queues."""

import concurrent.futures
import multiprocessing.pool
import os
import sys
import time
import unittest
from concurrent.futures.process import BrokenProcessPool

from .support import TIMEOUT, CompatCase, install_cases, raise_value_error, square

_initialized = []


def remember_pid(_):
    time.sleep(0.005)
    return os.getpid()


def blob(n):
    return b"r" * n


def add(a, b):
    return a + b


def mark_initialized(tag):
    _initialized.append(tag)


def initialized(_):
    return list(_initialized)


def unpicklable_result(_):
    return lambda: None


def die(_):
    os._exit(3)


class _PoolHelpers(CompatCase):
    def new_pool(self, processes=2, **kwargs):
        pool = self.ctx.Pool(processes, **kwargs)
        self.addCleanup(_terminate, pool)
        return pool

    def new_executor(self, workers=2, **kwargs):
        ex = concurrent.futures.ProcessPoolExecutor(workers, mp_context=self.ctx, **kwargs)
        self.addCleanup(ex.shutdown, wait=True, cancel_futures=True)
        return ex


class PoolCase(_PoolHelpers):
    START_METHODS = ("fork", "spawn", "forkserver")

    def test_map_apply_and_large_results(self):
        pool = self.new_pool()
        self.assertEqual(pool.map(square, range(30)), [x * x for x in range(30)])
        self.assertEqual(pool.apply(add, (2, 3)), 5)
        self.assertEqual(len(pool.apply_async(blob, (4 << 20,)).get(TIMEOUT)), 4 << 20)
        pool.close()
        pool.join()

    def test_terminate_while_tasks_run(self):
        pool = self.new_pool()
        result = pool.map_async(time.sleep, [30] * 4)
        time.sleep(0.3)
        start = time.monotonic()
        pool.terminate()
        pool.join()
        self.assertLess(time.monotonic() - start, 15)
        self.assertFalse(result.ready())


class PoolFeaturesCase(_PoolHelpers):
    def test_map_imap_imap_unordered_starmap(self):
        pool = self.new_pool()
        expected = [x * x for x in range(100)]
        self.assertEqual(pool.map(square, range(100), chunksize=7), expected)
        self.assertEqual(list(pool.imap(square, range(100))), expected)
        self.assertEqual(list(pool.imap(square, range(100), chunksize=9)), expected)
        self.assertEqual(sorted(pool.imap_unordered(square, range(100))), expected)
        self.assertEqual(pool.starmap(add, [(1, 2), (3, 4)]), [3, 7])
        self.assertEqual(pool.starmap_async(add, [(5, 6)]).get(TIMEOUT), [11])

    def test_callbacks_run_with_the_results(self):
        pool = self.new_pool()
        got, errors = [], []
        pool.apply_async(square, (7,), callback=got.append).wait(TIMEOUT)
        pool.map_async(square, range(4), callback=got.append).wait(TIMEOUT)
        pool.apply_async(raise_value_error, ("bad",), error_callback=errors.append).wait(TIMEOUT)
        pool.close()
        pool.join()
        self.assertEqual(got, [49, [0, 1, 4, 9]])
        self.assertEqual([(type(e), e.args) for e in errors], [(ValueError, ("bad",))])

    def test_errors_raised_in_workers_reach_the_caller(self):
        pool = self.new_pool()
        with self.assertRaises(ValueError) as cm:
            pool.apply(raise_value_error, (1,))
        self.assertEqual(cm.exception.args, (1,))
        with self.assertRaises(ValueError):
            pool.map(raise_value_error, range(3))
        it = pool.imap(raise_value_error, [4])
        with self.assertRaises(ValueError):
            next(it)
        self.assertEqual(pool.map(square, [3]), [9])

    def test_unpicklable_results_and_arguments_are_errors_not_hangs(self):
        pool = self.new_pool()
        with self.assertRaises(multiprocessing.pool.MaybeEncodingError):
            pool.apply_async(unpicklable_result, (0,)).get(TIMEOUT)
        with self.assertRaises(Exception):
            pool.apply_async(square, (lambda: 0,)).get(TIMEOUT)
        self.assertEqual(pool.apply_async(square, (4,)).get(TIMEOUT), 16)

    def test_close_then_join_finishes_pending_work(self):
        pool = self.new_pool()
        result = pool.map_async(remember_pid, range(40))
        pool.close()
        pool.join()
        self.assertEqual(len(result.get(0)), 40)
        with self.assertRaises(ValueError):
            pool.apply_async(square, (1,))

    def test_terminate_with_a_long_backlog_of_short_tasks(self):
        pool = self.new_pool(4)
        result = pool.map_async(time.sleep, [0.001] * 5000, chunksize=1)
        time.sleep(0.2)
        start = time.monotonic()
        pool.terminate()
        pool.join()
        self.assertLess(time.monotonic() - start, 30)
        self.assertFalse(result.ready() and not result.successful())

    def test_maxtasksperchild_replaces_workers(self):
        pool = self.new_pool(2, maxtasksperchild=2)
        pids = pool.map(remember_pid, range(20), chunksize=1)
        pool.close()
        pool.join()
        self.assertGreaterEqual(len(set(pids)), 10)

    def test_many_large_results(self):
        pool = self.new_pool(3)
        sizes = [(1 << 20) + i for i in range(12)]
        self.assertEqual([len(b) for b in pool.map(blob, sizes, chunksize=1)], sizes)

    def test_initializer_runs_in_every_worker(self):
        pool = self.new_pool(2, initializer=mark_initialized, initargs=("ready",))
        self.assertEqual(pool.map(initialized, range(4)), [["ready"]] * 4)

    def test_pool_class_with_context_argument(self):
        with multiprocessing.pool.Pool(2, context=self.ctx) as pool:
            self.assertEqual(pool.map(square, [1, 2]), [1, 4])

    def test_with_statement_terminates(self):
        with self.ctx.Pool(2) as pool:
            self.assertEqual(pool.apply(square, (6,)), 36)
        with self.assertRaises(ValueError):
            pool.apply(square, (1,))


class ExecutorCase(_PoolHelpers):
    START_METHODS = ("fork", "spawn")

    def test_submit_map_and_large_results(self):
        ex = self.new_executor()
        self.assertEqual(ex.submit(add, 1, 2).result(TIMEOUT), 3)
        self.assertEqual(list(ex.map(square, range(50), chunksize=5)),
                         [x * x for x in range(50)])
        self.assertEqual(len(ex.submit(blob, 3 << 20).result(TIMEOUT)), 3 << 20)

    def test_exceptions_reach_the_future(self):
        ex = self.new_executor()
        future = ex.submit(raise_value_error, "x")
        with self.assertRaises(ValueError):
            future.result(TIMEOUT)
        self.assertIsInstance(future.exception(TIMEOUT), ValueError)

    def test_a_dying_worker_breaks_the_pool(self):
        ex = self.new_executor()
        with self.assertRaises(BrokenProcessPool):
            ex.submit(die, 0).result(TIMEOUT)
        with self.assertRaises(BrokenProcessPool):
            ex.submit(square, 1)

    def test_shutdown_waits_for_pending_work(self):
        ex = concurrent.futures.ProcessPoolExecutor(2, mp_context=self.ctx)
        futures = [ex.submit(remember_pid, i) for i in range(20)]
        ex.shutdown(wait=True)
        self.assertTrue(all(f.done() for f in futures))

    @unittest.skipIf(sys.version_info < (3, 11), "max_tasks_per_child is new in 3.11")
    def test_max_tasks_per_child(self):
        if self.start_method == "fork":
            with self.assertRaises(ValueError):
                concurrent.futures.ProcessPoolExecutor(1, mp_context=self.ctx,
                                                       max_tasks_per_child=1)
            return
        ex = self.new_executor(1, max_tasks_per_child=2)
        pids = [ex.submit(remember_pid, i).result(TIMEOUT) for i in range(4)]
        self.assertEqual(len(set(pids)), 2)


def _terminate(pool):
    pool.terminate()
    pool.join()


install_cases(globals())
