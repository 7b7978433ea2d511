"""The per-process buffer of objects the kernel queue had no room for, and the thread
that flushes it (the stdlib's "feeder thread"); and the one owner of a counted send.

A bounded or joinable queue's object is counted before it is sent (a slot taken, a
task added, both noted in this process's journal entry) and its notes are cleared
once its message is in the kernel queue, whether ``put()`` sends it at once or the
buffer does later (``send_counted``/``send_taken`` and ``flush``).
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from multiprocessing import util
from typing import Callable, Optional

from .._ipc.errors import RemovedError
from . import parcels as _parcels
from .channel import Channel
from .layout import KIND_JOINABLE
from .pickler import OutOfBand, Pieces

__all__ = ["Feeder", "SENTINEL"]

_IDLE = 0.001  # a putting thread quiet this long leaves the flushing to the feeder thread
_PROBE_BYTES = 1024  # buffered bytes (+64 per object) between flush attempts of the putter
SENTINEL = object()  # the end-of-flush marker in the buffer
_SENTINEL = SENTINEL


class Feeder:
    """The per-process buffer of objects the kernel queue had no room for, and the
    thread that flushes it. It holds no queue reference, so a forgotten queue can be
    collected while its data drains.

    Objects leave the buffer strictly in order. While the putting thread keeps adding
    to a backlog it flushes it too (without blocking); the thread takes over once the
    putter is quiet and sleeps on a futex, not in msgsnd, while the queue is full.
    """

    def __init__(self, chan: Channel, error_hook: Callable[[Exception, object], None]):
        self.chan = chan
        self.cond = threading.Condition(threading.Lock())
        self.send_lock = threading.Lock()
        self.buffer: deque = deque()
        self.enqueued = 0
        self.probe = _PROBE_BYTES
        self.streaming = False
        self.thread: Optional[threading.Thread] = None
        self.cancelled = False
        self.released = False
        self.exit_finalizer: Optional[util.Finalize] = None
        self.error_hook = error_hook
        # Tell the channel what left the buffer (counted objects, parcels): see journal.
        self.track = chan.counted
        self._joinable = chan.kind == KIND_JOINABLE

    # -- sending: at once when the kernel queue has room, else through the buffer -----

    def send(self, payload, mtype: int) -> bool:
        """Hand one object to the kernel now (True), or to the buffer, in order."""
        if len(payload) > self.chan.msgmax:
            return self._send_large(payload, mtype)
        if not self.buffer and self.chan.try_send(payload, mtype):
            return True
        self.enqueue(payload, mtype)
        return False

    def _send_large(self, payload, mtype: int) -> bool:
        """``send()`` of a multi-message object: a parcel when it can, else a stream."""
        chan = self.chan
        if len(payload) >= _parcels.PARCEL_MIN:
            message = chan.parcels.wrap(payload)
            if message is not None:
                self.track = True  # it tells the table when the message is out
                if not self.buffer and chan.try_send(message, mtype):
                    chan.parcels.handed(message)
                    return True
                payload = message
        if type(payload) is Pieces or type(payload) is OutOfBand:  # it streams after all
            payload = bytes(payload)
        self.enqueue(payload, mtype)
        return False

    def send_counted(self, payload, mtype: int, block: bool,
                     deadline: Optional[float]) -> bool:
        """``put()`` of a bounded or joinable queue: take a slot (waiting until
        *deadline* when *block*; False when none could be had), then ``send_taken``."""
        chan = self.chan
        counts = chan.counts
        if chan.maxsize and not counts.take_one() and not counts.take_slots(1, block, deadline):
            return False
        if self._joinable:
            self.send_taken(payload, mtype)
        elif len(payload) <= chan.msgmax and not self.buffer and chan.try_send(payload, mtype):
            counts.counted_sent(1)  # (send_taken written out: every small object's path)
        elif self.send(payload, mtype):
            counts.counted_sent(1)
        return True

    def send_taken(self, payload, mtype: int) -> None:
        """Count the task of an object whose slot is taken, and send it. The slot and the
        task stay noted in this process's journal entry until the object is in the
        kernel queue (now, or when the buffer sends it), so that if this process dies
        first the next user of the queue gives them back. A JoinableQueue putter counts
        and sends inside its window (``counts.Window``)."""
        counts = self.chan.counts
        if not self._joinable:
            if self.send(payload, mtype):
                counts.counted_sent(1)
            return
        window = counts.window
        word = window.open()
        try:
            counts.task_added(word)
            if self.send(payload, mtype):
                counts.counted_sent(1)
        finally:
            window.close(word)

    def enqueue(self, payload, mtype: int) -> None:
        # deque.append is atomic; the lock is only needed to wake the thread (which waits
        # on the condition only while the buffer is empty) or to start it.
        buffer = self.buffer
        buffer.append((payload, mtype))
        self.enqueued += 1  # a lost update only delays the thread's take-over
        if len(buffer) == 1 or self.thread is None or len(payload) > self.chan.msgmax:
            with self.cond:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run,
                                                   name="mpsysv.QueueFeederThread", daemon=True)
                    self.thread.start()
                self.cond.notify()
        # Flush from this thread when a getter made room for a waiting feeder thread, and
        # every kilobyte or so anyway (a getter frees about that much meanwhile): the
        # feeder thread leaves it to us while we keep putting.
        self.probe -= len(payload) + 64
        if (self.probe <= 0 or self.chan.may_have_room()) and self.send_lock.acquire(False):
            self.probe = _PROBE_BYTES
            try:
                self.flush(False)
            finally:
                self.send_lock.release()

    def flush(self, block_streams: bool) -> bool:
        """Send buffered objects while the queue takes them (caller holds send_lock).

        True when nothing sendable is left; False when the queue is full (or the next
        object is a stream and *block_streams* is false).
        """
        chan, buffer, msgmax = self.chan, self.buffer, self.chan.msgmax
        track = self.track
        while True:
            try:
                payload, mtype = buffer[0]  # only send_lock's holder takes items out
            except IndexError:
                return True
            if payload is _SENTINEL:
                return True
            if len(payload) > msgmax and not block_streams:
                return False
            if track:
                # A JoinableQueue putter's window: the object is queued and noted at once.
                window = chan.counts.window
                word = window.open() if self._joinable else None
                try:
                    sent = self._send_first(payload, mtype, True)
                finally:
                    window.close(word)
            else:
                sent = self._send_first(payload, mtype, False)
            if not sent:
                return False

    def _send_first(self, payload, mtype: int, track: bool) -> bool:
        """Hand the buffer's first object to the kernel (False: the queue is full)."""
        chan = self.chan
        if len(payload) > chan.msgmax:
            self.streaming = True
            try:
                chan.streams.send(payload, mtype, track)
            finally:
                self.streaming = False
        elif not chan.try_send(payload, mtype):
            return False
        self.buffer.popleft()
        if track:
            chan.buffered_sent(payload)
        return True

    def _flush_locked(self) -> bool:
        with self.send_lock:
            return self.flush(True)

    def _run(self) -> None:
        cond, buffer, msgmax = self.cond, self.buffer, self.chan.msgmax
        while True:
            with cond:
                while not buffer:
                    cond.wait()
                if buffer[0][0] is _SENTINEL:
                    buffer.popleft()
                    break
                if len(buffer[0][0]) <= msgmax:
                    # While the putting thread keeps putting, it flushes too: leave it
                    # alone (two threads flushing trade the GIL on every call).
                    seen = self.enqueued
                    cond.wait(_IDLE)
                    if self.enqueued != seen:
                        continue
            try:
                if not self._flush_locked():
                    with self.chan.room_wait() as room:
                        while not self._flush_locked():
                            room.sleep()
            except RemovedError as exc:
                with cond:
                    lost = sum(1 for p, _ in buffer if p is not _SENTINEL)
                    buffer.clear()
                if lost and self.released and not self.cancelled:
                    # This process let go of the queue (exit) before the flush: nobody
                    # removed it from outside.
                    warnings.warn(f"{self.chan.what()}: {lost} object(s) this "
                                  "process had put were not sent before it let go of the "
                                  "queue at exit, and are lost", RuntimeWarning, stacklevel=1)
                elif lost and not self.cancelled:
                    # (After cancel_join_thread() unsent objects may be lost, as documented.)
                    warnings.warn(f"{exc}; {lost} object(s) this process had put could not "
                                  "be sent and are lost", RuntimeWarning, stacklevel=1)
                break
            except Exception as exc:  # pragma: no cover - reported like the stdlib does
                with self.send_lock:
                    payload = buffer.popleft()[0] if buffer else None
                self.error_hook(exc, payload)
        self.release()

    def shutdown(self, join: bool) -> None:
        """Flush and let go of the queue: at close(), collection or exit. Only at exit
        (*join*, unless cancelled) does it wait for the flush; a collected queue's
        thread finishes and lets go by itself, so dropping a queue never blocks."""
        with self.cond:
            thread = self.thread
            alive = thread is not None and thread.is_alive()
            if alive:
                self.buffer.append((_SENTINEL, 0))
                self.cond.notify()
        if not alive:
            self.release()
        elif util._exiting:  # type: ignore[attr-defined]
            # Other daemon threads may still touch the mapping: the kernel unmaps at exit.
            if join and not self.cancelled and thread is not None:
                thread.join()
            self.chan.release(detach=False)
        elif self.cancelled:
            # The thread may still be blocked; let the last holder remove, keep the mapping.
            self.chan.release(detach=False)
        else:
            # The thread lets go when it has flushed; if the program ends first, its
            # hold must still be given back (the last holder removes the queue). The
            # thread's release() cancels this, so a closed queue leaves nothing behind.
            with self.cond:
                if not self.released:
                    self.exit_finalizer = util.Finalize(None, self._release_at_exit,
                                                        exitpriority=-10)

    def _release_at_exit(self) -> None:
        with self.cond:
            if self.released:
                return
            self.released = True
        self.chan.release(detach=False)

    def release(self) -> None:
        with self.cond:
            if self.released:
                return
            self.released = True
            finalizer, self.exit_finalizer = self.exit_finalizer, None
        if finalizer is not None:
            finalizer.cancel()
        self.chan.release(detach=not util._exiting)  # type: ignore[attr-defined]

    def discard(self) -> int:
        """Drop the objects not handed to the kernel yet (their queue is abandoned, as a
        terminated Pool's is): how many. The thread then finds nothing to wait for."""
        with self.send_lock, self.cond:
            buffer = self.buffer
            dropped = sum(1 for item in buffer if item[0] is not _SENTINEL)
            kept = [item for item in buffer if item[0] is _SENTINEL]
            buffer.clear()
            buffer.extend(kept)
            self.cond.notify()
        return dropped

    @property
    def pending(self) -> int:
        """Objects in the buffer (the end-of-flush marker not counted)."""
        buffer = self.buffer
        return len(buffer) - (1 if buffer and buffer[-1][0] is _SENTINEL else 0)

    def unsent(self) -> int:
        """Objects put in this process that the kernel queue does not show yet."""
        return self.pending - self.streaming
