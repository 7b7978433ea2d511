"""The one way mpsysv maps a segment it hands out: a mapping owned by an ``mmap`` object.

An anonymous ``mmap.mmap`` reserves an address range and ``shmat(..., SHM_REMAP)`` puts
the segment over it, so the ``mmap`` object owns the mapping as it owns any other:

* every view (a ``memoryview`` slice, a NumPy array, a ctypes array ``from_buffer``)
  holds the ``mmap`` alive, through the buffer protocol or a reference to it;
* the segment is detached (``munmap``; its ``shm_nattch`` drops by one) in the
  ``mmap``'s dealloc, and only there: **the moment the last view is gone** is the
  moment the last reference to the owner goes, for reference counting and for the
  cyclic collector alike, after every ``__del__`` of a cycle that reads it has run;
* ``mmap.close()`` raises ``BufferError`` while an export lives (mpsysv never calls it).

Nothing here unmaps from a weakref callback or ``__del__``: the cyclic collector calls
those before the cycle's other ``__del__`` methods, which may still read the memory.
A weakref on the owner is at most a hint that the mapping is going; who needs to know
that the detach happened (a pool lending segments) reads ``shm_nattch``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from typing import NoReturn, Tuple

from . import libc as L
from .errors import raise_errno

__all__ = ["map_segment"]

_RESERVE = mmap.MAP_PRIVATE | L.MAP_NORESERVE  # address space only: no memory charged
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_REMAP = L.SHM_REMAP
_HUGE_PAGE = 0  # read from /proc/meminfo the first time a segment needs it
_new_mmap, _shmat, _addressof, _c_char_at = (mmap.mmap, L.shmat, ctypes.addressof,
                                              ctypes.c_char.from_buffer)


def map_segment(shmid: int, size: int, readonly: bool = False,
                name: str = "") -> Tuple[memoryview, int]:
    """Map segment *shmid* (*size*: its ``shm_segsz``) and return ``(view, address)``:
    *view* covers the segment's *size* bytes (read-only with *readonly*), its ``obj`` is
    the owning ``mmap``. Drop every view (and the owner) and the segment is detached.

    A failed ``shmat`` raises ``errors.raise_errno``'s exception (``PermissionError``,
    ``RemovedError``...) naming the segment by id, and by *name* when given.
    """
    if readonly:
        owner = _new_mmap(-1, size, _RESERVE, mmap.PROT_READ)
        address = L.buffer_address(owner)
        flags = L.SHM_REMAP | L.SHM_RDONLY
    else:
        owner = _new_mmap(-1, size, _RESERVE, _PROT_RW)
        address = _addressof(_c_char_at(owner))  # a quarter of buffer_address's cost
        flags = _REMAP
    if _shmat(shmid, address, flags) == address:
        return memoryview(owner), address
    err = L.get_errno()
    owner.close()
    if err == errno.EINVAL:
        # A huge-page segment maps only at an address aligned to its page size.
        return _map_aligned(shmid, size, flags, readonly, name)
    _fail(err, shmid, name)


def _fail(err: int, shmid: int, name: str) -> NoReturn:
    raise_errno(err, "shmat", f"shared memory {name!r} (id={shmid})" if name
                else f"shared memory segment id={shmid}",
                "invalid identifier" if err == errno.EINVAL else "")


def _map_aligned(shmid: int, size: int, flags: int, readonly: bool, name: str):
    global _HUGE_PAGE
    if not _HUGE_PAGE:
        _HUGE_PAGE = _huge_page_size()
    huge = _HUGE_PAGE
    span = -(-size // huge) * huge + huge
    owner = mmap.mmap(-1, span, _RESERVE, mmap.PROT_READ if readonly else _PROT_RW)
    start = L.buffer_address(owner)
    address = -(-start // huge) * huge
    if L.shmat(shmid, address, flags) != address:
        err = L.get_errno()
        owner.close()
        _fail(err, shmid, name)
    offset = address - start
    return memoryview(owner)[offset:offset + size], address


def _huge_page_size() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 2 << 20
