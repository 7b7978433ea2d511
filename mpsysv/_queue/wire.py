"""The queue wire format: how one pickled object becomes one or more messages.

Pure functions and a small reassembler, no kernel access, so the format can be
tested (and fuzzed) without IPC. An object that fits one message travels as its bare
pickle (which starts with the PROTO opcode 0x80). A larger object travels as a
*head* message in the main queue, which names a stream id, followed by continuation
frames in the stream queue whose ``mtype`` is that stream id.

    head:   b"H" | stream_id u64 | total_length u64 | nframes u32 | first chunk
    frame:  b"F" | stream_id u64 | seq u32 | chunk            (seq 1..nframes-1)
    parcel: b"P" | table slot u32 | segment id i32 | length u64 | nonce u64
    batch:  b"B" | pickle of a list of objects                 (put_many)
    nudge:  b"N", typed NUDGE_MTYPE                            (no object: see below)

A *nudge* carries no object: a repair of a bounded or joinable queue sends one per
getter asleep in ``msgrcv`` so that it wakes, leaves its journal window and lets the
repair read the counts (``counts``); the repair takes back the nudges nobody took.
Its type is above every user type, so only getters of any type (``mtype=0``) take it.

A *parcel* is the large-object path: the pickle waits in a SysV segment of its own
(listed in the queue's parcel table) and one small message names it. Its body (after
the segment's header) is either the pickle itself, or, for a pickle with out-of-band
buffers (protocol 5), a layout followed by the in-band pickle and each buffer at a
page-aligned offset (offsets count from the segment's start):

    layout: b"O" | pad 3 | nbuffers u32 | pickle offset u64 | pickle length u64
            | (buffer offset u64 | buffer length u64) * nbuffers
"""

from __future__ import annotations

import struct
from typing import Iterator, List, Optional, Tuple

__all__ = [
    "PICKLE_MARK", "HEAD", "FRAME", "NUDGE", "NUDGE_MTYPE", "HEAD_SIZE", "FRAME_HEADER",
    "WireError",
    "is_single", "stream_id_for", "writer_pid", "split", "parse_head", "parse_frame",
    "encode_parcel", "parse_parcel", "Reassembly", "PARCEL", "BATCH",
    "encode_batch", "batch_pickle", "OUT_OF_BAND", "layout_out_of_band",
    "parse_out_of_band",
]

PICKLE_MARK = 0x80
HEAD, FRAME, PARCEL, BATCH, NUDGE = b"H"[0], b"F"[0], b"P"[0], b"B"[0], b"N"[0]
_PARCEL = struct.Struct("<BIiQQ")
_HEAD = struct.Struct("<BQQI")
_FRAME = struct.Struct("<BQI")
OUT_OF_BAND = b"O"[0]
_OOB = struct.Struct("<B3xIQQ")
_OOB_BUFFER = struct.Struct("<QQ")
_PAGE = 4096
HEAD_SIZE = _HEAD.size
FRAME_HEADER = _FRAME.size
# Stream ids are the types of continuation frames (in the stream queue): bit 62 set, then
# the writer's pid and a per-writer counter. User mtypes (main queue) are 1..2**62-1
# (``layout.MTYPE_MAX``); a nudge's type, 2**62, is above them all.
_STREAM_BASE = 1 << 62
NUDGE_MTYPE = 1 << 62
_PID_SHIFT = 32


class WireError(ValueError):
    """A message that is not a valid mpsysv frame (foreign, truncated or out of order)."""


def is_single(msg) -> bool:
    """True when *msg* is a whole object (a bare pickle)."""
    return len(msg) > 0 and msg[0] == PICKLE_MARK


def stream_id_for(pid: int, counter: int) -> int:
    """A stream id unique per object: the writer's pid and its own object counter."""
    return _STREAM_BASE | (pid << _PID_SHIFT) | (counter & 0xFFFFFFFF)


def writer_pid(stream_id: int) -> int:
    """The pid of the process that wrote stream *stream_id*."""
    return (stream_id & ~_STREAM_BASE) >> _PID_SHIFT


def split(payload, stream_id: int, msgmax: int) -> Tuple[bytes, Iterator[bytes]]:
    """Split *payload* (longer than one message) into a head and continuation frames.

    Frames are built lazily so a huge object is never held twice in memory.
    """
    view = memoryview(payload).cast("B")
    total = len(view)
    first = msgmax - HEAD_SIZE
    chunk = msgmax - FRAME_HEADER
    if first <= 0 or chunk <= 0:
        raise ValueError(f"msgmax={msgmax} is too small to carry frames")
    rest = max(total - first, 0)
    nframes = 1 + (rest + chunk - 1) // chunk
    head = _HEAD.pack(HEAD, stream_id, total, nframes) + view[:first].tobytes()

    def frames():
        pack = _FRAME.pack
        for seq, start in enumerate(range(first, total, chunk), 1):
            yield pack(FRAME, stream_id, seq) + view[start:start + chunk].tobytes()

    return head, frames()


def parse_head(msg) -> Tuple[int, int, int, memoryview]:
    """``(stream_id, total, nframes, first_chunk)`` of a head message, or ``WireError``."""
    if len(msg) < HEAD_SIZE or msg[0] != HEAD:
        raise WireError(f"not a stream head ({len(msg)} bytes)")
    _, sid, total, nframes = _HEAD.unpack_from(msg)
    first = memoryview(msg)[HEAD_SIZE:]
    if not sid & _STREAM_BASE or nframes < 2 or total < len(first) or len(first) == 0:
        raise WireError("inconsistent stream head")
    return sid, total, nframes, first


def parse_frame(msg, stream_id: int, seq: int) -> memoryview:
    """The chunk of continuation frame *seq* of *stream_id*, or ``WireError``."""
    if len(msg) < FRAME_HEADER or msg[0] != FRAME:
        raise WireError("not a continuation frame")
    _, sid, got = _FRAME.unpack_from(msg)
    if sid != stream_id or got != seq:
        raise WireError(f"frame {got} of stream {sid:#x} where frame {seq} of {stream_id:#x} "
                        "was expected")
    return memoryview(msg)[FRAME_HEADER:]


def encode_parcel(slot: int, segment_id: int, length: int, nonce: int) -> bytes:
    """A parcel message; *nonce* (random, also in the segment's header) makes a message
    that merely names the right slot and segment (foreign, or stale) refused."""
    return _PARCEL.pack(PARCEL, slot, segment_id, length, nonce)


def encode_batch(list_pickle: bytes) -> bytes:
    """A batch message: the pickle of a list of objects (put_many), marked."""
    return b"B" + list_pickle


def batch_pickle(msg) -> memoryview:
    """The list pickle inside a batch message, or ``WireError``."""
    view = memoryview(msg)
    if len(view) < 3 or view[0] != BATCH or view[1] != PICKLE_MARK:
        raise WireError("not a batch message")
    return view[1:]


def parse_parcel(msg) -> Tuple[int, int, int, int]:
    """``(slot, segment_id, length, nonce)`` of a parcel message, or ``WireError``."""
    if len(msg) != _PARCEL.size or msg[0] != PARCEL:
        raise WireError(f"not a parcel message ({len(msg)} bytes)")
    return _PARCEL.unpack(msg)[1:]


def layout_out_of_band(base: int, pickle_len: int, lengths: List[int],
                       page: int = _PAGE) -> Tuple[bytes, int, List[int], int]:
    """Where a pickle with out-of-band buffers goes in a segment whose body starts at
    offset *base*: ``(layout, pickle offset, buffer offsets, end)``; the layout goes
    at *base*, the pickle right after it, each buffer at the next multiple of *page*."""
    pickle_off = base + _OOB.size + _OOB_BUFFER.size * len(lengths)
    at = pickle_off + pickle_len
    offsets = []
    for n in lengths:
        at = -(-at // page) * page
        offsets.append(at)
        at += n
    layout = _OOB.pack(OUT_OF_BAND, len(lengths), pickle_off, pickle_len) + b"".join(
        _OOB_BUFFER.pack(o, n) for o, n in zip(offsets, lengths))
    return layout, pickle_off, offsets, at


def parse_out_of_band(view, base: int, end: int) -> Tuple[Tuple[int, int], List[Tuple[int, int]]]:
    """``((pickle offset, length), [(buffer offset, length), ...])`` from the layout at
    *base* in segment *view*, every piece checked to lie in order between the layout
    and *end*; else ``WireError``."""
    if end > len(view) or base + _OOB.size > end:
        raise WireError(f"out-of-band layout does not fit ({end} bytes)")
    mark, count, pickle_off, pickle_len = _OOB.unpack_from(view, base)
    table_end = base + _OOB.size + _OOB_BUFFER.size * count
    if mark != OUT_OF_BAND or table_end > end:
        raise WireError("not an out-of-band layout")
    pieces = [(pickle_off, pickle_len)] + [
        _OOB_BUFFER.unpack_from(view, base + _OOB.size + _OOB_BUFFER.size * i)
        for i in range(count)]
    at = table_end
    for off, n in pieces:
        if off < at or off + n > end:
            raise WireError(f"out-of-band piece at {off} (+{n}) is outside {at}..{end}")
        at = off + n
    if pieces[0][1] < 2:
        raise WireError("out-of-band layout without a pickle")
    return pieces[0], pieces[1:]


class Reassembly:
    """Collects one object's chunks; never trusts the head's length to allocate."""

    __slots__ = ("stream_id", "total", "nframes", "next_seq", "_parts", "_size")

    def __init__(self, head):
        self.stream_id, self.total, self.nframes, first = parse_head(head)
        self.next_seq = 1
        self._parts: List[bytes] = [first.tobytes()]
        self._size = len(first)

    @property
    def complete(self) -> bool:
        return self.next_seq == self.nframes

    def add(self, msg) -> None:
        """Append continuation frame *msg*; ``WireError`` if it does not fit."""
        if self.complete:
            raise WireError("frame after the last one")
        chunk = parse_frame(msg, self.stream_id, self.next_seq)
        self._size += len(chunk)
        last = self.next_seq + 1 == self.nframes
        if self._size > self.total or (last and self._size != self.total) or not chunk:
            raise WireError(f"stream {self.stream_id:#x}: {self._size} bytes after frame "
                            f"{self.next_seq} of {self.nframes}, head said {self.total}")
        self._parts.append(chunk.tobytes())
        self.next_seq += 1

    def payload(self) -> bytes:
        if not self.complete:
            raise WireError("payload of an incomplete stream")
        return b"".join(self._parts)


def frame_count(total: int, msgmax: int) -> Optional[int]:
    """How many messages an object of *total* bytes takes (1 when it fits one)."""
    if total <= msgmax:
        return 1
    rest = total - (msgmax - HEAD_SIZE)
    chunk = msgmax - FRAME_HEADER
    return 1 + (rest + chunk - 1) // chunk
