"""Whole programs killed: the next program (or the command line) collects everything
they left, and never a live object."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import suppress

import pytest

from mpsysv._gc import collect as _gc
from mpsysv._ipc import libc as L
from mpsysv import Queue
from mpsysv.shared import SharedMemory

from . import seams
from .helpers import sysv_counts

from .crash_toolkit import (
    WATCHDOG, SETTLE, fork_run, wait_pid, kill, close_queue, die_at)
from .crash_toolkit import close_leftover_queues  # noqa: F401 - fixtures


_PROGRAM = textwrap.dedent("""
    import os, sys, time
    import mpsysv
    from mpsysv._shm import tracker as _tracker
    from mpsysv.shared import SharedMemory
    q = mpsysv.Queue(); q.put(b"x" * 100)
    jq = mpsysv.JoinableQueue(3); jq.put("task")
    big = mpsysv.Queue(); big.put(b"y" * 100_000)
    seg = SharedMemory(create=True, size=10_000)
    seg.buf[:5] = b"hello"
    print(seg.name, _tracker.tracker_identity()[0], flush=True)
    time.sleep(120)
""")


def _run_program():
    p = subprocess.Popen([sys.executable, "-c", _PROGRAM], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    assert line, "the program failed to start"
    return p, line[0], int(line[1])


def _wait_counts(expected, timeout=SETTLE):
    deadline = time.monotonic() + timeout
    while sysv_counts() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return sysv_counts()


def _leftovers(before: set) -> dict:
    """The objects made since *before*, by role, once the kernel and the tracker are done."""
    deadline = time.monotonic() + SETTLE
    while True:
        found = [o for o in _gc.scan(inspect=True).objects if (o.kind, o.id) not in before]
        if all(o.garbage for o in found) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    roles = {}
    for o in found:
        roles.setdefault(o.role, []).append(o.state)
    return roles


def test_killed_program_leaves_nothing_once_collected():
    before = _gc_snapshot()
    p, name, tracker = _run_program()
    p.kill()
    p.wait()
    p.stdout.close()
    # The tracker removes the track=True segment at the program's end; the queues'
    # control segments go with the last attachment; what is left is garbage.
    assert _leftovers(before) == {_gc.QUEUE_MAIN: ["garbage"] * 3,
                                  _gc.QUEUE_STREAM: ["garbage"] * 3,
                                  _gc.QUEUE_SEMS: ["garbage"] * 3,
                                  _gc.QUEUE_PARCEL: ["garbage"]}
    removed, failed = _gc.collect_garbage(force=True)
    assert not failed and len(removed) == 10
    assert _gc_snapshot() == before


def test_killed_program_and_tracker_leave_nothing_once_collected():
    before = _gc_snapshot()
    p, name, tracker = _run_program()
    reader = SharedMemory(name)
    os.kill(tracker, signal.SIGKILL)
    p.kill()
    p.wait()
    p.stdout.close()
    time.sleep(0.2)
    # Attached here: not garbage yet, and its data is intact.
    removed, _ = _gc.collect_garbage(force=True)
    assert name not in [o.name for o in removed]
    assert bytes(reader.buf[:5]) == b"hello"
    reader.close()
    removed, failed = _gc.collect_garbage(force=True)
    assert not failed
    assert [o.name for o in removed] == [name]
    assert _gc_snapshot() == before


_FIRST_OBJECT = {
    "queue": "import mpsysv; q = mpsysv.Queue(); q.close()",
    "segment": "import mpsysv; s = mpsysv.SharedMemory(create=True, size=10); s.close(); "
               "s.unlink()",
}


@pytest.mark.parametrize("first", sorted(_FIRST_OBJECT))
@pytest.mark.parametrize("tracker_too", [False, True])
def test_next_program_collects_everything_a_killed_program_left(tracker_too, first):
    """Within seconds of the next mpsysv program's first queue or segment, nothing is
    left: the tracker took the track=True segment (or, killed as well, the collection
    did)."""
    before = _gc_snapshot()
    p, _, tracker = _run_program()
    if tracker_too:
        os.kill(tracker, signal.SIGKILL)
    p.kill()
    p.wait()
    p.stdout.close()
    try:
        assert _leftovers(before)
        subprocess.run([sys.executable, "-c", _FIRST_OBJECT[first]], check=True, timeout=60)
        assert _gc_snapshot() == before
    finally:
        _gc.collect_garbage(force=True)


def test_killed_creator_tracked_segment_removed_and_readers_keep_their_view():
    before = sysv_counts()
    p, name, tracker = _run_program()
    reader = SharedMemory(name)
    p.kill()
    p.wait()
    p.stdout.close()
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        with suppress(FileNotFoundError):
            SharedMemory(name).close()
            time.sleep(0.05)
            continue
        break
    with pytest.raises(FileNotFoundError):
        SharedMemory(name)
    assert bytes(reader.buf[:5]) == b"hello", "an attached reader lost its view"
    reader.buf[5:8] = b"!!!"
    reader.close()
    _gc.collect_garbage(force=True)
    assert _wait_counts(before) == before


def test_named_queue_whose_creator_died_while_creating_it_is_collected():
    name = f"half-made-{os.getpid()}"

    def victim():
        die_at(*seams.COUNTER_INIT)  # after its objects, before the magic
        Queue(name=name, create=True)

    wait_pid(fork_run(victim), WATCHDOG)
    with pytest.raises(FileExistsError):
        Queue(name=name, create=True)
    removed, failed = _gc.collect_garbage(force=True)
    assert not failed
    assert sorted(o.role for o in removed) == sorted(
        [_gc.QUEUE, _gc.QUEUE_MAIN, _gc.QUEUE_STREAM, _gc.QUEUE_SEMS])
    q = Queue(name=name, create=True)
    q.unlink()
    close_queue(q)


def test_collection_never_removes_a_live_object():
    """Every kind of live object another program could have, next to real garbage."""
    before = sysv_counts()
    held = Queue()                              # anonymous, held by this process
    name = f"persistent-{os.getpid()}"
    named = Queue(name=name, create=True)       # named: persists with no holder
    named.close()
    untracked = SharedMemory(create=True, size=1000, track=False)
    tracked = SharedMemory(create=True, size=1000)   # its program (us) is alive
    raw = SharedMemory.from_key(None, create=True, size=4096, track=False)
    foreign_msg = L.msgget(0x4D400123, L.IPC_CREAT | 0o600)  # a key that looks tagged
    foreign_seg = L.shmget(0x12345, 4096, L.IPC_CREAT | 0o600)

    # A queue being created right now: its control segment exists, its sub-objects too,
    # its magic is not written yet, and its creator (a child that waits) is alive.
    r, w = os.pipe()

    def creating():
        owner, attr = seams.COUNTER_INIT
        real_init = getattr(owner, attr)

        def slow(self, value=0):
            os.write(w, b"!")
            time.sleep(30)
            return real_init(self, value)
        setattr(owner, attr, slow)
        Queue(name=f"creating-{os.getpid()}", create=True)

    creator = fork_run(creating)
    try:
        assert select.select([r], [], [], WATCHDOG)[0]
        wait_pid(fork_run(_hold_a_queue_and_die), WATCHDOG)
        snapshot = _gc_snapshot()
        removed, failed = _gc.collect_garbage(force=True)
        assert not failed
        assert sorted(o.role for o in removed) == sorted(
            [_gc.QUEUE_MAIN, _gc.QUEUE_STREAM, _gc.QUEUE_SEMS, _gc.QUEUE_PARCEL])
        assert snapshot - _gc_snapshot() == {(o.kind, o.id) for o in removed}
        # Nothing else went, and each survivor still works.
        held.put("alive")
        assert held.get(timeout=5) == "alive"
        again = Queue(name=name)
        again.unlink()
        again.close()
        assert L.msgctl(foreign_msg, L.IPC_STAT, L.byref(L.msqid_ds())) == 0
        assert L.shmctl(foreign_seg, L.IPC_STAT, L.byref(L.shmid_ds())) == 0
    finally:
        kill(creator)
        os.close(r)
        os.close(w)
        # The killed creator's half-made named queue is now garbage itself.
        _gc.collect_garbage(force=True)
        L.msgctl(foreign_msg, L.IPC_RMID, None)
        L.shmctl(foreign_seg, L.IPC_RMID, None)
        for seg in (untracked, tracked):
            seg.close()
            seg.unlink()
        raw.close()
        raw.unlink()
        held.close()
    assert _wait_counts(before) == before


def _hold_a_queue_and_die() -> None:
    q = Queue()
    q.put(b"p" * 100_000)  # a parcel too
    os.kill(os.getpid(), signal.SIGKILL)


def _gc_snapshot() -> set:
    return {(o.kind, o.id) for o in _gc.scan(inspect=False).objects}
