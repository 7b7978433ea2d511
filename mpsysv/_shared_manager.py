"""SharedMemoryManager without a server process: segments named with the manager's
prefix, all unlinked at its shutdown by the process that started it.

Public path: ``mpsysv.shared`` (pickles name it there).
"""

from __future__ import annotations

import os
import weakref
from typing import Iterable, Optional

from ._ipc import libc as L
from ._ipc.names import random_name
from ._ipc.objects import Segment
from ._shareable_list import ShareableList
from ._shared_memory import SharedMemory
from ._shm.trailer import TRAILER_SIZE, live_segments, parse_identity, read_trailer
from ._shm.tracker import announcement, withdraw

__all__ = ["SharedMemoryManager"]

class SharedMemoryManager:
    """Creates SharedMemory and ShareableList segments and unlinks them all at shutdown.

    The stdlib's is a BaseManager with a server process; this one needs none. Its
    segments are named with a prefix unique to the manager, and ``shutdown()`` (or
    the end of the ``with`` block, or the program's end) unlinks every segment that
    carries it, wherever it was created: here, in fork children, or in processes that
    received the manager by pickling. Only the process that started it unlinks.
    """

    def __init__(self) -> None:
        """Create a manager; ``start()`` (or ``with``) makes it ready to create blocks."""
        self._prefix: Optional[str] = None
        self._owner = 0
        self._finalizer: Optional[weakref.finalize] = None  # type: ignore[type-arg]

    def start(self) -> None:
        """Start the manager in this process (no server process is needed); raises
        ``ValueError`` if it was started already."""
        if self._prefix is not None:
            raise ValueError("SharedMemoryManager is already started")
        self._prefix = random_name("mpsysvmgr-") + "-"
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, _unlink_group, self._prefix, self._owner)

    def shutdown(self) -> None:
        """Unlink every segment made through this manager (processes that have them
        attached keep their mapping); a no-op in other processes."""
        if self._finalizer is not None:
            self._finalizer()
        self._prefix = self._finalizer = None

    def SharedMemory(self, size: int) -> SharedMemory:
        """A new SharedMemory of *size* bytes, unlinked at shutdown."""
        return SharedMemory(self._new_name(), create=True, size=size)

    def ShareableList(self, sequence: Optional[Iterable] = None) -> ShareableList:
        """A new ShareableList holding *sequence*, unlinked at shutdown."""
        return ShareableList(() if sequence is None else sequence, name=self._new_name())

    def __enter__(self) -> "SharedMemoryManager":
        if self._prefix is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __reduce__(self):
        return _rebuild_manager, (self._prefix,)

    def __repr__(self) -> str:
        state = "not started" if self._prefix is None else f"prefix={self._prefix!r}"
        return f"{type(self).__name__}({state})"

    def _new_name(self) -> str:
        if self._prefix is None:
            raise ValueError("SharedMemoryManager is not started: call start() or use it in "
                             "a with statement")
        return random_name(self._prefix)


def _rebuild_manager(prefix):
    manager = SharedMemoryManager()
    manager._prefix = prefix
    return manager


def _unlink_group(prefix: str, owner: int) -> None:
    if os.getpid() != owner:
        return
    uid = os.geteuid()
    for key, ident, cuid, size in live_segments():
        if key == L.IPC_PRIVATE or cuid != uid or size < TRAILER_SIZE:
            continue
        try:
            segment = Segment(id=ident)
            raw = read_trailer(segment)
            identity = parse_identity(raw) if raw is not None else None
            if identity is not None and identity.name.startswith(prefix):
                segment.remove()
                withdraw(announcement(key, identity.creator_pid, identity.ctime_ns,
                                      identity.name))
        except OSError:
            pass
