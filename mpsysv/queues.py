"""``Queue``, ``SimpleQueue`` and ``JoinableQueue`` with the API of ``multiprocessing``.

Objects are pickled in the caller and handed to the kernel at once when the queue
has room (one ``msgsnd``; a large object's parcel message likewise); otherwise they
wait in a per-process buffer, so ``put`` on an unbounded queue never blocks, as in the
stdlib. Streamed objects (see ``_queue.streams``) always go through the buffer.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import types
import weakref
from collections import deque
from multiprocessing import queues as _stdlib, util
from queue import Empty, Full
from time import monotonic
from typing import TYPE_CHECKING, Any, Generic, Iterable, List, Optional, TypeVar

from ._connection import ConnectionParts
from ._gc import collect as _gc
from ._ipc import libc as L
from ._ipc.names import check_name
from ._queue.channel import Batch, Channel, _Empty
from ._queue.layout import KIND_JOINABLE, KIND_NAMES, KIND_QUEUE, KIND_SIMPLE, MTYPE_MAX, FREE_SLOTS
from ._queue.feeder import SENTINEL as _SENTINEL
from ._queue.feeder import Feeder as _Feeder
from ._queue.pickler import SCALARS as _SCALARS
from ._queue.pickler import Pickler as _Pickler
from ._queue.pickler import Pieces as _Pieces
from ._queue.wire import encode_batch
from ._queue import parcels as _parcels

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "Empty", "Full", "MTYPE_MAX"]

_loads = pickle.loads
_dumps = pickle.dumps
_live: "weakref.WeakSet[_Base[Any]]" = weakref.WeakSet()
T = TypeVar("T")


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


class _Base(ConnectionParts, Generic[T]):
    """What the three queue types share (see ``Queue`` for the arguments); the parts
    Pool and ProcessPoolExecutor reach for come from ``ConnectionParts``."""

    _kind = KIND_QUEUE

    def __init__(self, maxsize: int = 0, *, ctx: Any = None, name: Optional[str] = None,
                 create: bool = False, strict: bool = False, mode: int = 0o600,
                 zero_copy: bool = True) -> None:
        """Create a new queue, or with *name* and not *create* open an existing one;
        *zero_copy* False: received out-of-band buffers are private copies."""
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
            _gc.collect_garbage()  # once per program: what killed programs left
            chan = Channel.create(self._kind, maxsize, None, mode)
        else:
            name = check_name(name)
            if create:
                _gc.collect_garbage()  # once per program: what killed programs left
                chan = Channel.create(self._kind, maxsize, name, mode)
            else:
                chan = Channel.open_name(name)
                _check_opened(chan, name, self._kind, type(self).__name__, maxsize)
        self._strict = bool(strict)
        self._zero_copy = bool(zero_copy)
        self._setup(chan)

    def _setup(self, chan: Channel) -> None:
        self._chan = chan
        self._closed = False
        self._used = False
        self._stash: deque = deque()  # the rest of a batch this handle took: (mtype, obj)
        chan.parcels.zero_copy = self._zero_copy
        self._pickler = _Pickler(max(_parcels.ZERO_COPY_MIN, self._chan.msgmax + 1))
        self._feeder = _Feeder(chan, self._on_queue_feeder_error)
        self._finalizer: Optional[util.Finalize] = None
        self._register_finalizer()
        _live.add(self)
        util.register_after_fork(self, _Base._register_finalizer)

    def _register_finalizer(self) -> None:
        if self._finalizer is not None:
            self._finalizer.cancel()
        self._finalizer = util.Finalize(self, _let_go, args=(self._feeder, True),
                                        exitpriority=-10)

    def _after_fork(self) -> None:
        """In a fork child: the parent's buffer and thread are not ours; the mapping is."""
        self._forget_parts()
        self._feeder = _Feeder(self._chan, self._on_queue_feeder_error)
        self._stash = deque()
        self._chan._after_fork()
        self._pickler = _Pickler(max(_parcels.ZERO_COPY_MIN, self._chan.msgmax + 1))
        self._register_finalizer()

    # -- pickling: a handle re-attaches by the control segment's id -------------------

    def __getstate__(self):
        if self._closed:
            raise ValueError(f"{type(self).__name__} {self!r} is closed")
        ctl_id, expect = self._chan.identity()
        return ctl_id, expect, self._strict, self._zero_copy

    def __setstate__(self, state) -> None:
        ctl_id, expect, strict, zero_copy = state
        self._strict = strict
        self._zero_copy = zero_copy
        self._setup(Channel.open_id(ctl_id, expect))

    # -- the stdlib API ---------------------------------------------------------------

    def put(self, obj: T, block: bool = True, timeout: Optional[float] = None, *,
            mtype: int = 1) -> None:
        """Put *obj* into the queue, pickled in this process.

        An unbounded queue never blocks: when the kernel queue is full the object waits
        in this process's buffer and a feeder thread sends it later. On a bounded queue
        *block* and *timeout* work as for ``queue.Queue.put()``: wait up to *timeout*
        seconds (forever if None) for a free slot, then raise ``queue.Full``; with
        *block* false, raise ``queue.Full`` at once. *mtype* (1 <= mtype < 2**62) is the
        message type ``get(mtype=...)`` can select. Raises ``ValueError`` if the queue is
        closed. An object that cannot be pickled is reported through
        ``_on_queue_feeder_error()`` (raised instead with ``strict=True``).
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        self._used = True
        if mtype != 1:
            _check_mtype(mtype, False)
        try:
            kind = type(obj)
            if kind in _SCALARS:  # _Pickler's rule, inlined on the hot path
                payload = _dumps(obj, 3)
            elif kind is bytes and len(obj) >= _parcels.PARCEL_MIN:  # type: ignore[arg-type]
                payload = _Pieces(obj)  # type: ignore[arg-type,assignment]
            else:
                payload = self._pickler.dumps(obj, True)
        except Exception as exc:
            if self._strict:
                raise
            self._on_queue_feeder_error(_from_callers(exc), obj)
            return
        chan = self._chan
        if chan.counted:
            if timeout is None or not block:  # (_put_counted without a deadline)
                if not self._feeder.send_counted(payload, mtype, block, None):
                    raise Full
            else:
                self._put_counted(payload, mtype, block, timeout)
        elif len(payload) > chan.msgmax:
            self._feeder.send(payload, mtype)
        elif self._feeder.buffer or not chan.try_send(payload, mtype):
            self._feeder.enqueue(payload, mtype)  # (_send(), inlined: the hot path)

    def _send(self, payload, mtype: int) -> bool:
        """Hand one object to the kernel now (True), or to the feeder, in order."""
        return self._feeder.send(payload, mtype)

    def _put_counted(self, payload, mtype: int, block: bool, timeout: Optional[float]) -> None:
        """``put()`` of a bounded or joinable queue's pickled object (``Feeder.send_counted``
        owns the rule); ``Full`` when no slot came in time."""
        deadline = None
        if timeout is not None and block:
            _check_timeout(timeout)
            deadline = monotonic() + timeout
        if not self._feeder.send_counted(payload, mtype, block, deadline):
            raise Full

    def _take_slots(self, count: int, block: bool, timeout: Optional[float]) -> None:
        if block:
            _check_timeout(timeout)
        deadline = None if timeout is None or not block else monotonic() + timeout
        if not self._chan.counts.take_slots(count, block, deadline):
            raise Full

    def get(self, block: bool = True, timeout: Optional[float] = None, *,
            mtype: int = 0) -> T:
        """Remove and return an object from the queue.

        With *block* true and *timeout* None, wait (in the kernel) until one is there;
        with a *timeout*, raise ``queue.Empty`` after that many seconds; with *block*
        false, return one if there is one at once, else raise ``queue.Empty``. *mtype*
        selects as ``msgrcv()`` does: 0 the first object of any type, ``n > 0`` the first
        of type n, ``n < 0`` the first of the lowest type <= |n|. Raises ``ValueError``
        if the queue is closed.
        """
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

    # The base get, whatever a subclass overrides (for ``_connection``).
    _base_get = get

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

    def put_many(self, objs: Iterable[T], block: bool = True, timeout: Optional[float] = None,
                 *, mtype: int = 1) -> None:
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
        if self._chan.maxsize:
            if count > self._chan.maxsize and block and timeout is None:  # (it would wait forever)
                raise ValueError(f"put_many() of {count} objects on a queue of maxsize "
                                 f"{self._chan.maxsize}: its slots are taken all or none, and "
                                 f"{count} can never be free at once; put them in groups "
                                 f"of at most {self._chan.maxsize}")
            self._take_slots(count, block, timeout)
        chan = self._chan
        if not chan.counted:
            for message, n in chunks:
                if n > 1:
                    chan.counts.add_extra(n - 1)  # qsize counts the batch at once
                self._send(message, mtype)
            return
        for message, _ in chunks:
            self._feeder.send_taken(message, mtype)

    def _pickle_chunks(self, objs: list):
        """``(message, object count)`` for *objs*: lists pickled whole while they fit
        one message (far cheaper per object than one pickle each), split otherwise;
        one object per message on a counted queue (and large arrays: a parcel each)."""
        if not objs:
            return
        if len(objs) > 1 and self._chan.counted:
            for one in objs:
                yield from self._pickle_chunks([one])
            return
        if len(objs) == 1:
            try:
                yield self._pickler.dumps(objs[0], True), 1
            except Exception as exc:
                if self._strict:
                    raise
                self._on_queue_feeder_error(_from_callers(exc), objs[0])
            return
        try:
            data = self._pickler.dumps(objs, True)
        except Exception:
            parts = 2  # find the unpicklable ones, one by one if need be
        else:
            if len(data) < self._chan.msgmax:
                yield encode_batch(data), len(objs)
                return
            parts = -(-len(data) * 10 // (self._chan.msgmax * 9))
        step = -(-len(objs) // parts)
        for i in range(0, len(objs), step):
            yield from self._pickle_chunks(objs[i:i + step])

    def get_many(self, max_items: int, block: bool = True, timeout: Optional[float] = None,
                 *, mtype: int = 0) -> List[T]:
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

    def put_nowait(self, obj: T, *, mtype: int = 1) -> None:
        """Equivalent to ``put(obj, False)``."""
        self.put(obj, False, mtype=mtype)

    def get_nowait(self, *, mtype: int = 0) -> T:
        """Equivalent to ``get(False)``."""
        return self.get(False, mtype=mtype)

    def qsize(self) -> int:
        """Return the number of objects in the queue: exact, as the kernel counts them,
        plus those this process put that still wait in its buffer."""
        if self._closed:
            # As the stdlib (3.13): a queue closed before it was used reads as empty.
            if not self._used and self._kind != KIND_SIMPLE:
                return 0
            raise OSError(f"Queue {self!r} is closed")
        return self._chan.qsize() + self._feeder.unsent() + len(self._stash)

    def empty(self) -> bool:
        """Return True if the queue is empty (``qsize() == 0``), False otherwise."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Return True if a bounded queue has no free slot, False otherwise (always False
        for an unbounded queue)."""
        return bool(self._chan.maxsize) and self._chan.sems[FREE_SLOTS].value == 0

    def close(self) -> None:
        """Indicate that no more data will be put on or got from this handle by this
        process. Objects still in this process's buffer are flushed to the queue by the
        feeder thread; other processes and handles keep using the queue. The last
        holder to close (or exit) removes an anonymous queue's kernel objects."""
        if self._closed:
            return
        self._closed = True
        _let_go(self._feeder, False)

    def join_thread(self) -> None:
        """Join the feeder thread: wait until every buffered object is in the queue.

        Only after ``close()``; otherwise raises ``AssertionError``. By default a process
        does this at exit, unless ``cancel_join_thread()`` was called.
        """
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        thread = self._feeder.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def cancel_join_thread(self) -> None:
        """Do not wait for the feeder thread at exit: the process exits at once, and
        objects still in its buffer may be lost."""
        self._feeder.cancelled = True

    @staticmethod
    def _on_queue_feeder_error(e, obj) -> None:
        """Called when an object cannot be pickled; override to handle it (stdlib hook)."""
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__)

    # -- mpsysv extensions ------------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        """The queue's name, or None for an anonymous queue."""
        return self._chan.name

    @property
    def maxsize(self) -> int:
        """The number of slots of a bounded queue, 0 when unbounded."""
        return self._chan.maxsize

    def unlink(self) -> None:
        """Remove the queue's kernel objects now, with what it holds; a named queue's name
        is free at once. Processes still using the queue get ``RemovedError``."""
        self._chan.unlink()

    def __repr__(self) -> str:
        c = self._chan
        label = f"name={c.name!r} " if c.name else ""
        return (f"<mpsysv.{type(self).__name__} {label}ctl={c.ctl_id} msq=({c.main_qid}, "
                f"{c.stream_qid}) sem={c.semid} maxsize={self._chan.maxsize}>")


# Each class also derives from its multiprocessing counterpart, after _Base, so that code
# that checks the stdlib's types (logging.config's QueueHandler, test helpers) accepts
# it. _Base defines every public method and every private one that stdlib callers reach
# for (``_reader``, ``_writer``, ``_rlock`` and ``_poll`` through ConnectionParts,
# ``_after_fork``, pickling), so none of the stdlib's code runs: not its __init__, not
# its feeder thread. Only its pipe
# plumbing (``_reset``, ``_start_thread``, ``_feed``, ``_finalize_join``,
# ``_finalize_close``, ``_terminate_broken``) stays reachable by name, and nothing calls
# it. The classes keep their own module and name, so handles pickle as mpsysv's.

if TYPE_CHECKING:
    _StdQueue = _stdlib.Queue
    _StdJoinableQueue = _stdlib.JoinableQueue
    _StdSimpleQueue = _stdlib.SimpleQueue
else:
    class _Generic:
        """The stdlib's queue classes take no subscript at run time (their stubs do):
        ``_StdQueue[T]`` is the class itself."""

        def __init__(self, cls: type) -> None:
            self.cls = cls

        def __getitem__(self, item: object) -> type:
            return self.cls

    _StdQueue, _StdJoinableQueue, _StdSimpleQueue = (_Generic(_stdlib.Queue),
                                                     _Generic(_stdlib.JoinableQueue),
                                                     _Generic(_stdlib.SimpleQueue))


class Queue(_Base[T], _StdQueue[T]):
    """Queue(maxsize=0, *, ctx=None, name=None, create=False, strict=False, mode=0o600,
    zero_copy=True)

    A process-shared FIFO queue, as ``multiprocessing.Queue``, on System V message
    queues: objects are pickled in the putting process and unpickled in the getting one.

    *maxsize* > 0 bounds the queue to that many objects (``put()`` then blocks or raises
    ``queue.Full``); 0 or less means unbounded. *ctx* is accepted for the stdlib's
    signature (mpsysv queues need no context).

    *name* names the queue so that any process of the user can reach it: with
    ``create=True`` a new queue is made (``FileExistsError`` if the name is taken);
    without it the existing queue of that name is opened (``FileNotFoundError`` if there
    is none). A named queue and its contents outlive every process until ``unlink()``.
    An anonymous queue lives as long as some process holds it.

    With *strict* true, ``put()`` raises the error of an object that cannot be pickled
    instead of reporting it through ``_on_queue_feeder_error()``. *mode* holds the
    permission bits of the kernel objects (0o600: this user only). With *zero_copy*
    false, out-of-band buffers this handle receives (NumPy arrays of 16 KiB and more)
    are private copies instead of views of the segment they came in.

    Handles pickle: a queue can be passed to any process of the same user, also through
    another queue. ``Queue[int]`` and the like are accepted for type annotations.
    """

    _kind = KIND_QUEUE


class JoinableQueue(Queue[T], _StdJoinableQueue[T]):
    """JoinableQueue(maxsize=0, *, ctx=None, name=None, create=False, strict=False, mode=0o600,
    zero_copy=True)

    A ``Queue`` that counts unfinished tasks, as ``multiprocessing.JoinableQueue``: each
    ``put()`` adds one, each ``task_done()`` takes one away, and ``join()`` waits until
    none is left. The arguments are those of ``Queue``.
    """

    _kind = KIND_JOINABLE

    def task_done(self) -> None:
        """Indicate that a formerly got task is complete.

        Used by consumers: for each ``get()`` that fetched a task, a call to
        ``task_done()`` tells the queue that its processing is complete. Raises
        ``ValueError`` if called more times than there were objects put.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        self._chan.counts.task_done()

    def join(self) -> None:
        """Block until every object put on the queue has been got and processed (a
        ``task_done()`` for each)."""
        self._chan.counts.join_tasks()


class SimpleQueue(_Base[T], _StdSimpleQueue[T]):
    """SimpleQueue(*, ctx=None, name=None, create=False, strict=True, mode=0o600, zero_copy=True)

    The stdlib's minimal queue: put, get, empty, close; the arguments are those of
    ``Queue``, without *maxsize*.

    As the stdlib's, ``put()`` raises pickling errors (it has no feeder to report
    them; pass ``strict=False`` for the Queue behaviour) and a closed queue raises
    ``OSError`` rather than ``ValueError``.
    """

    _kind = KIND_SIMPLE

    def __init__(self, *, ctx: Any = None, name: Optional[str] = None, create: bool = False,
                 strict: bool = True, mode: int = 0o600, zero_copy: bool = True) -> None:
        super().__init__(0, ctx=ctx, name=name, create=create, strict=strict, mode=mode,
                         zero_copy=zero_copy)

    def put(self, obj: T, *, mtype: int = 1) -> None:  # type: ignore[override]
        """Put *obj* into the queue (never blocks)."""
        if self._closed:
            raise OSError(f"handle is closed: SimpleQueue {self!r}")
        super().put(obj, mtype=mtype)

    def get(self, *, mtype: int = 0) -> T:  # type: ignore[override]
        """Remove and return an object from the queue, waiting until there is one."""
        if self._closed:
            raise OSError(f"handle is closed: SimpleQueue {self!r}")
        return super().get(mtype=mtype)

    def empty(self) -> bool:
        """Return True if the queue is empty, False otherwise."""
        return self.qsize() == 0


def _check_opened(chan: Channel, name: str, kind: int, cls: str, maxsize: int) -> None:
    """Let go of the named queue *chan* and raise ``ValueError`` when it is not what the
    opener asked for: another kind of queue, or another *maxsize* than one given."""
    if chan.kind != kind:
        chan.detach()
        raise ValueError(f"queue {name!r} is a {KIND_NAMES.get(chan.kind, '?')}, not a {cls}")
    if maxsize and chan.maxsize != maxsize:
        chan.detach()
        own = f"{chan.maxsize}" if chan.maxsize else "0 (unbounded)"
        raise ValueError(f"queue {name!r} has maxsize {own}, not {maxsize}: open it without "
                         "maxsize (a name opens the queue as it was made)")


def _from_callers(exc: BaseException) -> BaseException:
    """*exc* with the frames of the code that called the caller of this function on top of
    its own: a reported pickling error shows the user's ``put()`` line, not only mpsysv's
    frames (the stdlib's report shows its feeder thread's)."""
    tb = exc.__traceback__
    frame: Optional[types.FrameType] = sys._getframe(2)
    while frame is not None:
        tb = types.TracebackType(tb, frame, frame.f_lasti, frame.f_lineno)
        frame = frame.f_back
    return exc.with_traceback(tb)


def _let_go(feeder: _Feeder, join: bool) -> None:
    """Flush and give back a handle's hold on its queue (at close(), collection or
    exit). An anonymous queue that others still hold has nobody left to remove it if
    they are all killed: collect garbage once more when this program ends."""
    if not feeder.chan.named:
        _gc.collect_at_exit()
    feeder.shutdown(join)


def _after_fork_in_child() -> None:
    for q in list(_live):
        q._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
