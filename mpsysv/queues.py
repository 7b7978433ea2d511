"""``Queue``, ``SimpleQueue`` and ``JoinableQueue`` with the API of ``multiprocessing``.

Objects are pickled in the caller and handed to the kernel at once when the queue
has room (one ``msgsnd``; a large object's parcel message likewise); otherwise they
wait in a per-process buffer, so ``put`` on an unbounded queue never blocks, as in the
stdlib. Streamed objects (see ``_streams``) always go through the buffer.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
import types
import warnings
import weakref
from collections import deque
from multiprocessing import queues as _stdlib, util
from multiprocessing.reduction import ForkingPickler
from queue import Empty, Full
from time import monotonic
from typing import Any, Optional

from . import _libc as L
from ._channel import KIND_JOINABLE, KIND_NAMES, KIND_QUEUE, KIND_SIMPLE, MTYPE_MAX, SLOTS, \
    Batch, Channel, _Empty
from ._wire import encode_batch
from ._names import check_name
from . import _parcels

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "Empty", "Full", "MTYPE_MAX"]

_SENTINEL = object()
_IDLE = 0.001  # a putting thread quiet this long leaves the flushing to the feeder thread
_PROBE_BYTES = 1024  # buffered bytes (+64 per object) between flush attempts of the putter
_PLAIN = frozenset((str, bytes))
_SCALARS = frozenset((int, float, bool, type(None)))  # see _Pickler
_loads = pickle.loads
_dumps = pickle.dumps
_live: "weakref.WeakSet[_Base]" = weakref.WeakSet()


def _check_mtype(mtype, allow_selectors: bool) -> int:
    if not isinstance(mtype, int) or isinstance(mtype, bool):
        raise TypeError(f"'mtype' must be an int, not {type(mtype).__name__}")
    low = -MTYPE_MAX if allow_selectors else 1
    if not low <= mtype <= MTYPE_MAX:
        what = f"in -{MTYPE_MAX}..{MTYPE_MAX}" if allow_selectors else f"in 1..{MTYPE_MAX}"
        raise ValueError(f"'mtype' must be {what}, not {mtype}")
    return mtype


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class _Pickler:
    """Pickles with multiprocessing's reducers; plain objects take ``pickle.dumps``
    (scalars with protocol 3, whose pickles have no 9-byte FRAME opcode, so 2.5x more of
    them fit the queue)."""

    __slots__ = ("_pool",)

    def __init__(self):
        self._pool = []

    def dumps(self, obj) -> bytes:
        kind = type(obj)
        if kind in _SCALARS:
            return _dumps(obj, 3)
        if kind in _PLAIN:
            return _dumps(obj, 5)
        try:
            f, p = self._pool.pop()
        except IndexError:
            f = io.BytesIO()
            p = ForkingPickler(f, 5)
        try:
            p.dump(obj)
            return f.getvalue()
        finally:
            p.clear_memo()
            f.seek(0)
            f.truncate()
            self._pool.append((f, p))


class _Pieces:
    """The pickle of a large ``bytes`` object as pieces (opcodes, the object itself,
    STOP): a parcel copies the object once, straight into its segment, instead of
    first into a pickle of its own (a copy and a fresh allocation fewer)."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, data: bytes):
        # PROTO 5, BINBYTES8 <length u64> <data>, STOP: what pickle.loads reads back.
        self.parts = (b"\x80\x05\x8e" + len(data).to_bytes(8, "little"), data, b".")
        self.nbytes = len(data) + 12

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


class _Feeder:
    """The per-process buffer of objects the kernel queue had no room for, and the
    thread that flushes it. It holds no queue reference, so a forgotten queue can be
    collected while its data drains.

    Objects leave the buffer strictly in order. While the putting thread keeps adding
    to a backlog it flushes it too (without blocking); the thread takes over once the
    putter is quiet and sleeps on a futex, not in msgsnd, while the queue is full.
    """

    def __init__(self, chan: Channel, error_hook):
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
        # Tell the channel what left the buffer (counted objects, parcels): see _journal.
        self.track = chan.counted

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
            if not (chan.counted_move(lambda: self._send_first(payload, mtype, True))
                    if track else self._send_first(payload, mtype, False)):
                return False

    def _send_first(self, payload, mtype: int, track: bool) -> bool:
        """Hand the buffer's first object to the kernel (False: the queue is full)."""
        chan = self.chan
        if len(payload) > chan.msgmax:
            self.streaming = True
            try:
                chan.send_stream(payload, mtype, track)
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
                    self.chan.wait_room(self._flush_locked)
            except L.RemovedError as exc:
                with cond:
                    lost = sum(1 for p, _ in buffer if p is not _SENTINEL)
                    buffer.clear()
                if lost:
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
        elif util._exiting:
            # Other daemon threads may still touch the mapping: the kernel unmaps at exit.
            if join and not self.cancelled:
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
        self.chan.release(detach=not util._exiting)

    @property
    def pending(self) -> int:
        """Objects in the buffer (the end-of-flush marker not counted)."""
        buffer = self.buffer
        return len(buffer) - (1 if buffer and buffer[-1][0] is _SENTINEL else 0)

    def unsent(self) -> int:
        """Objects put in this process that the kernel queue does not show yet."""
        return self.pending - self.streaming


class _Base:
    _kind = KIND_QUEUE

    def __init__(self, maxsize: int = 0, *, ctx: Any = None, name: Optional[str] = None,
                 create: bool = False, strict: bool = False, mode: int = 0o600):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"'maxsize' must be an int, not {type(maxsize).__name__}")
        if maxsize > L.SEM_VALUE_MAX:
            raise ValueError(f"'maxsize' must be at most {L.SEM_VALUE_MAX}, not {maxsize}")
        maxsize = max(maxsize, 0)
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
            raise ValueError(f"'mode' must be permission bits in 0..0o777, not {mode!r}")
        if name is None:
            if create:
                raise ValueError("create=True needs a name (anonymous queues are always new)")
            chan = Channel.create(self._kind, maxsize, None, mode)
        else:
            name = check_name(name)
            if create:
                chan = Channel.create(self._kind, maxsize, name, mode)
            else:
                chan = Channel.open_name(name)
                if chan.kind != self._kind:
                    chan.detach()
                    raise ValueError(f"queue {name!r} is a {KIND_NAMES.get(chan.kind, '?')}, "
                                     f"not a {type(self).__name__}")
        self._strict = bool(strict)
        self._setup(chan)

    def _setup(self, chan: Channel) -> None:
        self._chan = chan
        self._maxsize = chan.maxsize
        self._msgmax = chan.msgmax
        self._closed = False
        self._used = False
        self._stash: deque = deque()  # the rest of a batch this handle took: (mtype, obj)
        self._pickler = _Pickler()
        self._feeder = _Feeder(chan, self._on_queue_feeder_error)
        self._finalizer = None
        self._register_finalizer()
        _live.add(self)
        util.register_after_fork(self, _Base._register_finalizer)

    def _register_finalizer(self) -> None:
        if self._finalizer is not None:
            self._finalizer.cancel()
        self._finalizer = util.Finalize(self, self._feeder.shutdown, args=(True,),
                                        exitpriority=-10)

    def _after_fork(self) -> None:
        """In a fork child: the parent's buffer and thread are not ours; the mapping is."""
        for attr in ("_reader_part", "_writer_part", "_rlock_part"):
            part = self.__dict__.pop(attr, None)
            if part is not None and hasattr(part, "_after_fork"):
                part._after_fork()
        self._feeder = _Feeder(self._chan, self._on_queue_feeder_error)
        self._stash = deque()
        self._chan._after_fork()
        self._pickler = _Pickler()
        self._register_finalizer()

    # -- pickling: a handle re-attaches by the control segment's id -------------------

    def __getstate__(self):
        if self._closed:
            raise ValueError(f"{type(self).__name__} {self!r} is closed")
        ctl_id, expect = self._chan.identity()
        return ctl_id, expect, self._strict

    def __setstate__(self, state) -> None:
        ctl_id, expect, strict = state
        self._strict = strict
        self._setup(Channel.open_id(ctl_id, expect))

    # -- the stdlib API ---------------------------------------------------------------

    def put(self, obj, block: bool = True, timeout: Optional[float] = None, *,
            mtype: int = 1) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        self._used = True
        if mtype != 1:
            _check_mtype(mtype, False)
        try:
            kind = type(obj)
            if kind in _SCALARS:  # _Pickler's rule, inlined on the hot path
                payload = _dumps(obj, 3)
            elif kind is bytes and len(obj) >= _parcels.PARCEL_MIN:
                payload = _Pieces(obj)
            else:
                payload = self._pickler.dumps(obj)
        except Exception as exc:
            if self._strict:
                raise
            self._on_queue_feeder_error(exc, obj)
            return
        if self._chan.counted:
            self._put_counted(payload, mtype, block, timeout)
        elif len(payload) > self._msgmax:
            self._send_large(payload, mtype)
        elif self._feeder.buffer or not self._chan.try_send(payload, mtype):
            self._feeder.enqueue(payload, mtype)  # (_send(), inlined: the hot path)

    def _send(self, payload, mtype: int) -> bool:
        """Hand one message's worth to the kernel now (True), or to the feeder, in order."""
        if len(payload) > self._msgmax:
            return self._send_large(payload, mtype)
        if not self._feeder.buffer and self._chan.try_send(payload, mtype):
            return True
        self._feeder.enqueue(payload, mtype)
        return False

    def _send_large(self, payload, mtype: int) -> bool:
        """``_send()`` of a multi-message object: a parcel when it can, else a stream."""
        if len(payload) >= _parcels.PARCEL_MIN:
            message = self._chan.parcels.wrap(payload)
            if message is not None:
                self._feeder.track = True  # it tells the table when the message is out
                if not self._feeder.buffer and self._chan.try_send(message, mtype):
                    self._chan.parcels.handed(message)
                    return True
                payload = message
        if type(payload) is _Pieces:  # it streams after all
            payload = bytes(payload)
        self._feeder.enqueue(payload, mtype)
        return False

    def _put_counted(self, payload, mtype: int, block: bool, timeout: Optional[float]) -> None:
        """``put()`` of a bounded or joinable queue: the slot and the task it takes stay
        noted in this process's journal entry until the object is in the kernel queue,
        so that if this process dies first the next user of the queue gives them back."""
        chan = self._chan
        if self._maxsize:
            self._take_slots(1, block, timeout)
        if self._kind == KIND_JOINABLE:
            chan.task_added()
        self._send_counted(payload, mtype)

    def _send_counted(self, payload, mtype: int) -> None:
        """``_send()`` of a counted object; a JoinableQueue's putter marks the moment its
        object is both queued and noted (see _journal)."""
        chan = self._chan

        def send() -> bool:
            if self._send(payload, mtype):
                chan.counted_sent(1)
            return True

        chan.counted_move(send)

    def _take_slots(self, count: int, block: bool, timeout: Optional[float]) -> None:
        if block:
            _check_timeout(timeout)
        deadline = None if timeout is None or not block else monotonic() + timeout
        if not self._chan.take_slots(count, block, deadline):
            raise Full

    def get(self, block: bool = True, timeout: Optional[float] = None, *, mtype: int = 0):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if mtype:
            _check_mtype(mtype, True)
        deadline = None
        if block and timeout is not None:
            _check_timeout(timeout)
            deadline = monotonic() + timeout
        if self._stash:
            found = self._from_stash(mtype)
            if found is not _SENTINEL:
                return found
        while True:
            try:
                got = self._chan.receive(_loads, mtype, block, deadline)
            except _Empty:
                raise Empty from None
            if type(got) is not Batch:
                return got
            if got:
                self._stash.extend((got.mtype, obj) for obj in got[1:])
                return got[0]

    def _from_stash(self, mtype: int):
        """The first stashed object *mtype* selects (as msgrcv would), else _SENTINEL."""
        stash = self._stash
        if mtype == 0:
            return stash.popleft()[1]
        best = None
        for i, (t, _) in enumerate(stash):
            if t == mtype or (mtype < 0 and t <= -mtype and (best is None or t < stash[best][0])):
                best = i
                if t == mtype:
                    break
        if best is None:
            return _SENTINEL
        obj = stash[best][1]
        del stash[best]
        return obj

    def put_many(self, objs, block: bool = True, timeout: Optional[float] = None, *,
                 mtype: int = 1) -> None:
        """Put every object of *objs*, in order, in as few messages as possible.

        The semantics of that many ``put()`` calls (order, *mtype*, ``maxsize``: all
        slots are taken or none, ``Full`` otherwise), except that on an unbounded
        ``Queue`` or ``SimpleQueue`` consecutive small objects share a message (pickled
        as one list) and one getter takes a shared message whole: its other objects
        come from that handle's next ``get()`` calls. (A bounded or joinable queue
        sends one message per object: its counts are derived from the kernel's message
        count after a crash, see README.)
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if mtype != 1:
            _check_mtype(mtype, False)
        chunks = list(self._pickle_chunks(list(objs)))
        count = sum(n for _, n in chunks)
        if not count:
            return
        if self._maxsize:
            self._take_slots(count, block, timeout)
        chan = self._chan
        if self._kind == KIND_JOINABLE:
            for _ in range(count):
                chan.task_added()
        if not chan.counted:
            for message, n in chunks:
                if n > 1:
                    chan.batch_added(n)
                self._send(message, mtype)
            return
        for message, _ in chunks:
            self._send_counted(message, mtype)

    def _pickle_chunks(self, objs: list):
        """``(message, object count)`` for *objs*: lists pickled whole while they fit
        one message (far cheaper per object than one pickle each), split otherwise;
        one object per message on a counted queue."""
        if not objs:
            return
        if len(objs) > 1 and self._chan.counted:
            for one in objs:
                yield from self._pickle_chunks([one])
            return
        if len(objs) == 1:
            try:
                yield self._pickler.dumps(objs[0]), 1
            except Exception as exc:
                if self._strict:
                    raise
                self._on_queue_feeder_error(exc, objs[0])
            return
        try:
            data = self._pickler.dumps(objs)
        except Exception:
            parts = 2  # find the unpicklable ones, one by one if need be
        else:
            if len(data) < self._msgmax:
                yield encode_batch(data), len(objs)
                return
            parts = -(-len(data) * 10 // (self._msgmax * 9))
        step = -(-len(objs) // parts)
        for i in range(0, len(objs), step):
            yield from self._pickle_chunks(objs[i:i + step])

    def get_many(self, max_items: int, block: bool = True, timeout: Optional[float] = None,
                 *, mtype: int = 0) -> list:
        """Up to *max_items* objects: the first as ``get()`` waits for it, then whatever
        is there without waiting. ``Empty`` when not even one came."""
        if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
            raise ValueError(f"'max_items' must be a positive int, not {max_items!r}")
        out = [self.get(block, timeout, mtype=mtype)]
        while len(out) < max_items:
            if self._stash:
                found = self._from_stash(mtype)
                if found is not _SENTINEL:
                    out.append(found)
                    continue
            try:
                got = self._chan.receive(_loads, mtype, False, None)
            except _Empty:
                break
            if type(got) is not Batch:
                out.append(got)
            elif got:
                room = max_items - len(out)
                out.extend(got[:room])
                self._stash.extend((got.mtype, obj) for obj in got[room:])
        return out

    def put_nowait(self, obj, *, mtype: int = 1) -> None:
        self.put(obj, False, mtype=mtype)

    def get_nowait(self, *, mtype: int = 0):
        return self.get(False, mtype=mtype)

    def qsize(self) -> int:
        """Objects in the kernel queue plus those this process buffered or stashed."""
        if self._closed:
            # As the stdlib (3.13): a queue closed before it was used reads as empty.
            if not self._used and self._kind != KIND_SIMPLE:
                return 0
            raise OSError(f"Queue {self!r} is closed")
        return self._chan.qsize() + self._feeder.unsent() + len(self._stash)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self._maxsize) and self._chan.sems[SLOTS].value == 0

    def close(self) -> None:
        """No more puts or gets from this process; buffered data is still flushed."""
        if self._closed:
            return
        self._closed = True
        self._feeder.shutdown(False)

    def join_thread(self) -> None:
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        thread = self._feeder.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def cancel_join_thread(self) -> None:
        self._feeder.cancelled = True

    @staticmethod
    def _on_queue_feeder_error(e, obj) -> None:
        """Called when an object cannot be pickled; override to handle it (stdlib hook)."""
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__)

    # -- what multiprocessing.Pool and ProcessPoolExecutor reach for ------------------

    def _pool_part(self, attr: str, factory: str):
        part = self.__dict__.get(attr)
        if part is None:
            from . import _poolsupport
            part = self.__dict__[attr] = getattr(_poolsupport, factory)(self)
        return part

    @property
    def _reader(self):
        """A Connection-like reader (recv, poll, fileno, close) for stdlib internals."""
        return self._pool_part("_reader_part", "Reader")

    @property
    def _writer(self):
        """A Connection-like writer (send, close) for stdlib internals."""
        return self._pool_part("_writer_part", "Writer")

    @property
    def _rlock(self):
        return self._pool_part("_rlock_part", "ReadLock")

    def _poll(self, timeout: float = 0.0) -> bool:
        return self._reader.poll(timeout)

    # -- mpsysv extensions ------------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        return self._chan.name

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def unlink(self) -> None:
        """Remove the queue's kernel objects now; a named queue's name is free at once."""
        self._chan.unlink()

    def __repr__(self) -> str:
        c = self._chan
        label = f"name={c.name!r} " if c.name else ""
        return (f"<mpsysv.{type(self).__name__} {label}ctl={c.ctl_id} msq=({c.main_qid}, "
                f"{c.stream_qid}) sem={c.semid} maxsize={self._maxsize}>")

    __class_getitem__ = classmethod(types.GenericAlias)


# Each class also derives from its multiprocessing counterpart, after _Base, so that code
# that checks the stdlib's types (logging.config's QueueHandler, test helpers) accepts
# it. _Base defines every public method and every private one that stdlib callers reach
# for (``_reader``, ``_writer``, ``_rlock``, ``_poll``, ``_after_fork``, pickling), so none
# of the stdlib's code runs: not its __init__, not its feeder thread. Only its pipe
# plumbing (``_reset``, ``_start_thread``, ``_feed``, ``_finalize_join``,
# ``_finalize_close``, ``_terminate_broken``) stays reachable by name, and nothing calls
# it. The classes keep their own module and name, so handles pickle as mpsysv's.

class Queue(_Base, _stdlib.Queue):
    """A process-shared FIFO of pickled objects on System V message queues."""

    _kind = KIND_QUEUE


class JoinableQueue(Queue, _stdlib.JoinableQueue):
    """A ``Queue`` that counts unfinished tasks: ``task_done()`` and ``join()``."""

    _kind = KIND_JOINABLE

    def task_done(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        self._chan.task_done()

    def join(self) -> None:
        self._chan.join_tasks()


class SimpleQueue(_Base, _stdlib.SimpleQueue):
    """The stdlib's minimal queue: put, get, empty, close.

    As the stdlib's, ``put()`` raises pickling errors (it has no feeder to report
    them; pass ``strict=False`` for the Queue behaviour) and a closed queue raises
    ``OSError`` rather than ``ValueError``.
    """

    _kind = KIND_SIMPLE

    def __init__(self, *, ctx: Any = None, name: Optional[str] = None, create: bool = False,
                 strict: bool = True, mode: int = 0o600):
        super().__init__(0, ctx=ctx, name=name, create=create, strict=strict, mode=mode)

    def put(self, obj, *, mtype: int = 1) -> None:
        if self._closed:
            raise OSError(f"handle is closed: SimpleQueue {self!r}")
        super().put(obj, mtype=mtype)

    def get(self, *, mtype: int = 0):
        if self._closed:
            raise OSError(f"handle is closed: SimpleQueue {self!r}")
        return super().get(mtype=mtype)

    def empty(self) -> bool:
        return self.qsize() == 0


def _after_fork_in_child() -> None:
    for q in list(_live):
        q._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
