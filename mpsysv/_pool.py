"""The stdlib's ``Pool`` with one addition: when it terminates, the Readers of its mpsysv
queues are closed, so that their watcher threads (``mpsysv.ReaderWatcher``, which keep a
pipe readable for ``connection.wait()``) end with the pool instead of with the pool
object's garbage collection, and its queues are abandoned: what this process had not
sent yet is dropped (as the stdlib's terminate drops its queued tasks) and their feeder
threads end, instead of waiting for room in a queue nobody reads any more."""

from __future__ import annotations

import multiprocessing.pool
from typing import Any

from . import queues

__all__ = ["Pool"]


class Pool(multiprocessing.pool.Pool):
    """``multiprocessing.pool.Pool`` whose terminate also stops its queues' watchers."""

    @classmethod
    def _terminate_pool(cls, *args: Any, **kwargs: Any) -> None:
        try:
            super()._terminate_pool(*args, **kwargs)  # type: ignore[misc]
        finally:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, queues._Base):
                    reader = arg.__dict__.get("_reader_part")
                    if reader is not None:
                        reader.close()
                    arg._abandon()
