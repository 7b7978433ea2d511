"""What the stdlib's ``Pool`` and ``ProcessPoolExecutor`` reach for inside a queue.

``Pool`` calls ``_reader.recv/poll/close``, ``_writer.send/close`` and ``_rlock`` on
its ``SimpleQueue`` objects, and both hand a queue's ``_reader`` to
``multiprocessing.connection.wait()``, which needs a file descriptor. A System V
queue has none: a Reader that is waited on gets a pipe that a watcher thread keeps
readable while the queue holds a message. Bytes still move only through queues.py.
``ConnectionParts`` gives a queue class these attributes; ``abandon()`` is what a
terminated pool does to its queues.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from multiprocessing import util
from time import monotonic
from queue import Empty
from typing import Any, Optional, Protocol

from ._gc import collect as _gc
from ._queue.channel import Channel
from ._queue.feeder import Feeder
from ._queue.layout import TIMED_WAITERS, TIMED_WAKEUPS
from ._queue.pickler import Pickler

__all__ = ["Reader", "Writer", "ReadLock", "ConnectionParts", "abandon"]

# How long one wait in the kernel lasts before it looks whether its Reader or queue
# handle was closed. A Reader's close() wakes it at once; this bounds a wake-up that
# another process's waiter took, and the reaction to a close() of the queue handle.
_SLICE = 1.0
# At exit a Reader's hold goes before its queue handle's (-10): the handle is then the
# last holder and removes the queue itself. Either order is correct.
_EXIT_PRIORITY = -5


class _Base(Protocol):
    """What the adapters use of a queue handle (``queues._Base``): the base ``get``
    whatever a subclass overrides, the ``put`` path after pickling, and the parts that
    tell what is still in this process."""

    _chan: Channel
    _closed: bool
    _stash: deque
    _feeder: Feeder
    _pickler: Pickler

    def _base_get(self, block: bool = True, timeout: Optional[float] = None) -> Any: ...

    def _send(self, payload, mtype: int) -> bool: ...

    def _put_counted(self, payload, mtype: int, block: bool,
                     timeout: Optional[float]) -> None: ...

    def _existing_part(self, attr: str) -> Any: ...


def _closed_error() -> OSError:
    return OSError("handle is closed")


class _Watch:
    """A hold on the queue for waiting in the kernel, independent of the queue handle.

    It maps the queue's control segment a second time, so a ``close()`` of the queue
    never unmaps memory a waiting thread sleeps on; the mapping is a holder like any
    other, given back (the last holder removes the queue) when the last thread using it
    is out. A Reader's ``fileno()`` makes one that also owns a pipe and the watcher
    thread that keeps the pipe readable while the queue is not empty; it lets go when
    its queue handle is closed (the watcher notices within ``_SLICE``) or collected
    (with its Reader), and at exit. ``poll()`` makes one per wait.
    """

    def __init__(self, queue: _Base):
        ctl_id, expect = queue._chan.identity()
        self.chan = Channel.open_id(ctl_id, expect)
        self.queue = weakref.ref(queue)
        self.cond = threading.Condition(threading.Lock())
        self.users = 1  # the owner; each waiting thread adds one
        self.closing = False
        self.readable = False
        self.failure: Optional[BaseException] = None
        self.rfd = self.wfd = -1
        self.thread: Optional[threading.Thread] = None

    # -- users: the mapping goes when the last of them leaves --------------------------

    def enter(self) -> None:
        with self.cond:
            if self.closing:
                raise _closed_error()
            self.users += 1

    def leave(self) -> None:
        with self.cond:
            self.users -= 1
            last = self.users == 0
        if last:
            for fd in (self.rfd, self.wfd):
                if fd >= 0:
                    os.close(fd)
            self.rfd = self.wfd = -1
            if self.chan.release():
                _gc.collect_at_exit()

    def close(self) -> None:
        """Stop the watcher and let go of the mapping once no thread is waiting on it."""
        with self.cond:
            if self.closing:
                return
            self.closing = True
            self.cond.notify_all()
            waiting = self.users > 1
            thread = self.thread
        if waiting:
            self.chan.sems[TIMED_WAKEUPS].post()
        if thread is not None and thread is not threading.current_thread():
            # A wake-up can be taken by another process's waiter: nudge until it is out.
            deadline = monotonic() + _SLICE + 1.0
            while thread.is_alive() and monotonic() < deadline:
                thread.join(0.05)
                if thread.is_alive():
                    self._nudge()
        # Normally the last user by now: the mapping goes in this thread, one after the
        # other with the queue handle's own release when both are collected together.
        self.leave()

    def _nudge(self) -> None:
        with self.cond:
            if self.users == 0:
                return  # released: the mapping is gone
            self.chan.sems[TIMED_WAKEUPS].post()

    def _handle_closed(self) -> bool:
        queue = self.queue()
        return queue is None or queue._closed

    def forget(self) -> None:
        """In a fork child: the parent's pipe, thread and mapping are not ours."""
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = self.wfd = -1
        self.chan.detach()

    # -- waiting in the kernel ----------------------------------------------------------

    def wait_nonempty(self, deadline: Optional[float]) -> bool:
        """True once the queue holds a message; False at *deadline*, on close, or when
        the queue handle was closed.

        Registers as a timed waiter, like a timed ``get()``: every producer then posts
        the wake counter after its send.
        """
        chan = self.chan
        if chan.qsize():
            return True
        if deadline is not None and monotonic() >= deadline:
            return False
        tw, wake = chan.sems[TIMED_WAITERS], chan.sems[TIMED_WAKEUPS]
        woken = found = False
        tw.post()
        try:
            while not self.closing and not self._handle_closed():
                # Registered before looking: a message sent after this look posts TIMED_WAKEUPS.
                if chan.qsize():
                    found = True
                    return True
                now = monotonic()
                if deadline is None:
                    woken = wake.acquire(now + _SLICE) or woken
                elif now >= deadline:
                    return False
                else:
                    woken = wake.acquire(min(now + _SLICE, deadline)) or woken
            return False
        finally:
            tw.try_acquire()
            if woken and found:
                # The wake-up this took was meant for one message, which it leaves in
                # the queue: a getter sleeping beside it must get one in its place.
                chan._wake_timed()

    # -- the pipe: readable exactly while the queue holds a message -----------------------

    def level_fd(self, pending: bool) -> int:
        """The pipe's read end, made readable or drained to match the queue now.

        ``wait()`` asks for ``fileno()`` each time it is called, so a queue emptied by
        ``get()`` (which knows nothing of the pipe) is seen as empty by the next wait.
        When the pipe already matches the queue nothing is changed and no lock is taken
        (only this method clears the pipe, and a watcher only makes it readable).
        """
        if self.thread is not None and self.failure is None and not self.closing:
            try:
                nonempty = pending or self.chan.qsize() > 0
            except OSError:
                nonempty = None  # (the locked path below records the failure)
            if nonempty is not None and nonempty == self.readable:
                return self.rfd
        with self.cond:
            if self.closing:
                raise _closed_error()
            if self.thread is None:
                self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self.users += 1
                self.thread = threading.Thread(target=self._run, name="mpsysv.ReaderWatcher",
                                               daemon=True)
                self.thread.start()
            if self.failure is None:
                try:
                    nonempty = pending or self.chan.qsize() > 0
                except OSError as exc:
                    self.failure = exc
                    nonempty = True
                if nonempty:
                    self._set()
                elif self.readable:
                    self._clear()
                    self.cond.notify_all()
            return self.rfd

    def _set(self) -> None:
        if not self.readable:
            # The flag first: a lock-free look in level_fd() must never see the byte
            # while the flag still says empty (os.write lets other threads run).
            self.readable = True
            os.write(self.wfd, b"\0")

    def _clear(self) -> None:
        try:
            os.read(self.rfd, 1)
        except BlockingIOError:
            pass
        self.readable = False

    def _run(self) -> None:
        """Keep the pipe readable while the queue holds a message.

        The watcher stays armed (registered as a timed waiter, asleep on the wake
        counter) while its Reader is being polled: a send wakes it, it makes the pipe
        readable, and ``fileno()`` drains the pipe when the queue is empty again, with
        no hand-off back to this thread. It parks instead (unregistered: the queue's
        writers then pay nothing for it) when a message comes while the pipe is still
        readable, i.e. nobody is polling, or when another waiter may need the wake-up
        it took; ``fileno()`` unparks it as it drains the pipe.

        Invariant: while armed, every message sent after the last look under
        ``cond`` posts the wake counter or finds a token there already, so the look
        after the next wake-up sees it (looks and pipe changes happen under ``cond``).
        """
        cond, chan = self.cond, self.chan
        tw, wake = chan.sems[TIMED_WAITERS], chan.sems[TIMED_WAKEUPS]
        tw_word = chan.words[TIMED_WAITERS]
        armed = park = False
        try:
            while True:
                with cond:
                    if self.closing or self._handle_closed():
                        break
                    if park:
                        park = False
                        if armed:
                            tw.try_acquire()
                            armed = False
                        while self.readable and not self.closing and not self._handle_closed():
                            cond.wait(_SLICE)
                        continue
                    if not armed:
                        tw.post()  # registered before looking
                        armed = True
                    if self.failure is None and chan.qsize():
                        if self.readable:
                            park = True
                            continue
                        self._set()
                woke = wake.acquire(monotonic() + _SLICE)
                if woke and tw_word[0] > 1:
                    with cond:
                        if not self.closing and chan.qsize():
                            # The wake-up this took may have been meant for a getter
                            # sleeping beside it, for the message it leaves in the
                            # queue: pass it on, and park so as not to take it back.
                            chan._wake_timed()
                            self._set()
                            park = True
        except OSError as exc:
            # The queue was removed under us: stay readable so that recv() reports it.
            with cond:
                self.failure = exc
                if not self.closing:
                    self._set()
        finally:
            if armed:
                tw.try_acquire()
            queue = self.queue()
            if queue is not None and queue._closed:
                self.close()  # the handle was closed (a collected one's Reader closes us)
            self.leave()


class Reader:
    """The receiving end of a queue as ``multiprocessing.connection.Connection`` shows it.

    ``recv()`` is the queue's blocking ``get()``. ``poll()`` tells whether a message is
    there (waiting in the kernel up to *timeout*); while this process holds the
    queue's ``_rlock`` a successful ``poll()`` also takes the object, so that the
    ``recv()`` after it can never block on a message another process took in between
    (what ``Pool._help_stuff_finish`` relies on). ``fileno()`` is a pipe for
    ``wait()``: readable while the queue holds a message; a wait that woke spuriously
    is followed by a ``recv()`` that simply waits for the next message.
    """

    def __init__(self, queue: _Base):
        self._queue = weakref.ref(queue)
        self._closed = False
        self._taken: deque = deque()
        self._watch: Optional[_Watch] = None  # fileno()'s, kept until close
        self._waits: set = set()  # the holds of poll() calls under way
        self._finalizer: Optional[util.Finalize] = None
        self._setup_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True after ``close()`` of this Reader or of its queue."""
        queue = self._queue()
        return self._closed or queue is None or queue._closed

    readable = True
    writable = False

    def recv(self) -> Any:
        queue = self._live()
        if self._taken:
            return self._taken.popleft()
        return queue._base_get()

    def poll(self, timeout: Optional[float] = 0.0) -> bool:
        queue = self._live()
        if self._taken or queue._stash:
            return True
        if self._reserving(queue):
            return self._reserve(queue, timeout)
        if timeout is not None and timeout <= 0:
            return queue._chan.qsize() > 0
        deadline = None if timeout is None else monotonic() + timeout
        with self._setup_lock:
            watch = self._watch if self._watch is not None and not self._watch.closing else None
            if watch is not None:
                watch.enter()
        if watch is None:
            watch = _Watch(queue)  # this wait's own hold, given back when it ends
            self._waits.add(watch)
            try:
                return watch.wait_nonempty(deadline)
            finally:
                self._waits.discard(watch)
                watch.close()
        try:
            return watch.wait_nonempty(deadline)
        finally:
            watch.leave()

    def fileno(self) -> int:
        queue = self._live()
        return self._watch_for(queue).level_fd(bool(self._taken or queue._stash))

    def close(self) -> None:
        """This process reads no more through this Reader; the queue stays usable."""
        if self._closed:
            return
        self._closed = True
        self._taken.clear()
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mpsysv Reader of {self._queue()!r}{' closed' if self._closed else ''}>"

    # -- plumbing --------------------------------------------------------------------------

    def _live(self) -> _Base:
        queue = self._queue()
        if self._closed or queue is None or queue._closed:
            if self._finalizer is not None:
                self._finalizer()  # the queue handle is closed: so is the watch
            raise _closed_error()
        return queue

    def _reserve(self, queue: _Base, timeout: Optional[float]) -> bool:
        """Under the read lock: take the next object for ``recv()``.

        Objects this process put that are still on their way into the queue (in its
        feeder) count as there: when ``Pool._help_stuff_finish`` drains a task queue,
        an empty kernel queue must not end the drain while the task handler waits for
        its last task to go in.
        """
        deadline = None if timeout is None else monotonic() + max(timeout, 0.0)
        while True:
            in_flight = queue._feeder.pending
            if in_flight:
                wait: Optional[float] = 0.05  # look at the feeder again soon
            elif deadline is None:
                wait = None
            else:
                wait = max(deadline - monotonic(), 0.0)
            try:
                if wait == 0.0:
                    obj = queue._base_get(False)
                else:
                    obj = queue._base_get(True, wait)
            except Empty:
                if in_flight or (deadline is not None and monotonic() < deadline):
                    continue
                return False
            self._taken.append(obj)
            return True

    @staticmethod
    def _reserving(queue: _Base) -> bool:
        lock = queue._existing_part("_rlock")
        return lock is not None and lock._is_owned()

    def _watch_for(self, queue: _Base) -> _Watch:
        with self._setup_lock:
            if self._watch is None:
                self._watch = _Watch(queue)
                self._finalizer = util.Finalize(self, self._watch.close,
                                                exitpriority=_EXIT_PRIORITY)
            elif self._watch.closing:
                raise _closed_error()
            return self._watch

    def _after_fork(self) -> None:
        """In a fork child, before this Reader is dropped: give back what was the parent's."""
        if self._finalizer is not None:
            self._finalizer.cancel()
        for watch in [self._watch, *self._waits]:
            if watch is not None:
                watch.forget()


class Writer:
    """The sending end of a queue as a ``Connection`` shows it: ``send()`` is ``put()``."""

    def __init__(self, queue: _Base):
        self._queue = weakref.ref(queue)
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after ``close()`` of this Writer or of its queue."""
        queue = self._queue()
        return self._closed or queue is None or queue._closed

    readable = False
    writable = True

    def send(self, obj: Any, mtype: int = 1) -> None:
        """Put *obj* into the queue (as message type *mtype*) and return once it is in
        the kernel queue.

        Like a pipe's writer it pickles here (once), raising if it cannot, and waits
        while the queue is full; unlike ``put()`` it never returns with the object
        still in this process's feeder buffer. Pool's task handler must not be able to
        finish while its tasks sit in its own process, where no worker can ever get them.
        """
        queue = self._queue()
        if self._closed or queue is None or queue._closed:
            raise _closed_error()
        payload = queue._pickler.dumps(obj, True)
        chan, feeder = queue._chan, queue._feeder
        if not chan.counted and not feeder.buffer and type(payload) is bytes \
                and len(payload) <= chan.msgmax:
            # Nothing of this process is ahead of it: wait in msgsnd, where the kernel
            # wakes this thread the moment there is room.
            chan.send_waiting(payload, mtype)
            return
        if chan.counted:
            queue._put_counted(payload, mtype, True, None)
        else:
            queue._send(payload, mtype)
        if feeder.buffer:
            _flush_here(feeder, chan)

    def close(self) -> None:
        """This process sends no more through this Writer; the queue stays usable."""
        self._closed = True

    def __repr__(self) -> str:
        return f"<mpsysv Writer of {self._queue()!r}{' closed' if self._closed else ''}>"


def _flush_here(feeder: Feeder, chan: Channel) -> None:
    """Send everything this process buffered for the queue, in this thread.

    Registered as waiting for room before each attempt, so a getter that makes room
    after a failed attempt wakes this thread (the sleep's condition is the kernel
    queue's room, which only getters change; the feeder thread may flush meanwhile,
    and then the next attempt finds nothing left).
    """
    with chan.room_wait() as room:
        while True:
            with feeder.send_lock:
                if feeder.flush(True):
                    return
            room.sleep()


class ReadLock:
    """The queue's read lock, local to this process.

    mpsysv's ``get()`` needs no lock (one ``msgrcv`` takes a whole object), so this
    only serves code that pairs ``poll()`` and ``recv()``: while the owning thread
    holds it, the Reader's ``poll()`` reserves the object it saw. ``Pool`` takes it
    before draining a pool's task queue and never releases it.
    """

    def __init__(self, queue: _Base):
        self._lock = threading.Lock()
        self._owner: Optional[int] = None

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        if not block:
            got = self._lock.acquire(False)
        else:
            got = self._lock.acquire(True, -1 if timeout is None else max(timeout, 0))
        if got:
            self._owner = threading.get_ident()
        return got

    def release(self) -> None:
        if not self._lock.locked():
            raise ValueError("semaphore or lock released too many times")
        self._owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident()

    def __repr__(self) -> str:
        return f"<mpsysv ReadLock {'locked' if self._lock.locked() else 'unlocked'}>"


class ConnectionParts:
    """The attributes the stdlib's Pool and ProcessPoolExecutor reach for, made on first
    use (a queue nobody waits on never gets a watcher). ``_PARTS`` names the keys they
    live under in the queue's ``__dict__``: the one place that does."""

    _PARTS = {"_reader": ("_reader_part", Reader), "_writer": ("_writer_part", Writer),
              "_rlock": ("_rlock_part", ReadLock)}

    def _part(self, attr: str) -> Any:
        key, factory = self._PARTS[attr]
        part = self.__dict__.get(key)
        if part is None:
            part = self.__dict__[key] = factory(self)  # type: ignore[arg-type]
        return part

    def _existing_part(self, attr: str) -> Any:
        """The part if it was made, else None (it is never made here)."""
        return self.__dict__.get(self._PARTS[attr][0])

    def _forget_parts(self) -> None:
        """In a fork child: the parent's parts (pipe, watcher thread) are not ours."""
        for key, _ in self._PARTS.values():
            part = self.__dict__.pop(key, None)
            if part is not None and hasattr(part, "_after_fork"):
                part._after_fork()

    @property
    def _reader(self) -> Reader:
        """A Connection-like reader (recv, poll, fileno, close) for stdlib internals."""
        return self._part("_reader")

    @property
    def _writer(self) -> Writer:
        """A Connection-like writer (send, close) for stdlib internals."""
        return self._part("_writer")

    @property
    def _rlock(self) -> ReadLock:
        return self._part("_rlock")

    def _poll(self, timeout: float = 0.0) -> bool:
        return self._reader.poll(timeout)


def abandon(queue: Any, wait: float = 2.0) -> None:
    """A terminated Pool's queue: nobody will read what this process has not sent yet
    (the stdlib's terminate drops it too), so drop it, close the handle and let the
    feeder thread end now instead of waiting for room that never comes; a Reader's
    watcher ends with it. (Unsent objects are dropped on uncounted queues only: a
    counted object's slot and task are already counted.)"""
    reader = queue._existing_part("_reader")
    if reader is not None:
        reader.close()
    if not queue._chan.counted:
        queue._feeder.discard()
    queue.close()
    thread = queue._feeder.thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(wait)
