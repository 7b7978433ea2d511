"""Streams: a queue's objects larger than one message and below the parcel size.

One stream at a time (the stream lock, SEM_UNDO): a head in the main queue names it,
its frames follow in the stream queue typed by its stream id, and its reader
acknowledges the last one, so small objects can never take the capacity a stream
needs. The stream marker in the control segment tells either side whether the other
is still alive. ``Streams`` is a component of ``Channel``; it uses the queue's kernel
objects (``QueueObjects``) and the journal, nothing above them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
import warnings
from typing import Iterator, List, NoReturn, Optional, Protocol, Tuple

from .._ipc import libc as L
from .._ipc.futex import PosixSemaphore
from .._ipc.procs import alive as _alive
from . import wire as _wire
from .journal import Journal
from .objects import NoCopy
from .layout import (_MARK, _MARK_OFF, _READER, _STATE, SEM_STREAM, STREAM_DONE, STREAM_FRAMES,
                     STREAM_SPACE, ST_ABANDONED, ST_HEAD, ST_IDLE)

__all__ = ["Streams"]

_SLICE = 0.25  # how often a stalled stream checks whether its peer is still alive
_UNCLAIMED = 1.0  # how long a taken stream head may stay without a registered reader
_E = errno
_getpid = os.getpid


class StreamsHost(Protocol):
    """What ``Streams`` needs from its queue's kernel objects (``objects.QueueObjects``)."""

    maxsize: int
    msgmax: int
    stream_qid: int
    sems: List[PosixSemaphore]

    def try_send(self, payload, mtype: int, qid: Optional[int] = None,
                 flags: int = ...) -> bool: ...  # (None: the main queue)

    def lock(self, num: int) -> None: ...  # a SEM_UNDO lock of the semaphore set

    def unlock(self, num: int) -> None: ...

    def sleep_on(self, sem: PosixSemaphore, deadline: Optional[float]) -> bool: ...

    def queue_state(self) -> Tuple[int, int]: ...  # (messages queued, last taker's pid)

    def queued_messages(self) -> Iterator[memoryview]: ...  # MSG_COPY, or NoCopy

    def fail(self, call: str, err: int) -> NoReturn: ...

    def what(self) -> str: ...  # the queue as error messages name it


class Streams:
    """The objects of one queue that travel as streams, both sides."""

    def __init__(self, host: StreamsHost, view: memoryview, journal: Journal):
        self._q = host
        self.journal = journal
        self.sems = host.sems
        self._view = view  # the control segment (the host's mapping of it)
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._headless_since: Optional[float] = None

    def after_fork(self) -> None:
        self._counter_lock = threading.Lock()

    def send(self, payload, mtype: int, counted: bool = False) -> None:
        """Send a multi-frame object: one head in the main queue, frames in the stream queue.

        Streams go one at a time (the stream lock, held until the reader acknowledged
        the last frame), so the stream queue never holds two objects' frames and small
        objects can never take the capacity a stream needs. A *counted* object's slot
        is in the queue once its head is (its reader gives the slot back on the head).
        """
        with self._counter_lock:
            self._counter += 1
            counter = self._counter
        sid = _wire.stream_id_for(_getpid(), counter)
        head, frames = _wire.split(payload, sid, self._q.msgmax)
        self._q.lock(SEM_STREAM)
        try:
            self._repair_stream()
            self._purge_others(sid)
            for i in (STREAM_SPACE, STREAM_FRAMES, STREAM_DONE):
                while self.sems[i].try_acquire():
                    pass
            self._set_mark(_getpid(), sid, ST_HEAD)
            self._headless_since = None
            self._q.try_send(head, mtype, None, 0)  # (it wakes a getter waiting on the futex)
            if counted and self._q.maxsize > 0:
                self.journal.sent(0, 1)
            for frame in frames:
                if not self._send_frame(frame, sid):
                    return
                self.sems[STREAM_FRAMES].post()
            self._await_reader(sid)
        finally:
            self._set_mark(0, 0, ST_IDLE)
            self._q.unlock(SEM_STREAM)

    def _send_frame(self, frame: bytes, sid: int) -> bool:
        """Send one frame; False when the reader died and the stream was dropped."""
        while not self._q.try_send(frame, sid, self._q.stream_qid):
            if not self._q.sleep_on(self.sems[STREAM_SPACE], time.monotonic() + _SLICE):
                if self._reader_gone(sid):
                    return False
                self._purge_others(sid)
        return True

    def _await_reader(self, sid: int) -> None:
        """Wait until the reader has taken the last frame (or died)."""
        while not self._q.sleep_on(self.sems[STREAM_DONE], time.monotonic() + _SLICE):
            if self._reader_gone(sid):
                return

    def _reader_gone(self, sid: int) -> bool:
        """True (after dropping the stream's frames) when the reader of *sid* died."""
        reader = self._mark()[1]
        if reader == 0:
            if not self._head_lost(sid):
                return False
        elif _alive(reader):
            return False
        self._purge(sid)
        return True

    def _head_lost(self, sid: int) -> bool:
        """No reader registered for our head *sid*: True when a process took it and
        died before it could. The head is out of the main queue when that queue is
        empty (it went in before), or when a copy of every queued message does not
        show it; its reader registers within microseconds of taking it, so it is dead
        when the last process that took a message is dead, or when it still has not
        registered after ``_UNCLAIMED`` seconds. (A live reader stalled there that
        long, or while another process takes a message and dies, loses the object: it
        finds the stream gone.) Where the kernel cannot copy queued messages, the
        writer keeps waiting while other messages are queued."""
        qnum, last = self._q.queue_state()
        if qnum:
            if self.queued_head(sid) is not False:
                self._headless_since = None
                return False
            last = self._q.queue_state()[1]  # (whoever took it took it before this read)
        if not _alive(last):
            return True
        now = time.monotonic()
        if self._headless_since is None:
            self._headless_since = now
        return now - self._headless_since >= _UNCLAIMED

    def _purge(self, sid: int) -> None:
        raw = (ctypes.c_char * (8 + self._q.msgmax))()
        while L.msgrcv(self._q.stream_qid, raw, self._q.msgmax, sid, L.IPC_NOWAIT | L.MSG_NOERROR) >= 0:
            pass

    def _purge_others(self, sid: int) -> None:
        """Under the stream lock only *sid*'s frames belong in the stream queue: drop
        anything else (a foreign program's messages, a dead stream's leftovers) so it
        cannot take the room the stream needs. Readers of a dead stream notice its
        writer is gone and drop their object."""
        raw = (ctypes.c_char * (8 + self._q.msgmax))()
        flags = L.IPC_NOWAIT | L.MSG_NOERROR | L.MSG_EXCEPT
        while L.msgrcv(self._q.stream_qid, raw, self._q.msgmax, sid, flags) >= 0:
            pass

    def _repair_stream(self) -> None:
        """Under the stream lock: forget a stream whose writer died holding the lock.
        Its frames go with the purge that follows; its reader (present or future)
        sees the marker no longer names its stream and drops the object."""
        if self._mark()[3] != ST_IDLE:
            self._set_mark(0, 0, ST_IDLE)

    def read(self, head: bytes) -> Optional[bytes]:
        """Collect the frames of the stream *head* starts; None if it was dropped."""
        try:
            assembly = _wire.Reassembly(head)
        except _wire.WireError as exc:
            warnings.warn(f"{self._q.what()}: dropped a foreign message ({exc})", RuntimeWarning,
                          stacklevel=4)
            return None
        sid = assembly.stream_id
        if self._mark()[2] == sid:
            _READER.pack_into(self._view, _MARK_OFF + 4, _getpid())
        raw = (ctypes.c_char * (8 + self._q.msgmax))()
        view = memoryview(raw).cast("B")
        avail, space = self.sems[STREAM_FRAMES], self.sems[STREAM_SPACE]
        while not assembly.complete:
            # The frame itself decides; STREAM_FRAMES is only a doorbell (a token may belong to
            # another stream), so a missed or stolen token costs at most one slice.
            n = L.msgrcv(self._q.stream_qid, raw, self._q.msgmax, sid, L.IPC_NOWAIT)
            if n < 0:
                err = L.get_errno()
                if err == _E.EINTR:
                    continue
                if err != _E.ENOMSG:
                    self._q.fail("msgrcv", err)
                if not self._q.sleep_on(avail, time.monotonic() + _SLICE) and \
                        self._writer_gone(sid):
                    warnings.warn(f"{self._q.what()}: dropped an object whose writer (pid "
                                  f"{_wire.writer_pid(sid)}) died while sending it",
                                  RuntimeWarning, stacklevel=4)
                    return None
                continue
            try:
                assembly.add(view[8:8 + n])
            except _wire.WireError as exc:
                self._purge(sid)
                warnings.warn(f"{self._q.what()}: dropped an incomplete object ({exc})",
                              RuntimeWarning, stacklevel=4)
                return None
            space.post()
        self.sems[STREAM_DONE].post()
        return assembly.payload()

    def _writer_gone(self, sid: int) -> bool:
        """True (after dropping its frames) when the writer of *sid* died mid-stream."""
        writer, _, msid, _ = self._mark()
        if msid == sid:
            if _alive(writer):
                return False
            _STATE.pack_into(self._view, _MARK_OFF + 16, ST_ABANDONED)
        self._purge(sid)
        return True

    def _mark(self) -> tuple:
        return _MARK.unpack_from(self._view, _MARK_OFF)

    def _set_mark(self, writer: int, sid: int, state: int) -> None:
        """The writer's fields (and a cleared reader field: only a reader sets it)."""
        _MARK.pack_into(self._view, _MARK_OFF, writer, 0, sid, state)

    def queued_head(self, sid: int) -> Optional[bool]:
        """Whether the head of stream *sid* is in the main queue; None when the kernel
        cannot tell."""
        try:
            for msg in self._q.queued_messages():
                if len(msg) and msg[0] == _wire.HEAD:
                    try:
                        if _wire.parse_head(msg)[0] == sid:
                            return True
                    except _wire.WireError:
                        pass
        except NoCopy:
            return None
        return False
