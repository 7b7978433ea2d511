"""The toolkit of the crash tests: forked children under a watchdog, atomic reports over
raw pipes, kill points (``seams``), and the checks that a queue got everything back.

Every step that could hang runs in a forked child under a watchdog (joined with a
timeout, then SIGKILLed); the test process itself only makes non-blocking kernel calls.
Children report over raw pipes with fixed-size records (atomic writes), so a child
killed mid-report cannot wedge the reporting channel the way a stdlib queue could.
"""

import hashlib
import os
import random
import select
import signal
import struct
import time
import warnings
from contextlib import suppress

import pytest

from mpsysv._ipc.procs import alive as _alive
from mpsysv._queue import layout as C
from mpsysv._gc import collect as _gc
from mpsysv._ipc import libc as L
from mpsysv._queue import parcels as _parcels

from . import seams


BIG = 3 << 20          # "multi-MiB": 385 frames of 8 KiB
WATCHDOG = 20.0        # seconds before a child counts as hung
SETTLE = 5.0           # seconds the kernel and trackers get to clean up after a kill



@pytest.fixture(autouse=True)
def close_leftover_queues():
    """A failed test still lets go of its queues (the leak guard then reports only
    what the failure itself left behind)."""
    from mpsysv import queues
    before = set(map(id, queues._live))
    yield
    for q in list(queues._live):
        if id(q) not in before and not q._closed:
            close_queue(q)


@pytest.fixture(params=["parcel", "stream"])
def path(request, monkeypatch):
    """Large objects travel as parcels (a segment each) or, when parcels are off or all
    parcel slots are busy, as framed streams: test both."""
    if request.param == "stream":
        monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    return request.param


class Reports:
    """Fixed-size records from forked children over one pipe: ``(tag, seq, ok)``."""

    REC = struct.Struct("<cqB")

    def __init__(self):
        self.r, self.w = os.pipe()
        self.records = []

    def send(self, tag: str, seq: int, ok: bool) -> None:  # in a child
        os.write(self.w, self.REC.pack(tag.encode(), seq, ok))

    def close_writer(self) -> None:
        if self.w is not None:
            os.close(self.w)
            self.w = None

    def drain(self, timeout: float = 0.0) -> list:
        """Read what has arrived (up to EOF or *timeout* s without data)."""
        buf = b""
        while select.select([self.r], [], [], timeout)[0]:
            chunk = os.read(self.r, 65536)
            if not chunk:
                break
            buf += chunk
        if len(buf) % self.REC.size:  # pragma: no cover - writes are atomic
            raise AssertionError("torn report record")
        for i in range(0, len(buf), self.REC.size):
            tag, seq, ok = self.REC.unpack_from(buf, i)
            self.records.append((tag.decode(), seq, bool(ok)))
        return self.records

    def close(self) -> None:
        self.close_writer()
        os.close(self.r)


def fork_run(fn, *args) -> int:
    """Run *fn* in a forked child that exits 0 when it returns, 1 when it raises."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            warnings.simplefilter("ignore")
            fn(*args)
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_pid(pid: int, timeout: float) -> "int | None":
    """The exit status of *pid* within *timeout* s, or None after SIGKILLing it (hung);
    -9 when it was SIGKILLed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    kill(pid)
    return None


def kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def obj(tag: str, seq: int, data: bytes):
    return (tag, seq, hashlib.blake2b(data, digest_size=16).digest(), data)


def intact(item) -> bool:
    tag, seq, digest, data = item
    return hashlib.blake2b(data, digest_size=16).digest() == digest


def wait_for_feeder(q, most: int = 1) -> None:
    """Keep at most *most* objects in this process's buffer (the feeder flushes them)."""
    while q._feeder.pending > most:
        time.sleep(0.0005)


def consume_until(q, reports: Reports, ends: int, timeout: float = 20.0) -> None:
    """Get objects, reporting each, until *ends* END markers (seq -1) were seen."""
    seen = 0
    while seen < ends:
        item = q.get(timeout=timeout)
        reports.send(item[0], item[1], intact(item))
        seen += item[1] == -1


def diagnose(q) -> str:
    """What a hung stream looks like from outside (for failure messages)."""
    chan = q._chan
    writer, reader, sid, state = chan._mark()
    return (f"{kernel_state(q)}, stream marker writer={writer} (alive={_alive(writer)}) "
            f"reader={reader} (alive={_alive(reader)}) sid={sid:#x} state={state}, "
            f"frames available={chan.sems[C.STREAM_FRAMES].value}, space={chan.sems[C.STREAM_SPACE].value}")


def kernel_state(q) -> dict:
    chan = q._chan
    ds = L.msqid_ds()
    out = {}
    for role, qid in (("main", chan.main_qid), ("stream", chan.stream_qid)):
        assert L.msgctl(qid, L.IPC_STAT, L.byref(ds)) == 0
        out[role] = (ds.msg_qnum, ds.msg_cbytes)
    out["stream_lock"] = L.semctl(chan.semid, C.SEM_STREAM, L.GETVAL, 0)
    out["holders_lock"] = L.semctl(chan.semid, C.SEM_HOLDERS, L.GETVAL, 0)
    out["state_lock_free"] = chan.state_lock.free()
    return out


def parcel_states(q) -> list:
    """``(state, segment id)`` of every parcel slot in use (the queue's table)."""
    table = q._chan.parcels
    return [(e[2], e[0]) for e in (table._entry(s) for s in range(_parcels.NSLOTS))
            if e[2] != _parcels.FREE]


def assert_reclaimed(q) -> None:
    """No frame or parcel is left behind and no lock is held: the queue's capacity is
    whole again (pooled parcel segments are capacity kept for reuse)."""
    deadline = time.monotonic() + SETTLE
    while True:
        state = kernel_state(q)
        state["parcels in use"] = [p for p in parcel_states(q) if p[0] != _parcels.POOLED]
        if (state["stream"] == (0, 0) and state["stream_lock"] == 1
                and state["holders_lock"] == 1 and state["state_lock_free"]
                and not state["parcels in use"]):
            listed = {segid for _, segid in parcel_states(q)}
            # (A reclaimed segment that a live writer still maps is already removed:
            # the kernel frees it at that writer's last detach.)
            found = {o.id for o in _gc.scan(inspect=True).objects
                     if o.role == _gc.QUEUE_PARCEL and o.queue == q._chan.ctl_id
                     and not o.mode & _gc.SHM_DEST}
            assert found == listed, f"parcel segments not in the table: {found - listed}"
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"leftover frames or a held lock: {state}")
        time.sleep(0.05)


def round_trip_in_child(q, sizes=(2 << 20, 10, 9000, 100)) -> None:
    """A fresh process can still put and get objects of every size (watchdogged)."""
    def run():
        for i, n in enumerate(sizes):
            q.put(obj("R", i, payload(i, n)))
        got = [q.get(timeout=10) for _ in sizes]
        assert [g[1] for g in got] == list(range(len(sizes))), [g[1] for g in got]
        assert all(intact(g) for g in got)
        q.close()
        q.join_thread()
    status = wait_pid(fork_run(run), WATCHDOG)
    assert status == 0, f"the queue is not usable any more (child status {status})"


def close_queue(q) -> None:
    q.cancel_join_thread()
    q.close()


def die_at(target, attr: str):
    """Replace ``target.attr`` in this (child) process by a function that SIGKILLs it."""
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(target, attr, die)


def put_and_die_at(q, target, attr: str, item) -> None:
    """A forked child puts *item* and is SIGKILLed when it reaches ``target.attr``."""
    def victim():
        die_at(target, attr)
        q.put(item)

    wait_pid(fork_run(victim), WATCHDOG)


def get_and_die_at(q, target, attr: str) -> None:
    """A forked child gets an object and is SIGKILLed when it reaches ``target.attr``."""
    def victim():
        die_at(target, attr)
        q.get(timeout=10)

    wait_pid(fork_run(victim), WATCHDOG)
