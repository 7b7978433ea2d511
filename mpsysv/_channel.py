"""The kernel side of one mpsysv queue: four SysV objects and the protocol between them.

* a control segment (one page): identity, the other objects' ids, futex counters
  (timed waiters, bounded slots, unfinished tasks, stream flow), crash markers, the
  parcel table (_parcels) and the journal of what each process counted and has not
  sent yet (_journal); its attach count is the number of processes holding the queue;
* the main message queue: exactly one message per object (a whole pickle, or the
  head of a stream), so ``msg_qnum`` is the exact object count and user ``mtype``
  selection works as msgrcv(2) says;
* the stream queue: continuation frames of the one large object in flight (_streams);
* a semaphore set: the stream lock and the state lock (both ``SEM_UNDO``, so a
  killed holder releases them) and the join gate of a JoinableQueue.

The layout of the control segment is in _layout. This module moves bytes; pickling,
buffering and the stdlib API live in queues.py.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import os
import threading
import time
import warnings
import weakref
from typing import Callable, Optional

from . import _libc as L
from . import _names
from . import _wire
from ._journal import MOVE, Journal
from ._parcels import ParcelTable, _alive, remove_listed
from ._layout import (  # noqa: F401 - re-exported: _gc and _admin read the layout here
    _EXTRA, _EXTRA_OFF, _FLAG_NAMED, _HDR, _MARK, _MARK_OFF, _NAME_OFF, _READER,
    _FREEZE_OFF, _HELD_GONE, _HELD_GONE_OFF, _RECOUNT_OFF, _RECOVERED, _RECOVERED_OFF, _STATE,
    _STATE_MARK_OFF, _UNNOTED_OFF, AVAIL,
    CTL_SIZE, DONE, KIND_JOINABLE, KIND_NAMES, KIND_QUEUE, KIND_SIMPLE, MAGIC, MTYPE_MAX, ROOM,
    RW, SEM_GATE, SEM_OFFS, SEM_STATE, SEM_STREAM, SLOTS, SPACE, ST_ABANDONED, ST_HEAD, ST_IDLE,
    SW, SWAKE, TW, TWS, UNFINISHED, WAKE)
from ._psem import PosixSemaphore
from ._streams import _SLICE, StreamSide
from .primitives import segment_owner_and_mode

__all__ = ["Channel", "KIND_QUEUE", "KIND_SIMPLE", "KIND_JOINABLE", "MTYPE_MAX"]

_ROOM_BATCH = 1024  # bytes a getter frees before it wakes a feeder waiting for room
_ALIVE_CHECK = 1.0  # how often a futex wait checks that the queue was not removed
_REPAIR_EVERY = 0.05  # how often a putter that found no slot looks for dead processes' slots
_SLOT_CHECK = 0.1  # how often a putter waiting for a slot looks again
_FREEZE_WAIT = 0.05  # how long a repair waits for the windows open in live processes

_E = errno
_EAGAIN, _EINTR = errno.EAGAIN, errno.EINTR
_get_errno = L.get_errno
_msgsnd, _msgrcv, _size_arg = L.msgsnd_fast, L.msgrcv_fast, L.size_arg
_TYPE1 = (1).to_bytes(8, "little")
_ANY = ctypes.c_long(0)
_NOWAIT = L.IPC_NOWAIT
_PICKLE_MARK = _wire.PICKLE_MARK
# First bytes of the messages that each hold one object's slot of a bounded queue.
_ONE_OBJECT = frozenset((_wire.PICKLE_MARK, _wire.HEAD, _wire.PARCEL, _wire.BATCH))
_getpid = os.getpid
_collected = [False]


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


class Channel(StreamSide):
    """One queue's kernel objects, attached in this process."""

    def __init__(self, ctl_id: int, address: int):
        self.ctl_id = ctl_id
        self._address = address
        self._mem = (ctypes.c_char * CTL_SIZE).from_address(address)
        self._view = memoryview(self._mem).cast("B")
        (magic, version, kind, maxsize, creator, flags, created, main_qid, stream_qid, semid,
         msgmax) = _HDR.unpack_from(self._view)
        if magic != MAGIC:
            raise ValueError(f"segment id={ctl_id} is not an mpsysv queue (bad magic {magic!r})")
        self.kind, self.maxsize, self.creator, self.created = kind, maxsize, creator, created
        self.named = bool(flags & _FLAG_NAMED)
        self.mode = (flags >> 8) & 0o777 or 0o600
        self.main_qid, self.stream_qid, self.semid, self.msgmax = (main_qid, stream_qid, semid,
                                                                   msgmax)
        n = int.from_bytes(self._view[_NAME_OFF:_NAME_OFF + 2], "little")
        self.name = bytes(self._view[_NAME_OFF + 2:_NAME_OFF + 2 + n]).decode() if n else None
        self.sems = [PosixSemaphore(address + off, f"{self._what()} counter {i}")
                     for i, off in enumerate(SEM_OFFS)]
        # The count word of a glibc sem_t (checked at import): read without a call.
        self._tw_word, self._rw_word, self._room_word, self._sw_word, self._tws_word = (
            self._view[SEM_OFFS[i]:SEM_OFFS[i] + 4].cast("I") for i in (TW, RW, ROOM, SW, TWS))
        self._freed = 0
        self._bufs = _Buffers(msgmax)
        self._c_msgmax = ctypes.c_size_t(msgmax)
        self.journal = Journal(self._view)
        # Bounded and joinable queues count before they send: those counts are journaled.
        self.counted = kind == KIND_JOINABLE or maxsize > 0
        self._next_repair = 0.0
        self._headless_since = None
        self.parcels = ParcelTable(self._view, ctl_id, self._state_locked, self.mode,
                                   self.journal, self._journal_entry, self._queue_state,
                                   self._queued_parcels)
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._detached = False
        self._released = False
        self._sleepers = 0  # threads sleeping on a counter in the segment (see _sleep_on)
        self._sleepers_lock = threading.Lock()

    # -- creation and opening -------------------------------------------------------

    @classmethod
    def create(cls, kind: int, maxsize: int, name: Optional[str] = None,
               mode: int = 0o600) -> "Channel":
        """Create the four objects; a named queue's control segment is found by its name."""
        if not _collected[0]:
            # Once per program: remove what killed programs left (see _gc).
            _collected[0] = True
            from . import _gc
            _gc.collect_garbage()
        key = _names.name_key("queue", name) if name else L.IPC_PRIVATE
        flags = L.IPC_CREAT | L.IPC_EXCL | mode
        ctl_id = L.shmget(key, CTL_SIZE, flags)
        if ctl_id == -1:
            err = L.get_errno()
            L.raise_errno(err, "shmget", f"queue {name!r}" if name else "queue control segment",
                          "a queue of that name exists already" if err == _E.EEXIST else "")
        address = _attach(ctl_id)
        created = []
        try:
            if not name:
                # Marked for removal at once: the kernel frees it when the last holder detaches,
                # even if every holder was killed.
                L.shmctl(ctl_id, L.IPC_RMID, None)
            main_qid = _create_sub(L.msgget, ctl_id, 1, mode)
            created.append(("msg", main_qid))
            stream_qid = _create_sub(L.msgget, ctl_id, 2, mode)
            created.append(("msg", stream_qid))
            msgmax = _message_size(main_qid, stream_qid)
            semid = _create_sub(lambda k, f: L.semget(k, 3, f), ctl_id, 3, mode)
            created.append(("sem", semid))
            for num, value in ((SEM_STREAM, 1), (SEM_STATE, 1), (SEM_GATE, 0)):
                if L.semctl(semid, num, L.SETVAL, value) == -1:
                    L.raise_errno(L.get_errno(), "semctl(SETVAL)", f"semaphore set id={semid}")
            view = memoryview((ctypes.c_char * CTL_SIZE).from_address(address)).cast("B")
            if name:
                raw = name.encode()
                view[_NAME_OFF:_NAME_OFF + 2] = len(raw).to_bytes(2, "little")
                view[_NAME_OFF + 2:_NAME_OFF + 2 + len(raw)] = raw
            for i, off in enumerate(SEM_OFFS):
                PosixSemaphore(address + off).init(maxsize if i == SLOTS and maxsize > 0 else 0)
            # The magic goes in last: openers by name wait for it.
            _HDR.pack_into(view, 0, MAGIC, 1, kind, maxsize, _getpid(),
                           (_FLAG_NAMED if name else 0) | (mode << 8), time.time(), main_qid,
                           stream_qid, semid, msgmax)
        except BaseException:
            for what, ident in created:
                (L.msgctl if what == "msg" else _semrm)(ident, L.IPC_RMID, None)
            L.shmdt(address)
            if name:
                L.shmctl(ctl_id, L.IPC_RMID, None)
            raise
        return cls(ctl_id, address)

    @classmethod
    def open_name(cls, name: str) -> "Channel":
        """Attach the named queue; ``FileNotFoundError`` when there is none."""
        key = _names.name_key("queue", name)
        ctl_id = L.shmget(key, 0, 0)
        if ctl_id == -1:
            err = L.get_errno()
            if err == _E.EACCES:
                raise _permission_error("shmget", name, key)
            L.raise_errno(err, "shmget", f"queue {name!r}",
                          "no queue of that name" if err == _E.ENOENT else "")
        address = L.shmat(ctl_id, None, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            err = L.get_errno()
            if err == _E.EACCES:
                raise _permission_error("shmat", name, key)
            L.raise_errno(err, "shmat", f"queue {name!r} (control segment id={ctl_id})")
        view = memoryview((ctypes.c_char * CTL_SIZE).from_address(address)).cast("B")
        deadline = time.monotonic() + 2.0
        while bytes(view[:8]) != MAGIC and time.monotonic() < deadline:
            time.sleep(0.001)  # the creator is still initialising it
        try:
            chan = cls(ctl_id, address)
        except ValueError:
            L.shmdt(address)
            raise ValueError(f"the segment for queue name {name!r} is not an mpsysv queue "
                             "(a key collision or a foreign segment); refusing it") from None
        if chan.name != name:
            chan.detach()
            raise ValueError(f"queue name {name!r} collides with the mpsysv queue "
                             f"{chan.name!r}; pick another name")
        return chan

    @classmethod
    def open_id(cls, ctl_id: int, expect: tuple) -> "Channel":
        """Attach by control segment id (what a pickled handle carries)."""
        address = L.shmat(ctl_id, None, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            err = L.get_errno()
            if err in (_E.EINVAL, _E.EIDRM):
                raise L.RemovedError(err, f"shmat: mpsysv queue (control segment id={ctl_id}) "
                                          f"no longer exists ({L._WHY_REMOVED})")
            L.raise_errno(err, "shmat", f"queue control segment id={ctl_id}")
        chan = cls(ctl_id, address)
        if (chan.main_qid, chan.stream_qid, chan.semid) != expect:
            chan.detach()
            raise L.RemovedError(_E.EIDRM, f"mpsysv queue (control segment id={ctl_id}) was "
                                           f"replaced by another queue (the first was {L._WHY_REMOVED})")
        return chan

    def identity(self) -> tuple:
        return self.ctl_id, (self.main_qid, self.stream_qid, self.semid)

    def _what(self) -> str:
        label = f"name={self.name!r}" if getattr(self, "name", None) else f"id={self.ctl_id}"
        return f"mpsysv queue {label}"

    # -- single messages ------------------------------------------------------------

    def try_send(self, payload, mtype: int) -> bool:
        """Send a one-message object without blocking; False when the queue is full."""
        if not self._send_msg(self.main_qid, payload, mtype, L.IPC_NOWAIT):
            return False
        if self._tw_word[0]:
            self._wake_timed()
        return True

    def _send_msg(self, qid: int, payload, mtype: int, flags: int) -> bool:
        """msgsnd *payload* typed *mtype* to *qid*; False on a full queue with IPC_NOWAIT.

        The message is built as one bytes object (type word + payload): cheaper than a
        copy into a pooled buffer, and safe to share between threads.
        """
        data = (_TYPE1 if mtype == 1 else mtype.to_bytes(8, "little")) + payload
        size = _size_arg(len(payload))
        while _msgsnd(qid, data, size, flags) == -1:
            err = _get_errno()
            if err == _EAGAIN:
                return False
            if err != _EINTR:
                self._fail("msgsnd", err)
        return True

    def _wake_timed(self) -> None:
        """A message went in: wake a getter waiting on the futex (it looks again after
        waking). One is enough for one message, unless some wait for one mtype: the
        one woken might not want it, so then every waiter looks."""
        missing = self.sems[TW].value - self.sems[WAKE].value
        if missing > 0:
            wake = self.sems[WAKE]
            for _ in range(missing if self._tws_word[0] else 1):
                wake.post()

    def _wake_room(self) -> None:
        """A message left the queue: wake the feeders that wait for room."""
        room = self.sems[ROOM]
        for _ in range(max(self._rw_word[0] - self._room_word[0], 0)):
            room.post()

    def may_have_room(self) -> bool:
        """True when a getter made room since a feeder started waiting for it (a word
        read, no call): worth a non-blocking send."""
        return self._room_word[0] > 0

    def wait_room(self, retry: Callable[[], bool]) -> None:
        """Sleep until *retry()* (a non-blocking send attempt) succeeds.

        The feeder waits here on a futex instead of inside msgsnd, so it holds no
        lock while asleep and the putting thread can keep flushing in between.
        """
        rw, room = self.sems[RW], self.sems[ROOM]
        rw.post()
        try:
            while not retry():
                self._sleep_on(room, time.monotonic() + _SLICE)
        finally:
            rw.try_acquire()

    def receive(self, loads: Callable, mtype: int = 0, block: bool = True,
                deadline: Optional[float] = None):
        """The next object, decoded by *loads*; raises ``_Empty`` when none came in time."""
        free = self._bufs.free
        counted = self.counted
        journal = self.journal
        while True:
            # Until its object is counted out (slot back, task held) a getter of a
            # counted queue is in a window the repairs must see (see _journal), and so
            # it never sleeps inside msgrcv.
            moving = self._moving_word() if counted else None
            got = 0  # objects taken out of the queue for the caller (a task each)
            try:
                if moving is not None:
                    with journal.mutex:
                        moving[0] = (moving[0] + MOVE) & 0xFFFFFFFF
                    if self._view[_FREEZE_OFF]:
                        self._yield_to_repair(moving)
                item = free.pop() if free else self._bufs.new()
                try:
                    # The first attempt inline: the hot path is this one call.
                    n = _msgrcv(self.main_qid, item[0], self._c_msgmax,
                                _ANY if mtype == 0 else ctypes.c_long(mtype),
                                0 if block and deadline is None and moving is None
                                else _NOWAIT)
                    if n < 0:
                        n = self._recv_again(item[0], mtype, block, deadline, moving)
                    if self._rw_word[0]:
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
                        self._slots_freed(1)
                    if first == _PICKLE_MARK:
                        got = 1  # (a pickle that fails to load was taken all the same)
                        return loads(view[8:8 + n])
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
                        warnings.warn(f"{self._what()}: dropped an object: {exc}",
                                      RuntimeWarning, stacklevel=3)
                else:
                    payload = self._read_stream(head)
                    if payload is not None:
                        got = 1
                        return loads(payload)
            finally:
                if moving is not None:
                    with journal.mutex:
                        if journal.active:
                            if got and self.kind == KIND_JOINABLE:
                                journal.held_word[0] += got  # (before the window closes)
                            moving[0] -= 1
            if deadline is not None and time.monotonic() >= deadline:
                raise _Empty

    def _moving_word(self) -> Optional[memoryview]:
        """This process's journal ``moving`` word, claiming its entry on first use."""
        word = self.journal.moving_word()
        if word is None and self._own_entry():
            word = self.journal.moving_word()
        return word

    def _yield_to_repair(self, moving: memoryview) -> None:
        """A repair froze the windows: step out leaving no trace, wait until it is done
        (``_FREEZE_WAIT`` at most), step in again."""
        journal, view = self.journal, self._view
        try:
            with journal.mutex:
                moving[0] = (moving[0] - MOVE) & 0xFFFFFFFF
            give_up = time.monotonic() + _FREEZE_WAIT
            while view[_FREEZE_OFF] and time.monotonic() < give_up:
                time.sleep(0.0002)
            if view[_FREEZE_OFF] and L.semctl(self.semid, SEM_STATE, L.GETVAL, 0) == 1:
                view[_FREEZE_OFF] = 0  # its repair was killed (the state lock is free)
        finally:
            with journal.mutex:
                if journal.active:
                    moving[0] = (moving[0] + MOVE) & 0xFFFFFFFF

    def counted_move(self, send: Callable[[], bool]) -> bool:
        """``send()``: a counted object's send and the clearing of its note, as a window
        a JoinableQueue's task recount must see (the object is queued and noted)."""
        if self.kind != KIND_JOINABLE:
            return send()
        journal = self.journal
        moving = self._moving_word()
        try:
            if moving is not None:
                with journal.mutex:
                    moving[0] = (moving[0] + MOVE) & 0xFFFFFFFF
                if self._view[_FREEZE_OFF]:
                    self._yield_to_repair(moving)
            return send()
        finally:
            if moving is not None:
                with journal.mutex:
                    if journal.active:
                        moving[0] -= 1

    def _take_batch(self, msg, loads: Callable, mtype: int) -> "Batch":
        try:
            objs = loads(_wire.batch_pickle(msg))
            if type(objs) is not list or len(objs) < 2:
                raise _wire.WireError("a batch must hold a list of two or more objects")
        except _wire.WireError as exc:
            warnings.warn(f"{self._what()}: dropped a foreign message ({exc})", RuntimeWarning,
                          stacklevel=4)
            return Batch([], mtype)
        self._add_extra(1 - len(objs))
        if self.maxsize > 0:
            self._slots_freed(len(objs) - 1)
        return Batch(objs, mtype)

    def batch_added(self, count: int) -> None:
        """A batch of *count* objects is about to be sent: qsize counts them at once."""
        self._add_extra(count - 1)

    def _add_extra(self, delta: int) -> None:
        """One locked update of the batch object count per batch message."""
        with self._state_locked():
            self._add_to(_EXTRA, _EXTRA_OFF, delta)

    def _add_to(self, field, off: int, delta: int) -> None:
        """Under the state lock: add *delta* to a count in the control segment."""
        field.pack_into(self._view, off, field.unpack_from(self._view, off)[0] + delta)

    def _recv_again(self, raw, mtype: int, block: bool, deadline: Optional[float],
                    moving: Optional[memoryview]) -> int:
        """After a failed first msgrcv: retry (EINTR), wait by *deadline*, or ``_Empty``."""
        err = _get_errno()
        if err != _E.ENOMSG and err != _EINTR:
            self._fail("msgrcv", err)
        if block and deadline is None and moving is None:
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
                return -1
            if err != _E.EINTR:
                self._fail("msgrcv", err)

    def _wait_main(self, raw, mtype: int, deadline: Optional[float],
                   moving: Optional[memoryview]) -> int:
        """Wait in the kernel (a futex) for a message until *deadline* (None: forever);
        a getter is out of its window while it sleeps."""
        tw, wake, tws = self.sems[TW], self.sems[WAKE], self.sems[TWS]
        journal = self.journal
        if mtype:
            tws.post()
        tw.post()
        try:
            while True:
                n = self._recv_main(raw, mtype, False)
                if n >= 0:
                    return n
                try:
                    if moving is not None:
                        with journal.mutex:
                            moving[0] -= 1
                    woke = self.wait(wake, deadline)
                finally:
                    if moving is not None:
                        with journal.mutex:
                            if journal.active:
                                moving[0] = (moving[0] + MOVE) & 0xFFFFFFFF
                if moving is not None and self._view[_FREEZE_OFF]:
                    self._yield_to_repair(moving)
                if not woke:
                    n = self._recv_main(raw, mtype, False)
                    if n >= 0:
                        return n
                    raise _Empty
        finally:
            tw.try_acquire()
            if mtype:
                tws.try_acquire()

    def wait(self, sem: PosixSemaphore, deadline: Optional[float],
             idle: Optional[Callable[[], None]] = None, every: float = _ALIVE_CHECK) -> bool:
        """Take *sem* by *deadline*, checking *every* second or so that the queue still
        exists: a futex in our own mapping would never report a removal from outside.
        *idle* runs at each of those checks too."""
        while True:
            step = time.monotonic() + every
            if self._sleep_on(sem, step if deadline is None or deadline > step else deadline):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._stat_main()
            if idle is not None:
                idle()

    def _sleep_on(self, sem: PosixSemaphore, deadline: Optional[float]) -> bool:
        """``sem.acquire(deadline)``, counted: while a thread sleeps on a counter in the
        control segment, a ``detach()`` by another thread leaves the mapping in place
        (unmapped when the channel is garbage), and the sleeper then raises."""
        with self._sleepers_lock:
            self._sleepers += 1
        try:
            return sem.acquire(deadline)
        finally:
            with self._sleepers_lock:
                self._sleepers -= 1
            if self._detached:
                raise ValueError(f"{self._what()} was closed in this process while a thread "
                                 "waited in it")

    def qsize(self) -> int:
        return self._stat_main().msg_qnum + _EXTRA.unpack_from(self._view, _EXTRA_OFF)[0]

    def _stat_main(self) -> L.msqid_ds:
        ds = L.msqid_ds()
        if L.msgctl(self.main_qid, L.IPC_STAT, L.byref(ds)) == -1:
            self._fail("msgctl(IPC_STAT)", L.get_errno())
        return ds

    def _queue_state(self) -> tuple:
        """``(messages in the main queue, pid of the last process that took one)``."""
        ds = self._stat_main()
        return ds.msg_qnum, ds.msg_lrpid

    def _queued_parcels(self) -> Optional[set]:
        """``(slot, segment id)`` of every parcel message in the main queue; None when
        the kernel cannot tell."""
        found = set()
        try:
            for msg in self.queued_messages():
                if msg[0] == _wire.PARCEL:
                    try:
                        found.add(_wire.parse_parcel(msg)[:2])
                    except _wire.WireError:
                        pass
        except _NoCopy:
            return None
        return found

    def queued_head(self, sid: int) -> Optional[bool]:
        """Whether the head of stream *sid* is in the main queue; None when the kernel
        cannot tell."""
        try:
            for msg in self.queued_messages():
                if msg[0] == _wire.HEAD:
                    try:
                        if _wire.parse_head(msg)[0] == sid:
                            return True
                    except _wire.WireError:
                        pass
        except _NoCopy:
            return None
        return False

    def queued_messages(self):
        """The messages in the main queue, copied without taking them (``MSG_COPY``),
        last to first: a message that stays in the queue while this runs is never
        missed, because takers only move the messages behind them forward, towards the
        indices still to come. Raises ``_NoCopy`` where the kernel cannot copy
        messages (built without ``CONFIG_CHECKPOINT_RESTORE``)."""
        raw = (ctypes.c_char * (8 + self.msgmax))()
        view = memoryview(raw).cast("B")
        flags = L.IPC_NOWAIT | L.MSG_COPY
        index = self._stat_main().msg_qnum - 1
        while index >= 0:
            n = L.msgrcv(self.main_qid, raw, self.msgmax, index, flags)
            if n < 0:
                err = L.get_errno()
                if err == _EINTR:
                    continue
                if err in (_E.ENOSYS, _E.EINVAL, _E.EPERM):
                    raise _NoCopy
                if err != _E.ENOMSG:  # (gone meanwhile: taken)
                    self._fail("msgrcv(MSG_COPY)", err)
            else:
                yield view[8:8 + n]
            index -= 1

    # -- locks and the task count of a JoinableQueue ---------------------------------

    def _lock(self, num: int) -> None:
        op = L.sembuf(num, -1, L.SEM_UNDO)
        while L.semop(self.semid, L.byref(op), 1) == -1:
            err = L.get_errno()
            if err != _E.EINTR:
                self._fail("semop", err)

    def _unlock(self, num: int) -> None:
        op = L.sembuf(num, 1, L.SEM_UNDO)
        if L.semop(self.semid, L.byref(op), 1) == -1:
            err = L.get_errno()
            if err not in (_E.EIDRM, _E.EINVAL):
                self._fail("semop", err)

    def _state_locked(self):
        return _StateLock(self)

    def task_added(self) -> None:
        """Count one task; this process's journal entry notes it until it is sent."""
        with self._state_locked():
            if self._journal_entry() is not None:
                self.journal.add_task()
            else:
                self._view[_UNNOTED_OFF] = 1
            unfinished = self.sems[UNFINISHED]
            unfinished.post()
            if unfinished.value == 1:
                self._set_gate(1)

    def task_done(self) -> None:
        with self._state_locked():
            unfinished = self.sems[UNFINISHED]
            if not unfinished.try_acquire():
                raise ValueError("task_done() called too many times")
            if self._journal_entry() is not None:
                self.journal.task_done()
            else:
                self._view[_UNNOTED_OFF] = 1
            if unfinished.value == 0:
                self._set_gate(0)

    def unfinished(self) -> int:
        self.repair()
        return self.sems[UNFINISHED].value

    def join_tasks(self) -> None:
        """Wait until every task put on the queue was marked done (the gate is zero).

        About once a second (and before the first wait) it rolls back what dead
        processes left: tasks counted and never sent, a gate left up by a killed
        ``task_done()``."""
        op = L.sembuf(SEM_GATE, 0, 0)
        while True:
            self.repair()
            ts = L.relative_timespec(_ALIVE_CHECK)
            if L.semtimedop(self.semid, L.byref(op), 1, L.byref(ts)) == 0:
                return
            err = L.get_errno()
            if err not in (_E.EAGAIN, _E.EINTR):
                self._fail("semtimedop", err)

    def _set_gate(self, value: int) -> None:
        if L.semctl(self.semid, SEM_GATE, L.SETVAL, value) == -1:
            self._fail("semctl(SETVAL)", L.get_errno())

    def _repair_state(self, dead: int) -> None:
        """Under the state lock: holder *dead* died inside it, maybe between a task's
        note and its count: derive the count again, and the gate from it."""
        self._view[_FREEZE_OFF] = 0
        if self.kind == KIND_JOINABLE:
            self._view[_RECOUNT_OFF] = 1
        self._repair_journal()
        self._set_gate(1 if self.sems[UNFINISHED].value > 0 else 0)

    # -- the journal: what dead processes counted and never sent -----------------------

    def repair(self) -> None:
        """Settle what dead processes left: their notes (the slots and tasks they
        counted for objects never sent), a half-done update inside the state lock, a
        task count still to be derived again."""
        if int.from_bytes(self._view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4], "little") or \
                self._view[_RECOUNT_OFF] or self.journal.any_dead():
            with self._state_locked():
                self._repair_journal()

    def _repair_journal(self) -> None:
        """Under the state lock: free the entries of dead processes (what they held is
        kept in the control segment); the counts their notes stood in for are derived
        again (slots in ``repair_slots``, tasks here)."""
        view = self._view
        tasks, held, windows = self.journal.collect_dead()
        if windows and self.kind == KIND_JOINABLE:
            # A getter killed before it counted its object out: the object is lost,
            # and so is its task (a putter killed after its send: its object counts).
            view[_RECOUNT_OFF] = 1
        if held:
            self._add_to(_HELD_GONE, _HELD_GONE_OFF, held)
        if tasks:
            if view[_UNNOTED_OFF]:
                # Some process counts without notes: no count can be derived; give the
                # dead processes' unsent tasks back as noted (exact but for a kill
                # between a send and its note's clearing).
                unfinished = self.sems[UNFINISHED]
                for _ in range(tasks):
                    unfinished.try_acquire()
                if unfinished.value == 0:
                    self._set_gate(0)
            else:
                view[_RECOUNT_OFF] = 1
        if view[_RECOUNT_OFF]:
            self._recount_tasks()

    def _recount_tasks(self) -> None:
        """Under the state lock: set a JoinableQueue's unfinished count to what the
        kernel queue and the journal say: objects queued, tasks noted by live putters
        (not sent yet), tasks held by processes (taken, not done). Done only while no
        live process was in a window where an object moves between those counts (the
        journal's ``moving`` words, before and after); otherwise the next repair tries
        again."""
        view = self._view
        if self.kind != KIND_JOINABLE or view[_UNNOTED_OFF]:
            view[_RECOUNT_OFF] = 0
            return
        def read():
            tasks, _, held = self.journal.noted()
            return tasks + held + self._stat_main().msg_qnum

        counts = self._read_frozen(read)
        if counts is None:
            return
        truth = max(counts + _EXTRA.unpack_from(view, _EXTRA_OFF)[0]
                    + _HELD_GONE.unpack_from(view, _HELD_GONE_OFF)[0], 0)
        unfinished = self.sems[UNFINISHED]
        now = unfinished.value
        for _ in range(truth - now):
            unfinished.post()
        for _ in range(now - truth):
            unfinished.try_acquire()
        self._set_gate(1 if truth > 0 else 0)
        view[_RECOUNT_OFF] = 0

    def _read_frozen(self, read: Callable[[], int]) -> Optional[int]:
        """Under the state lock: ``read()`` the counts while no live process is in a
        window. New windows wait (the freeze flag; a busy getter would otherwise open
        one every few microseconds), open ones are waited for (``_FREEZE_WAIT`` at
        most). None when one stayed open (a stopped process) or one moved while the
        counts were read (the journal's ``moving`` words, before and after)."""
        journal, view = self.journal, self._view
        view[_FREEZE_OFF] = 1
        try:
            give_up = time.monotonic() + _FREEZE_WAIT
            while True:
                before = journal.movers()
                if before is not None:
                    break
                if time.monotonic() >= give_up:
                    return None
                time.sleep(0.0002)
            counts = read()
            return counts if journal.movers() == before else None
        finally:
            view[_FREEZE_OFF] = 0

    def _journal_entry(self) -> Optional[int]:
        """Under the state lock: this process's journal entry, claimed on first use
        (None while the table is full: then this process's counts go unjournaled)."""
        journal = self.journal
        off = journal.mine()
        if off is None and journal.may_claim():
            off = journal.claim()
            if off is None:
                self._repair_journal()
                off = journal.claim()
        return off

    def _own_entry(self) -> bool:
        """Claim this process's journal entry if it has none; False (and slot recoveries
        stop for good) while every entry is taken by a live process."""
        journal = self.journal
        if journal.mine() is None:
            if journal.may_claim():
                with self._state_locked():
                    self._journal_entry()
            if journal.mine() is None:
                self._view[_UNNOTED_OFF] = 1
                return False
        return True

    # -- the slots of a bounded queue -------------------------------------------------

    def take_slots(self, n: int, block: bool, deadline: Optional[float]) -> bool:
        """Take *n* slots (all or none), waiting until *deadline* (None: for good) when
        *block*; False when they could not be had.

        A slot is noted in the journal before it is taken, so ``repair_slots`` never
        finds a slot that a live putter holds and no count shows. For the same reason
        a putter without a slot does not sleep on the slot count (a slot taken that way
        could not be noted first) but on a wake-up of its own, looking for lost slots while
        it waits.
        """
        self._own_entry()
        taken = 0
        waiting = False
        try:
            while taken < n:
                if self._try_slot():
                    taken += 1
                elif not block:
                    self.repair_slots()
                    if not self._try_slot():
                        return False
                    taken += 1
                elif not waiting:
                    # Counted as waiting before the next try: a getter that frees a slot
                    # after that try sees a waiter to wake.
                    self.sems[SW].post()
                    waiting = True
                    self.repair_slots()
                elif not self.wait(self.sems[SWAKE], deadline, self.repair_slots,
                                   _SLOT_CHECK):
                    return False
            taken = 0
            return True
        finally:
            if waiting:
                self.sems[SW].try_acquire()
            if taken:  # giving up, or an exception: hand back what was taken
                self._slots_freed(taken)
                self.journal.sent(0, taken)

    def _try_slot(self) -> bool:
        journal = self.journal
        journal.add_slots(1)
        if self.sems[SLOTS].try_acquire():
            return True
        journal.sent(0, 1)
        return False

    def _slots_freed(self, n: int) -> None:
        """*n* slots are free again: count them, and wake as many waiting putters."""
        slots = self.sems[SLOTS]
        for _ in range(n):
            slots.post()
        waiting = self._sw_word[0]
        if waiting:
            wake = self.sems[SWAKE]
            for _ in range(min(n, waiting - wake.value)):
                wake.post()

    def repair_slots(self) -> None:
        """Give back the slots that no count shows, at most every ``_REPAIR_EVERY`` s
        (what a putter that finds no slot runs).

        The free-slot count is only a cache. The truth is ``maxsize`` minus the objects
        in the kernel queue (``msg_qnum`` plus the batch count) minus the slots live
        processes noted (dead processes' notes are dropped first). What a killed
        process took and never sent or gave back (a putter between taking a slot and
        sending, a getter between its msgrcv and giving the slot back) shows as a
        shortfall. The counts are read in the order an object moves through them
        (free, noted, queued), so a live putter can be counted twice but never
        missed. A live getter between msgrcv and its post would be missed, so the
        shortfall counts only if no live getter was in that window at any time while
        the counts were read (the journal's ``moving`` words, before and after).
        """
        now = time.monotonic()
        if now < self._next_repair:
            return
        self._next_repair = now + _REPAIR_EVERY
        def read():
            free = self.sems[SLOTS].value
            noted = self.journal.noted()[1]
            return free + noted + self._stat_main().msg_qnum

        with self._state_locked():
            self._repair_journal()
            if self._view[_UNNOTED_OFF]:
                return
            counts = self._read_frozen(read)
            if counts is None:
                return
            lost = self.maxsize - counts - _EXTRA.unpack_from(self._view, _EXTRA_OFF)[0]
            if lost > 0:
                self._add_to(_RECOVERED, _RECOVERED_OFF, lost)
                self._slots_freed(lost)

    def counted_sent(self, n: int) -> None:
        """*n* counted objects (one message each) are in the kernel queue now."""
        self.journal.sent(n if self.kind == KIND_JOINABLE else 0, n if self.maxsize > 0 else 0)

    def buffered_sent(self, payload) -> None:
        """The feeder handed *payload* to the kernel: what it stood for is in the queue."""
        if payload[0] == _wire.PARCEL:
            self.parcels.handed(payload)
        if self.counted:
            self.journal.sent(1 if self.kind == KIND_JOINABLE else 0,
                              1 if self.maxsize > 0 and len(payload) <= self.msgmax else 0)

    # -- lifetime -------------------------------------------------------------------

    def holders(self) -> int:
        ds = L.shmid_ds()
        if L.shmctl(self.ctl_id, L.IPC_STAT, L.byref(ds)) == -1:
            return 0
        return ds.shm_nattch

    def release(self, detach: bool = True) -> None:
        """Let go of the queue; the last holder of an anonymous queue removes it all.

        ``detach=False`` keeps the mapping (a thread of this exiting process may still
        be using it; the kernel unmaps it at exit).
        """
        if not self._released and not self._detached:
            self._fold_held()  # (before _drop_hold, which may detach under the lock)
            self._released = True
            self._drop_hold(detach)
        if detach:
            self.detach()

    def _drop_hold(self, detach: bool) -> None:
        if not self.named:
            try:
                self._lock(SEM_STATE)
            except OSError:
                pass
            else:
                if self.holders() <= 1:
                    self._remove_subs()
                else:
                    # Detach before unlocking: two holders letting go at once must not
                    # each count the other and both leave the queue behind.
                    if detach:
                        self.detach()
                    self._unlock(SEM_STATE)
                    _collect_at_exit()

    def _after_fork(self) -> None:
        """In a fork child: the inherited mapping counts as a holder of its own."""
        self._counter_lock = threading.Lock()
        self._released = False
        self._sleepers = 0
        self._sleepers_lock = threading.Lock()
        self.journal.after_fork()

    def detach(self) -> None:
        if not self._detached:
            self._detached = True
            if not self._released:
                self._fold_held()
            self.journal.release()
            with self._sleepers_lock:
                if self._sleepers:
                    # Another thread sleeps on a counter in the segment: unmapping it now
                    # would crash that thread. Unmap once nothing can use it any more.
                    weakref.finalize(self, L.shmdt, self._address)
                    return
            self.parcels.detach_all()
            for word in (self._tw_word, self._rw_word, self._room_word, self._sw_word,
                         self._tws_word):
                word.release()
            self._view.release()
            L.shmdt(self._address)

    def _fold_held(self) -> None:
        """Before this handle's journal entry is freed: keep the tasks it took and did
        not mark done (another handle may mark them) in the control segment."""
        journal = self.journal
        if self.kind != KIND_JOINABLE or journal.mine() is None:
            return
        try:
            with self._state_locked():
                self._add_to(_HELD_GONE, _HELD_GONE_OFF, journal.take_held())
        except OSError:
            pass  # removed already: nothing left to count

    def unlink(self) -> None:
        """Remove the queue's kernel objects now (a named queue's name is free at once)."""
        if self._detached:
            self._remove_parcels_detached()
        self._remove_subs()
        L.shmctl(self.ctl_id, L.IPC_RMID, None)

    def _remove_parcels_detached(self) -> None:
        """unlink() after close(): map the control segment once more for its parcel table."""
        try:
            address = _attach(self.ctl_id)
        except OSError:
            return  # gone already, parcels with it (its last holder removed them)
        view = memoryview((ctypes.c_char * CTL_SIZE).from_address(address)).cast("B")
        try:
            remove_listed(view)
        finally:
            view.release()
            L.shmdt(address)

    def _remove_subs(self) -> None:
        if not self._detached:
            self.parcels.remove_all()
        L.msgctl(self.main_qid, L.IPC_RMID, None)
        L.msgctl(self.stream_qid, L.IPC_RMID, None)
        L.semctl(self.semid, 0, L.IPC_RMID, 0)

    def _fail(self, call: str, err: int) -> "NoReturn":  # noqa: F821
        if err in (_E.EIDRM, _E.EINVAL):
            raise L.RemovedError(_E.EIDRM, f"{call}: {self._what()} was removed while in use "
                                           f"({L._WHY_REMOVED})")
        L.raise_errno(err, call, self._what())


class _NoCopy(Exception):
    """The kernel cannot copy a queued message (no ``MSG_COPY``)."""


class _StateLock:
    """The state lock with a crash marker: the next holder repairs a half-done update."""

    __slots__ = ("chan",)

    def __init__(self, chan: Channel):
        self.chan = chan

    def __enter__(self):
        chan = self.chan
        chan._lock(SEM_STATE)
        view = chan._view
        dead = int.from_bytes(view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4], "little")
        if dead:
            chan._repair_state(dead)
        view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4] = _getpid().to_bytes(4, "little")
        return self

    def __exit__(self, *exc):
        chan = self.chan
        chan._view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4] = b"\0\0\0\0"
        chan._unlock(SEM_STATE)


class Batch(list):
    """The objects of one batch message, in order, with the message's type."""

    __slots__ = ("mtype",)

    def __init__(self, objs, mtype: int):
        super().__init__(objs)
        self.mtype = mtype


class _Empty(Exception):
    """Nothing arrived in time (queues.py turns it into ``queue.Empty``)."""


def _collect_at_exit() -> None:
    """This process let go of a queue others still hold: if they are all killed, no
    holder is left to remove it, so collect garbage once more when this program ends
    (a forked child of ours killed after we let go is the usual case)."""
    me = _getpid()
    if _exit_collect[0] != me:
        _exit_collect[0] = me
        atexit.register(_collect_now, me)


def _collect_now(pid: int) -> None:
    if _getpid() == pid:  # not in a fork child that inherited the handler
        from . import _gc
        _gc.collect_garbage(force=True)


_exit_collect = [0]  # the pid that registered _collect_now


def _permission_error(call: str, name: str, key: int) -> PermissionError:
    """A PermissionError that says whose queue it is and what its mode allows."""
    owner, mode = segment_owner_and_mode(key)
    return PermissionError(_E.EACCES, f"{call}: Permission denied: mpsysv queue {name!r} belongs "
                                      f"to {owner} with mode {mode}, which does not let uid "
                                      f"{os.getuid()} in; ask its owner to create it with "
                                      "mode=0o660 or 0o666")


def _attach(ctl_id: int) -> int:
    address = L.shmat(ctl_id, None, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        L.raise_errno(L.get_errno(), "shmat", f"queue control segment id={ctl_id}")
    return address


def _semrm(semid, cmd, _arg):
    return L.semctl(semid, 0, cmd, 0)


# The smallest message size a queue works with: a stream head or frame plus some payload.
MIN_MESSAGE = 128


def _message_size(*qids: int) -> int:
    """The size of the queue's messages: ``msgmax``, or the queues' capacity (``msgmnb``
    at creation) when that is smaller, since a message larger than its queue's capacity
    waits forever. Larger objects are framed or sent as parcels as usual."""
    size = L.read_limit("msgmax", 8192)
    ds = L.msqid_ds()
    for qid in qids:
        if L.msgctl(qid, L.IPC_STAT, L.byref(ds)) == -1:
            L.raise_errno(L.get_errno(), "msgctl(IPC_STAT)", f"queue message queue id={qid}")
        size = min(size, ds.msg_qbytes)
    if size < MIN_MESSAGE:
        raise OSError(_E.ENOSPC, f"msgget: a queue holds only {size} bytes, fewer than the "
                                 f"{MIN_MESSAGE} an mpsysv queue needs: raise the kernel's "
                                 "msgmnb (`sysctl -w kernel.msgmnb=16384`, "
                                 "/proc/sys/kernel/msgmnb) or msgmax")
    return size


def _create_sub(get: Callable, ctl_id: int, purpose: int, mode: int) -> int:
    """Create the object serving *purpose* under its tagged key, clearing a stale one."""
    key = _names.sub_key(ctl_id, purpose)
    for _ in range(2):
        ident = get(key, L.IPC_CREAT | L.IPC_EXCL | mode)
        if ident != -1:
            return ident
        err = L.get_errno()
        if err != _E.EEXIST:
            break
        # A leftover of a dead queue whose control segment had this slot: garbage.
        stale = get(key, 0)
        if stale != -1:
            if purpose == 3:
                L.semctl(stale, 0, L.IPC_RMID, 0)
            else:
                L.msgctl(stale, L.IPC_RMID, None)
    L.raise_errno(L.get_errno(), "msgget" if purpose < 3 else "semget",
                  f"queue object key={key:#010x}")
