"""The places where tests stop or kill a process, named once.

Each seam is ``(owner, attribute)``: the function a test replaces in a (child)
process so that it stops or dies exactly there. When the code moves or a method is
renamed, this module is the one edit; the tests name the moment, not the method.
"""

from mpsysv import queues
from mpsysv._ipc import futex
from mpsysv._queue import channel, counts, feeder, objects, parcels, streams

# A getter took a stream's head and dies before it reads the frames.
STREAM_READ = (streams.Streams, "read")
# A getter took a parcel's message and dies before it marks the parcel as being read.
PARCEL_UNWRAP = (parcels.ParcelTable, "unwrap")
# A getter took a batch message and dies before it counts the batch's other objects.
BATCH_COUNTED = (counts.Counts, "add_extra")
# A getter took a message and dies before it decodes it (its window still open).
DECODE = (queues, "_loads")
# A putter dies before its msgsnd (its slot or task noted and counted, never sent).
SEND = (channel.Channel, "try_send")
# A putter counted its object (slot; task, in its window) and dies before handing it to
# the kernel or to its buffer.
COUNTED_SEND = (feeder.Feeder, "send")
# A journal window closes (a getter's after it counted its object out, a task_done's
# after the count went down, a JoinableQueue putter's after its send).
WINDOW_CLOSE = (counts.Window, "close")
# A putter's message is in the queue and it dies before clearing its note.
NOTE_CLEARED = (counts.Counts, "counted_sent")
# A futex counter changes (a putter noted a slot and tries to take it: try_acquire;
# a task count goes up: post); a queue's counters are initialised (before its magic).
COUNTER_TRY_ACQUIRE = (futex.PosixSemaphore, "try_acquire")
COUNTER_POST = (futex.PosixSemaphore, "post")
COUNTER_INIT = (futex.PosixSemaphore, "init")
# The state lock is given back (the end of a task-count update).
STATE_UNLOCK = (counts._StateLock, "__exit__")

# A repair nudged the getters asleep in msgrcv and takes back the nudges nobody took.
NUDGES_TAKEN_BACK = (objects.QueueObjects, "take_back_nudges")

# Tunables a test shortens or reads.
REPAIR_EVERY = (counts, "_REPAIR_EVERY")
STREAM_SLICE = (streams, "_SLICE")
PARCEL_MIN = (parcels, "PARCEL_MIN")



def value(seam):
    """The current value at *seam* (a tunable)."""
    return getattr(*seam)
