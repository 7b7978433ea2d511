"""The control segment of a queue: its layout, shared by the protocol's modules.

Pure data (offsets, structs, counter and semaphore indices, marker states); the
garbage collector and the command line read the same layout from outside.
"""

import struct

KIND_QUEUE, KIND_SIMPLE, KIND_JOINABLE = 0, 1, 2
KIND_NAMES = {KIND_QUEUE: "Queue", KIND_SIMPLE: "SimpleQueue", KIND_JOINABLE: "JoinableQueue"}
MTYPE_MAX = 2 ** 62 - 1
MAGIC = b"MPSYSVQ2"  # 2: the 16 KiB layout with slot wake-ups and take marks
CTL_SIZE = 16384
# Control segment layout.
_HDR = struct.Struct("<8sIIqiidiiii")  # magic version kind maxsize creator flags created
#                                       main_qid stream_qid semid msgmax
_NAME_OFF = 64
_SEM_OFF = 320
# Futex counters: timed getters waiting and their wake-ups, bounded slots, stream flow
# (space, frames available, done), unfinished tasks, feeders waiting for room and theirs,
# putters waiting for a slot and theirs, the getters among TW that wait for one mtype.
# Each is a 32-byte sem_t at its offset.
TW, WAKE, SLOTS, SPACE, AVAIL, DONE, UNFINISHED, RW, ROOM, SW, SWAKE, TWS = range(12)
_NSEMS = 12
SEM_OFFS = tuple(_SEM_OFF + 32 * i for i in range(9)) + (704, 736, 768)
_MARK = struct.Struct("<iiQI")  # stream marker: writer pid, reader pid, stream id, state
_READER = struct.Struct("<i")
_STATE = struct.Struct("<I")
_MARK_OFF = 640
_STATE_MARK_OFF = 664  # pid of a process in the middle of a task-count update
# Objects beyond the first of every batch message in the queue, so qsize() stays exact.
_EXTRA = struct.Struct("<q")
_RECOVERED = struct.Struct("<I")
_EXTRA_OFF = 672
# Slots recovered so far (shown by ``stat``), and a flag set once a process counted
# slots or took messages without a journal entry (recoveries then stop).
_RECOVERED_OFF = 680
_UNNOTED_OFF = 684
# Tasks a JoinableQueue's processes took and had not marked done when their journal
# entries were freed, and a flag: the task count must be derived again (_channel).
_HELD_GONE = struct.Struct("<q")
_HELD_GONE_OFF = 688
_RECOUNT_OFF = 696
_FREEZE_OFF = 697  # a repair is reading the counts: no new window now (see _channel)
# 698..703 unused, counters SW, SWAKE and TWS at 704, 736 and 768, 800..1023 unused; the parcel
# table at 1024 (_parcels), the journal at 2240 (_journal).
_FLAG_NAMED = 1
# Semaphore set members.
SEM_STREAM, SEM_STATE, SEM_GATE = 0, 1, 2
# Stream marker states.
ST_IDLE, ST_HEAD, ST_ABANDONED = 0, 1, 3
