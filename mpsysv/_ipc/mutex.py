"""Robust process-shared pthread mutexes inside System V segments.

An uncontended acquire and release are two atomic operations in user space and no
system call (a SysV semaphore with ``SEM_UNDO`` costs one ``semop`` each way). Crash
safety is the same: when a holder dies -- SIGKILL included -- the kernel marks the
lock word and the next locker gets the lock with "owner died"; it repairs what the
holder left half done and marks the mutex consistent before releasing it.

Rules (glibc links a held robust mutex into its thread's list through the mutex
itself): never unmap a segment while this thread holds a mutex in it; release from
the acquiring thread; all processes share one PID namespace (the lock word holds the
owner's thread id, as the journal's liveness checks already assume).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import threading
import time
from typing import Optional

from . import libc as L
from .errors import raise_errno

__all__ = ["RobustMutex", "MUTEX_SIZE", "MUTEX_SLOT"]

# sizeof(pthread_mutex_t) in glibc on the architectures libc.py supports.
MUTEX_SIZE = {"x86_64": 40, "aarch64": 48}.get(platform.machine(), 48)
MUTEX_SLOT = 64  # what a layout sets aside for one (8-byte aligned)
_TID_MASK = 0x3FFFFFFF  # the owner's thread id in the lock word (linux/futex.h)


class RobustMutex:
    """The robust process-shared mutex at *address* (``MUTEX_SLOT`` bytes, 8-aligned, in
    memory shared by the processes that use it)."""

    __slots__ = ("address", "name", "_ptr", "_word")

    def __init__(self, address: int, name: str = "mutex"):
        if address % 8:
            raise ValueError(f"{name}: address {address:#x} is not 8-byte aligned")
        self.address = address
        self.name = name
        self._ptr = ctypes.c_void_p(address)
        self._word = ctypes.c_uint32.from_address(address)

    def init(self) -> None:
        """Make a fresh, unlocked mutex at the address (once, by the memory's creator,
        before any other process can see it)."""
        attr = ctypes.create_string_buffer(L.PTHREAD_MUTEXATTR_SIZE)
        self._check(L.pthread_mutexattr_init(attr), "pthread_mutexattr_init")
        try:
            for call, value in ((L.pthread_mutexattr_settype, L.PTHREAD_MUTEX_ERRORCHECK),
                                (L.pthread_mutexattr_setpshared, L.PTHREAD_PROCESS_SHARED),
                                (L.pthread_mutexattr_setrobust, L.PTHREAD_MUTEX_ROBUST)):
                self._check(call(attr, value), call.__name__)
            self._check(L.pthread_mutex_init(self._ptr, attr), "pthread_mutex_init")
        finally:
            L.pthread_mutexattr_destroy(attr)

    def acquire(self, deadline: Optional[float] = None) -> Optional[bool]:
        """Lock, waiting until *deadline* (``time.monotonic()`` scale; None: forever).

        False: locked. True: locked, and the previous holder died holding it -- repair
        what it guarded, then ``consistent()``. None: the deadline passed (a stopped
        holder is waited for like a live one)."""
        rc = L.pthread_mutex_trylock_fast(self._ptr)  # (the GIL stays held: no block)
        if rc == 0:
            return False
        if rc == errno.EBUSY:
            if deadline is None:
                rc = L.pthread_mutex_lock(self._ptr)
            else:
                ts = L.deadline_timespec(max(deadline, time.monotonic()))
                rc = L.pthread_mutex_clocklock(self._ptr, L.CLOCK_MONOTONIC, L.byref(ts))
                if rc == errno.ETIMEDOUT:
                    return None
            if rc == 0:
                return False
        if rc == errno.EOWNERDEAD:
            return True
        self._check(rc, "pthread_mutex_lock")
        return None  # pragma: no cover - _check raised

    def try_acquire(self) -> Optional[bool]:
        """Lock if nobody holds it, at once: as ``acquire()``, None when it is busy."""
        rc = L.pthread_mutex_trylock_fast(self._ptr)
        if rc == 0:
            return False
        if rc == errno.EBUSY:
            return None
        if rc == errno.EOWNERDEAD:
            return True
        self._check(rc, "pthread_mutex_trylock")
        return None  # pragma: no cover - _check raised

    def release(self) -> None:
        rc = L.pthread_mutex_unlock_fast(self._ptr)
        if rc:
            self._check(rc, "pthread_mutex_unlock")

    def consistent(self) -> None:
        """After ``acquire()`` returned True and the state is repaired: usable again."""
        self._check(L.pthread_mutex_consistent(self._ptr), "pthread_mutex_consistent")

    def free(self) -> bool:
        """Whether nobody holds it (or its holder died): a word read, no call."""
        return not self._word.value & _TID_MASK

    def _check(self, rc: int, call: str) -> None:
        if rc == errno.ENOTRECOVERABLE:
            raise OSError(rc, f"{call}: {self.name} is not recoverable: a holder died and the "
                              "next one let go of it without repairing; only init() (a new "
                              "queue) makes it usable again")
        if rc == errno.EDEADLK:
            raise RuntimeError(f"{call}: {self.name} is already held by this thread")
        if rc == errno.EPERM:
            raise PermissionError(rc, f"{call}: {self.name} is not held by this thread (held "
                                      f"by thread id {self._word.value & _TID_MASK or 'none'})")
        if rc:
            raise_errno(rc, call, self.name)


def _check_layout() -> None:
    """At import: a mutex stays inside MUTEX_SIZE bytes, and its first word holds the
    owner's thread id (what ``free()`` reads)."""
    raw = (ctypes.c_char * (MUTEX_SLOT + 64)).from_buffer_copy(b"\xa5" * (MUTEX_SLOT + 64))
    base = ctypes.addressof(raw)
    base += -base % 8
    mutex = RobustMutex(base, "layout probe")
    mutex.init()
    held = mutex.acquire()
    owner = mutex._word.value & _TID_MASK
    mutex.release()
    tail = ctypes.string_at(base + MUTEX_SIZE, 16)
    if held is not False or owner != threading.get_native_id() or not mutex.free() \
            or tail != b"\xa5" * 16:
        raise ImportError(f"mpsysv needs glibc's {MUTEX_SIZE}-byte pthread_mutex_t on "
                          f"{platform.machine()} (a robust mutex did not behave as expected)")


_check_layout()
