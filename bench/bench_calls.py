"""Per-call cost of the hot bindings, in µs: the numbers every protocol decision counts.

Run as ``python3 bench/bench_calls.py [--rounds 7] [--target-ms 40]``. Each case is timed
once per round, rounds interleave the cases (so drift hits all alike), and the table shows
the median and the spread over the rounds. Every object is private and removed on exit.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpsysv import MessageQueue, SemaphoreSet, Segment  # noqa: E402
from mpsysv._ipc import libc as L  # noqa: E402
from mpsysv._ipc.errors import raise_errno  # noqa: E402

MiB = 1 << 20


def _raw_queue(stack: ExitStack) -> int:
    qid = L.msgget(L.IPC_PRIVATE, 0o600)
    if qid == -1:
        raise_errno(L.get_errno(), "msgget", "benchmark queue")
    stack.callback(L.msgctl, qid, L.IPC_RMID, None)
    return qid


def case_msg_raw(stack: ExitStack, size: int):
    """msgsnd + msgrcv of *size* bytes through pre-allocated ctypes buffers."""
    qid = _raw_queue(stack)
    out = (ctypes.c_char * (8 + size))()
    ctypes.c_long.from_buffer(out).value = 1
    back = (ctypes.c_char * (8 + size))()
    msgsnd, msgrcv = L.msgsnd, L.msgrcv

    def run(n):
        for _ in range(n):
            msgsnd(qid, out, size, 0)
            msgrcv(qid, back, size, 0, 0)
    return run


def case_msg_object(stack: ExitStack, size: int):
    """MessageQueue.send + receive of *size* bytes (allocation and copies included)."""
    q = MessageQueue(create=True)
    stack.callback(q.remove)
    payload = bytes(size)
    send, receive = q.send, q.receive

    def run(n):
        for _ in range(n):
            send(payload)
            receive()
    return run


def case_semop_pair(stack: ExitStack, undo: bool):
    """semop down then up on a semaphore at 1, each a separate call."""
    sid = L.semget(L.IPC_PRIVATE, 1, 0o600)
    if sid == -1:
        raise_errno(L.get_errno(), "semget", "benchmark set")
    stack.callback(L.semctl, sid, 0, L.IPC_RMID, 0)
    L.semctl(sid, 0, L.SETVAL, 1)
    flg = L.SEM_UNDO if undo else 0
    down, up = L.sembuf(0, -1, flg), L.sembuf(0, 1, flg)
    pdown, pup = ctypes.byref(down), ctypes.byref(up)
    semop = L.semop

    def run(n):
        for _ in range(n):
            semop(sid, pdown, 1)
            semop(sid, pup, 1)
    return run


def case_semaphore_set_pair(stack: ExitStack):
    """SemaphoreSet.op down then up with undo (argument checks and sembuf build included)."""
    s = SemaphoreSet(create=True)
    stack.callback(s.remove)
    s.setval(0, 1)
    op = s.op

    def run(n):
        for _ in range(n):
            op(0, -1, undo=True)
            op(0, 1, undo=True)
    return run


def case_posix_sem(stack: ExitStack):
    """sem_post + sem_trywait on a process-shared sem_t inside a SysV segment."""
    g = Segment(create=True, size=4096)
    stack.callback(g.remove)
    a = g.attach()
    stack.callback(a.detach)
    addr = a.address
    if L.sem_init(addr, 1, 0) == -1:
        raise_errno(L.get_errno(), "sem_init", "benchmark sem_t")
    post, trywait = L.sem_post, L.sem_trywait

    def run(n):
        for _ in range(n):
            post(addr)
            trywait(addr)
    return run


def case_ctypes_call(stack: ExitStack, with_argtypes: bool):
    """labs(5) through ctypes, with declared argtypes/restype or with ctypes guessing."""
    fn = ctypes.CDLL(None).labs  # a fresh CDLL: its function objects are not shared with _libc
    if with_argtypes:
        fn.argtypes, fn.restype = (ctypes.c_long,), ctypes.c_long

    def run(n):
        for _ in range(n):
            fn(5)
    return run


def case_bare_syscall(stack: ExitStack):
    """getppid() through ctypes: the floor under every SysV call (one kernel entry)."""
    fn = ctypes.CDLL(None).getppid

    def run(n):
        for _ in range(n):
            fn()
    return run


def case_copy(stack: ExitStack, how: str):
    """Copy 100 bytes from a bytes object into a ctypes buffer."""
    src = bytes(range(100))
    dst = (ctypes.c_char * 4096)()
    addr = ctypes.addressof(dst)
    view = memoryview(dst).cast("B")
    stack.callback(view.release)
    memmove = ctypes.memmove
    if how == "memmove":
        def run(n):
            for _ in range(n):
                memmove(addr, src, 100)
    else:
        def run(n):
            for _ in range(n):
                view[0:100] = src
    return run


def case_segment_lifecycle(stack: ExitStack):
    """shmget + shmat + shmdt + IPC_RMID of a private 1 MiB segment (no page touched)."""
    shmget, shmat, shmdt, shmctl = L.shmget, L.shmat, L.shmdt, L.shmctl

    def run(n):
        for _ in range(n):
            shmid = shmget(L.IPC_PRIVATE, MiB, 0o600)
            try:
                addr = shmat(shmid, None, 0)
                shmdt(addr)
            finally:
                shmctl(shmid, L.IPC_RMID, None)
    return run


CASES = [
    ("msgsnd+msgrcv raw, 1 B", lambda s: case_msg_raw(s, 1)),
    ("msgsnd+msgrcv raw, 1000 B", lambda s: case_msg_raw(s, 1000)),
    ("MessageQueue.send+receive, 1 B", lambda s: case_msg_object(s, 1)),
    ("MessageQueue.send+receive, 1000 B", lambda s: case_msg_object(s, 1000)),
    ("semop down+up", lambda s: case_semop_pair(s, False)),
    ("semop down+up, SEM_UNDO", lambda s: case_semop_pair(s, True)),
    ("SemaphoreSet.op down+up, undo", case_semaphore_set_pair),
    ("sem_post+sem_trywait (POSIX, in shm)", case_posix_sem),
    ("ctypes labs() with argtypes", lambda s: case_ctypes_call(s, True)),
    ("ctypes labs() without argtypes", lambda s: case_ctypes_call(s, False)),
    ("ctypes getppid() (bare syscall)", case_bare_syscall),
    ("ctypes.memmove 100 B", lambda s: case_copy(s, "memmove")),
    ("memoryview slice copy 100 B", lambda s: case_copy(s, "slice")),
    ("shmget+shmat+shmdt+RMID 1 MiB", case_segment_lifecycle),
]


def timed(run, n: int) -> float:
    """µs per iteration of *n* iterations."""
    t0 = time.perf_counter_ns()
    run(n)
    return (time.perf_counter_ns() - t0) / n / 1000


def calibrate(run, target_s: float) -> int:
    """The iteration count that makes one measurement last about *target_s*."""
    n = 10
    while True:
        t0 = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t0
        if dt >= target_s / 4:
            return max(10, int(n * target_s / dt))
        n *= 4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=40.0,
                        help="wall time of one measurement of one case")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        runs = [(name, make(stack)) for name, make in CASES]
        counts = {name: calibrate(run, args.target_ms / 1000) for name, run in runs}
        samples = {name: [] for name, _ in runs}
        for _ in range(args.rounds):
            for name, run in runs:
                samples[name].append(timed(run, counts[name]))

    width = max(len(name) for name, _ in CASES)
    print(f"Python {sys.version.split()[0]}, median of {args.rounds} interleaved rounds")
    print(f"{'case':<{width}}  {'µs/call':>8}  {'min':>8}  {'max':>8}  {'iterations':>10}")
    for name, _ in CASES:
        s = samples[name]
        print(f"{name:<{width}}  {statistics.median(s):8.3f}  {min(s):8.3f}  {max(s):8.3f}  "
              f"{counts[name]:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
