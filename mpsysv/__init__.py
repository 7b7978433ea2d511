"""mpsysv: multiprocessing's queues and shared memory over System V IPC.

The package is also a drop-in for the ``multiprocessing`` module itself
(``import mpsysv as multiprocessing``): every public name of ``multiprocessing`` is here.
The queue classes, ``Pool``, ``get_context`` and the shared-memory types are mpsysv's (made
through mpsysv's default context, whose start method is the stdlib's default one); every
other name (``Process``, ``Lock``, ``Manager``, ``cpu_count``, ``set_start_method`` ...) is
the stdlib's own object, so the start method stays one setting shared by both; a
submodule name (``pool``, ``managers``, ``shared_memory``) is mpsysv's module where it has
one (lending the stdlib module's other names), else the stdlib's.
"""

from __future__ import annotations

import multiprocessing.pool as _stdlib_pool
from typing import Any, Callable, Iterable, Optional

from ._ipc.errors import RemovedError
from .primitives import Attachment, MessageQueue, SemaphoreSet, Segment, ftok
from .queues import Empty, Full, JoinableQueue, Queue, SimpleQueue
from .shared import ForeignSegmentError, ShareableList, SharedMemory, SharedMemoryManager

__version__ = "0.1.0"
__all__ = [
    "Queue", "SimpleQueue", "JoinableQueue", "Empty", "Full",
    "SharedMemory", "ShareableList", "SharedMemoryManager", "ForeignSegmentError",
    "RemovedError", "MessageQueue", "SemaphoreSet", "Segment", "Attachment", "ftok",
]
from .context import get_context
from .patch import patch, patched, unpatch
from .pool import WorkerLostError

__all__ += ["get_context", "patch", "unpatch", "patched", "Pool", "WorkerLostError"]


def Pool(processes: Optional[int] = None,
         initializer: Optional[Callable[..., object]] = None,
         initargs: Iterable[Any] = (),
         maxtasksperchild: Optional[int] = None) -> _stdlib_pool.Pool:
    """``multiprocessing.Pool()`` on mpsysv queues: the ``Pool`` of mpsysv's default
    context (fixing the start method, as the stdlib's module function does)."""
    pool: _stdlib_pool.Pool = getattr(get_context(), "Pool")(
        processes, initializer, initargs, maxtasksperchild)
    return pool


# multiprocessing's other public names: the stdlib's own objects (its module functions are
# bound methods of its one default context, so the start method stays one setting).
from multiprocessing import (  # noqa: E402
    Array, AuthenticationError, Barrier, BoundedSemaphore, BufferTooShort, Condition, Event,
    Lock, Manager, Pipe, Process, ProcessError, RawArray, RawValue, RLock, Semaphore,
    TimeoutError, Value, active_children, allow_connection_pickling, cpu_count,
    current_process, freeze_support, get_all_start_methods, get_logger, get_start_method,
    log_to_stderr, parent_process, reducer, set_executable, set_forkserver_preload,
    set_start_method,
)

__all__ += [
    "Array", "AuthenticationError", "Barrier", "BoundedSemaphore", "BufferTooShort",
    "Condition", "Event", "Lock", "Manager", "Pipe", "Process", "ProcessError", "RawArray",
    "RawValue", "RLock", "Semaphore", "TimeoutError", "Value", "active_children",
    "allow_connection_pickling", "cpu_count", "current_process", "freeze_support",
    "get_all_start_methods", "get_logger", "get_start_method", "log_to_stderr",
    "parent_process", "reducer", "set_executable", "set_forkserver_preload",
    "set_start_method",
]


def __getattr__(name: str) -> Any:
    # PEP 562: only names not found in this module get here. A submodule is reached as an
    # attribute, as code written for `multiprocessing` reaches `multiprocessing.pool`:
    # mpsysv's own when it has one (`shared_memory`, `queues`), else the stdlib's.
    if not name.startswith("_"):
        import importlib
        import importlib.util

        for module in (f"{__name__}.{name}", f"multiprocessing.{name}"):
            if importlib.util.find_spec(module) is not None:
                return importlib.import_module(module)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


