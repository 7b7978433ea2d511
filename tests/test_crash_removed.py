"""Objects removed from outside (ipcrm, RemoveIPC=yes): every blocked and later call
reports it; a dying writer's parcel slot is reclaimed; closing under a waiting thread."""

import os
import time
import warnings

import pytest

from mpsysv._ipc import libc as L
from mpsysv._queue import parcels as _parcels
from mpsysv import JoinableQueue, Queue, RemovedError

from .helpers import sysv_counts

from .crash_toolkit import (
    BIG, WATCHDOG, fork_run, wait_pid, kill, close_queue)
from .crash_toolkit import close_leftover_queues  # noqa: F401 - fixtures


def _ipcrm_queue(q) -> None:
    chan = q._chan
    L.msgctl(chan.main_qid, L.IPC_RMID, None)
    L.msgctl(chan.stream_qid, L.IPC_RMID, None)
    L.semctl(chan.semid, 0, L.IPC_RMID, 0)


def _expect_removed(call) -> None:
    try:
        call()
    except RemovedError as exc:
        message = str(exc)
        assert "removed" in message and "ipcrm" in message and "RemoveIPC" in message, message
        return
    raise AssertionError(f"{call} did not raise RemovedError")


@pytest.mark.parametrize("call", ["get", "get_timeout", "join", "put_big"])
def test_blocked_call_reports_removal_from_outside(call):
    q = JoinableQueue()
    if call == "join":
        q.put("task")

    def blocked():
        if call == "get":
            _expect_removed(lambda: q.get())
        elif call == "get_timeout":
            _expect_removed(lambda: q.get(timeout=3))
        elif call == "join":
            _expect_removed(q.join)
        else:
            _expect_removed(lambda: q._chan.streams.send(b"z" * BIG, 1))
    child = fork_run(blocked)
    time.sleep(0.5)
    _ipcrm_queue(q)
    try:
        assert wait_pid(child, 10) == 0, "a blocked call hung or did not name the cause"
    finally:
        kill(child)
        close_queue(q)


def test_put_blocked_on_a_full_queue_reports_removal_from_outside():
    q = Queue(1)
    q.put("fill")
    child = fork_run(lambda: _expect_removed(lambda: q.put("blocked")))
    time.sleep(0.5)
    _ipcrm_queue(q)
    try:
        assert wait_pid(child, 3) == 0, "put() stayed blocked on a removed queue"
    finally:
        kill(child)
        close_queue(q)


def test_every_later_call_reports_removal_from_outside():
    for q in (Queue(), JoinableQueue(3)):
        _ipcrm_queue(q)
        for call in (lambda: q.put("x"), lambda: q.get(timeout=0.1), q.get_nowait, q.qsize,
                     q.empty):
            _expect_removed(call)
        if isinstance(q, JoinableQueue):
            _expect_removed(q.join)
            _expect_removed(q.task_done)
        close_queue(q)


@pytest.mark.parametrize("size", [300_000, 12_000])
def test_large_put_after_removal_from_outside_is_reported(size):
    q = Queue()
    _ipcrm_queue(q)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            q.put(b"b" * size)
            q.close()
            q.join_thread()
        except RemovedError:
            return
    assert any("removed" in str(w.message) for w in caught), "the object vanished silently"


@pytest.mark.parametrize("made_it", [False, True])
def test_a_parcel_slot_whose_writer_died_before_noting_its_segment_is_reclaimed(made_it):
    """A writer killed after claiming a slot, before (or right after) its shmget: the
    slot comes back, and a segment it made but never listed is removed too."""
    q = Queue()
    try:
        before = sysv_counts()
        size = 1 << 20
        dead = os.fork()
        if dead == 0:
            if made_it:
                L.shmget(L.IPC_PRIVATE, size, L.IPC_CREAT | 0o600)
            os._exit(0)
        os.waitpid(dead, 0)
        assert sysv_counts()["shm"] == before["shm"] + made_it
        q._chan.parcels._set(0, -1, dead, _parcels.FILLING, 0, size)
        q.put(b"n" * 100_000)  # the next claim looks at every slot
        assert q.get(timeout=5) == b"n" * 100_000
        entries = [q._chan.parcels._entry(s) for s in range(_parcels.NSLOTS)]
        assert not [e for e in entries if e[2] == _parcels.FILLING], entries
        parcels = [e for e in entries if e[2] == _parcels.POOLED]
        assert sysv_counts()["shm"] == before["shm"] + len(parcels)
    finally:
        close_queue(q)


@pytest.mark.parametrize("make", [Queue, lambda: Queue(2), JoinableQueue],
                         ids=["Queue", "bounded", "JoinableQueue"])
@pytest.mark.parametrize("timeout", [None, 30])
def test_closing_a_handle_while_another_thread_waits_in_get_does_not_crash(make, timeout):
    """The waiting thread sleeps on a counter in the control segment: close() must not
    unmap it under that thread (a segfault); the thread gets an exception instead, or
    the object if one comes first."""
    import pickle
    import threading
    q = make()
    keep = pickle.loads(pickle.dumps(q))  # a second holder: close() only lets go

    def child():
        outcome = []

        def getter():
            try:
                outcome.append(q.get(timeout=timeout))
            except (ValueError, OSError) as exc:
                outcome.append(exc)

        thread = threading.Thread(target=getter, daemon=True)
        thread.start()
        time.sleep(0.3)
        q.close()
        time.sleep(0.3)
        keep.put("x")
        thread.join(5)
        assert not thread.is_alive() or outcome == [], outcome
        assert outcome in ([], ["x"]) or isinstance(outcome[0], (ValueError, OSError))

    try:
        status = wait_pid(fork_run(child), WATCHDOG)
        assert status == 0, f"the child died (status {status})"
    finally:
        close_queue(keep)
        close_queue(q)
