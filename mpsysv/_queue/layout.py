"""The control segment of a queue: its whole layout, and the one parser of its header.

Pure data and pure functions (no kernel call): offsets, structs, counter and
semaphore indices, marker and parcel states. The channel, the parcel table and the
journal use these offsets; the garbage collector and the command line read the same
bytes from outside through ``parse_header`` and ``describe``. ``_check`` proves at
import that no two fields overlap.
"""

import struct
from typing import List, NamedTuple, Optional

KIND_QUEUE, KIND_SIMPLE, KIND_JOINABLE = 0, 1, 2
KIND_NAMES = {KIND_QUEUE: "Queue", KIND_SIMPLE: "SimpleQueue", KIND_JOINABLE: "JoinableQueue"}
MTYPE_MAX = 2 ** 62 - 1
# 3: the state lock a robust mutex, the join gate futex counters; 4: getters of a counted
# queue sleep inside msgrcv and a repair wakes them with NUDGE messages (wire).
MAGIC = b"MPSYSVQ4"
CTL_SIZE = 16384

# -- the header: identity and the other objects' ids ------------------------------------
_HDR = struct.Struct("<8sIIqiidiiii")  # magic version kind maxsize creator flags created
#                                       main_qid stream_qid semid msgmax
_FLAG_NAMED = 1  # flags: bit 0 named, bits 8..16 the mode
_NAME_OFF = 64  # u16 length + the name's UTF-8 bytes
_NAME_MAX = 254

# -- futex counters: each a 32-byte glibc sem_t ------------------------------------------
# Each pair is a count of sleepers and the wake-ups posted to them: getters waiting with a
# timeout (or for one mtype, or a Pool reader's watcher), feeders waiting for room,
# putters waiting for a slot, joiners waiting for the task count to reach zero. The
# others count: free slots of a bounded queue, a stream's flow (room for a frame, frames
# available, the last frame taken), unfinished tasks of a JoinableQueue.
(TIMED_WAITERS, TIMED_WAKEUPS, FREE_SLOTS, STREAM_SPACE, STREAM_FRAMES, STREAM_DONE,
 UNFINISHED_TASKS, ROOM_WAITERS, ROOM_WAKEUPS, SLOT_WAITERS, SLOT_WAKEUPS, TYPED_WAITERS,
 JOINERS, JOIN_WAKEUPS) = range(14)
_SEM_OFF = 320
_SEM_SIZE = 32
SEM_OFFS = tuple(_SEM_OFF + _SEM_SIZE * i for i in range(9)) + (704, 736, 768, 864, 896)
COUNTER_NAMES = ("timed_waiters", "wakeups", "free_slots", "stream_space", "stream_frames",
                 "stream_done", "unfinished_tasks", "feeders_waiting_for_room",
                 "room_wakeups", "putters_waiting_for_a_slot", "slot_wakeups",
                 "getters_waiting_for_one_mtype", "joiners_waiting", "joiner_wakeups")
# The state lock: a robust process-shared pthread mutex (``_ipc.mutex``).
STATE_LOCK_OFF = 800
STATE_LOCK_SIZE = 64

# -- markers and counts -------------------------------------------------------------------
_MARK = struct.Struct("<iiQI")  # stream marker: writer pid, reader pid, stream id, state
_READER = struct.Struct("<i")
_STATE = struct.Struct("<I")
_MARK_OFF = 640
_STATE_MARK_OFF = 664  # pid of a process in the middle of a task-count update
# Objects beyond the first of every batch message in the queue, so qsize() stays exact.
_EXTRA = struct.Struct("<q")
_EXTRA_OFF = 672
# Slots recovered so far (shown by ``stat``), and a flag set once a process counted
# slots or took messages without a journal entry (recoveries then stop).
_RECOVERED = struct.Struct("<I")
_RECOVERED_OFF = 680
_UNNOTED_OFF = 684
# Tasks a JoinableQueue's processes took and had not marked done when their journal
# entries were freed, and a flag: the task count must be derived again (counts).
_HELD_GONE = struct.Struct("<q")
_HELD_GONE_OFF = 688
_RECOUNT_OFF = 696
_FREEZE_OFF = 697  # a repair is reading the counts: no new window now (see counts)
# Set by the first process that finds the queue's objects removed from outside: calls
# that make no system call (task_done, task_added) report the removal too.
_REMOVED_OFF = 698

# -- the parcel table (parcels) ------------------------------------------------------------
PARCEL_TABLE_OFF = 1024
PARCEL_SLOTS = 48
PARCEL_ENTRY = struct.Struct("<iiiiQ")  # segment id, writer, state, reader, segment size
FREE, FILLING, SENT, READING, POOLED, LENT = 0, 1, 2, 3, 4, 5
PARCEL_STATES = {FILLING: "filling", SENT: "sent", READING: "reading", POOLED: "pooled",
                 LENT: "lent"}

# -- the journal (journal): one entry per process, to the end of the segment ----------------
JOURNAL_OFF = 2240
JOURNAL_ENTRY = struct.Struct("<iiiiiIQQ")  # pid tasks slots held (pad) moving start parcels
JOURNAL_ENTRIES = (CTL_SIZE - JOURNAL_OFF) // JOURNAL_ENTRY.size  # 353
# Field offsets inside an entry.
J_PID, J_TASKS, J_SLOTS, J_HELD, J_MOVING, J_START, J_PARCELS = 0, 4, 8, 12, 20, 24, 32

# Semaphore set members (both SEM_UNDO, so a killed holder releases them): the stream
# lock, and the holders lock, held while a process counts the queue's holders and lets
# go of its mapping, and while the garbage collector has the queue attached. (A mutex
# cannot serve there: nobody may unmap a robust mutex it holds.)
SEM_STREAM, SEM_HOLDERS = 0, 1
NSEMS = 2
# Stream marker states.
ST_IDLE, ST_HEAD, ST_ABANDONED = 0, 1, 3
_ST_NAMES = {ST_IDLE: "idle", ST_HEAD: "streaming", ST_ABANDONED: "abandoned"}

# Every field as (name, offset, size): checked below, and the map a reader can trust.
FIELDS = (
    ("header", 0, _HDR.size),
    ("name", _NAME_OFF, 2 + _NAME_MAX),
    *((f"counter {COUNTER_NAMES[i]}", off, _SEM_SIZE) for i, off in enumerate(SEM_OFFS)),
    ("state lock", STATE_LOCK_OFF, STATE_LOCK_SIZE),
    ("stream marker", _MARK_OFF, _MARK.size),
    ("state mark", _STATE_MARK_OFF, 4),
    ("batch extra", _EXTRA_OFF, _EXTRA.size),
    ("slots recovered", _RECOVERED_OFF, _RECOVERED.size),
    ("counted without notes", _UNNOTED_OFF, 1),
    ("held tasks of gone processes", _HELD_GONE_OFF, _HELD_GONE.size),
    ("recount flag", _RECOUNT_OFF, 1),
    ("freeze flag", _FREEZE_OFF, 1),
    ("removed flag", _REMOVED_OFF, 1),
    ("parcel table", PARCEL_TABLE_OFF, PARCEL_SLOTS * PARCEL_ENTRY.size),
    ("journal", JOURNAL_OFF, JOURNAL_ENTRIES * JOURNAL_ENTRY.size),
)


def _check(fields=FIELDS, size: int = CTL_SIZE) -> None:
    """Raise ``AssertionError`` naming the first two fields that overlap, or one
    that does not fit in *size* bytes."""
    spans = sorted((off, off + n, name) for name, off, n in fields)
    for (_, end, name), (start, _, nxt) in zip(spans, spans[1:]):
        if start < end:
            raise AssertionError(f"control segment layout: {name!r} overlaps {nxt!r}")
    if spans[-1][1] > size:
        raise AssertionError(f"control segment layout: {spans[-1][2]!r} ends past {size}")


_check()


class Header(NamedTuple):
    """What a control segment says about its queue."""
    version: int
    kind: int
    maxsize: int
    creator: int
    named: bool
    mode: int
    created: float
    main_qid: int
    stream_qid: int
    semid: int
    msgmax: int
    name: Optional[str]


def parse_header(raw) -> Optional[Header]:
    """The header in *raw* (the segment's bytes, or a view), None without the magic."""
    (magic, version, kind, maxsize, creator, flags, created, main_qid, stream_qid, semid,
     msgmax) = _HDR.unpack_from(raw)
    if magic != MAGIC:
        return None
    n = int.from_bytes(raw[_NAME_OFF:_NAME_OFF + 2], "little")
    name = bytes(raw[_NAME_OFF + 2:_NAME_OFF + 2 + n]).decode("utf-8", "replace") if n else None
    return Header(version, kind, maxsize, creator, bool(flags & _FLAG_NAMED),
                  (flags >> 8) & 0o777 or 0o600, created, main_qid, stream_qid, semid, msgmax,
                  name)


def pack_header(view, kind: int, maxsize: int, creator: int, name: Optional[str], mode: int,
                created: float, main_qid: int, stream_qid: int, semid: int,
                msgmax: int) -> None:
    """Write the header into *view*; the magic goes in with it, so call it last."""
    _HDR.pack_into(view, 0, MAGIC, 1, kind, maxsize, creator,
                   (_FLAG_NAMED if name else 0) | (mode << 8), created, main_qid, stream_qid,
                   semid, msgmax)


def pack_name(view, name: str) -> None:
    raw = name.encode()
    view[_NAME_OFF:_NAME_OFF + 2] = len(raw).to_bytes(2, "little")
    view[_NAME_OFF + 2:_NAME_OFF + 2 + len(raw)] = raw


def describe(raw: bytes, counters: List[int]) -> dict:
    """Everything in a control segment's bytes *raw* (and its *counters*' values), as
    ``stat`` shows it; journal entries carry ``start_ticks`` for the caller's
    liveness check."""
    header = parse_header(raw)
    if header is None:
        return {"magic": raw[:8].hex(), "being_created": not raw[:8].strip(b"\0")}
    writer, reader, sid, state = _MARK.unpack_from(raw, _MARK_OFF)
    (state_pid,) = struct.unpack_from("<i", raw, _STATE_MARK_OFF)
    parcels = []
    for slot in range(PARCEL_SLOTS):
        segid, p_writer, p_state, p_reader, size = PARCEL_ENTRY.unpack_from(
            raw, PARCEL_TABLE_OFF + slot * PARCEL_ENTRY.size)
        if p_state != FREE:
            parcels.append({"slot": slot, "segment_id": segid,
                            "state": PARCEL_STATES.get(p_state, p_state),
                            "writer_pid": p_writer, "reader_pid": p_reader, "size": size})
    return {
        "magic": MAGIC.decode(), "version": header.version,
        "type": KIND_NAMES.get(header.kind, f"kind {header.kind}"),
        "maxsize": header.maxsize, "name": header.name, "named": header.named,
        "creator_pid": header.creator, "created": header.created,
        "main_qid": header.main_qid, "stream_qid": header.stream_qid,
        "semid": header.semid, "msgmax": header.msgmax,
        "counters": dict(zip(COUNTER_NAMES, counters)),
        "stream_marker": {"writer_pid": writer, "reader_pid": reader, "stream_id": sid,
                          "state": _ST_NAMES.get(state, state)},
        "task_update_in_progress_by": state_pid, "parcels": parcels,
        "journal": journal_entries(raw),
        "slots_recovered": _RECOVERED.unpack_from(raw, _RECOVERED_OFF)[0],
        "counted_without_notes": bool(raw[_UNNOTED_OFF]),
        "held_tasks_of_gone_processes": _HELD_GONE.unpack_from(raw, _HELD_GONE_OFF)[0],
        "task_count_to_derive_again": bool(raw[_RECOUNT_OFF]),
    }


def journal_entries(raw: bytes) -> List[dict]:
    """The journal entries in use: what each process counted and has not sent yet."""
    out = []
    for i in range(JOURNAL_ENTRIES):
        pid, tasks, slots, held, _, moving, start, bits = JOURNAL_ENTRY.unpack_from(
            raw, JOURNAL_OFF + i * JOURNAL_ENTRY.size)
        if pid:
            out.append({"pid": pid, "start_ticks": start, "unsent_tasks": tasks,
                        "unsent_slots": slots, "held_tasks": held,
                        "threads_moving_an_object": moving & 0xFF,
                        "unsent_parcel_slots": [s for s in range(64) if bits >> s & 1]})
    return out
