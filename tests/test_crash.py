"""Crash safety with real SIGKILLs: producers and consumers killed mid-object, processes
killed inside multi-step updates, whole programs killed, and objects removed from outside.

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
import subprocess
import sys
import textwrap
import time
import warnings
from contextlib import suppress

import pytest

import mpsysv
from mpsysv._ipc.procs import alive as _alive
from mpsysv._queue import layout as C
from mpsysv._gc import collect as _gc
from mpsysv._queue import journal as _journal
from mpsysv._ipc import libc as L
from mpsysv._queue import parcels as _parcels
from mpsysv import JoinableQueue, Queue, RemovedError
from mpsysv.shared import SharedMemory

from . import seams
from .helpers import sysv_counts

BIG = 3 << 20          # "multi-MiB": 385 frames of 8 KiB
WATCHDOG = 20.0        # seconds before a child counts as hung
SETTLE = 5.0           # seconds the kernel and trackers get to clean up after a kill


# ---------------------------------------------------------------------------------------
# helpers

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
            f"frames available={chan.sems[C.AVAIL].value}, space={chan.sems[C.SPACE].value}")


def kernel_state(q) -> dict:
    chan = q._chan
    ds = L.msqid_ds()
    out = {}
    for role, qid in (("main", chan.main_qid), ("stream", chan.stream_qid)):
        assert L.msgctl(qid, L.IPC_STAT, L.byref(ds)) == 0
        out[role] = (ds.msg_qnum, ds.msg_cbytes)
    out["stream_lock"] = L.semctl(chan.semid, C.SEM_STREAM, L.GETVAL, 0)
    out["state_lock"] = L.semctl(chan.semid, C.SEM_STATE, L.GETVAL, 0)
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
                and state["state_lock"] == 1 and not state["parcels in use"]):
            listed = {segid for _, segid in parcel_states(q)}
            # (A reclaimed segment that a live writer still maps is already removed:
            # the kernel frees it at that writer's last detach.)
            found = {o.id for o in _gc.scan(inspect=True).objects
                     if o.role == _gc.QUEUE_PARCEL and o.queue == q._chan.ctl_id
                     and not o.mode & _gc._SHM_DEST}
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


# ---------------------------------------------------------------------------------------
# producers and consumers killed mid-object

def _killed_producer(q, started_w: int) -> None:
    blobs = [payload(s, BIG) for s in (1, 2)]
    os.write(started_w, b"!")
    seq = 0
    while True:
        q.put(obj("A", seq, blobs[seq % 2]))
        wait_for_feeder(q)
        seq += 1


def _steady_producer(q, count: int) -> None:
    sizes = [10, 1 << 20, 100, 50_000, 7000]
    for seq in range(count):
        q.put(obj("B", seq, payload(seq, sizes[seq % len(sizes)])))
        wait_for_feeder(q, 4)
    q.put(obj("B", -1, b""))
    q.close()
    q.join_thread()


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.05, 0.2])
def test_producer_killed_mid_put_never_delivers_a_partial_object(path, delay):
    q = Queue()
    reports = Reports()
    r, w = os.pipe()
    consumer = fork_run(consume_until, q, reports, 1)
    victim = fork_run(_killed_producer, q, w)
    steady = fork_run(_steady_producer, q, 25)
    try:
        assert select.select([r], [], [], WATCHDOG)[0], "the producer never started"
        time.sleep(delay + random.uniform(0, 0.01))
        kill(victim)
        assert wait_pid(steady, WATCHDOG) == 0, f"the other producer blocked: {diagnose(q)}"
        assert wait_pid(consumer, WATCHDOG) == 0, f"the consumer blocked: {diagnose(q)}"
        # What the dead producer had fully sent is still in the queue: drain it.
        drainer = fork_run(_drain_all, q, reports)
        assert wait_pid(drainer, WATCHDOG) == 0, "draining blocked or failed"
        reports.close_writer()
        got = reports.drain(1.0)
    finally:
        for pid in (victim, steady, consumer):
            kill(pid)
        os.close(r)
        os.close(w)
    assert all(ok for _, _, ok in got), "a partial or corrupt object was delivered"
    b_seqs = [s for t, s, _ in got if t == "B"]
    assert b_seqs == list(range(25)) + [-1], "the other producer's objects were not all " \
                                             "delivered in order"
    a_seqs = [s for t, s, _ in got if t == "A"]
    assert a_seqs == list(range(len(a_seqs))), f"dead producer's objects out of order: {a_seqs}"
    round_trip_in_child(q)
    assert_reclaimed(q)
    assert kernel_state(q)["main"] == (0, 0)
    reports.close()
    close_queue(q)


def _drain_all(q, reports: Reports) -> None:
    while True:
        try:
            item = q.get(timeout=1.5)
        except mpsysv.Empty:
            return
        reports.send(item[0], item[1], intact(item))


def _big_producer(q, count: int, done_w: int) -> None:
    for seq in range(count):
        q.put(obj("P", seq, payload(seq, BIG if seq % 3 else 20_000)))
        wait_for_feeder(q, 2)
    q.put(obj("P", -1, b""))
    q.put(obj("P", -1, b""))
    q.close()
    q.join_thread()  # returns only when every frame was taken or dropped
    os.write(done_w, b"!")


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3])
def test_consumer_killed_mid_get_stalls_nobody(path, delay):
    q = Queue()
    victim_reports, other_reports = Reports(), Reports()
    r, w = os.pipe()
    producer = fork_run(_big_producer, q, 12, w)
    victim = fork_run(consume_until, q, victim_reports, 1)
    time.sleep(delay + random.uniform(0, 0.01))
    kill(victim)
    other = fork_run(consume_until, q, other_reports, 1)
    try:
        assert wait_pid(producer, WATCHDOG) == 0, "the producer of the lost object blocked"
        assert select.select([r], [], [], 0)[0]
        assert wait_pid(other, WATCHDOG) == 0, "the other consumer blocked"
        # The second END marker is left when the victim died before taking the first.
        assert wait_pid(fork_run(_drain_all, q, other_reports), WATCHDOG) == 0
        victim_reports.close_writer()
        other_reports.close_writer()
        got = victim_reports.drain(0.5) + other_reports.drain(0.5)
    finally:
        for pid in (producer, victim, other):
            kill(pid)
        os.close(r)
        os.close(w)
    assert all(ok for _, _, ok in got)
    seqs = [s for _, s, _ in got if s >= 0]
    assert len(seqs) == len(set(seqs)), "an object was delivered twice"
    missing = set(range(12)) - set(seqs)
    assert len(missing) <= 1, f"more than the victim's one in-flight object lost: {missing}"
    round_trip_in_child(q)
    assert_reclaimed(q)
    victim_reports.close()
    other_reports.close()
    close_queue(q)


def _die_at(target, attr: str):
    """Replace ``target.attr`` in this (child) process by a function that SIGKILLs it."""
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(target, attr, die)


def _put_and_die_at(q, target, attr: str, item) -> None:
    """A forked child puts *item* and is SIGKILLed when it reaches ``target.attr``."""
    def victim():
        _die_at(target, attr)
        q.put(item)

    wait_pid(fork_run(victim), WATCHDOG)


def _get_and_die_at(q, target, attr: str) -> None:
    """A forked child gets an object and is SIGKILLed when it reaches ``target.attr``."""
    def victim():
        _die_at(target, attr)
        q.get(timeout=10)

    wait_pid(fork_run(victim), WATCHDOG)


def test_consumer_killed_right_after_taking_a_stream_head(monkeypatch):
    monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    q = Queue()
    r, w = os.pipe()

    producer = fork_run(_big_producer, q, 1, w)
    try:
        _get_and_die_at(q, *seams.STREAM_READ)
        assert wait_pid(producer, 5) == 0, "the producer blocked forever on a dead reader"
        assert_reclaimed(q)
    finally:
        kill(producer)
        os.close(r)
        os.close(w)
        close_queue(q)


def test_consumer_killed_between_taking_a_parcel_message_and_reading_it():
    q = Queue()
    q.put(obj("P", 0, payload(0, BIG)))

    _get_and_die_at(q, *seams.PARCEL_UNWRAP)
    round_trip_in_child(q)  # the next writer's claim reclaims what dead processes left
    try:
        assert_reclaimed(q)
    finally:
        close_queue(q)


def test_consumer_killed_after_taking_a_parcel_message_is_noticed_while_others_stay_queued():
    q = Queue()
    q.put(obj("P", 0, payload(0, BIG)))
    for i in range(3):
        q.put(("small", i))
    wait_for_feeder(q, 0)
    [(state, stranded)] = parcel_states(q)
    assert state == _parcels.SENT

    def next_writer():
        q.put(obj("Q", 0, payload(1, BIG)))
        q.close()
        q.join_thread()

    try:
        _get_and_die_at(q, *seams.PARCEL_UNWRAP)
        assert kernel_state(q)["main"][0] == 3
        assert wait_pid(fork_run(next_writer), WATCHDOG) == 0
        # Its claim found the dead consumer's parcel although the queue never emptied.
        assert (_parcels.SENT, stranded) not in parcel_states(q)
        got = [q.get(timeout=5) for _ in range(4)]
        assert got[:3] == [("small", i) for i in range(3)]
        assert got[3][0] == "Q" and intact(got[3])
        assert_reclaimed(q)
    finally:
        close_queue(q)


def test_consumer_killed_after_taking_a_stream_head_is_noticed_while_others_stay_queued(
        monkeypatch):
    monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    q = Queue()
    r, w = os.pipe()

    producer = fork_run(_big_producer, q, 1, w)
    try:
        deadline = time.monotonic() + WATCHDOG
        while kernel_state(q)["main"][0] < 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # its head is queued
        for i in range(3):
            q.put(("small", i))
        wait_for_feeder(q, 0)
        _get_and_die_at(q, *seams.STREAM_READ)  # takes the head, dies before reading
        assert kernel_state(q)["main"][0] == 3
        assert wait_pid(producer, 5) == 0, "the writer waited for a dead reader"
        got = [q.get(timeout=5) for _ in range(5)]
        assert got[:3] == [("small", i) for i in range(3)]
        assert [g[1] for g in got[3:]] == [-1, -1]
        assert_reclaimed(q)
    finally:
        kill(producer)
        os.close(r)
        os.close(w)
        close_queue(q)


def test_producer_killed_while_its_head_waits_behind_other_objects(monkeypatch):
    monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    q = Queue()
    for i in range(3):
        q.put(("small", i))
    started_r, started_w = os.pipe()
    victim = fork_run(_killed_producer, q, started_w)
    pids = [victim]
    try:
        assert select.select([started_r], [], [], WATCHDOG)[0]
        # Its head is queued and its first frames fill the stream queue; nobody reads yet.
        deadline = time.monotonic() + WATCHDOG
        while kernel_state(q)["main"][0] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        kill(victim)

        def next_writer():
            q.put(obj("B", 0, payload(0, 1 << 20)))
            q.close()
            q.join_thread()

        writer = fork_run(next_writer)
        pids.append(writer)
        time.sleep(0.3)

        def reader():
            got = []
            for _ in range(5):
                try:
                    got.append(q.get(timeout=5))
                except mpsysv.Empty:
                    break
            assert any(g[0] == "B" and intact(g) for g in got if len(g) == 4)

        reading = fork_run(reader)
        pids.append(reading)
        assert wait_pid(reading, 6) == 0, f"the next stream's reader hung: {diagnose(q)}"
        assert wait_pid(writer, 5) == 0, "the next writer hung"
    finally:
        for pid in pids:
            kill(pid)
        os.close(started_r)
        os.close(started_w)
        close_queue(q)


# ---------------------------------------------------------------------------------------
# killed inside a multi-step update

def _kill_a_consumer_before_its_slot_release(q) -> None:
    """A forked consumer takes one object and is SIGKILLed just before it gives the
    object's slot back."""
    class Dying:
        def post(self):
            os.kill(os.getpid(), signal.SIGKILL)

    def victim():
        q._chan.sems[C.SLOTS] = Dying()
        q.get(timeout=5)

    wait_pid(fork_run(victim), WATCHDOG)


def test_consumer_killed_between_receive_and_slot_release_keeps_slots_exact():
    q = Queue(2)
    q.put("a")
    q.put("b")
    _kill_a_consumer_before_its_slot_release(q)
    # "a" was in flight in the dead consumer (lost, as documented); "b" is queued: 1 free.
    assert q.qsize() == 1
    q.put_nowait("c")
    close_queue(q)


def test_putter_waiting_on_a_quiet_queue_recovers_the_slot_of_a_consumer_killed_holding_it():
    q = Queue(1)
    q.put("a")

    def putter():
        started = time.monotonic()
        q.put("b", timeout=10)
        assert time.monotonic() - started < 2, "the lost slot came back late"

    _kill_a_consumer_before_its_slot_release(q)
    try:
        assert wait_pid(fork_run(putter), WATCHDOG) == 0, "the lost slot never came back"
        assert q.get(timeout=5) == "b"
        assert q._chan.sems[C.SLOTS].value == 1
    finally:
        close_queue(q)


def test_a_live_getter_between_receive_and_slot_release_is_never_counted_as_lost():
    """The repair must tell a getter stopped in that window (alive) from a dead one."""
    q = Queue(2)
    q.put("a")
    q.put("b")

    class Stopping:
        def __init__(self, real):
            self.real = real

        def post(self):
            os.kill(os.getpid(), signal.SIGSTOP)
            self.real.post()

    def getter():
        q._chan.sems[C.SLOTS] = Stopping(q._chan.sems[C.SLOTS])
        assert q.get(timeout=5) == "a"

    pid = fork_run(getter)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        with pytest.raises(mpsysv.Full):
            q.put_nowait("c")  # its slot is not given away while it lives
        assert q._chan.sems[C.SLOTS].value == 0
        os.kill(pid, signal.SIGCONT)
        assert wait_pid(pid, WATCHDOG) == 0
        q.put_nowait("c")
        time.sleep(2 * seams.value(seams.REPAIR_EVERY))
        with pytest.raises(mpsysv.Full):
            q.put_nowait("d")  # "b" and "c" fill it: no slot came from nowhere
        assert [q.get(timeout=5), q.get(timeout=5)] == ["b", "c"]
    finally:
        kill(pid)
        close_queue(q)


@pytest.mark.parametrize("at", ["try_acquire", "try_send", "counted_sent"])
def test_producer_killed_around_its_slot_keeps_slots_exact(at):
    """Killed after noting a slot but before taking it, after taking it but before
    sending, and after sending but before clearing its note."""
    q = Queue(1)

    def victim():
        _die_at(*{"try_acquire": seams.COUNTER_TRY_ACQUIRE, "try_send": seams.SEND,
                  "counted_sent": seams.NOTE_CLEARED}[at])
        q.put("sent")

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        if at == "counted_sent":
            assert q.qsize() == 1
            with pytest.raises(mpsysv.Full):
                q.put_nowait("x")  # the slot of the queued object is not given back
            assert q.get(timeout=1) == "sent"
        q.put_nowait("fits")  # raises Full when the dead producer's slot is gone
        time.sleep(2 * seams.value(seams.REPAIR_EVERY))
        with pytest.raises(mpsysv.Full):
            q.put_nowait("x")
        assert q.get(timeout=1) == "fits"
        assert q._chan.sems[C.SLOTS].value == 1
    finally:
        close_queue(q)


@pytest.mark.xfail(strict=True, reason="known issue (README): a consumer of an unbounded "
                   "Queue killed between taking a put_many() batch and counting its objects "
                   "out leaves qsize() that many objects too high")
def test_consumer_killed_between_taking_a_batch_and_counting_it_out_keeps_qsize_exact():
    q = Queue()
    q.put_many([1, 2, 3])

    _get_and_die_at(q, *seams.BATCH_COUNTED)
    try:
        assert q.qsize() == 0
    finally:
        close_queue(q)


@pytest.mark.parametrize("joinable", [False, True])
def test_consumer_killed_after_taking_one_of_a_put_many_keeps_counts_exact(joinable):
    """A bounded or joinable queue sends one message per object of put_many(), so a
    consumer killed before counting out what it took leaves exact counts."""
    q = (JoinableQueue if joinable else Queue)(4)
    q.put_many([1, 2, 3])

    _get_and_die_at(q, *seams.DECODE)  # (after msgrcv, before the window closes)
    try:
        assert q.qsize() == 2
        q.put_nowait(4)
        q.put_nowait(5)
        with pytest.raises(mpsysv.Full):
            q.put_nowait(6)
        if joinable:  # the lost object's task went with it
            assert q._chan.counts.unfinished() == 4
    finally:
        close_queue(q)


def _bounded_worker(q, role: str, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        if role == "put":
            with suppress(mpsysv.Full):
                q.put(rng.randrange(1 << 30), timeout=0.05)
        else:
            with suppress(mpsysv.Empty):
                q.get(timeout=0.05)


def test_random_kills_leave_the_slots_of_a_bounded_queue_exact():
    """Producers and consumers SIGKILLed at random moments, hundreds of times, then all
    of them: once the queue is drained, every slot is free again, none twice."""
    maxsize = 3
    q = Queue(maxsize)
    rng = random.Random(os.getpid())
    workers = {}
    try:
        for i in range(4):
            role = ("put", "get")[i % 2]
            workers[fork_run(_bounded_worker, q, role, i)] = role
        for n in range(150):
            time.sleep(rng.uniform(0, 0.02))
            pid = rng.choice(list(workers))
            role = workers.pop(pid)
            kill(pid)
            workers[fork_run(_bounded_worker, q, role, 100 + n)] = role
    finally:
        for pid in workers:
            kill(pid)
    try:
        drained = 0
        while True:
            try:
                q.get_nowait()
                drained += 1
            except mpsysv.Empty:
                break
        assert drained <= maxsize
        assert q.qsize() == 0
        for _ in range(maxsize):
            time.sleep(2 * seams.value(seams.REPAIR_EVERY))
            q.put_nowait("x")  # Full: a slot was lost
        time.sleep(2 * seams.value(seams.REPAIR_EVERY))
        with pytest.raises(mpsysv.Full):
            q.put_nowait("y")  # a slot was given back twice
    finally:
        close_queue(q)


def test_joinable_producer_killed_between_send_and_clearing_its_note_keeps_counts_exact():
    jq = JoinableQueue()
    jq.put("kept")

    _put_and_die_at(jq, *seams.NOTE_CLEARED, "sent")
    try:
        assert jq._chan.counts.unfinished() == 2, "the task of a queued object was given back"
        assert sorted([jq.get(timeout=5), jq.get(timeout=5)]) == ["kept", "sent"]
        jq.task_done()
        assert jq._chan.counts.unfinished() == 1
        jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() hung"
        with pytest.raises(ValueError):
            jq.task_done()
    finally:
        close_queue(jq)


def test_a_task_recount_waits_for_a_live_putter_between_its_send_and_its_note():
    """A recount must not count a live putter's object twice (queued, and noted as
    unsent): it waits until that putter is out of its window."""
    jq = JoinableQueue()
    owner, attr = seams.NOTE_CLEARED
    real = getattr(owner, attr)

    def stopping_putter():
        def stop_then_clear(self, n):
            os.kill(os.getpid(), signal.SIGSTOP)
            real(self, n)
        setattr(owner, attr, stop_then_clear)
        jq.put("x")

    def dying_putter():  # leaves a task noted and counted, never sent: a recount is due
        _die_at(*seams.SEND)
        jq.put("lost")

    stopped = fork_run(stopping_putter)
    try:
        _, status = os.waitpid(stopped, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        wait_pid(fork_run(dying_putter), WATCHDOG)
        assert jq._chan.counts.unfinished() == 2  # not derived while "x" is moving
        os.kill(stopped, signal.SIGCONT)
        assert wait_pid(stopped, WATCHDOG) == 0
        assert jq._chan.counts.unfinished() == 1
        assert jq.get(timeout=5) == "x"
        jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() hung"
    finally:
        kill(stopped)
        close_queue(jq)


@pytest.mark.parametrize("where", ["before counting it out", "after counting it out"])
def test_joinable_consumer_killed_in_get_loses_the_task_only_with_the_object(where):
    """Killed before it counted its object out, a consumer loses the object and its
    task (join() does not wait for what nobody can get); killed after, it holds the
    task as if killed between get() and task_done() (join() waits, as the stdlib's)."""
    jq = JoinableQueue()
    jq.put("a")
    jq.put("b")

    def victim():
        if where == "before counting it out":
            _die_at(*seams.DECODE)  # (after msgrcv, before the window closes)
        jq.get(timeout=5)
        if where == "after counting it out":
            os.kill(os.getpid(), signal.SIGKILL)

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        assert jq._chan.counts.unfinished() == (1 if where == "before counting it out" else 2)
        assert jq.get(timeout=5) == "b"
        jq.task_done()
        joiner = fork_run(jq.join)
        status = wait_pid(joiner, 3)
        if where == "before counting it out":
            assert status == 0, "join() waited for the task of a lost object"
        else:
            assert status is None, "join() returned with a task still held"
    finally:
        close_queue(jq)


def test_joinable_producer_killed_between_count_and_send_keeps_counts_exact():
    jq = JoinableQueue()

    _put_and_die_at(jq, *seams.SEND, "lost")
    try:
        assert jq._chan.counts.unfinished() == 0, "a task was counted for an object never sent"
    finally:
        close_queue(jq)


def test_join_gives_back_the_task_of_a_producer_killed_between_count_and_send():
    jq = JoinableQueue()
    jq.put("kept")

    _put_and_die_at(jq, *seams.SEND, "lost")
    assert jq.get(timeout=5) == "kept"
    jq.task_done()
    joiner = fork_run(jq.join)  # the first to look: join() itself repairs
    try:
        assert wait_pid(joiner, 5) == 0, "join() waited for a task that was never sent"
    finally:
        kill(joiner)
        close_queue(jq)


@pytest.mark.parametrize("at", ["before the count went up", "after the count went up"])
def test_joinable_producer_killed_inside_the_task_count_update_keeps_counts_exact(at):
    jq = JoinableQueue()
    jq.put("kept")

    def victim():
        if at == "before the count went up":
            _die_at(*seams.COUNTER_POST)
        else:
            _die_at(*seams.STATE_UNLOCK)  # the first unlock in put() is task_added's
        jq.put("lost")

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        assert jq._chan.counts.unfinished() == 1, "the dead producer's half-counted task remains"
        assert jq.get(timeout=5) == "kept"
        jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() hung after the repair"
    finally:
        close_queue(jq)


def _fill_and_die_with_a_backlog(q) -> None:
    """Put until some objects wait in this process's feeder buffer, then die."""
    while q._feeder.pending < 5:
        q.put(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("maxsize", [0, 100])
def test_producer_killed_with_objects_in_its_buffer_gives_back_their_tasks_and_slots(maxsize):
    jq = JoinableQueue(maxsize)
    wait_pid(fork_run(_fill_and_die_with_a_backlog, jq), WATCHDOG)
    try:
        queued = kernel_state(jq)["main"][0]
        assert 0 < queued < 100
        assert jq._chan.counts.unfinished() == queued, "tasks counted for objects never sent remain"
        for _ in range(queued):
            jq.get(timeout=5)
            jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() waited for objects that were never sent"
        if maxsize:
            for i in range(maxsize):
                jq.put_nowait(i)  # Full if the dead producer's slots were not given back
    finally:
        close_queue(jq)


def test_queue_works_without_notes_when_every_journal_entry_is_taken():
    jq = JoinableQueue(3)
    view, me = jq._chan._view, os.getpid()
    entries = [_journal.JOURNAL_OFF + i * _journal.ENTRY.size for i in range(_journal.NENTRIES)]
    for off in entries:  # live owners (this process) with nothing to roll back
        _journal.ENTRY.pack_into(view, off, me, 0, 0, 0, 0, 0, _journal.start_ticks(me), 0)
    try:
        for i in range(3):
            jq.put(i)
        with pytest.raises(mpsysv.Full):
            jq.put_nowait(3)
        assert jq._chan.journal.mine() is None
        assert [jq.get(timeout=5) for _ in range(3)] == [0, 1, 2]
        for _ in range(3):
            jq.task_done()
        jq.join()
        assert jq._chan.counts.unfinished() == 0
    finally:
        for off in entries:
            _journal.ENTRY.pack_into(view, off, 0, 0, 0, 0, 0, 0, 0, 0)
        close_queue(jq)


def test_handles_let_go_give_their_journal_entries_back():
    import pickle
    from multiprocessing.reduction import ForkingPickler
    jq = JoinableQueue(3)
    handle = ForkingPickler.dumps(jq)
    for i in range(2 * _journal.NENTRIES):  # e.g. a worker given the queue with each task
        other = pickle.loads(handle)
        other.put(i)
        assert other.get(timeout=5) == i
        other.task_done()
        other.close()
        other.join_thread()
    try:
        assert [e for _, e in jq._chan.journal.entries() if e[0]] == []
    finally:
        close_queue(jq)


def test_producer_killed_with_a_parcel_in_its_buffer_leaves_no_parcel_behind():
    q = Queue()

    def victim():
        while q._feeder.pending < 2:
            q.put(b"x" * 1000)
        q.put(obj("P", 0, payload(0, BIG)))  # a parcel whose message waits in the buffer
        assert q._feeder.pending >= 3
        os.kill(os.getpid(), signal.SIGKILL)

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        assert [state for state, _ in parcel_states(q)] == [_parcels.SENT]
        while kernel_state(q)["main"][0]:
            q.get(timeout=5)
        round_trip_in_child(q)  # its parcel claim reclaims the dead writer's parcel
        assert_reclaimed(q)
    finally:
        close_queue(q)


def _die_inside_task_update(jq, when: str) -> None:
    """Take the state lock and die half-way through a task-count update."""
    chan = jq._chan
    with chan.counts.state_locked():
        unfinished = chan.sems[C.UNFINISHED]
        if when == "task_done after decrement":
            unfinished.try_acquire()
        elif when == "task_added after increment":
            unfinished.post()
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("when", ["holding the lock", "task_done after decrement",
                                  "task_added after increment"])
def test_killed_inside_a_task_update_is_repaired_by_the_next_locker(when):
    """The lock was released by SEM_UNDO; the next locker sees the marker and derives
    the count again: one task held here ("t1"), one queued ("t2"). An update killed
    half-way did not happen."""
    jq = JoinableQueue()
    jq.put("t1")
    jq.put("t2")
    assert jq.get(timeout=5) == "t1"
    wait_pid(fork_run(_die_inside_task_update, jq, when), WATCHDOG)
    assert jq._chan.counts.unfinished() == 2
    jq.task_done()
    assert jq.get(timeout=5) == "t2"
    jq.task_done()
    joiner = fork_run(jq.join)
    assert wait_pid(joiner, 10) == 0, "join() hung after the repair"
    assert jq._chan.counts.unfinished() == 0
    close_queue(jq)


def test_a_task_done_killed_half_way_did_not_happen_and_join_still_returns():
    jq = JoinableQueue()
    jq.put("t")
    jq.get(timeout=5)
    wait_pid(fork_run(_die_inside_task_update, jq, "task_done after decrement"), WATCHDOG)
    assert jq._chan.counts.unfinished() == 1  # derived again: the task is still held here
    jq.task_done()
    assert jq._chan.counts.unfinished() == 0
    joiner = fork_run(jq.join)
    try:
        assert wait_pid(joiner, 3) == 0, "join() blocked on a gate nobody will lower"
    finally:
        kill(joiner)
        close_queue(jq)


def test_killed_holders_never_stop_the_last_one_from_removing_the_queue():
    before = sysv_counts()
    q = JoinableQueue()
    for _ in range(4):
        pid = fork_run(lambda: (q.put("x"), time.sleep(60)))
        time.sleep(0.05)
        kill(pid)
    assert q._chan.holders() == 1
    q.close()
    q.join_thread()
    assert sysv_counts() == before


# ---------------------------------------------------------------------------------------
# whole programs killed: garbage collection

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
        _die_at(*seams.COUNTER_INIT)  # after its objects, before the magic
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


# ---------------------------------------------------------------------------------------
# removed from outside (ipcrm, RemoveIPC=yes)

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
