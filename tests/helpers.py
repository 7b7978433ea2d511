"""Helpers for the process-level tests: watchdogs, unique names, kernel object counts."""

import itertools
import multiprocessing as mp
import os
import signal
import time
import uuid

fork = mp.get_context("fork")
spawn = mp.get_context("spawn")


def unique_name(prefix: str = "t") -> str:
    """A queue/segment name no other test, worker or run can pick."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{prefix}-{worker}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


_counter = itertools.count(1)


def unique_key() -> int:
    """A key no other process can be using: from this pid and a counter, with the high bit
    set, which mpsysv's own name and sub-object keys never have (and which exercises the
    signed/unsigned handling of keys)."""
    return 0x80000000 | (((os.getpid() << 8) | next(_counter) % 256) & 0x7fffffff)


def wait_until(predicate, timeout: float = 10.0, poll: float = 0.005) -> bool:
    """Poll *predicate* until it is true (True) or *timeout* seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def join_or_kill(procs, timeout: float) -> None:
    """Join every process within *timeout* seconds in total; kill and fail otherwise."""
    deadline = time.monotonic() + timeout
    hung = []
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.01))
        if p.is_alive():
            hung.append(p)
    for p in hung:
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)
    if hung:
        raise AssertionError(f"watchdog: {len(hung)} process(es) hung for {timeout}s: "
                             f"{[p.name for p in hung]}")
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    assert not bad, f"child processes failed: {bad}"


def sysv_counts():
    """How many queues, semaphore sets and segments this namespace holds."""
    counts = {}
    for kind in ("msg", "sem", "shm"):
        with open(f"/proc/sysvipc/{kind}") as f:
            counts[kind] = sum(1 for line in f) - 1
    return counts
