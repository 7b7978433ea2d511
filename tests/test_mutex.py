"""The robust process-shared mutex (``_ipc.mutex``) in System V segments, against the
kernel: a holder's death in every form hands the lock on as "owner died", a stopped
holder is waited for, and the rule a caller must keep (never detach a segment while
holding a mutex in it) is shown by the two ways a process breaks when it does not.

Every segment is private (``IPC_PRIVATE``) and removed by its fixture; every forked
holder is bounded in time and killed and reaped by the ``holders`` fixture.
"""

import ctypes
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

import pytest

from mpsysv._ipc import libc as L
from mpsysv._ipc.mutex import MUTEX_SIZE, MUTEX_SLOT, RobustMutex

from .helpers import wait_until

ROOT = str(Path(__file__).resolve().parent.parent)
WAIT = 10.0  # how long one step may take before the test fails instead of hanging
HOLD = 30.0  # how long a forked holder holds at most (it then exits, still holding)
FUTEX_TID_MASK = 0x3FFFFFFF  # <linux/futex.h>: the owner's thread id in the lock word
FUTEX_WAITERS = 0x80000000


def _owner(mutex: RobustMutex) -> int:
    """The thread id in the mutex's lock word (0: free, or its holder died)."""
    return ctypes.c_uint32.from_address(mutex.address).value & FUTEX_TID_MASK


def _has_waiters(mutex: RobustMutex) -> bool:
    return bool(ctypes.c_uint32.from_address(mutex.address).value & FUTEX_WAITERS)


def _fresh(address: int, name: str = "test mutex") -> RobustMutex:
    mutex = RobustMutex(address, name)
    mutex.init()
    return mutex


class _Segment:
    """A one-page private segment attached here; ``remove()`` marks it for removal and
    detaches it (the kernel frees it when the last attached process is gone)."""

    def __init__(self):
        self.shmid = L.shmget(L.IPC_PRIVATE, 4096, L.IPC_CREAT | 0o600)
        assert self.shmid != -1, f"shmget: {os.strerror(L.get_errno())}"
        address = L.shmat(self.shmid, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            err = L.get_errno()
            L.shmctl(self.shmid, L.IPC_RMID, None)
            raise AssertionError(f"shmat: {os.strerror(err)}")
        self.address = address

    def remove(self) -> None:
        L.shmctl(self.shmid, L.IPC_RMID, None)
        L.shmdt(self.address)


@pytest.fixture
def segment():
    """A fresh segment, removed after the test (attachable by id until then)."""
    seg = _Segment()
    yield seg
    seg.remove()


class _Holders:
    """Forked children and the pipes they report through; whatever is still running
    at the end of the test is killed and reaped, every pipe closed."""

    def __init__(self):
        self.pids = set()
        self.fds = []

    def pipe(self):
        r, w = os.pipe()
        self.fds += [r, w]
        return r, w

    def fork(self, child) -> int:
        """Run ``child()`` in a fork child (exit status 0 when it returns, 70 when it
        raises); its pid."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 70
            try:
                child()
                code = 0
            except BaseException:  # noqa: BLE001 - reported through the exit status
                traceback.print_exc()
            finally:
                os._exit(code)
        self.pids.add(pid)
        return pid

    def reap(self, pid: int, timeout: float = WAIT) -> int:
        """The exit code of *pid* (negative: the signal that ended it), within *timeout*
        seconds; a child still running then is killed and the test fails."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll(pid)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self.pids.discard(pid)
                raise AssertionError(f"watchdog: child {pid} still running after {timeout}s")
            time.sleep(0.005)

    def poll(self, pid: int):
        """The exit code of *pid* if it has ended (it is reaped then), else None."""
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            return None
        self.pids.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def kill(self, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        return self.reap(pid)

    def close(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def holders():
    h = _Holders()
    yield h
    h.close()


def _read_byte(fd: int, timeout: float = WAIT) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"watchdog: no report from the child within {timeout}s"
    return os.read(fd, 1)


def _hold_and_report(mutex: RobustMutex, fd: int):
    """A child body: lock, say so on *fd*, hold (until killed; at most HOLD seconds)."""
    def child():
        assert mutex.acquire() is False
        os.write(fd, b"L")
        time.sleep(HOLD)
    return child


# The three ways to take the lock, which must all report the same outcome.
_TAKES = {"acquire": lambda m: m.acquire(),
          "acquire_with_deadline": lambda m: m.acquire(time.monotonic() + WAIT),
          "try_acquire": lambda m: m.try_acquire()}


def _run_python(code: str, timeout: float = 3 * WAIT) -> subprocess.CompletedProcess:
    """*code* run by a fresh interpreter that imports this checkout of mpsysv."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + path if path else ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _catch(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


# ---------------------------------------------------------------------------------------
# layout and one thread


_C_PROBE = r"""
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <linux/futex.h>
int main(void) {
    printf("size %zu\n", sizeof(pthread_mutex_t));
    printf("align %zu\n", _Alignof(pthread_mutex_t));
    printf("lock_offset %zu\n", offsetof(pthread_mutex_t, __data.__lock));
    printf("attr_size %zu\n", sizeof(pthread_mutexattr_t));
    printf("PTHREAD_MUTEX_ERRORCHECK %d\n", (int)PTHREAD_MUTEX_ERRORCHECK);
    printf("PTHREAD_PROCESS_SHARED %d\n", (int)PTHREAD_PROCESS_SHARED);
    printf("PTHREAD_MUTEX_ROBUST %d\n", (int)PTHREAD_MUTEX_ROBUST);
    printf("FUTEX_TID_MASK %ld\n", (long)FUTEX_TID_MASK);
    printf("FUTEX_WAITERS %ld\n", (long)FUTEX_WAITERS);
    printf("EOWNERDEAD %d\n", EOWNERDEAD);
    printf("ENOTRECOVERABLE %d\n", ENOTRECOVERABLE);
    return 0;
}
"""


def test_mutex_size_and_constants_match_the_c_headers_where_a_compiler_is_installed(
        tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    src, exe = tmp_path / "mutex_probe.c", tmp_path / "mutex_probe"
    src.write_text(_C_PROBE)
    built = subprocess.run([cc, "-o", str(exe), str(src)], check=False, capture_output=True,
                           text=True, timeout=60)
    assert built.returncode == 0, f"the C probe did not compile:\n{built.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=30)
    c = {name: int(value) for name, value in (line.split() for line in out.stdout.splitlines())}
    assert c["size"] == MUTEX_SIZE
    assert c["size"] <= MUTEX_SLOT and MUTEX_SLOT % c["align"] == 0
    assert c["align"] <= 8  # RobustMutex asks for 8-byte alignment
    assert c["lock_offset"] == 0  # free() reads the first word
    assert c["attr_size"] <= L.PTHREAD_MUTEXATTR_SIZE
    for name in ("PTHREAD_MUTEX_ERRORCHECK", "PTHREAD_PROCESS_SHARED", "PTHREAD_MUTEX_ROBUST"):
        assert getattr(L, name) == c[name], name
    assert (FUTEX_TID_MASK, FUTEX_WAITERS) == (c["FUTEX_TID_MASK"], c["FUTEX_WAITERS"])
    assert (errno.EOWNERDEAD, errno.ENOTRECOVERABLE) == (c["EOWNERDEAD"], c["ENOTRECOVERABLE"])


def test_uncontended_acquire_reports_no_dead_owner_and_writes_this_thread_into_the_lock_word(
        segment):
    m = _fresh(segment.address)
    assert m.free() and _owner(m) == 0
    assert m.acquire() is False
    assert _owner(m) == threading.get_native_id()
    assert not m.free()
    m.release()
    assert m.free() and _owner(m) == 0


def test_try_acquire_takes_a_free_mutex_and_returns_none_while_another_thread_holds_it(
        segment):
    m = _fresh(segment.address)
    assert m.try_acquire() is False
    seen = []
    t = threading.Thread(target=lambda: seen.append(m.try_acquire()), daemon=True)
    t.start()
    t.join(WAIT)
    assert seen == [None]
    m.release()


def test_acquiring_again_in_the_holding_thread_raises_runtime_error_instead_of_deadlocking(
        segment):
    m = _fresh(segment.address, "the twice-taken mutex")
    m.acquire()
    for take in _TAKES.values():
        with pytest.raises(RuntimeError, match="the twice-taken mutex is already held by this"):
            take(m)
    m.release()
    assert m.free()


def test_release_by_a_thread_that_does_not_hold_it_raises_permission_error(segment):
    m = _fresh(segment.address, "the borrowed mutex")
    assert isinstance(_catch(m.release), PermissionError)  # nobody holds it
    m.acquire()
    errors = []
    t = threading.Thread(target=lambda: errors.append(_catch(m.release)), daemon=True)
    t.start()
    t.join(WAIT)
    assert isinstance(errors[0], PermissionError)
    assert errors[0].errno == errno.EPERM
    assert "pthread_mutex_unlock" in str(errors[0]) and "the borrowed mutex" in str(errors[0])
    assert _owner(m) == threading.get_native_id()  # still ours
    m.release()


def test_unaligned_address_is_refused_with_value_error():
    with pytest.raises(ValueError, match="not 8-byte aligned"):
        RobustMutex(4097)


# ---------------------------------------------------------------------------------------
# a holder's death, every way


@pytest.mark.parametrize("take", list(_TAKES))
def test_holder_killed_with_sigkill_leaves_the_lock_to_the_next_locker_as_owner_died(
        segment, holders, take):
    m = _fresh(segment.address)
    r, w = holders.pipe()
    pid = holders.fork(_hold_and_report(m, w))
    assert _read_byte(r) == b"L"
    assert not m.free() and _owner(m) == pid
    assert holders.kill(pid) == -signal.SIGKILL
    assert m.free()  # the kernel cleared the owner and set OWNER_DIED
    assert _TAKES[take](m) is True
    m.consistent()
    m.release()
    assert m.acquire() is False  # usable as before
    m.release()


@pytest.mark.parametrize("deadline", [None, WAIT], ids=["forever", "until_a_deadline"])
def test_a_waiter_blocked_in_acquire_wakes_with_owner_died_and_other_threads_run_meanwhile(
        segment, holders, deadline):
    m = _fresh(segment.address)
    r, w = holders.pipe()
    pid = holders.fork(_hold_and_report(m, w))
    assert _read_byte(r) == b"L"
    result, ticks, stop = [], [0], threading.Event()

    def ticker():  # it makes progress only while the blocked acquire() lets go of the GIL
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    def waiter():
        died = m.acquire(None if deadline is None else time.monotonic() + deadline)
        result.append(died)
        if died:
            m.consistent()
            m.release()

    threads = [threading.Thread(target=ticker, daemon=True),
               threading.Thread(target=waiter, daemon=True)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: _has_waiters(m), WAIT), "the waiter never blocked"
        before = ticks[0]
        assert wait_until(lambda: ticks[0] >= before + 5, WAIT), "the other thread stood still"
        assert not result
        assert holders.kill(pid) == -signal.SIGKILL
        threads[1].join(WAIT)
        assert result == [True]
    finally:
        stop.set()
        threads[0].join(WAIT)
    assert m.acquire() is False
    m.release()


def _abandon(m: RobustMutex, holders: "_Holders") -> None:
    """Leave *m* not recoverable: a child dies holding it, this thread takes it with
    "owner died" and releases it without consistent()."""
    def child():
        m.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    assert holders.reap(holders.fork(child)) == -signal.SIGKILL
    assert m.acquire() is True
    m.release()


@pytest.mark.parametrize("take", list(_TAKES))
def test_release_without_consistent_makes_the_mutex_unrecoverable_until_it_is_initialised(
        segment, holders, take):
    m = _fresh(segment.address, "the abandoned mutex")
    _abandon(m, holders)
    with pytest.raises(OSError, match="the abandoned mutex is not recoverable") as caught:
        _TAKES[take](m)
    assert caught.value.errno == errno.ENOTRECOVERABLE
    m.init()  # the only way back
    assert m.acquire() is False
    m.release()


@pytest.mark.xfail(strict=True, raises=(AssertionError, RuntimeError), reason=(
    "glibc 2.36's pthread_mutex_trylock, acquire()'s first step, returns ENOTRECOVERABLE "
    "but leaves the lock word holding the caller's thread id (outside its robust list): "
    "this thread then gets RuntimeError, every other locker waits for ever"))
def test_an_unrecoverable_mutex_refuses_every_later_locker_too(segment, holders):
    m = _fresh(segment.address, "the abandoned mutex")
    _abandon(m, holders)
    with pytest.raises(OSError):
        m.acquire()
    seen = []
    t = threading.Thread(target=lambda: seen.append(_catch(lambda: m.acquire(
        time.monotonic() + 0.5))), daemon=True)
    t.start()
    t.join(WAIT)
    try:
        assert isinstance(seen[0], OSError) and seen[0].errno == errno.ENOTRECOVERABLE, seen
        with pytest.raises(OSError, match="not recoverable"):
            m.acquire()
    finally:
        m.init()


def test_owner_died_reaches_a_locker_that_maps_the_segment_at_another_address(segment):
    m = _fresh(segment.address + MUTEX_SLOT)
    out = _run_python(f"""
        import os, signal
        from mpsysv._ipc import libc as L
        from mpsysv._ipc.mutex import MUTEX_SLOT, RobustMutex
        L.shmat({segment.shmid}, None, 0)  # so that the second mapping lies elsewhere
        address = L.shmat({segment.shmid}, None, 0)
        assert RobustMutex(address + MUTEX_SLOT).acquire() is False
        print(address, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert int(out.stdout) != segment.address  # really another address
    assert m.acquire() is True
    m.consistent()
    m.release()


def test_holder_that_execs_leaves_the_lock_as_owner_died(segment, holders):
    m = _fresh(segment.address)

    def child():
        m.acquire()
        os.execv("/bin/true", ["true"])

    assert holders.reap(holders.fork(child)) == 0
    assert m.acquire() is True
    m.consistent()
    m.release()


def test_thread_that_ends_holding_the_lock_leaves_it_as_owner_died_in_its_own_process(segment):
    m = _fresh(segment.address)
    t = threading.Thread(target=m.acquire, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive()
    assert m.acquire() is True
    m.consistent()
    m.release()


def test_fork_child_of_a_holder_sees_the_lock_busy_cannot_release_it_and_frees_nothing_at_exit(
        segment, holders):
    m = _fresh(segment.address)
    m.acquire()
    r, w = holders.pipe()

    def child():
        busy = m.try_acquire() is None and m.acquire(time.monotonic() + 0.05) is None
        denied = isinstance(_catch(m.release), PermissionError)
        os.write(w, b"1" if busy and denied else b"0")

    pid = holders.fork(child)
    assert _read_byte(r) == b"1"
    assert holders.reap(pid) == 0
    assert _owner(m) == threading.get_native_id()  # still ours, not marked owner-dead
    m.release()
    assert m.acquire() is False
    m.release()


def test_stopped_holder_is_waited_for_and_a_timed_acquire_returns_none(segment, holders):
    m = _fresh(segment.address)
    r, w = holders.pipe()
    r2, w2 = holders.pipe()

    def child():
        m.acquire()
        os.write(w, b"L")
        assert _read_byte(r2, HOLD) == b"g"
        m.release()

    pid = holders.fork(child)
    assert _read_byte(r) == b"L"
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        assert m.acquire(start + 0.2) is None
        assert time.monotonic() - start >= 0.19
        assert m.acquire(time.monotonic() - 1.0) is None  # a passed deadline: no wait
        assert m.try_acquire() is None
        assert _owner(m) == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    os.write(w2, b"g")
    assert m.acquire(time.monotonic() + WAIT) is False
    m.release()
    assert holders.reap(pid) == 0


def test_holders_killed_at_varying_moments_over_many_rounds_never_lose_an_update(
        segment, holders):
    """Two counters, bumped one after the other under the lock by a child and by this
    process in turn, the child killed at a different moment each round. A holder that got
    the lock without "owner died" always finds them equal and never smaller than what
    this process last wrote; a half-done bump is seen only together with owner-died,
    and is finished by the repair."""
    m = _fresh(segment.address)
    counts = (ctypes.c_int64 * 2).from_address(segment.address + MUTEX_SLOT)

    def child():
        end = time.monotonic() + HOLD
        while time.monotonic() < end:
            m.acquire()
            counts[0] += 1
            for _ in range(100):  # widen the half-done window
                pass
            counts[1] += 1
            m.release()

    last_written = half_done = 0
    for round_ in range(20):
        pid = holders.fork(child)
        assert wait_until(lambda start=last_written: counts[1] > start, WAIT), \
            "the child never got going"
        killer = threading.Timer(0.005 + 0.002 * (round_ % 8), os.kill, (pid, signal.SIGKILL))
        killer.start()
        try:
            status = None
            while status is None:
                status = holders.poll(pid)
                died = m.acquire(time.monotonic() + WAIT)
                assert died is not None, "watchdog: the lock was never handed on"
                if died:
                    assert counts[0] - counts[1] in (0, 1)
                    half_done += counts[0] - counts[1]
                    counts[1] = counts[0]  # the repair: finish the dead holder's bump
                    m.consistent()
                assert counts[0] == counts[1] >= last_written
                counts[0] += 1
                counts[1] += 1
                last_written = counts[1]
                m.release()
                time.sleep(0.0002)
        finally:
            killer.join(WAIT)
        assert status == -signal.SIGKILL
        assert m.acquire(time.monotonic() + WAIT) is False  # everything was repaired
        m.release()
    assert half_done, "no kill landed inside a bump: the repair was never exercised"


# ---------------------------------------------------------------------------------------
# the rule: never detach a segment while holding a mutex in it


def test_locking_another_robust_mutex_after_detaching_a_held_one_crashes_the_process():
    """glibc links a thread's held robust mutexes into a list through the mutexes
    themselves: the next lock writes into the detached one. (Why nothing in mpsysv may
    shmdt a segment while it holds a mutex in it.)"""
    out = _run_python("""
        import ctypes
        from mpsysv._ipc import libc as L
        from mpsysv._ipc.mutex import MUTEX_SLOT, RobustMutex
        shmid = L.shmget(L.IPC_PRIVATE, 4096, L.IPC_CREAT | 0o600)
        address = L.shmat(shmid, None, 0)
        L.shmctl(shmid, L.IPC_RMID, None)
        held = RobustMutex(address)
        held.init()
        assert held.acquire() is False
        L.shmdt(address)
        buf = ctypes.create_string_buffer(2 * MUTEX_SLOT)
        other = RobustMutex(ctypes.addressof(buf) + -ctypes.addressof(buf) % 8)
        other.init()
        print("locking", flush=True)
        other.acquire()
        print("survived", flush=True)
    """)
    assert out.stdout.split() == ["locking"], out.stderr
    assert out.returncode == -signal.SIGSEGV


def test_detaching_a_held_mutex_stops_the_kernel_from_freeing_locks_taken_before_it(segment):
    """The kernel walks a dying thread's list of held robust mutexes from the newest;
    a detached entry ends the walk, so an older lock stays with the dead thread for
    good (nobody gets "owner died"; only init() brings it back)."""
    older = _fresh(segment.address)
    out = _run_python(f"""
        import os, signal
        from mpsysv._ipc import libc as L
        from mpsysv._ipc.mutex import RobustMutex
        shmid = L.shmget(L.IPC_PRIVATE, 4096, L.IPC_CREAT | 0o600)
        address = L.shmat(shmid, None, 0)
        L.shmctl(shmid, L.IPC_RMID, None)
        newer = RobustMutex(address)
        newer.init()
        older = RobustMutex(L.shmat({segment.shmid}, None, 0))
        assert older.acquire() is False
        assert newer.acquire() is False  # the list is now: newer -> older
        L.shmdt(address)
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert _owner(older) == int(out.stdout)  # never marked owner-dead: the dead pid keeps it
    assert not older.free()
    assert older.acquire(time.monotonic() + 0.1) is None
    older.init()  # (what a repair would have to do: make it anew)
    assert older.acquire() is False
    older.release()
