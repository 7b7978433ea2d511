"""Hostile and bad input: foreign messages sent raw into a queue's message queues (as a C
or Python program could), wrong arguments everywhere, and other users' processes.

What a queue does with a foreign message in its main queue (documented behaviour):
a message that starts like a pickle (0x80) is unpickled and whatever ``pickle`` raises
comes out of that one ``get()`` (the message is consumed); any other foreign message
is dropped with a ``RuntimeWarning`` naming the queue. Either way the next ``get()``
serves the good objects, in order.
"""

import os
import pickle
import struct
import time
import tracemalloc
import warnings

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mpsysv
from mpsysv._gc import collect as _gc
from mpsysv._ipc import libc as L
from mpsysv._queue import parcels as _parcels
from mpsysv._queue import wire as W
from mpsysv import JoinableQueue, MessageQueue, Queue, SimpleQueue
from mpsysv.shared import ShareableList, SharedMemory

from . import seams
from .helpers import unique_name
from .test_primitives import Child, drop_privileges

STREAM_BIT = 1 << 62
MSGMAX = L.read_limit("msgmax", 8192)


def raw_parts(q):
    """The queue's main and stream message queues as raw primitives."""
    return MessageQueue(id=q._chan.main_qid), MessageQueue(id=q._chan.stream_qid)


def drain_raw(mq: MessageQueue) -> int:
    n = 0
    while True:
        try:
            mq.receive(block=False, noerror=True)
        except BlockingIOError:
            return n
        n += 1


# ---------------------------------------------------------------------------------------
# foreign messages, fuzzed

def _head(sid, total, nframes, first):
    return struct.pack("<BQQI", W.HEAD, sid, total, nframes) + first


def _frame(sid, seq, chunk):
    return struct.pack("<BQI", W.FRAME, sid, seq) + chunk


u64 = st.integers(0, 2 ** 64 - 1)
foreign_bytes = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda b: b"\x80" + b),  # starts like a pickle
    st.builds(lambda p: b"\x80\x05\x95" + p, st.binary(min_size=8, max_size=40)),  # a FRAME
    st.builds(_head, st.one_of(u64, u64.map(lambda s: s | STREAM_BIT)), u64,
              st.integers(0, 2 ** 32 - 1), st.binary(max_size=200)),
    st.builds(_frame, u64, st.integers(0, 2 ** 32 - 1), st.binary(max_size=200)),
    st.builds(lambda s: struct.pack("<BQ", ord("A"), s), u64),  # (was wire's abort frame)
    st.builds(lambda slot, seg, n: struct.pack("<BIiQ", W.PARCEL, slot, seg, n),
              st.integers(0, 2 ** 32 - 1), st.integers(-2 ** 31, 2 ** 31 - 1), u64),
)
mtypes = st.one_of(st.integers(1, 1000), st.integers(1, 2 ** 63 - 1))
events = st.lists(st.one_of(st.tuples(st.just("foreign"), foreign_bytes, mtypes),
                            st.tuples(st.just("good"), st.sampled_from(["s", "p"]))),
                  max_size=8)


def _good(i: int, kind: str):
    return ("good", i, b"p" * 100_000 if kind == "p" else b"s" * 10)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=events)
# An empty foreign message queued before a parcel: the parcel table's look at the queued
# messages (MSG_COPY) once indexed its first byte (IndexError, the parcel's put failed).
@example(plan=[("foreign", b"", 95754), ("good", "p"), ("good", "p"), ("good", "s")])
def _fuzz_main_queue(q, main, plan):
    good = []
    for kind, *rest in plan:
        if kind == "foreign":
            main.send(rest[0], rest[1])
        else:
            obj = _good(len(good), rest[0])
            q.put(obj)
            good.append(obj)
    foreign = len(plan) - len(good)
    got, reported = [], 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Everything is in the kernel queue already (small objects and parcels are sent
        # by put() itself), so non-blocking gets see it all.
        while q._chan.qsize():
            try:
                got.append(q.get_nowait())
            except mpsysv.Empty:
                break
            except (RecursionError, MemoryError, mpsysv.RemovedError):
                raise
            except Exception:  # noqa: BLE001 - what pickle raised for a foreign pickle
                reported += 1
    dropped = [w for w in caught if issubclass(w.category, RuntimeWarning)
               and "mpsysv queue" in str(w.message)]
    assert [g for g in got if isinstance(g, tuple) and g[:1] == ("good",)] == good
    # Every foreign message was consumed: dropped with a warning, reported by get(), or
    # (a foreign pickle that happens to load) returned as an object.
    assert len(dropped) + reported + len(got) - len(good) == foreign
    assert q._chan.qsize() == 0 and not q._feeder.pending


def test_foreign_messages_in_the_main_queue_never_stop_good_objects(monkeypatch):
    # A forged head waits one slice for frames that never come: shorten the slice.
    monkeypatch.setattr(*seams.STREAM_SLICE, 0.02)
    q = Queue()
    main, _ = raw_parts(q)
    try:
        _fuzz_main_queue(q, main)
    finally:
        q.close()


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk=st.lists(st.tuples(st.binary(max_size=1000), mtypes), max_size=4))
def _fuzz_stream_queue(q, stream, junk):
    for data, mtype in junk:
        stream.send(data, mtype)
    obj = ("streamed", os.urandom(12_000))  # between msgmax and PARCEL_MIN: framed
    q.put(obj)
    try:
        assert q.get(timeout=10) == obj
    finally:
        drain_raw(stream)  # each example starts clean


def test_small_foreign_messages_in_the_stream_queue_do_not_stop_streams():
    q = Queue()
    _, stream = raw_parts(q)
    try:
        _fuzz_stream_queue(q, stream)
    finally:
        q.close()


def _get_in_child(q, count: int, timeout: float):
    """Get *count* objects in a forked child (a hang there cannot hang this test)."""
    def run():
        warnings.simplefilter("ignore")
        return [q.get(timeout=timeout) for _ in range(count)]
    return Child(run).value(timeout)


def test_foreign_messages_filling_the_stream_queue_do_not_stop_streams():
    q = Queue()
    _, stream = raw_parts(q)
    stream.send(b"J" * (MSGMAX - 100), 77)
    stream.send(b"J" * (MSGMAX - 100), 78)
    obj = ("streamed", b"s" * 12_000)
    q.put(obj)
    try:
        assert _get_in_child(q, 1, 5) == [obj]
    finally:
        drain_raw(stream)
        q.cancel_join_thread()
        q.close()


def test_forged_heads_while_real_objects_stream(monkeypatch):
    monkeypatch.setattr(*seams.STREAM_SLICE, 0.02)  # a forged head costs its reader one slice
    q = Queue()
    main, _ = raw_parts(q)
    objs = [(i, b"s" * 12_000) for i in range(60)]

    def write():
        for o in objs:
            q.put(o)
        q.close()
        q.join_thread()

    writer = Child(write)
    reader = Child(lambda: [q.get(timeout=10)[0] for _ in objs])
    try:
        for k in range(40):
            main.send(_head(STREAM_BIT | (99999 << 32) | k, 20_000, 3, b"x" * 100), 1)
            time.sleep(0.005)
        assert reader.value(8) == list(range(60))
    finally:
        writer.kill()
        reader.kill()
        q.cancel_join_thread()
        q.close()


def test_a_forged_head_is_dropped_promptly_and_never_trusted_for_allocation():
    q = Queue()
    main, _ = raw_parts(q)
    try:
        main.send(_head(STREAM_BIT | (99999 << 32) | 1, 2 ** 62, 3, b"x" * 100), 1)
        main.send(b"\x80\x05\x95" + struct.pack("<Q", 2 ** 62) + b"\x8e" + b"\xff" * 8, 1)
        q.put("good")
        tracemalloc.start()
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(Exception):
                q.get(timeout=5)  # the pickle that claims 2**62 bytes: reported
            assert q.get(timeout=5) == "good"
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.monotonic() - start < 1.5, "a head whose frames never come blocked get()"
        assert peak < 1 << 20, f"{peak} bytes allocated for bogus headers"
        assert any("dropped" in str(w.message) for w in caught)
    finally:
        q.close()


def test_foreign_parcel_messages_are_dropped():
    q = Queue()
    main, _ = raw_parts(q)
    try:
        q.put(b"real" * 10_000)
        slot, segid, n, nonce = W.parse_parcel(q._chan.parcels and _first_raw(main))
        # Naming the right slot and segment is not enough: the nonce and length must match.
        for forged in [(slot + 1, segid, n, nonce), (slot, segid + 1, n, nonce),
                       (slot, segid, 2 ** 60, nonce), (_parcels.NSLOTS, segid, n, nonce),
                       (2 ** 32 - 1, -1, 0, 0), (slot, segid, n, nonce ^ 1),
                       (slot, segid, n - 1, nonce)]:
            main.send(W.encode_parcel(*forged), 1)
        main.send(W.encode_parcel(slot, segid, n, nonce), 1)  # the real one, after them
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert q.get(timeout=5) == b"real" * 10_000
        assert len([w for w in caught if "dropped" in str(w.message)]) == 7
    finally:
        q.close()


def _first_raw(main: MessageQueue) -> bytes:
    return main.receive(block=False)[0]


# ---------------------------------------------------------------------------------------
# wrong arguments

@pytest.fixture
def q():
    queue = Queue(3)
    yield queue
    queue.close()


BAD_QUEUE_CALLS = [
    ("Queue('3')", lambda q: Queue("3"), TypeError, "'maxsize' must be an int"),
    ("Queue(2.5)", lambda q: Queue(2.5), TypeError, "'maxsize' must be an int"),
    ("Queue(2**40)", lambda q: Queue(2 ** 40), ValueError, "'maxsize' must be at most"),
    ("put timeout -1", lambda q: q.put(1, timeout=-1), ValueError, "'timeout' must be"),
    ("get timeout -1", lambda q: q.get(timeout=-1), ValueError, "'timeout' must be"),
    ("get timeout str", lambda q: q.get(timeout="1"), TypeError, ""),
    ("put mtype 0", lambda q: q.put(1, mtype=0), ValueError, "'mtype' must be in 1.."),
    ("put mtype -1", lambda q: q.put(1, mtype=-1), ValueError, "'mtype' must be in 1.."),
    ("put mtype 2**62", lambda q: q.put(1, mtype=2 ** 62), ValueError, "'mtype' must be"),
    ("put mtype str", lambda q: q.put(1, mtype="1"), TypeError, "'mtype' must be an int"),
    ("get mtype 2**63", lambda q: q.get(mtype=2 ** 63), ValueError, "'mtype' must be in"),
    ("get mtype float", lambda q: q.get(mtype=1.0), TypeError, "'mtype' must be an int"),
    ("name empty", lambda q: Queue(name="", create=True), ValueError, "must not be empty"),
    ("name long", lambda q: Queue(name="x" * 201, create=True), ValueError, "at most 200"),
    ("name chars", lambda q: Queue(name="a b", create=True), ValueError, "contains ' '"),
    ("name slash", lambda q: Queue(name="a/b"), ValueError, "contains '/'"),
    ("name bytes", lambda q: Queue(name=b"ab"), TypeError, "'name' must be a str"),
    ("create no name", lambda q: Queue(create=True), ValueError, "needs a name"),
    ("missing name", lambda q: JoinableQueue(name=unique_name()), FileNotFoundError, "queue"),
    ("SimpleQueue timeout", lambda q: SimpleQueue().get(timeout=1), TypeError, "timeout"),
]


@pytest.mark.parametrize("what,call,exc,message", BAD_QUEUE_CALLS,
                         ids=[c[0] for c in BAD_QUEUE_CALLS])
def test_bad_queue_arguments_raise_the_stdlib_exception(q, what, call, exc, message):
    with pytest.raises(exc) as info:
        call(q)
    assert message in str(info.value)
    import gc
    gc.collect()  # a SimpleQueue made by the call goes now, not in the next test


@pytest.mark.parametrize("mode", [0o1000, -1, 0o7777, "rw"])
def test_bad_queue_mode_raises_value_error(mode):
    with pytest.raises(ValueError, match="'mode'"):
        Queue(mode=mode).close()


def test_closed_queues_raise_the_stdlib_errors():
    for cls in (Queue, JoinableQueue, SimpleQueue):
        queue = cls()
        queue.close()
        # As the stdlib: ValueError from a closed Queue, OSError from a closed SimpleQueue.
        error = OSError if cls is SimpleQueue else ValueError
        for call in (lambda: queue.put(1), lambda: queue.get()):
            with pytest.raises(error, match="closed"):
                call()
        with pytest.raises(ValueError, match="closed"):
            pickle.dumps(queue)
        if cls is JoinableQueue:
            with pytest.raises(ValueError, match="closed"):
                queue.task_done()


BAD_SHM_CALLS = [
    ("size -1", lambda: SharedMemory(create=True, size=-1), ValueError, "'size' must be"),
    ("size 0", lambda: SharedMemory(create=True, size=0), ValueError, "'size' must be"),
    ("size str", lambda: SharedMemory(create=True, size="1"), TypeError, ""),
    ("no name", lambda: SharedMemory(), ValueError, "'name' can only be None"),
    ("name int", lambda: SharedMemory(5), TypeError, "'name' must be a str"),
    ("name long", lambda: SharedMemory("x" * 300), ValueError, "at most 200"),
    ("name chars", lambda: SharedMemory("a\0b"), ValueError, "contains"),
    ("missing", lambda: SharedMemory(unique_name()), FileNotFoundError, "No shared memory"),
    ("mode", lambda: SharedMemory(create=True, size=8, mode=0o7777), ValueError, "'mode'"),
    ("readonly create", lambda: SharedMemory(create=True, size=8, readonly=True), ValueError,
     "read-only"),
    ("list item", lambda: ShareableList([object()]), TypeError, "ShareableList stores"),
]


@pytest.mark.parametrize("what,call,exc,message", BAD_SHM_CALLS,
                         ids=[c[0] for c in BAD_SHM_CALLS])
def test_bad_shared_memory_arguments_raise_the_stdlib_exception(what, call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def test_closed_shared_memory_has_no_buffer_and_unlinks_once():
    seg = SharedMemory(create=True, size=100)
    seg.close()
    seg.close()
    assert seg.buf is None
    seg.unlink()
    with pytest.raises(FileNotFoundError):
        seg.unlink()


# ---------------------------------------------------------------------------------------
# other users

def _as_nobody(fn):
    """Run *fn* in a forked child that dropped to uid/gid 65534; its result."""
    def run():
        drop_privileges()
        return fn()
    return Child(run).outcome()


def _permission_error(fn) -> str:
    kind, what = _as_nobody(fn)
    assert kind == "raised", f"another user got {what!r}"
    assert isinstance(what, PermissionError), repr(what)
    return str(what)


@pytest.fixture
def private_objects():
    """An owner-only (0600) named queue and segment of this (root) user."""
    q = Queue(name=unique_name("private"), create=True)
    seg = SharedMemory(unique_name("private"), create=True, size=100)
    yield q, seg
    q.unlink()
    q.close()
    seg.close()
    seg.unlink()


def test_another_user_gets_permission_error_on_owner_only_objects(private_objects):
    q, seg = private_objects
    handle = pickle.dumps(q)
    for attempt in (lambda: Queue(name=q.name), lambda: pickle.loads(handle),
                    lambda: q.put_nowait("x"), lambda: q.get_nowait(),
                    lambda: SharedMemory(seg.name)):
        assert "Permission denied" in _permission_error(attempt)


def test_permission_error_names_the_queue_its_owner_and_mode(private_objects):
    q, _ = private_objects
    message = _permission_error(lambda: Queue(name=q.name))
    assert q.name in message and "uid 0" in message and "600" in message, message


def test_permission_error_names_the_segment_its_owner_and_mode(private_objects):
    _, seg = private_objects
    message = _permission_error(lambda: SharedMemory(seg.name))
    assert seg.name in message and "uid 0" in message and "600" in message, message


def test_objects_made_for_everyone_are_usable_by_another_user():
    name = unique_name("shared")
    q = Queue(name=name, create=True, mode=0o666)
    seg = SharedMemory(unique_name("shared"), create=True, size=100, mode=0o666)
    seg.buf[:2] = b"hi"

    def other_user():
        mine = Queue(name=name)
        mine.put(("from nobody", b"x" * 5000))
        mine.close()
        mine.join_thread()
        attached = SharedMemory(seg.name)
        try:
            return bytes(attached.buf[:2])
        finally:
            attached.close()

    try:
        assert _as_nobody(other_user) == ("value", b"hi")
        assert q.get(timeout=5) == ("from nobody", b"x" * 5000)
    finally:
        q.unlink()
        q.close()
        seg.close()
        seg.unlink()


def test_another_user_receives_large_objects_from_a_shared_queue():
    name = unique_name("shared")
    q = Queue(name=name, create=True, mode=0o666)
    try:
        q.put(b"L" * 100_000)

        def other_user():
            warnings.simplefilter("error")
            mine = Queue(name=name)
            try:
                return len(mine.get(timeout=5))
            finally:
                mine.close()
        assert _as_nobody(other_user) == ("value", 100_000)
    finally:
        q.unlink()
        q.close()
        _gc.collect_garbage(force=True)  # the parcel the other user could not remove
