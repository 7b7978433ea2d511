"""mpsysv: multiprocessing's queues and shared memory over System V IPC."""

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

__all__ += ["get_context", "patch", "unpatch", "patched"]
