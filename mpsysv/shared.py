"""SharedMemory, ShareableList and SharedMemoryManager over System V segments.

The public path of the three classes (``multiprocessing.shared_memory``'s API; what
their pickles name), each built in a module of its own: ``_shared_memory`` (segments by
name, the mapping, tracking), ``_shareable_list`` and ``_shared_manager``.
"""

from ._shareable_list import ShareableList
from ._shared_manager import SharedMemoryManager, _rebuild_manager
from ._shared_memory import (ForeignSegmentError, SharedMemory, _from_id, track_by_name,
                             unlink_by_name, untrack_by_name)

__all__ = ["SharedMemory", "ShareableList", "SharedMemoryManager", "ForeignSegmentError"]

for _obj in (SharedMemory, ShareableList, SharedMemoryManager, ForeignSegmentError, _from_id,
             _rebuild_manager, track_by_name, untrack_by_name, unlink_by_name):
    _obj.__module__ = __name__  # the public path: what repr, help() and pickles show
del _obj
