"""The raw primitives against the kernel: msgrcv type rules, non-blocking and size errors,
EIDRM and EINTR handling, GIL release, atomic and timed semaphore operations, SEM_UNDO after
SIGKILL, segment views that never outlive the mapping, argument errors and pickling.

Everything that could hang runs under a watchdog: children are waited for with a timeout
and SIGKILLed on failure; blocked threads are released by a message or a semaphore.
"""

import ctypes
import errno
import gc
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

import mpsysv
from mpsysv._ipc import libc as L
from mpsysv import MessageQueue, RemovedError, SemaphoreSet, Segment

from .helpers import unique_key, wait_until

ROOT = Path(__file__).resolve().parent.parent
WATCHDOG = 10.0  # seconds before a child or a blocked thread counts as hung
NOBODY = 65534


# ---------------------------------------------------------------------------------------
# helpers

class Child:
    """A forked child that runs one function; its result or exception comes back pickled."""

    def __init__(self, fn, *args):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                os.close(r)
                try:
                    outcome = ("value", fn(*args))
                except BaseException as e:
                    outcome = ("raised", e)
                try:
                    data = pickle.dumps(outcome)
                except Exception:
                    data = pickle.dumps(("raised", RuntimeError(repr(outcome[1]))))
                os.write(w, data)
            finally:
                os._exit(0)
        os.close(w)
        self.pid, self._pipe, self._reaped = pid, r, False

    def outcome(self, timeout: float = WATCHDOG):
        """("value", v) or ("raised", exc) from the child, which is then reaped."""
        deadline = time.monotonic() + timeout
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._pipe], [], [], left)[0]:
                    pytest.fail(f"child {self.pid} did not finish within {timeout} s")
                chunk = os.read(self._pipe, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            self.kill()
        if not chunks:
            pytest.fail(f"child {self.pid} died without reporting")
        return pickle.loads(b"".join(chunks))

    def value(self, timeout: float = WATCHDOG):
        kind, what = self.outcome(timeout)
        if kind == "raised":
            raise AssertionError(f"child raised {what!r}") from what
        return what

    def exception(self, timeout: float = WATCHDOG) -> BaseException:
        kind, what = self.outcome(timeout)
        assert kind == "raised", f"child returned {what!r} instead of raising"
        return what

    def kill(self) -> None:
        """SIGKILL (if still running) and reap; idempotent."""
        if self._reaped:
            return
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self._pipe)
        self._reaped = True


@contextmanager
def child(fn, *args):
    c = Child(fn, *args)
    try:
        yield c
    finally:
        c.kill()


def wait_blocked_in(task: str, call: str) -> None:
    """Wait until the task at /proc/TASK sleeps in the kernel function named like *call*
    (or, where wchan is hidden, sleeps at all)."""
    def blocked():
        try:
            with open(f"/proc/{task}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{task}/wchan") as f:
                wchan = f.read()
        except FileNotFoundError:
            pytest.fail(f"{task} ended before it blocked in {call}")
        return state == "S" and (call in wchan or wchan in ("0", ""))
    assert wait_until(blocked, WATCHDOG), f"timed out waiting until {task} blocks in {call}"


def send_later(q: MessageQueue, delay: float, data: bytes, mtype: int = 1) -> Child:
    """A child that sends one message after *delay* s: it releases a blocked receiver even
    when this process could not run any Python code."""
    def run():
        time.sleep(delay)
        q.send(data, mtype)
    return Child(run)


@contextmanager
def signals_every(interval: float):
    """SIGALRM every *interval* s to a handler that only counts; yields the count list."""
    hits = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield hits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def count_eintr(monkeypatch, name: str) -> list:
    """Wrap the binding *name* so that every EINTR it returns is recorded."""
    real, seen = getattr(L, name), []

    def wrapper(*args):
        rc = real(*args)
        if rc == -1 and L.get_errno() == errno.EINTR:
            seen.append(1)
        return rc
    monkeypatch.setattr(L, name, wrapper)
    return seen


def drop_privileges() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture
def queue():
    q = MessageQueue(create=True)
    yield q
    with suppress(RemovedError):
        q.remove()


@pytest.fixture
def sems():
    s = SemaphoreSet(create=True, nsems=2)
    yield s
    with suppress(RemovedError):
        s.remove()


@pytest.fixture
def segment():
    g = Segment(create=True, size=4096)
    yield g
    with suppress(RemovedError):
        g.remove()


def send_all(q, *messages):
    for mtype, data in messages:
        q.send(data, mtype)


# ---------------------------------------------------------------------------------------
# message queues

CLASSIC = [(300, b"a"), (100, b"b"), (200, b"c"), (400, b"d"), (100, b"e")]


class TestMessageTypes:
    def test_negative_type_takes_lowest_type_up_to_its_magnitude(self, queue):
        send_all(queue, *CLASSIC)
        got = [queue.receive(-300, block=False)[0] for _ in range(4)]
        assert got == [b"b", b"e", b"c", b"a"]
        with pytest.raises(BlockingIOError):
            queue.receive(-300, block=False)
        assert queue.receive(block=False) == (b"d", 400)

    def test_positive_type_takes_first_message_of_exactly_that_type(self, queue):
        send_all(queue, *CLASSIC)
        assert queue.receive(100, block=False) == (b"b", 100)
        assert queue.receive(100, block=False) == (b"e", 100)
        with pytest.raises(BlockingIOError):
            queue.receive(100, block=False)
        assert queue.receive(400, block=False) == (b"d", 400)

    def test_except_type_takes_first_message_of_any_other_type(self, queue):
        send_all(queue, *CLASSIC)
        assert queue.receive(300, block=False, except_type=True) == (b"b", 100)
        assert queue.receive(100, block=False, except_type=True) == (b"a", 300)
        assert queue.receive(100, block=False, except_type=True) == (b"c", 200)

    def test_type_zero_takes_messages_in_fifo_order(self, queue):
        send_all(queue, *CLASSIC)
        assert [queue.receive(block=False) for _ in CLASSIC] == [(d, t) for t, d in CLASSIC]


class TestMessageLimits:
    def test_receive_without_wait_on_empty_queue_raises_blocking_io_error(self, queue):
        with pytest.raises(BlockingIOError, match="msgrcv") as info:
            queue.receive(block=False)
        assert info.value.errno == errno.ENOMSG

    def test_send_without_wait_on_full_queue_raises_blocking_io_error(self, queue):
        big = bytes(queue.max_message_size)
        capacity = queue.stat().msg_qbytes
        for _ in range(capacity // len(big)):
            queue.send(big, block=False)
        with pytest.raises(BlockingIOError, match="queue is full") as info:
            queue.send(big, block=False)
        assert info.value.errno == errno.EAGAIN
        assert queue.current_messages == capacity // len(big)

    def test_noerror_truncates_a_long_message(self, queue):
        queue.send(b"0123456789", 5)
        assert queue.receive(size=4, noerror=True, block=False) == (b"0123", 5)
        assert queue.current_messages == 0

    def test_long_message_without_noerror_raises_e2big_and_stays_queued(self, queue):
        queue.send(b"0123456789", 5)
        with pytest.raises(OSError, match="noerror") as info:
            queue.receive(size=4, block=False)
        assert info.value.errno == errno.E2BIG
        assert queue.current_messages == 1
        assert queue.receive(block=False) == (b"0123456789", 5)

    def test_message_above_msgmax_raises_value_error_naming_msgmax(self, queue):
        with pytest.raises(ValueError, match="msgmax"):
            queue.send(bytes(queue.max_message_size + 1))
        queue.send(bytes(queue.max_message_size), block=False)
        assert queue.receive(block=False)[0] == bytes(queue.max_message_size)

    def test_lowered_qbytes_is_reported_by_stat_and_bounds_the_queue(self, queue):
        queue.set(qbytes=100)
        assert queue.stat().msg_qbytes == 100
        queue.send(bytes(100), block=False)
        with pytest.raises(BlockingIOError):
            queue.send(b"x", block=False)

    def test_raising_qbytes_above_msgmnb_unprivileged_names_msgmnb(self, queue):
        msgmnb = L.limits()["msgmnb"]
        if os.geteuid() != 0:
            with pytest.raises(PermissionError, match="msgmnb"):
                queue.set(qbytes=msgmnb + 1)
            return
        # the unprivileged child must own the queue to be allowed IPC_SET at all
        queue.set(uid=NOBODY, gid=NOBODY)

        def raise_as_nobody():
            drop_privileges()
            queue.set(qbytes=msgmnb + 1)
        exc = Child(raise_as_nobody).exception()
        assert isinstance(exc, PermissionError), repr(exc)
        assert exc.errno == errno.EPERM
        assert f"msgmnb={msgmnb}" in str(exc)
        assert queue.stat().msg_qbytes == msgmnb

        def lower_as_nobody():
            drop_privileges()
            queue.set(qbytes=msgmnb - 1)
            return queue.stat().msg_qbytes
        assert Child(lower_as_nobody).value() == msgmnb - 1


class TestMessageBlocking:
    def test_receiver_blocked_when_queue_is_removed_gets_removed_error(self, queue):
        with child(queue.receive) as c:
            wait_blocked_in(str(c.pid), "msgrcv")
            queue.remove()
            exc = c.exception()
        assert isinstance(exc, RemovedError) and isinstance(exc, OSError), repr(exc)
        assert exc.errno == errno.EIDRM
        assert "msgrcv" in str(exc) and f"message queue id={queue.id} was removed" in str(exc)

    def test_blocking_receive_keeps_waiting_through_signals(self, queue, monkeypatch):
        eintr = count_eintr(monkeypatch, "msgrcv")
        sender = send_later(queue, 0.5, b"late", 9)
        try:
            with signals_every(0.05) as hits:
                started = time.monotonic()
                got = queue.receive()
                elapsed = time.monotonic() - started
            sender.value()
        finally:
            sender.kill()
        assert got == (b"late", 9)
        assert elapsed >= 0.4
        assert len(hits) >= 3 and len(eintr) >= 1

    def test_blocked_receive_releases_the_gil(self, queue):
        watchdog = send_later(queue, WATCHDOG, b"watchdog")
        try:
            result = []
            t = threading.Thread(target=lambda: result.append(queue.receive()))
            t.start()
            wait_blocked_in(f"self/task/{t.native_id}", "msgrcv")
            spins, end = 0, time.monotonic() + 0.2
            while time.monotonic() < end:
                spins += 1
            assert spins > 1000
            queue.send(b"done")
            t.join(WATCHDOG)
            assert not t.is_alive()
            assert result == [(b"done", 1)]
        finally:
            watchdog.kill()

    def test_blocking_send_waits_for_room(self, queue):
        queue.set(qbytes=10)
        queue.send(bytes(10))
        with child(queue.send, b"more") as c:
            wait_blocked_in(str(c.pid), "msgsnd")
            assert queue.receive() == (bytes(10), 1)
            c.value()
        assert queue.receive(block=False) == (b"more", 1)


# ---------------------------------------------------------------------------------------
# semaphore sets

class TestSemaphoreValues:
    def test_setval_getval_setall_getall_round_trip(self, sems):
        sems.setval(1, 7)
        assert sems.getval(1) == 7 and sems.getall() == [0, 7]
        sems.setall([L.SEMVMX, 3])
        assert sems.getall() == [L.SEMVMX, 3]
        assert sems.getval(0) == L.SEMVMX

    def test_getpid_names_the_last_process_to_operate(self, sems):
        sems.op(1, 2)
        assert sems.getpid(1) == os.getpid()
        with child(sems.op, 1, -1) as c:
            c.value()
            assert sems.getpid(1) == c.pid

    def test_value_above_semvmx_raises_value_error(self, sems):
        with pytest.raises(ValueError, match="value"):
            sems.setval(0, L.SEMVMX + 1)
        with pytest.raises(ValueError, match="values"):
            sems.setall([0, L.SEMVMX + 1])
        sems.setval(0, L.SEMVMX)
        with pytest.raises(ValueError, match=f"SEMVMX={L.SEMVMX}"):
            sems.op(0, 1)
        assert sems.getval(0) == L.SEMVMX

    def test_waiters_are_counted_by_getncnt_and_getzcnt(self, sems):
        sems.setval(1, 1)
        results = []

        def wait_for(num, delta):
            results.append(sems.op(num, delta, timeout=WATCHDOG))
        threads = [threading.Thread(target=wait_for, args=(0, -1)),   # until it can decrement
                   threading.Thread(target=wait_for, args=(1, 0))]    # until it reads zero
        for t in threads:
            t.start()
        try:
            assert wait_until(lambda: sems.getncnt(0) == 1 and sems.getzcnt(1) == 1, WATCHDOG)
            assert sems.getzcnt(0) == 0 and sems.getncnt(1) == 0
        finally:
            sems.setall([1, 0])
            for t in threads:
                t.join(WATCHDOG)
        assert results == [True, True]
        assert sems.getncnt(0) == sems.getzcnt(1) == 0

    def test_opening_an_existing_set_by_key_sees_all_its_semaphores(self):
        key = unique_key()
        s = SemaphoreSet(key, 3, create=True, exclusive=True)
        try:
            s.setval(2, 4)
            for opened in (SemaphoreSet(key), SemaphoreSet(key, 2, create=True),
                           SemaphoreSet(id=s.id)):
                assert opened.nsems == 3 and opened.getval(2) == 4
            with pytest.raises(OSError, match="nsems larger") as info:
                SemaphoreSet(key, 4)
            assert info.value.errno == errno.EINVAL
        finally:
            s.remove()

    def test_semaphore_number_out_of_range_raises_value_error(self, sems):
        for call in (lambda: sems.getval(2), lambda: sems.op(-1, 1), lambda: sems.setval(5, 0)):
            with pytest.raises(ValueError, match="out of range"):
                call()


class TestSemaphoreOps:
    def test_several_ops_apply_all_or_none(self, sems):
        sems.setall([1, 0])
        assert sems.ops([(0, -1, 0), (1, -1, 0)], block=False) is False
        assert sems.getall() == [1, 0]
        sems.setval(1, 1)
        assert sems.ops([(0, -1, 0), (1, -1, 0)], block=False) is True
        assert sems.getall() == [0, 0]

    def test_timed_op_returns_false_after_the_timeout(self, sems):
        started = time.monotonic()
        assert sems.op(0, -1, timeout=0.2) is False
        elapsed = time.monotonic() - started
        assert 0.19 <= elapsed < 0.6
        assert sems.getval(0) == 0

    def test_timed_op_succeeds_when_released_in_time(self, sems):
        with child(lambda: (time.sleep(0.2), sems.op(0, 1))) as c:
            assert sems.op(0, -1, timeout=WATCHDOG) is True
            c.value()

    def test_timed_op_interrupted_by_signals_still_waits_the_whole_timeout(self, sems,
                                                                          monkeypatch):
        eintr = count_eintr(monkeypatch, "semtimedop")
        with signals_every(0.03) as hits:
            started = time.monotonic()
            assert sems.op(0, -1, timeout=0.5) is False
            elapsed = time.monotonic() - started
        assert 0.49 <= elapsed < 0.9
        assert len(hits) >= 5 and len(eintr) >= 5

    def test_waiter_gets_removed_error_when_the_set_is_removed(self, sems):
        with child(sems.op, 0, -1) as c:
            assert wait_until(lambda: sems.getncnt(0) == 1, WATCHDOG), "the child waits"
            sems.remove()
            exc = c.exception()
        assert isinstance(exc, RemovedError), repr(exc)
        assert exc.errno == errno.EIDRM
        assert "semop" in str(exc) and "was removed" in str(exc)

    def test_undo_lock_of_a_killed_process_is_released(self, sems):
        sems.setval(0, 1)

        def hold_forever():
            sems.op(0, -1, undo=True)
            time.sleep(WATCHDOG * 6)
        with child(hold_forever) as c:
            assert wait_until(lambda: sems.getval(0) == 0, WATCHDOG), "the child holds the lock"
            assert sems.op(0, -1, block=False) is False
            c.kill()
        assert sems.op(0, -1, timeout=WATCHDOG) is True

    def test_empty_operation_list_raises_value_error(self, sems):
        with pytest.raises(ValueError, match="operations"):
            sems.ops([])


# ---------------------------------------------------------------------------------------
# segments and attachments

class TestSegmentViews:
    def test_two_attachments_see_each_others_writes(self, segment):
        rw, other, ro = segment.attach(), segment.attach(), segment.attach(readonly=True)
        rw.buf[:5] = b"hello"
        assert bytes(ro.buf[:5]) == b"hello" and bytes(other.buf[:5]) == b"hello"
        other.buf[4096 - 3:] = b"end"
        assert bytes(rw.buf[-3:]) == b"end" and bytes(ro.buf[-3:]) == b"end"
        assert segment.stat().shm_nattch == 3
        assert rw.detach() and other.detach() and ro.detach()
        assert segment.stat().shm_nattch == 0

    def test_writing_through_a_readonly_attachment_raises_type_error(self, segment):
        ro = segment.attach(readonly=True)
        with pytest.raises(TypeError):
            ro.buf[0] = 1
        with pytest.raises(TypeError):
            ro.buf[:3] = b"abc"
        with pytest.raises(TypeError):
            ctypes.c_char.from_buffer(ro.buf)
        assert ro.readonly and ro.detach()

    def test_fork_child_writes_through_the_inherited_attachment(self, segment):
        a = segment.attach()

        def write_in_child():
            a.buf[:5] = b"child"
            return segment.stat().shm_nattch
        assert Child(write_in_child).value() == 2
        assert bytes(a.buf[:5]) == b"child"
        assert segment.stat().shm_nattch == 1
        assert a.detach()

    def test_detach_with_a_live_slice_defers_the_unmap(self, segment):
        a = segment.attach()
        a.buf[:4] = b"keep"
        piece = a.buf[:4]
        assert a.detach() is False
        assert a.buf is None
        assert bytes(piece) == b"keep"
        assert segment.stat().shm_nattch == 1
        del piece
        gc.collect()
        assert segment.stat().shm_nattch == 0
        assert a.detach() is True

    def test_detach_with_a_live_numpy_array_defers_the_unmap(self, segment):
        np = pytest.importorskip("numpy")
        a = segment.attach()
        arr = np.frombuffer(a.buf, dtype=np.uint8)
        arr[:3] = (1, 2, 3)
        assert a.detach() is False
        assert arr[:3].tolist() == [1, 2, 3]
        assert segment.stat().shm_nattch == 1
        del arr
        gc.collect()
        assert segment.stat().shm_nattch == 0

    def test_detach_without_views_unmaps_at_once(self, segment):
        a = segment.attach()
        assert a.detach() is True
        assert segment.stat().shm_nattch == 0
        assert a.detach() is True

    def test_views_held_by_daemon_threads_stay_mapped_at_exit(self):
        # a daemon thread still writes while the interpreter shuts down: unmapping at exit
        # would crash the process with SIGSEGV
        code = textwrap.dedent('''
            import threading, time
            from mpsysv import Segment
            g = Segment(create=True, size=4096)
            a = g.attach()
            g.remove()
            def spin():
                while True:
                    a.buf[0] = (a.buf[0] + 1) % 256
            threading.Thread(target=spin, daemon=True).start()
            time.sleep(0.05)
        ''')
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=WATCHDOG,
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr}"

    def test_removed_segment_lives_until_the_last_detach(self, segment):
        a = segment.attach()
        segment.remove()
        a.buf[:2] = b"ok"
        assert segment.stat().shm_nattch == 1
        assert a.detach()
        with pytest.raises(RemovedError):
            segment.stat()


# ---------------------------------------------------------------------------------------
# errors and identity

KINDS = [
    pytest.param(lambda key, **kw: MessageQueue(key, **kw), "msgget", id="queue"),
    pytest.param(lambda key, **kw: SemaphoreSet(key, 1, **kw), "semget", id="semaphores"),
    pytest.param(lambda key, **kw: Segment(key, 4096 if kw.get("create") else 0, **kw),
                 "shmget", id="segment"),
]


class TestErrors:
    @pytest.mark.parametrize("make,call", KINDS)
    def test_exclusive_create_of_an_existing_key_raises_file_exists(self, make, call):
        key = unique_key()
        obj = make(key, create=True, exclusive=True)
        try:
            with pytest.raises(FileExistsError, match=call) as info:
                make(key, create=True, exclusive=True)
            assert info.value.errno == errno.EEXIST
            assert f"key={key:#010x}" in str(info.value)
            assert make(key, create=True) == obj
            assert make(key) == obj
        finally:
            obj.remove()

    @pytest.mark.parametrize("make,call", KINDS)
    def test_opening_a_missing_key_raises_file_not_found(self, make, call):
        with pytest.raises(FileNotFoundError, match=call) as info:
            make(unique_key())
        assert info.value.errno == errno.ENOENT

    @pytest.mark.parametrize("make,call", KINDS)
    def test_key_that_is_not_an_int_raises_type_error(self, make, call):
        for key in ("abc", 1.5, True):
            with pytest.raises(TypeError, match="'key'"):
                make(key, create=True)

    @pytest.mark.parametrize("make,call", KINDS)
    def test_key_beyond_32_bits_raises_value_error(self, make, call):
        with pytest.raises(ValueError, match="'key'"):
            make(2 ** 32, create=True)

    @pytest.mark.parametrize("make,call", KINDS)
    def test_mode_out_of_range_raises_value_error(self, make, call):
        for mode in (-1, 0o1000, "0o600"):
            with pytest.raises(ValueError, match="'mode'"):
                make(None, create=True, mode=mode)

    @pytest.mark.parametrize("make,call", KINDS)
    def test_private_object_must_be_created(self, make, call):
        with pytest.raises(ValueError, match="create=True"):
            make(None)

    @pytest.mark.parametrize("size", [-1, 0, 1.5])
    def test_bad_segment_size_raises_value_error(self, size):
        with pytest.raises(ValueError, match="'size'"):
            Segment(size=size, create=True)

    def test_bad_nsems_raises_value_error(self):
        with pytest.raises(ValueError, match="'nsems'"):
            SemaphoreSet(nsems=0, create=True)

    @pytest.mark.parametrize("mtype", [0, -1, 2 ** 63, "1"])
    def test_send_with_a_non_positive_mtype_raises_value_error(self, queue, mtype):
        with pytest.raises(ValueError, match="'mtype'"):
            queue.send(b"x", mtype)
        assert queue.current_messages == 0

    def test_send_of_a_str_raises_type_error(self, queue):
        with pytest.raises(TypeError):
            queue.send("text")

    def test_negative_receive_size_raises_value_error(self, queue):
        with pytest.raises(ValueError, match="'size'"):
            queue.receive(size=-1, block=False)

    def test_bad_qbytes_raises_value_error(self, queue):
        with pytest.raises(ValueError, match="'qbytes'"):
            queue.set(qbytes=0)

    def test_bad_id_raises_value_error(self):
        for cls in (MessageQueue, SemaphoreSet, Segment):
            with pytest.raises(ValueError, match="'id'"):
                cls(id=-1)

    def test_operation_on_a_removed_queue_raises_removed_error(self, queue):
        queue.remove()
        with pytest.raises(RemovedError, match="does not exist"):
            queue.send(b"x")
        with pytest.raises(RemovedError):
            queue.receive(block=False)


class TestIdentity:
    def test_pickled_queue_is_the_same_queue_and_works(self, queue):
        clone = pickle.loads(pickle.dumps(queue))
        assert clone == queue and clone.id == queue.id and clone.key == queue.key
        clone.send(b"via clone", 3)
        assert queue.receive(block=False) == (b"via clone", 3)
        queue.send(b"back", 4)
        assert clone.receive(block=False) == (b"back", 4)

    def test_pickled_semaphore_set_is_the_same_set(self, sems):
        clone = pickle.loads(pickle.dumps(sems))
        assert clone == sems and clone.id == sems.id and clone.nsems == 2
        clone.setval(1, 5)
        assert sems.getval(1) == 5

    def test_pickled_segment_is_the_same_segment(self, segment):
        clone = pickle.loads(pickle.dumps(segment))
        assert clone == segment and clone.id == segment.id and clone.size == segment.size
        a, b = segment.attach(), clone.attach()
        a.buf[:3] = b"abc"
        assert bytes(b.buf[:3]) == b"abc"
        assert a.detach() and b.detach()

    def test_objects_open_by_key_and_by_id(self):
        key = unique_key()
        q = MessageQueue(key, create=True, exclusive=True)
        try:
            assert q.key == key and MessageQueue(id=q.id).key == key
            assert MessageQueue(key) == q
            assert hash(MessageQueue(id=q.id)) == hash(q)
            assert repr(q) == f"MessageQueue(id={q.id}, key={key:#010x})"
        finally:
            q.remove()

    def test_public_names_are_exported(self):
        assert {"MessageQueue", "SemaphoreSet", "Segment", "Attachment", "RemovedError",
                "ftok"} <= set(mpsysv.__all__)
