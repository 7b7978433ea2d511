"""The message channel of one queue: objects in and out of its kernel queues.

A ``Channel`` is the queue's kernel objects (``QueueObjects``) attached in this
process, with three components: ``Counts`` (slots, tasks, the join gate and their
repairs), ``Streams`` (objects larger than one message) and ``ParcelTable`` (large
objects in segments of their own). It sends and receives one object's message,
wakes the getters and feeders sleeping on futex counters, answers ``qsize`` and lets
go of the queue. Pickling, buffering and the stdlib API live in ``queues``; the
garbage-collection policy lives with the API too.
"""

from __future__ import annotations

import ctypes
import errno
import threading
import time
import warnings
from typing import Callable, Optional

from .._ipc import libc as L
from . import wire as _wire
from .counts import Counts
from .journal import Journal
from .layout import (_REMOVED_OFF, _EXTRA, _EXTRA_OFF, KIND_JOINABLE, ROOM_WAITERS, ROOM_WAKEUPS,
                     SEM_HOLDERS, TIMED_WAITERS, TIMED_WAKEUPS, TYPED_WAITERS)
from .objects import NoCopy, QueueObjects, attach_view
from .parcels import ParcelTable, remove_listed
from .streams import _SLICE, Streams

__all__ = ["Channel", "Batch"]

_ROOM_BATCH = 1024  # bytes a getter frees before it wakes a feeder waiting for room

_E = errno
_EINTR = errno.EINTR
_get_errno = L.get_errno
_msgrcv = L.msgrcv_fast
_ANY = ctypes.c_long(0)
_NOWAIT = L.IPC_NOWAIT
_PICKLE_MARK = _wire.PICKLE_MARK
_NUDGE, _NUDGE_MTYPE = _wire.NUDGE, _wire.NUDGE_MTYPE
# First bytes of the messages that each hold one object's slot of a bounded queue.
_ONE_OBJECT = frozenset((_wire.PICKLE_MARK, _wire.HEAD, _wire.PARCEL, _wire.BATCH))


class _Buffers:
    """A pool of receive buffers (mtype + msgmax bytes), one per concurrent caller:
    take one with ``free.pop() if free else new()``, give it back to ``free``."""

    __slots__ = ("size", "free")

    def __init__(self, msgmax: int):
        self.size = msgmax
        self.free: list = []

    def new(self):
        raw = (ctypes.c_char * (8 + self.size))()
        return raw, ctypes.c_long.from_buffer(raw), memoryview(raw).cast("B")


class Channel(QueueObjects):
    """One queue's kernel objects, attached in this process, and its components."""

    def __init__(self, ctl_id: int, address: int):
        super().__init__(ctl_id, address)
        self._freed = 0
        self._bufs = _Buffers(self.msgmax)
        self._c_msgmax = ctypes.c_size_t(self.msgmax)
        self.journal = Journal(self._view)
        # Bounded and joinable queues count before they send: those counts are journaled.
        self.counted = self.kind == KIND_JOINABLE or self.maxsize > 0
        self.counts = Counts(self, self._view, self.journal)
        self.streams = Streams(self, self._view, self.journal)
        self.parcels = ParcelTable(self._view, ctl_id, self.mode, self.journal, self)
        self._released = False

    # -- what the parcel table needs (parcels.ParcelHost) --------------------------------

    def state_locked(self):
        return self.counts.state_locked()

    def journal_entry(self) -> Optional[int]:
        return self.counts.journal_entry()

    def queued_parcels(self) -> Optional[set]:
        """``(slot, segment id)`` of every parcel message in the main queue; None when
        the kernel cannot tell."""
        found = set()
        try:
            for msg in self.queued_messages():
                if len(msg) and msg[0] == _wire.PARCEL:
                    try:
                        found.add(_wire.parse_parcel(msg)[:2])
                    except _wire.WireError:
                        pass
        except NoCopy:
            return None
        return found

    # -- sending ---------------------------------------------------------------------

    def send_waiting(self, payload, mtype: int) -> None:
        """Send a one-message object, waiting inside msgsnd while the queue is full:
        the kernel wakes the sender as soon as a getter makes room for it (no
        counter, no slice). Only for an uncounted queue's object whose buffer is empty."""
        self.try_send(payload, mtype, None, 0)

    def _wake_room(self) -> None:
        """A message left the queue: wake the feeders that wait for room."""
        room = self.sems[ROOM_WAKEUPS]
        for _ in range(max(self._room_waiters_word[0] - self._room_wakeups_word[0], 0)):
            room.post()

    def _found_empty(self) -> None:
        """A getter found nothing to take. Room is announced per ``_ROOM_BATCH`` freed
        bytes; a queue drained by less than that (or by several getters, each below it)
        would leave a feeder asleep beside an empty queue until its slice ran out: an
        empty queue has room for any message, so wake the feeders now."""
        if self._room_waiters_word[0]:
            self._freed = 0
            self._wake_room()

    def may_have_room(self) -> bool:
        """True when a getter made room since a feeder started waiting for it (a word
        read, no call): worth a non-blocking send."""
        return self._room_wakeups_word[0] > 0

    def room_wait(self) -> "_RoomWait":
        """``with chan.room_wait() as wait: while not sent(): wait.sleep()``.

        The feeder waits here on a futex instead of inside msgsnd, so it holds no
        lock while asleep and the putting thread can keep flushing in between.
        """
        return _RoomWait(self)

    def buffered_sent(self, payload) -> None:
        """The feeder handed *payload* to the kernel: what it stood for is in the queue."""
        if payload[0] == _wire.PARCEL:
            self.parcels.handed(payload)
        if self.counted:
            self.journal.sent(1 if self.kind == KIND_JOINABLE else 0,
                              1 if self.maxsize > 0 and len(payload) <= self.msgmax else 0)

    # -- receiving -------------------------------------------------------------------

    def receive(self, loads: Callable, mtype: int = 0, block: bool = True,
                deadline: Optional[float] = None):
        """The next object, decoded by *loads*; raises ``_Empty`` when none came in time.

        A getter of a counted queue is in its journal window (``counts.Window``) from
        before its ``msgrcv`` until the object is counted out (slot back, task held),
        asleep inside ``msgrcv`` too: a repair that needs the windows closed sends it a
        nudge. Getters that wait with a timeout or for one mtype sleep on a futex
        instead (``_wait_main``), out of their window."""
        free = self._bufs.free
        window = self.counts.window if self.counted else None
        # msgrcv has no timeout; of a counted queue's getters only those of any type
        # take a nudge (an uncounted queue's getters sleep in msgrcv for any type).
        in_kernel = block and deadline is None and (mtype == 0 or window is None)
        while True:
            moving = window.open() if window is not None else None
            got = 0  # objects taken out of the queue for the caller (a task each)
            try:
                item = free.pop() if free else self._bufs.new()
                try:
                    # The first attempt inline: the hot path is this one call. It
                    # does not sleep while a feeder waits for room: a getter that
                    # finds the queue empty wakes it first (_found_empty).
                    n = _msgrcv(self.main_qid, item[0], self._c_msgmax,
                                _ANY if mtype == 0 else ctypes.c_long(mtype),
                                0 if in_kernel and not self._room_waiters_word[0] else _NOWAIT)
                    if n < 0:
                        n = self._recv_again(item[0], mtype, block, deadline, moving,
                                             in_kernel)
                    if self._room_waiters_word[0]:
                        # A feeder sleeps until there is room; wake it once enough was
                        # freed (each wake-up costs both sides a syscall).
                        self._freed += n if n > 16 else 16
                        if self._freed >= _ROOM_BATCH:
                            self._freed = 0
                            self._wake_room()
                    view = item[2]
                    first = view[8] if n > 0 else -1
                    if self.maxsize > 0 and first in _ONE_OBJECT:
                        # (a batch releases its other objects' slots in _take_batch)
                        self.counts.slot_freed()
                    if first == _PICKLE_MARK:
                        got = 1  # (a pickle that fails to load was taken all the same)
                        return loads(view[8:8 + n])
                    if first == _NUDGE and n == 1 and item[1].value == _NUDGE_MTYPE:
                        continue  # (a repair wants the window closed: see Counts)
                    if first == _wire.BATCH:
                        batch = self._take_batch(view[8:8 + n], loads, item[1].value)
                        got = len(batch)
                        return batch
                    head = view[8:8 + n].tobytes()
                finally:
                    free.append(item)
                if first == _wire.PARCEL:
                    try:
                        got = 1
                        return self.parcels.unwrap(head, loads)
                    except _wire.WireError as exc:
                        got = 0
                        warnings.warn(f"{self.what()}: dropped an object: {exc}",
                                      RuntimeWarning, stacklevel=3)
                else:
                    payload = self.streams.read(head)
                    if payload is not None:
                        got = 1
                        return loads(payload)
            finally:
                if window is not None:
                    window.close(moving, got if self.kind == KIND_JOINABLE else 0)
            if deadline is not None and time.monotonic() >= deadline:
                raise _Empty

    def _take_batch(self, msg, loads: Callable, mtype: int) -> "Batch":
        try:
            objs = loads(_wire.batch_pickle(msg))
            if type(objs) is not list or len(objs) < 2:
                raise _wire.WireError("a batch must hold a list of two or more objects")
        except _wire.WireError as exc:
            warnings.warn(f"{self.what()}: dropped a foreign message ({exc})", RuntimeWarning,
                          stacklevel=4)
            return Batch([], mtype)
        self.counts.add_extra(1 - len(objs))
        if self.maxsize > 0:
            self.counts.slots_freed(len(objs) - 1)
        return Batch(objs, mtype)

    def _recv_again(self, raw, mtype: int, block: bool, deadline: Optional[float],
                    moving: Optional[memoryview], in_kernel: bool) -> int:
        """After a failed first msgrcv: retry (EINTR), wait by *deadline*, or ``_Empty``."""
        err = _get_errno()
        if err != _E.ENOMSG and err != _EINTR:
            self.fail("msgrcv", err)
        if err == _E.ENOMSG:
            self._found_empty()
        if in_kernel or (block and deadline is None and moving is None):
            return self._recv_main(raw, mtype, True)
        n = self._recv_main(raw, mtype, False) if err == _EINTR else -1
        if n >= 0:
            return n
        if not block:
            raise _Empty
        return self._wait_main(raw, mtype, deadline, moving)

    def _recv_main(self, raw, mtype: int, block: bool) -> int:
        flags = 0 if block else L.IPC_NOWAIT
        ctype = _ANY if mtype == 0 else ctypes.c_long(mtype)
        while True:
            n = _msgrcv(self.main_qid, raw, self._c_msgmax, ctype, flags)
            if n >= 0:
                return n
            err = _get_errno()
            if err == _E.ENOMSG:
                self._found_empty()
                return -1
            if err != _E.EINTR:
                self.fail("msgrcv", err)

    def _wait_main(self, raw, mtype: int, deadline: Optional[float],
                   moving: Optional[memoryview]) -> int:
        """Wait in the kernel (a futex) for a message until *deadline* (None: forever);
        a getter is out of its window while it sleeps."""
        tw, wake = self.sems[TIMED_WAITERS], self.sems[TIMED_WAKEUPS]
        tws = self.sems[TYPED_WAITERS]
        window = self.counts.window
        if mtype:
            tws.post()
        tw.post()
        try:
            while True:
                n = self._recv_main(raw, mtype, False)
                if n >= 0:
                    return n
                try:
                    window.step_out(moving)
                    woke = self.wait(wake, deadline)
                finally:
                    window.step_in(moving)
                if not woke:
                    n = self._recv_main(raw, mtype, False)
                    if n >= 0:
                        return n
                    raise _Empty
        finally:
            tw.try_acquire()
            if mtype:
                tws.try_acquire()

    def qsize(self) -> int:
        return self.stat_main().msg_qnum + _EXTRA.unpack_from(self._view, _EXTRA_OFF)[0]

    # -- lifetime -------------------------------------------------------------------

    def release(self, detach: bool = True) -> bool:
        """Let go of the queue; the last holder of an anonymous queue removes it all.
        True when this handle let go of an anonymous queue that others still hold
        (if they are all killed, nobody is left to remove it: the caller arranges a
        garbage collection at exit).

        ``detach=False`` keeps the mapping (a thread of this exiting process may still
        be using it; the kernel unmaps it at exit).
        """
        others = False
        if not self._detached and self._view[_REMOVED_OFF]:
            # Removed from outside: nobody can take its parcels any more.
            self.parcels.remove_all()
        if not self._released and not self._detached:
            self.counts.fold_held()  # (before _drop_hold, which may detach under the lock)
            self._released = True
            others = self._drop_hold(detach)
        if detach:
            self.detach()
        return others

    def _drop_hold(self, detach: bool) -> bool:
        if self.named:
            return False
        try:
            self.lock(SEM_HOLDERS)
        except OSError:
            return False
        if self.holders() <= 1:
            self._remove_subs()
            return False
        # Detach before unlocking: two holders letting go at once must not each count
        # the other and both leave the queue behind.
        if detach:
            self.detach()
        self.unlock(SEM_HOLDERS)
        return True

    def _after_fork(self) -> None:
        """In a fork child: the inherited mapping counts as a holder of its own."""
        self._released = False
        self._sleepers = 0
        self._sleepers_lock = threading.Lock()
        self.streams.after_fork()
        self.journal.after_fork()

    def detach(self) -> None:
        if not self._detached:
            self._detached = True
            if not self._released:
                self.counts.fold_held()
            self.journal.release()
            if self._unmap():
                self.parcels.detach_all()

    def unlink(self) -> None:
        """Remove the queue's kernel objects now (a named queue's name is free at once)."""
        if self._detached:
            self._remove_parcels_detached()
        self._remove_subs()
        L.shmctl(self.ctl_id, L.IPC_RMID, None)

    def _remove_parcels_detached(self) -> None:
        """unlink() after close(): map the control segment once more for its parcel table."""
        try:
            address, view = attach_view(self.ctl_id)
        except OSError:
            return  # gone already, parcels with it (its last holder removed them)
        try:
            remove_listed(view)
        finally:
            view.release()
            L.shmdt(address)

    def _remove_subs(self) -> None:
        if not self._detached:
            self.parcels.remove_all()
        self._remove_objects()


class _RoomWait:
    """A feeder counted among those waiting for room while inside the ``with``."""

    __slots__ = ("chan",)

    def __init__(self, chan: Channel):
        self.chan = chan

    def __enter__(self) -> "_RoomWait":
        self.chan.sems[ROOM_WAITERS].post()
        return self

    def sleep(self) -> None:
        chan = self.chan
        chan.sleep_on(chan.sems[ROOM_WAKEUPS], time.monotonic() + _SLICE)

    def __exit__(self, *exc) -> None:
        self.chan.sems[ROOM_WAITERS].try_acquire()


class Batch(list):
    """The objects of one batch message, in order, with the message's type."""

    __slots__ = ("mtype",)

    def __init__(self, objs, mtype: int):
        super().__init__(objs)
        self.mtype = mtype


class _Empty(Exception):
    """Nothing arrived in time (queues.py turns it into ``queue.Empty``)."""
