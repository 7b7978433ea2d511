"""One small object per System V primitive: MessageQueue, SemaphoreSet, Segment.

The public face of ``mpsysv._ipc.objects`` (where they are built, in the bottom
layer, so the queue and shared-memory internals can use them too): raw building
blocks for users who want plain SysV IPC with Python errors, timeouts and EINTR
handling.
"""

from ._ipc.objects import (Attachment, MessageQueue, MessageQueueStat, SegmentStat,
                           SemaphoreSet, SemaphoreSetStat, Segment, ftok)

__all__ = ["MessageQueue", "SemaphoreSet", "Segment", "Attachment", "ftok"]

for _cls in (Attachment, MessageQueue, MessageQueueStat, SegmentStat, SemaphoreSet,
             SemaphoreSetStat, Segment):
    _cls.__module__ = __name__  # their public path: what repr, help() and pickles show
del _cls
