"""The stdlib's ``Pool`` with one addition: when it terminates, the Readers of its mpsysv
queues are closed, so that their watcher threads (``mpsysv.ReaderWatcher``, which keep a
pipe readable for ``connection.wait()``) end with the pool instead of with the pool
object's garbage collection. The queues themselves are left to the pool's own teardown."""

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
