"""``multiprocessing`` contexts whose queues and shared memory are mpsysv's.

``get_context(method)`` returns a subclass of the stdlib's context for that start
method: ``Queue``, ``SimpleQueue`` and ``JoinableQueue`` build mpsysv queues, and
``SharedMemory``, ``ShareableList`` and ``SharedMemoryManager`` are added, ``Pool`` is
``mpsysv.pool.Pool`` (it survives killed workers); everything else
(``Process``, locks, ``Manager`` ...) is the stdlib's, untouched.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from multiprocessing import context as _mpc
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Union

from . import queues

if TYPE_CHECKING:
    from .shared import ShareableList, SharedMemory, SharedMemoryManager

__all__ = ["get_context", "ForkContext", "SpawnContext", "ForkServerContext"]


class _MpsysvContext:
    """The part every mpsysv context shares; mixed in before a stdlib context class."""

    _name: str

    def Queue(self, maxsize: int = 0) -> "queues.Queue[Any]":
        """A process-shared FIFO queue on System V message queues."""
        return queues.Queue(maxsize, ctx=self)

    def JoinableQueue(self, maxsize: int = 0) -> "queues.JoinableQueue[Any]":
        """A Queue with ``task_done()`` and ``join()``."""
        return queues.JoinableQueue(maxsize, ctx=self)

    def SimpleQueue(self) -> "queues.SimpleQueue[Any]":
        """A simplified queue; like the stdlib's, ``put()`` raises if it cannot pickle."""
        return queues.SimpleQueue(ctx=self, strict=True)

    def SharedMemory(self, name: Optional[str] = None, create: bool = False, size: int = 0,
                     **kwargs: Any) -> "SharedMemory":
        """A System V shared memory block found by name (``multiprocessing.shared_memory``)."""
        from .shared import SharedMemory
        return SharedMemory(name, create, size, **kwargs)

    def ShareableList(self, sequence: Optional[Iterable[Any]] = None, *,
                      name: Optional[str] = None, **kwargs: Any) -> "ShareableList[Any]":
        """A fixed-length list of scalars in shared memory."""
        from .shared import ShareableList
        return ShareableList(sequence, name=name, **kwargs)

    def SharedMemoryManager(self) -> "SharedMemoryManager":
        """A manager that unlinks every block made through it at shutdown."""
        from .shared import SharedMemoryManager
        return SharedMemoryManager()

    def Pool(self, processes: Optional[int] = None,
             initializer: Optional[Callable[..., object]] = None,
             initargs: Iterable[Any] = (),
             maxtasksperchild: Optional[int] = None) -> "multiprocessing.pool.Pool":
        """A process pool (``mpsysv.pool.Pool``: the stdlib's, on mpsysv queues): a task
        whose worker dies fails with ``WorkerLostError`` instead of hanging the pool;
        once it is terminated (``with`` exits), no thread of mpsysv's is left for it."""
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context())

    def get_context(self, method: Optional[str] = None) -> "Context":
        """This context (*method* None), or the mpsysv context for start *method*."""
        if method is None:
            return self  # type: ignore[return-value]  # (self is one of the three)
        return get_context(method)

    def __repr__(self) -> str:
        return f"<mpsysv.context.{type(self).__name__} {self._name!r}>"


# The queue factories return mpsysv's queue types, not multiprocessing.queues' (hence the
# ignores: the stdlib's stubs type BaseContext.Queue() by its own class).
class ForkContext(_MpsysvContext, _mpc.ForkContext):  # type: ignore[misc]
    """The ``fork`` start method with mpsysv queues and shared memory."""


class SpawnContext(_MpsysvContext, _mpc.SpawnContext):  # type: ignore[misc]
    """The ``spawn`` start method with mpsysv queues and shared memory."""


class ForkServerContext(_MpsysvContext, _mpc.ForkServerContext):  # type: ignore[misc]
    """The ``forkserver`` start method with mpsysv queues and shared memory."""


Context = Union[ForkContext, SpawnContext, ForkServerContext]
_contexts: Dict[str, Context] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


def get_context(method: Optional[str] = None) -> Context:
    """The mpsysv context for start *method* (``fork``, ``spawn``, ``forkserver``).

    ``None`` means the stdlib's start method, and fixes it as
    ``multiprocessing.get_context()`` does.
    """
    if method is None:
        method = multiprocessing.get_start_method()
    try:
        ctx = _contexts[method]
    except KeyError:
        raise ValueError(f"cannot find context for {method!r}") from None
    ctx._check_available()
    return ctx


def __getattr__(name: str) -> Any:
    # Code written for `multiprocessing` and run as `import mpsysv as multiprocessing`
    # reaches `multiprocessing.context.TimeoutError`, `.BaseContext` ... through this
    # module: the names it does not define are the stdlib's context module's.
    try:
        return getattr(_mpc, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
