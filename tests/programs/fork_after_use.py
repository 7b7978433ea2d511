"""Uses a queue, shared memory or a pool of the backend given (``stdlib`` or ``mpsysv``),
then starts a fork child, with every warning shown: on Python 3.12+ a fork of a process
that runs more than one thread warns (DeprecationWarning). tests/test_fork_warnings.py
compares the two backends."""

import concurrent.futures
import multiprocessing
import sys
import threading
import warnings

warnings.simplefilter("always")
BACKEND, SCENARIO = sys.argv[1], sys.argv[2]
if BACKEND == "mpsysv":
    import mpsysv as mp
    from mpsysv.shared_memory import SharedMemory
else:
    import multiprocessing as mp
    from multiprocessing.shared_memory import SharedMemory


def nothing(*args):
    pass


def square(x):
    return x * x


def queue_put_get():
    q = mp.Queue()
    q.put("x")
    q.get(timeout=10)
    return q


def queue_put_only():
    q = mp.Queue()
    q.put("x")
    return q


def queue_large_objects():
    q = mp.Queue()
    q.put(b"x" * (1 << 20))
    q.get(timeout=10)
    return q


def queue_backlog_drained_and_closed():
    q = mp.Queue()
    for i in range(20000):
        q.put(i)
    for _ in range(20000):
        q.get(timeout=10)
    q.close()
    q.join_thread()


def queue_backlog_drained():
    q = mp.Queue()
    for i in range(20000):
        q.put(i)
    for _ in range(20000):
        q.get(timeout=10)
    return q


def simple_and_joinable_queues():
    s = mp.SimpleQueue()
    s.put(1)
    s.get()
    j = mp.JoinableQueue(4)
    j.put(1)
    j.get(timeout=10)
    j.task_done()
    j.join()
    return s, j


def shared_memory():
    shm = SharedMemory(create=True, size=4096)
    shm.buf[0] = 1
    return shm


def pool_after_with_block():
    with mp.Pool(2) as pool:
        pool.map(square, range(10))
    pool.join()


def executor_after_shutdown():
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        list(ex.map(square, range(10)))


SCENARIOS = {f.__name__: f for f in (
    queue_put_get, queue_put_only, queue_large_objects, queue_backlog_drained,
    queue_backlog_drained_and_closed,
    simple_and_joinable_queues, shared_memory, pool_after_with_block,
    executor_after_shutdown)}

if __name__ == "__main__":
    mp.set_start_method("fork")
    kept = SCENARIOS[SCENARIO]()
    print("threads:", sorted(t.name for t in threading.enumerate()), flush=True)
    p = multiprocessing.get_context("fork").Process(target=nothing)
    p.start()
    p.join()
    print("child exit code:", p.exitcode)
    if SCENARIO == "shared_memory":
        kept.close()
        kept.unlink()
