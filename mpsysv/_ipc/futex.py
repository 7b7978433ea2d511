"""Process-shared POSIX semaphores living inside a SysV segment.

A futex-based counter: post and an uncontended wait never enter the kernel, which
keeps them off the queue's hot path, and values go up to 2**31-1 (a SysV semaphore
stops at 32767). They have no undo: mpsysv uses them only for counts whose owner
can be re-derived, never for locks.
"""

from __future__ import annotations

import errno
from typing import Optional

from . import libc as L
from .errors import raise_errno

__all__ = ["PosixSemaphore"]


# post and trywait never block: they keep the GIL (no hand-off to another thread).
_sem_post, _sem_trywait = L.sem_post_fast, L.sem_trywait_fast


class PosixSemaphore:
    """The ``sem_t`` at *address* (32 bytes inside an attached segment)."""

    __slots__ = ("address", "_name", "_ptr")

    def __init__(self, address: int, name: str = "semaphore"):
        self.address = address
        self._name = name
        self._ptr = L.ctypes.c_void_p(address)  # (for the calls that keep the GIL)

    def init(self, value: int = 0) -> None:
        if L.sem_init(self.address, 1, value) == -1:
            raise_errno(L.get_errno(), "sem_init", self._name)

    def post(self) -> None:
        if _sem_post(self._ptr) == -1:
            err = L.get_errno()
            if err == errno.EOVERFLOW:
                raise OverflowError(f"{self._name}: count would exceed {L.SEM_VALUE_MAX}")
            raise_errno(err, "sem_post", self._name)

    def try_acquire(self) -> bool:
        """Decrement if positive, at once; False when the count is zero."""
        while _sem_trywait(self._ptr) == -1:
            err = L.get_errno()
            if err == errno.EAGAIN:
                return False
            if err != errno.EINTR:
                raise_errno(err, "sem_trywait", self._name)
        return True

    def acquire(self, deadline: Optional[float] = None) -> bool:
        """Decrement, waiting until *deadline* (``time.monotonic()`` scale, None: forever).

        Signals do not shorten the wait (PEP 475); False when the deadline passed.
        """
        if deadline is None:
            while L.sem_wait(self.address) == -1:
                err = L.get_errno()
                if err != errno.EINTR:
                    raise_errno(err, "sem_wait", self._name)
            return True
        ts = L.deadline_timespec(deadline)
        ref = L.byref(ts)
        while L.sem_clockwait(self.address, L.CLOCK_MONOTONIC, ref) == -1:
            err = L.get_errno()
            if err == errno.ETIMEDOUT:
                return False
            if err != errno.EINTR:
                raise_errno(err, "sem_clockwait", self._name)
        return True

    @property
    def value(self) -> int:
        out = L.c_int()
        L.sem_getvalue(self.address, L.byref(out))
        return out.value


def _count_word_is_first() -> bool:
    """glibc keeps a sem_t's count in its first 32-bit word (64-bit ABIs); mpsysv reads
    it directly on the hot path, so check that once."""
    raw = (L.ctypes.c_char * L.SEM_T_SIZE)()
    sem = PosixSemaphore(L.addressof(raw))
    sem.init(5)
    ok = memoryview(raw).cast("B")[:4].cast("I")[0] == 5 == sem.value
    sem.post()
    return ok and memoryview(raw).cast("B")[:4].cast("I")[0] == 6


if not _count_word_is_first():  # pragma: no cover - other C libraries
    raise ImportError("mpsysv needs glibc's sem_t layout (count in the first word)")
