"""Large objects as parcels: one SysV segment per object, named by one small message.

A stream through a 16 KiB message queue needs its writer alive until a reader has
taken every frame and moves at a few hundred MB/s; a parcel is written once, survives
its writer (so a named queue keeps it), and the reader takes it in one copy. Every
parcel is listed in a table inside the queue's control segment, so the last holder
or a later user can always find and remove it:

    slot: segment id i32 | writer pid i32 | state i32 | reader pid i32 | size u64

A slot whose writer died while filling it, or whose reader died while reading, is
reclaimed by the next writer. So is a complete parcel whose message is gone for good:
not in the main queue (the queue is empty, or a copy of each queued message does not
show it, looked at no more than once a second; where the kernel cannot copy queued
messages, such a slot waits until the queue is empty):

* its writer died with the message still buffered (its journal entry says which of
  its parcels it has not sent yet; a writer killed between its ``msgsnd`` returning
  and clearing that note counts as not having sent, so if a consumer has just taken
  that message and not marked it yet, the consumer loses the object);
* a consumer took the message and died before it marked the parcel as being read: a
  live consumer marks it within microseconds, so the slot is reclaimed when the last
  process that took a message is dead, or when this process has seen it like that
  for ``STRANDED_AFTER`` seconds. A consumer stalled right there that long (or while
  another consumer takes a message and dies) loses its object.

Each segment starts with a header (magic, owning control segment, writer, time) that
lets a cleaner recognise orphans.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from typing import Callable, ContextManager, Dict, Optional, Protocol, Set, Tuple

from .._ipc import libc as L
from .._ipc.mapping import map_segment
from .._ipc.procs import alive as _alive, ipc_table
from . import wire as _wire
from .journal import Journal
from .layout import (FILLING, FREE, PARCEL_ENTRY, PARCEL_SLOTS, PARCEL_TABLE_OFF, POOLED,
                     READING, SENT)

__all__ = ["ParcelTable", "PARCEL_MIN", "MAGIC", "HEADER"]

# Objects from this size on travel as parcels; smaller multi-message ones are framed
# (MPSYSV_PARCEL_MIN overrides it, for measuring the crossover).
PARCEL_MIN = int(os.environ.get("MPSYSV_PARCEL_MIN", 16 * 1024))
TABLE_OFF, NSLOTS, _ENTRY = PARCEL_TABLE_OFF, PARCEL_SLOTS, PARCEL_ENTRY
POOL_LIMIT = 256 << 20  # bytes of idle segments a queue keeps for reuse
_POOL_ALWAYS = 1 << 20  # segments up to this size are always kept (48 slots bound them)
MAGIC = b"MPSYSVP1"
# magic, owner control segment id, writer pid, created, nonce (as in the message), length
HEADER = struct.Struct("<8siidQQ")
_HDR_SIZE = 64
STRANDED_AFTER = 1.0  # seconds a sent parcel's message may be out of the queue unread


def _size_class(n: int) -> int:
    """Segment sizes come in classes (a quarter of a power of two apart), so a freed
    segment fits the next similar object while wasting at most a quarter."""
    need = max(n + _HDR_SIZE, PARCEL_MIN)
    step = max((1 << (need.bit_length() - 1)) >> 2, 4096)
    return -(-need // step) * step


class ParcelHost(Protocol):
    """What the parcel table needs from the queue that holds it."""

    def state_locked(self) -> ContextManager: ...  # the queue's state lock

    def journal_entry(self) -> Optional[int]: ...  # under it: this process's entry

    def queue_state(self) -> Tuple[int, int]: ...  # (messages queued, last taker's pid)

    def queued_parcels(self) -> Optional[Set[Tuple[int, int]]]: ...  # None: cannot tell


class ParcelTable:
    """The parcel slots of one queue (a view into its attached control segment).

    Segments are pooled: a taken parcel's segment goes back to the table (state
    POOLED) for the next object of its size class, and every process keeps its
    mappings, because a fresh segment costs a page fault per page on both sides.
    """

    def __init__(self, view: memoryview, owner_id: int, mode: int, journal: Journal,
                 host: "ParcelHost"):
        self._mode = mode
        self._view = view
        self._owner = owner_id
        self._journal = journal
        self._host = host
        self._next_scan = 0.0
        # segment id -> (view, address): this process's mappings (_ipc.mapping), each
        # detached when its view (and every slice of it) is gone
        self._maps: Dict[int, Tuple[memoryview, int]] = {}
        # (slot, segment id) -> when this process first saw it stranded
        self._stranded: Dict[Tuple[int, int], float] = {}
        self.zero_copy = True  # out-of-band buffers received as views of their segment

    def _entry(self, slot: int):
        return _ENTRY.unpack_from(self._view, TABLE_OFF + slot * _ENTRY.size)

    def _set(self, slot: int, segid: int, writer: int, state: int, reader: int = 0,
             size: int = 0) -> None:
        _ENTRY.pack_into(self._view, TABLE_OFF + slot * _ENTRY.size, segid, writer, state,
                         reader, size)

    def _map(self, segid: int, size: int) -> int:
        """The address of this process's mapping of *segid* (made once, kept for reuse)."""
        hit = self._maps.get(segid)
        if hit is not None and len(hit[0]) == size:
            return hit[1]
        try:
            mapping = self._maps[segid] = map_segment(segid, size)
        except OSError:
            raise _wire.WireError(f"parcel segment {segid} is gone") from None
        return mapping[1]

    def _unmap(self, segid: int) -> None:
        """Drop this process's mapping of *segid*: detached now, or when the last view a
        caller still holds is gone."""
        self._maps.pop(segid, None)

    def wrap(self, payload) -> Optional[bytes]:
        """Copy *payload* (a buffer, or pieces with ``parts`` and ``len()``) into a
        parcel; the message that names it, or None (no free slot, or the kernel refused
        a segment) so the caller streams instead."""
        me = os.getpid()
        buffers = getattr(payload, "buffers", None)  # out-of-band (pickler.OutOfBand)
        if buffers is not None:
            layout, pickle_off, offsets, end = _wire.layout_out_of_band(
                _HDR_SIZE, len(payload.pickle), [b.nbytes for b in buffers])
            n = end - _HDR_SIZE
        else:
            n = len(payload)
        size = _size_class(n)
        with self._host.state_locked():
            slot, segid = self._claim(me, size)
            if slot is not None:
                off = self._host.journal_entry()
                if off is not None:
                    self._journal.parcel_made(off, slot)
        if slot is None:
            return None
        if segid < 0:
            segid = L.shmget(L.IPC_PRIVATE, size, L.IPC_CREAT | self._mode)
            if segid == -1:
                self._set(slot, 0, 0, FREE)
                return None
            self._set(slot, segid, me, FILLING, 0, size)
        try:
            address = self._map(segid, size)
        except _wire.WireError:
            L.shmctl(segid, L.IPC_RMID, None)
            self._set(slot, 0, 0, FREE)
            return None
        nonce = int.from_bytes(os.urandom(8), "little")
        HEADER.pack_into((ctypes.c_char * _HDR_SIZE).from_address(address), 0, MAGIC,
                         self._owner, me, time.time(), nonce, n)
        parts = getattr(payload, "parts", None)  # a pickle in pieces (queues._Pieces)
        if buffers is not None:
            ctypes.memmove(address + _HDR_SIZE, layout, len(layout))
            ctypes.memmove(address + pickle_off, payload.pickle, len(payload.pickle))
            for off, buffer in zip(offsets, buffers):
                with memoryview((ctypes.c_char * buffer.nbytes).from_address(
                        address + off)).cast("B") as dest:
                    dest[:] = buffer
            payload.release()
        elif parts is None:
            ctypes.memmove(address + _HDR_SIZE, payload, n)
        else:
            at = address + _HDR_SIZE
            for part in parts:
                ctypes.memmove(at, part, len(part))
                at += len(part)
        # Complete: from here on the parcel belongs to the queue, even if this process
        # dies before (or while) its message goes out; only the slot's owner writes it
        # until a reader takes it, so no later update can race with that reader.
        self._set(slot, segid, me, SENT, 0, size)
        if buffers is not None:
            # Its reader may keep the segment (zero-copy): this process lets go of it.
            self._unmap(segid)
        return _wire.encode_parcel(slot, segid, n, nonce)

    def handed(self, message) -> None:
        """The message naming one of this process's parcels is in the kernel queue."""
        self._journal.parcel_sent(_wire.parse_parcel(message)[0])

    def _claim(self, me: int, size: int):
        """``(slot, segment id or -1)`` under the lock: a pooled segment of the size
        class, else a free slot; slots of dead writers and readers are reclaimed."""
        free = pooled = None
        pooled_bytes = 0
        stranded = self._find_stranded()
        for slot in range(NSLOTS):
            segid, writer, state, reader, ssize = self._entry(slot)
            if (state == FILLING and not _alive(writer)) or (
                    state == READING and not _alive(reader)) or slot in stranded:
                if segid >= 0:
                    L.shmctl(segid, L.IPC_RMID, None)
                elif state == FILLING:  # its writer died before it noted the segment's id
                    _remove_unnoted_segment(writer, ssize)
                self._set(slot, 0, 0, FREE)
                state = FREE
            if state == FREE:
                if free is None:
                    free = slot
            elif state == POOLED:
                pooled_bytes += ssize
                if pooled is None and ssize == size:
                    pooled = slot
        if pooled is not None:
            segid = self._entry(pooled)[0]
            self._set(pooled, segid, me, FILLING, 0, size)
            return pooled, segid
        if free is not None:
            self._set(free, -1, me, FILLING, 0, size)
        return free, -1

    def _find_stranded(self) -> set:
        """Under the lock: the sent parcels whose message is gone for good (see the
        module's docstring)."""
        sent = [(slot, e[0], e[1]) for slot, e in
                ((s, self._entry(s)) for s in range(NSLOTS)) if e[2] == SENT]
        if not sent:
            self._stranded.clear()
            return set()
        qnum, last = self._host.queue_state()
        now = time.monotonic()
        if qnum:
            # Their messages may be among the queued ones: look at a copy of each, at
            # most once per STRANDED_AFTER (a long queue costs a call per message).
            if now < self._next_scan:
                return set()
            self._next_scan = now + STRANDED_AFTER
            queued = self._host.queued_parcels()
            sent = [] if queued is None else [p for p in sent if p[:2] not in queued]
            if not sent:
                self._stranded.clear()
                return set()
            # Read after the copies: a consumer that took one of those messages while
            # they were copied is that last taker (or one came after it).
            last = self._host.queue_state()[1]
        seen, self._stranded = self._stranded, {}
        last_dead = None
        found = set()
        for slot, segid, writer in sent:
            unsent = self._journal.parcel_unsent(writer, slot)
            if unsent is not False and _alive(writer):
                continue  # its message may still be in its writer's buffer
            if unsent:
                found.add(slot)  # its writer died before the message went out
                continue
            # The message went out and was taken: by a live consumer about to mark it?
            if last_dead is None:
                last_dead = not _alive(last)
            first = self._stranded[(slot, segid)] = seen.get((slot, segid), now)
            if last_dead or now - first >= STRANDED_AFTER:
                found.add(slot)
        return found

    def unwrap(self, message, loads: Callable):
        """Decode the parcel *message* names and give its segment back to the pool.

        Raises ``WireError`` for a parcel that is gone (its writer was killed before it
        was complete and the slot reclaimed) or not ours.
        """
        slot, segid, n, nonce = _wire.parse_parcel(message)
        if not 0 <= slot < NSLOTS:
            raise _wire.WireError(f"parcel slot {slot} out of range")
        segid_now, writer, state, _, size = self._entry(slot)
        if segid_now != segid or state not in (FILLING, SENT) or n + _HDR_SIZE > size:
            raise _wire.WireError(f"parcel in segment {segid} is gone "
                                  f"(slot {slot}: {(segid_now, writer, state, size)}, n={n})")
        self._check_header(segid, size, nonce, n)
        me = os.getpid()
        self._set(slot, segid, writer, READING, me, size)
        mine = (segid, writer, READING, me, size)
        if self._entry(slot) != mine:
            raise _wire.WireError(f"parcel in segment {segid} was reclaimed")
        keep = False
        try:
            self._map(segid, size)
            view = self._maps[segid][0][:_HDR_SIZE + n]
            try:
                if view[_HDR_SIZE] == _wire.OUT_OF_BAND:
                    if self.zero_copy:
                        return self._unwrap_kept(slot, mine, view, loads)
                    result = _loads_copied(view, loads)
                else:
                    body = view[_HDR_SIZE:]
                    try:
                        result = loads(body)
                    finally:
                        body.release()
            finally:
                view.release()
            keep = size <= _POOL_ALWAYS or self._pooled_bytes() + size <= POOL_LIMIT
            return result
        finally:
            if self._entry(slot) != mine:
                # Reclaimed meanwhile (we looked stranded): the slot is not ours any more.
                self._unmap(segid)
            elif keep:
                self._set(slot, segid, 0, POOLED, 0, size)
            else:
                self._unmap(segid)
                L.shmctl(segid, L.IPC_RMID, None)
                self._set(slot, 0, 0, FREE)

    def _unwrap_kept(self, slot: int, mine: tuple, view: memoryview, loads: Callable):
        """Zero-copy: the segment leaves the table and becomes this process's; the
        buffers *loads* gets are slices of its mapping (``_ipc.mapping``), detached when
        the last of them is gone (removed now, the kernel frees it at that detach)."""
        segid = mine[0]
        whole, _ = self._maps.pop(segid)  # the mapping now belongs to the buffers
        L.shmctl(segid, L.IPC_RMID, None)
        if self._entry(slot) == mine:
            self._set(slot, 0, 0, FREE)
        (pickle_off, pickle_len), pieces = _wire.parse_out_of_band(view, _HDR_SIZE, len(view))
        buffers = [whole[off:off + length] for off, length in pieces]
        del whole
        body = view[pickle_off:pickle_off + pickle_len]
        try:
            return loads(body, buffers=buffers)
        finally:
            body.release()

    def _check_header(self, segid: int, size: int, nonce: int, n: int) -> None:
        """Before touching the slot: the segment must be this queue's parcel that the
        message names (same nonce and length), else ``WireError`` and nothing changes."""
        address = self._map(segid, size)
        magic, owner, _, _, nonce_now, n_now = HEADER.unpack(
            ctypes.string_at(address, HEADER.size))
        if magic != MAGIC or owner != self._owner:
            raise _wire.WireError(f"segment {segid} is not a parcel of this queue")
        if (nonce_now, n_now) != (nonce, n):
            raise _wire.WireError(f"parcel message for segment {segid} does not match it "
                                  "(foreign, or its parcel was already taken)")

    def _pooled_bytes(self) -> int:
        return sum(e[4] for e in (self._entry(s) for s in range(NSLOTS)) if e[2] == POOLED)

    def remove_all(self) -> None:
        """Remove every parcel and pooled segment (the queue itself is going away)."""
        remove_listed(self._view)
        self.detach_all()

    def detach_all(self) -> None:
        """Drop this process's parcel mappings (at release; pooled segments stay)."""
        for segid in list(self._maps):
            self._unmap(segid)


def _loads_copied(view: memoryview, loads: Callable):
    """The object an out-of-band parcel in *view* holds, its buffers private copies."""
    (pickle_off, pickle_len), pieces = _wire.parse_out_of_band(view, _HDR_SIZE, len(view))
    buffers = [bytearray(view[off:off + length]) for off, length in pieces]
    body = view[pickle_off:pickle_off + pickle_len]
    try:
        return loads(body, buffers=buffers)
    finally:
        body.release()


def remove_listed(view: memoryview) -> None:
    """Remove every segment the parcel table in control segment *view* lists."""
    for slot in range(NSLOTS):
        offset = TABLE_OFF + slot * _ENTRY.size
        segid, _, state, _, _ = _ENTRY.unpack_from(view, offset)
        if state != FREE and segid >= 0:
            L.shmctl(segid, L.IPC_RMID, None)
        _ENTRY.pack_into(view, offset, 0, 0, FREE, 0, 0)


def _remove_unnoted_segment(writer: int, size: int) -> None:
    """Remove the segment a writer killed between ``shmget`` and noting its id may have
    left: private (key 0), created by that dead pid, of the slot's exact size, this
    user's, attached nowhere. Nothing else lists it, so nothing else would remove it."""
    me = os.geteuid()
    for row in ipc_table("shm"):
        if (row["key"] == 0 and row["cpid"] == writer and row["size"] == size
                and row["nattch"] == 0 and row["uid"] == me):
            L.shmctl(row["shmid"], L.IPC_RMID, None)
