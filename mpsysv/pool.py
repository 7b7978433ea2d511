"""The ``Pool`` that mpsysv's contexts and ``patch()`` hand out: the stdlib's
``multiprocessing.pool.Pool`` on mpsysv queues, which survives its workers' deaths.

A worker receives each task straight into its slot of a buffer shared with the pool,
so the kernel itself writes the task's identity (its message type) there as it hands
the task over: when a worker dies, what it held is known to the last instruction.
The pool then fails that task with ``WorkerLostError`` (unless its result is already
in the result queue), replaces the worker and carries on; the stdlib's pool waits
forever for such a result. Its change notifier, used only by its own threads, is a
pipe in this process, not a queue.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import multiprocessing.pool as _stdlib
import os
import signal
import struct
import threading
from multiprocessing import context as _mp_context, reduction
from typing import Any, Callable, List, NamedTuple, Optional

from . import queues
from ._connection import abandon

# The stdlib's worker pieces this module uses, which its stubs do not declare.
_helpers: Any = _stdlib

__all__ = ["Pool", "WorkerLostError"]

# A task travels as message type 2 + (job << 32 | index), both cut to their bits;
# type 1 is what is not a task (a worker's stop sentinel). A slot's word is 0 while
# its worker holds nothing.
_JOB_MASK = (1 << 29) - 1
_INDEX_MASK = (1 << 32) - 1
_NOT_A_TASK = 1


def _task_type(task: Any) -> int:
    if type(task) is not tuple:
        return _NOT_A_TASK
    job, index = task[0], task[1]
    return 2 + ((job & _JOB_MASK) << 32 | (index & _INDEX_MASK))


class WorkerLostError(Exception):
    """A pool worker ended (killed by a signal, or exited) while it held a task: that
    task's result never comes. The pool has started a replacement and goes on.

    ``task_index`` is the task's index in its call (the chunk's, for a chunked
    ``map``; ``items`` then gives the first and last item it covered), ``pid`` the
    worker's, ``exitcode`` its exit code (negative: the signal that killed it, also
    in ``signal``)."""

    def __init__(self, task_index: int, pid: Optional[int], exitcode: Optional[int],
                 items: Optional[tuple] = None):
        super().__init__(task_index, pid, exitcode, items)
        self.task_index, self.pid, self.exitcode, self.items = task_index, pid, exitcode, items
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                how = f"was killed by {signal.Signals(self.signal).name}"
            except ValueError:
                how = f"was killed by signal {self.signal}"
        else:
            how = f"exited with code {self.exitcode}"
        what = f"task {self.task_index}"
        if self.items is not None:
            what += f" (items {self.items[0]}..{self.items[1]})"
        return (f"pool worker pid {self.pid} {how} while it held {what}, whose result "
                "therefore never comes; the pool replaced the worker and goes on (a "
                "worker is lost to the OOM killer, os._exit() or a crash in C code)")


class _Lost(NamedTuple):
    """The worker handler's word to the result handler: the worker in *slot* died
    holding the task of message type *held*. It goes through the result queue, behind
    whatever the dead worker had sent."""
    slot: int
    held: int
    pid: Optional[int]
    exitcode: Optional[int]


class _Notifier:
    """The pool's change notifier: a counter and a pipe readable while it is not zero.

    Only the pool's own threads in this process put and get, so it needs no queue
    and no watcher thread; ``_reader`` is itself, for ``connection.wait()``. Of what
    ``Pool._terminate_pool`` is handed, it alone is this pool's own: its ``close()``
    also runs *on_close*, which lets go of the rest of the pool's resources."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        self._on_close: Optional[Callable[[], None]] = on_close
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._count = 0
        self._reader = self

    def put(self, obj: Any) -> None:
        with self._lock:
            if self._wfd < 0:
                return  # (Pool.__del__ after terminate)
            self._count += 1
            if self._count == 1:
                os.write(self._wfd, b"\0")

    def get(self) -> None:
        with self._lock:
            if self._count:
                self._count -= 1
                if self._count == 0 and self._rfd >= 0:
                    os.read(self._rfd, 1)

    def empty(self) -> bool:
        return self._count == 0

    def fileno(self) -> int:
        return self._rfd

    def close(self) -> None:
        with self._lock:
            for fd in (self._rfd, self._wfd):
                if fd >= 0:
                    os.close(fd)
            self._rfd = self._wfd = -1
            on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class _SlotBuffer:
    """A worker slot's receive buffer: a memfd mapping that fork children inherit and
    spawn or forkserver children map again from a duplicate of its fd."""

    def __init__(self, size: int, fd: int = -1) -> None:
        if fd < 0:
            fd = os.memfd_create("mpsysv-pool-slot", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.size, self.fd = size, fd
        self.map: Optional[mmap.mmap] = mmap.mmap(fd, size)

    def __reduce__(self) -> tuple:
        _mp_context.assert_spawning(self)
        return _SlotBuffer._rebuild, (reduction.DupFd(self.fd), self.size)

    @staticmethod
    def _rebuild(dup: Any, size: int) -> "_SlotBuffer":
        return _SlotBuffer(size, dup.detach())

    def take_word(self) -> int:
        """The held task's type, which it clears (the worker is dead)."""
        assert self.map is not None
        (held,) = struct.unpack_from("q", self.map, 0)
        struct.pack_into("q", self.map, 0, 0)
        return held

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            os.close(self.fd)
            self.map = None


class _Workers:
    """The pool's worker slots: each a receive buffer shared with the worker using it,
    whose first word is the message type of the task the worker holds (0: none).

    The result handler notes, per slot, the last task whose result it took
    (``last_job``/``last_index``): a worker that dies after sending its result but
    before clearing its word has lost nothing."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.buffers: List[_SlotBuffer] = []
        self.occupants: List[Any] = []
        self.free: List[int] = []
        self.last_job: List[Optional[int]] = []
        self.last_index: List[Optional[int]] = []
        self.cache: Any = None  # the pool's, set once the pool exists

    def new_worker(self, inqueue: Any, outqueue: Any, initializer: Any, initargs: Any,
                   maxtasks: Any, wrap_exception: bool) -> Any:
        """A worker process (not started) in a free slot, after telling the result
        handler what the dead workers held."""
        self.reap(outqueue)
        if self.free:
            slot = self.free.pop()
        else:
            slot = len(self.buffers)
            self.buffers.append(_SlotBuffer(8 + inqueue._chan.msgmax))
            self.occupants.append(None)
            self.last_job.append(None)
            self.last_index.append(None)
        worker = self.ctx.Process(target=_work, args=(inqueue, outqueue, self.buffers[slot],
                                                      slot, initializer, initargs, maxtasks,
                                                      wrap_exception))
        self.occupants[slot] = worker
        return worker

    def reap(self, outqueue: Any) -> None:
        """Free the slots of workers that ended; for each that held a task, tell the
        result handler through the result queue, behind all the dead worker sent (and
        in the kernel before its replacement can send anything)."""
        for slot, worker in enumerate(self.occupants):
            if worker is None or worker.exitcode is None:
                continue
            held = self.buffers[slot].take_word()
            self.occupants[slot] = None
            self.free.append(slot)
            if held > _NOT_A_TASK:
                try:
                    outqueue._writer.send(_Lost(slot, held, worker.pid, worker.exitcode))
                except OSError:
                    pass  # the pool is being terminated: nobody waits for results

    def close(self) -> None:
        """The pool is terminated: this process's mappings of the slots go."""
        for buffer in self.buffers:
            buffer.close()

    def sender(self, writer: Any) -> Callable[[Any], None]:
        """Pool's ``_quick_put``: each task typed by its identity."""
        send = writer.send

        def put(task: Any) -> None:
            send(task, _task_type(task))
        return put

    def receiver(self, reader: Any) -> Callable[[], Any]:
        """Pool's ``_quick_get``: ``(job, index, result)``, noting each result's slot,
        and a failure for each task a dead worker held whose result never came."""
        recv = reader.recv
        last_job, last_index = self.last_job, self.last_index

        def get() -> Any:
            while True:
                msg = recv()
                if type(msg) is tuple:
                    job, index, result, slot = msg
                    last_job[slot] = job
                    last_index[slot] = index
                    return job, index, result
                if type(msg) is _Lost:
                    failed = self._failure(msg)
                    if failed is not None:
                        return failed
                    continue
                return msg  # the sentinel
        return get

    def _failure(self, lost: _Lost) -> Optional[tuple]:
        """``(job, index, (False, WorkerLostError))`` for what *lost* names, or None
        when its result was taken already or its call is gone."""
        value = lost.held - 2
        job_bits, index = value >> 32, value & _INDEX_MASK
        job, last = self.last_job[lost.slot], self.last_index[lost.slot]
        if job is not None and last is not None and (job & _JOB_MASK) == job_bits \
                and (last & _INDEX_MASK) == index:
            return None
        for job in list(self.cache or ()):
            if job & _JOB_MASK == job_bits:
                break
        else:
            return None
        items = None
        result = self.cache.get(job)
        chunksize = getattr(result, "_chunksize", None)
        if chunksize is not None and chunksize > 1:
            items = (index * chunksize, index * chunksize + chunksize - 1)
        return job, index, (False, WorkerLostError(index, lost.pid, lost.exitcode, items))


class _PoolContext:
    """The context a pool runs in: the caller's, except that its ``SimpleQueue()``
    (which ``Pool.__init__`` asks for once, for the change notifier) is process-local;
    it carries the pool's worker slots to ``Pool.Process``."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self.workers = _Workers(ctx)

    def SimpleQueue(self) -> _Notifier:
        return _Notifier(self.workers.close)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _work(inqueue: Any, outqueue: Any, shared: _SlotBuffer, slot: int,
          initializer: Optional[Callable[..., object]], initargs: tuple,
          maxtasks: Optional[int], wrap_exception: bool) -> None:
    """A pool worker: what ``multiprocessing.pool.worker`` does, receiving each task
    into its slot's *shared* buffer and sending each result (tagged with the slot) before it
    clears the slot's word."""
    if maxtasks is not None and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    assert shared.map is not None
    buffer = (ctypes.c_char * shared.size).from_buffer(shared.map)
    inqueue._chan._bufs.free[:] = [(buffer, ctypes.c_long.from_buffer(buffer),
                                    memoryview(buffer).cast("B"))]
    word = ctypes.c_int64.from_buffer(buffer)
    send, get = outqueue._writer.send, inqueue.get
    if initializer is not None:
        initializer(*initargs)
    completed = 0
    while maxtasks is None or completed < maxtasks:
        try:
            task = get()
        except (EOFError, OSError):
            break
        if task is None:
            break
        job, index, func, args, kwds = task
        try:
            result = (True, func(*args, **kwds))
        except Exception as exc:
            if wrap_exception and func is not _helpers._helper_reraises_exception:
                exc = _helpers.ExceptionWithTraceback(exc, exc.__traceback__)
            result = (False, exc)
        try:
            send((job, index, result, slot))
        except Exception as exc:
            send((job, index, (False, _helpers.MaybeEncodingError(exc, result[1])), slot))
        word.value = 0
        task = func = args = kwds = result = None  # type: ignore[assignment]
        completed += 1
    word.value = 0


class Pool(_stdlib.Pool):
    """``multiprocessing.pool.Pool`` on mpsysv queues that survives its workers' deaths.

    A task whose worker dies holding it (SIGKILL, ``os._exit``, a crash) fails with
    ``WorkerLostError`` within moments, as if the task had raised it; every other task
    completes, the worker is replaced and the pool stays usable. (The stdlib's pool
    waits forever for that result.) Terminating the pool also ends its queues' threads.
    """

    # What this class uses of the stdlib's Pool, whose stubs do not declare it.
    _ctx: Any
    _cache: Any
    _change_notifier: Any
    _inqueue: Any
    _outqueue: Any
    _quick_put: Any
    _quick_get: Any

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Any = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None) -> None:
        ctx = _PoolContext(context if context is not None else multiprocessing.get_context())
        super().__init__(processes, initializer, initargs, maxtasksperchild, ctx)
        # (No task can be lost before this: none is sent before __init__ returns.)
        ctx.workers.cache = self._cache

    def _setup_queues(self) -> None:
        self._inqueue = queues.SimpleQueue(ctx=self._ctx)
        self._outqueue = queues.SimpleQueue(ctx=self._ctx)
        workers = self._ctx.workers
        self._quick_put = workers.sender(self._inqueue._writer)
        self._quick_get = workers.receiver(self._outqueue._reader)

    def _get_sentinels(self) -> list:
        # Results need not wake the worker handler: the cache's notifier tells it
        # when the last call is done.
        return [self._change_notifier._reader]

    @staticmethod
    def Process(ctx: Any, *args: Any, **kwds: Any) -> Any:
        # Pool asks for each worker here (also from its worker handler, after it took
        # the dead ones out of the pool): the worker it asks for becomes one of ours.
        if isinstance(ctx, _PoolContext) and kwds.get("target") is _helpers.worker:
            return ctx.workers.new_worker(*kwds["args"])
        return ctx.Process(*args, **kwds)

    @classmethod
    def _terminate_pool(cls, taskqueue: Any, inqueue: Any, outqueue: Any, pool: list,
                        change_notifier: Any, *handlers: Any) -> None:
        try:
            super()._terminate_pool(taskqueue, inqueue, outqueue, pool,  # type: ignore[misc]
                                    change_notifier, *handlers)
        finally:
            for queue in (inqueue, outqueue):
                abandon(queue)
            change_notifier.close()


def __getattr__(name: str) -> Any:
    # Under `import mpsysv as multiprocessing`, `multiprocessing.pool` is this module: the
    # names it does not define (ThreadPool, AsyncResult, ...) are the stdlib's pool module's.
    try:
        return getattr(_stdlib, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
