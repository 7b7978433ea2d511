"""The trailer that marks a segment as mpsysv's segment of a name.

Every segment ``mpsysv.shared`` creates by name ends in a 256-byte trailer (magic,
format version, name, size, creator and tracker identity) that tells mpsysv's own
segments from foreign ones: what an attach checks, the tracker compares before it
removes, and the collector reads. Pure format plus a read of a segment's tail; no
process, no tracker.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Tuple

from .._ipc.objects import Segment
from .._ipc.procs import ipc_table

__all__ = ["TRAILER_SIZE", "MAGIC", "VERSION", "FLAG_TRACKED", "FLAG_HUGETLB",
           "PURPOSE_SHARED_MEMORY", "PURPOSE_SHAREABLE_LIST", "Identity", "pack_identity",
           "parse_identity", "match_identity", "read_trailer", "live_segments"]

# magic, version, flags, purpose, name length, size, creation time (ns since the epoch),
# creator pid, tracker pid, creator and tracker start times (clock ticks after boot, as in
# /proc/PID/stat: with the pid they name a process even after its pid is reused), name.
_TRAILER = struct.Struct("<8sHHHHQQIIQQ200s")
TRAILER_SIZE = _TRAILER.size
_HEAD = struct.Struct("<8sHHHHQQ")  # magic, version, flags, purpose, name length, size, ctime
_NAME_AT = TRAILER_SIZE - 200
MAGIC = b"mpsysvSH"
VERSION = 1
FLAG_TRACKED = 1
FLAG_HUGETLB = 2
PURPOSE_SHARED_MEMORY = 1
PURPOSE_SHAREABLE_LIST = 2


class Identity(NamedTuple):
    """What a segment's trailer says about it."""

    version: int
    flags: int
    purpose: int
    name: str
    size: int
    ctime_ns: int
    creator_pid: int
    tracker_pid: int
    creator_start: int
    tracker_start: int


def pack_identity(name: str, size: int, flags: int, purpose: int, ctime_ns: int,
                  creator: Tuple[int, int], tracker: Tuple[int, int]) -> bytes:
    raw = name.encode("ascii")
    return _TRAILER.pack(MAGIC, VERSION, flags, purpose, len(raw), size, ctime_ns, creator[0],
                         tracker[0], creator[1], tracker[1], raw)


def parse_identity(raw: bytes) -> Optional[Identity]:
    """The identity in a trailer, or None when *raw* is not an mpsysv trailer."""
    if len(raw) != TRAILER_SIZE or raw[:8] != MAGIC:
        return None
    (_, version, flags, purpose, name_len, size, ctime_ns, cpid, tpid, cstart, tstart,
     name) = _TRAILER.unpack(raw)
    if name_len > len(name):
        return None
    return Identity(version, flags, purpose, name[:name_len].decode("ascii", "replace"), size,
                    ctime_ns, cpid, tpid, cstart, tstart)


def match_identity(raw: bytes, name: str) -> Optional[Tuple[int, int, int]]:
    """``(size, purpose, ctime_ns)`` when *raw* is a current-format trailer of *name*,
    else None: the check of every attach, cheaper than building an Identity."""
    magic, version, _, purpose, name_len, size, ctime_ns = _HEAD.unpack_from(raw)
    if (magic != MAGIC or version != VERSION or name_len != len(name)
            or raw[_NAME_AT:_NAME_AT + name_len] != name.encode("ascii")):
        return None
    return size, purpose, ctime_ns


def read_trailer(segment: Segment) -> Optional[bytes]:
    """The last TRAILER_SIZE bytes of *segment* (mapped read-only for a moment), or None
    when it is smaller than that."""
    if segment.size < TRAILER_SIZE:
        return None
    attachment = segment.attach(readonly=True)
    try:
        return bytes(attachment.buf[segment.size - TRAILER_SIZE:])
    finally:
        attachment.detach()


def live_segments() -> list:
    """``(key, id, cuid, size)`` of every segment in /proc/sysvipc/shm."""
    return [(r["key"], r["shmid"], r["cuid"], r["size"]) for r in ipc_table("shm")]
