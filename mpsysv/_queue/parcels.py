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

A zero-copy receiver's objects are views of the segment: it is *lent* to that
process (state LENT, the reader field its pid) and goes back to the pool once the last
view is gone, as a weakref callback notes: at once if the state lock is free (the
thread the callback interrupts may hold it) and the cyclic collector is not running
(the ``__del__`` methods of its garbage may still read the views), else when the
collection ends or at the process's next call on the table. Never pooled while a view
of it can exist: a lender that forked while holding it (the child has the views too)
removes it instead, so does a lender whose queue handle is gone, and a dead lender's
slot is reclaimed by removing its segment (its fork children may map it; the kernel
frees it at their last detach).

Each segment starts with a header (magic, owning control segment, writer, time) that
lets a cleaner recognise orphans.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import struct
import time
import weakref
from typing import Any, Callable, ContextManager, Dict, List, Optional, Protocol, Set, Tuple

from .._ipc import libc as L
from .._ipc.mapping import map_segment
from .._ipc.procs import alive as _alive, ipc_table
from . import wire as _wire
from .journal import Journal
from .layout import (FILLING, FREE, LENT, PARCEL_ENTRY, PARCEL_SLOTS, PARCEL_TABLE_OFF,
                     POOLED, READING, SENT)
from .objects import attach_view

__all__ = ["ParcelTable", "PARCEL_MIN", "MAGIC", "HEADER"]

# Objects from this size on travel as parcels; smaller multi-message ones are framed
# (MPSYSV_PARCEL_MIN overrides it, for measuring the crossover).
PARCEL_MIN = int(os.environ.get("MPSYSV_PARCEL_MIN", 16 * 1024))
TABLE_OFF, NSLOTS, _ENTRY = PARCEL_TABLE_OFF, PARCEL_SLOTS, PARCEL_ENTRY
_TABLE = struct.Struct("<" + PARCEL_ENTRY.format.lstrip("<") * NSLOTS)  # every slot at once
_WIDTH = len(_ENTRY.unpack(bytes(_ENTRY.size)))  # fields per slot in _TABLE's tuple
POOL_LIMIT = 256 << 20  # bytes of idle segments a queue keeps for reuse
_POOL_ALWAYS = 1 << 20  # segments up to this size are always kept (48 slots bound them)
MAGIC = b"MPSYSVP1"
# magic, owner control segment id, writer pid, created, nonce (as in the message), length
HEADER = struct.Struct("<8siidQQ")
_HDR_SIZE = 64
_nonce = random.getrandbits  # (the random module reseeds in fork children)
STRANDED_AFTER = 1.0  # seconds a sent parcel's message may be out of the queue unread
# Segments one process may hold lent at once; past it a zero-copy parcel leaves the table
# (removed at once, freed at its last detach), so a receiver that keeps its arrays
# cannot take every slot.
LEND_MAX = 16
LENDERS_EVERY = 0.25  # seconds between liveness checks of the lenders of LENT slots
# Out-of-band buffers from this size on arrive as views on a zero-copy queue; smaller ones
# are pickled in-band (queues.py), a copy being cheaper there than lending a segment
# (bench/array_crossover.py, README).
ZERO_COPY_MIN = int(os.environ.get("MPSYSV_ZERO_COPY_MIN", 320 * 1024))


_IN_FLIGHT = frozenset((FILLING, READING))  # states whose holder's death frees the slot
_IN_FLIGHT_LENT = _IN_FLIGHT | {LENT}


def _size_class(n: int) -> int:
    """Segment sizes come in classes (a quarter of a power of two apart), so a freed
    segment fits the next similar object while wasting at most a quarter."""
    need = max(n + _HDR_SIZE, PARCEL_MIN)
    step = max((1 << (need.bit_length() - 1)) >> 2, 4096)
    return -(-need // step) * step


class ParcelHost(Protocol):
    """What the parcel table needs from the queue that holds it."""

    def state_locked(self) -> ContextManager: ...  # the queue's state lock

    state_lock: Any  # its mutex: ``free()`` says whether anybody holds it

    def journal_entry(self) -> Optional[int]: ...  # under it: this process's entry

    def queue_state(self) -> Tuple[int, int]: ...  # (messages queued, last taker's pid)

    def queued_parcels(self) -> Optional[Set[Tuple[int, int]]]: ...  # None: cannot tell


class ParcelTable:
    """The parcel slots of one queue (a view into its attached control segment).

    Segments are pooled: a taken parcel's segment goes back to the table (state
    POOLED) for the next object of its size class, and every process keeps its
    mappings, because a fresh segment costs a page fault per page on both sides.
    A lent segment stays mapped (in ``_maps``) until it is back in the pool or gone.
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
        # (slot, segment id, nonce) -> when this process first saw that parcel stranded
        self._stranded: Dict[Tuple[int, int, int], float] = {}
        self.zero_copy = True  # out-of-band buffers received as views of their segment
        self._lent: Dict[int, Tuple[int, int]] = {}  # segment id -> (slot, size): views live
        self._shared: Set[int] = set()  # lent segments a fork child maps as well
        self._returned: List[int] = []  # lent segments whose last view is gone
        self._attached = True
        self._lenders_at = 0.0  # when to check the lenders of LENT slots next
        self._pid = os.getpid()  # (set again in a fork child: after_fork_child)
        _tables.add(self)

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
        me = self._pid
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
        nonce = _nonce(64)
        HEADER.pack_into(self._maps[segid][0], 0, MAGIC, self._owner, me, time.time(), nonce, n)
        parts = getattr(payload, "parts", None)  # a pickle in pieces (pickler.Pieces)
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
        return _wire.encode_parcel(slot, segid, n, nonce)

    def handed(self, message) -> None:
        """The message naming one of this process's parcels is in the kernel queue."""
        self._journal.parcel_sent(_wire.parse_parcel(message)[0])

    def _claim(self, me: int, size: int):
        """``(slot, segment id or -1)`` under the lock: a pooled segment of the size
        class, else a free slot; slots of dead writers, readers and lenders are
        reclaimed, and this process's mappings of segments no longer listed dropped."""
        if self._returned:
            self._give_back(me)
        flat = _TABLE.unpack_from(self._view, TABLE_OFF)
        now = time.monotonic()
        lenders = now >= self._lenders_at
        if lenders:
            self._lenders_at = now + LENDERS_EVERY
        states = flat[2::_WIDTH]
        free = states.index(FREE) if FREE in states else None
        stranded = self._find_stranded(flat, states)
        # Only slots in flight (and the stranded, and LENT ones when their lenders are
        # due) can need reclaiming: the table is looked at slot by slot only if it has any.
        if (FILLING in states or READING in states or stranded
                or (lenders and LENT in states)):
            check = _IN_FLIGHT_LENT if lenders else _IN_FLIGHT
            seen = flat  # (each decision on the table as read, as _find_stranded's)
            for slot in [i for i, state in enumerate(states) if state in check or i in stranded]:
                segid, writer, state, reader, ssize = seen[slot * _WIDTH:slot * _WIDTH + _WIDTH]
                if (state == FILLING and writer != me and not _alive(writer)) or (
                        state == READING and not _alive(reader)) or (
                        state == LENT and reader != me and not _alive(reader)) or (
                        slot in stranded):
                    if segid >= 0:
                        L.shmctl(segid, L.IPC_RMID, None)
                    elif state == FILLING:  # its writer died before it noted the segment's id
                        _remove_unnoted_segment(writer, ssize)
                    self._set(slot, 0, 0, FREE)
                    if free is None:
                        free = slot
                    # (the table changed: read it again)
                    flat = _TABLE.unpack_from(self._view, TABLE_OFF)
            states = flat[2::_WIDTH]
        listed = flat[0::_WIDTH]  # (a FREE slot's 0 is no segment id)
        for segid in [s for s in self._maps if s not in listed and s not in self._lent]:
            self._unmap(segid)
        # The first pooled segment of the size class.
        sizes = flat[4::_WIDTH]
        pooled = -1
        while POOLED in states[pooled + 1:]:
            pooled = states.index(POOLED, pooled + 1)
            if sizes[pooled] == size:
                segid = flat[pooled * _WIDTH]
                self._set(pooled, segid, me, FILLING, 0, size)
                return pooled, segid
        if free is not None:
            self._set(free, -1, me, FILLING, 0, size)
        return free, -1

    def _find_stranded(self, flat: tuple, states: tuple) -> set:
        """Under the lock: the sent parcels whose message is gone for good (see the
        module's docstring); *flat* is the table as read, *states* its slots' states."""
        sent = [] if SENT not in states else [
            (slot, flat[slot * _WIDTH], flat[slot * _WIDTH + 1])
            for slot, state in enumerate(states) if state == SENT]
        if not sent:
            self._stranded.clear()
            return set()
        # Read before the queue: a message a writer's feeder thread sends while the
        # queue is copied comes after the copies' first index and is missed, but its
        # parcel was still noted unsent here.
        unsent = {slot: self._journal.parcel_unsent(writer, slot) for slot, _, writer in sent}
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
            if unsent[slot] is not False and _alive(writer):
                continue  # its message may still be in its writer's buffer
            if unsent[slot]:
                found.add(slot)  # its writer died before the message went out
                continue
            # The message went out and was taken (nobody took any yet: in flight, then):
            # by a live consumer about to mark it?
            if not last:
                continue
            if last_dead is None:
                last_dead = not _alive(last)
            if last_dead:
                found.add(slot)
                continue
            # Timed per parcel, not per slot: a pooled segment carries one parcel after
            # another in the same slot, each briefly taken and not yet marked.
            key = (slot, segid, self._nonce_of(segid, flat[slot * _WIDTH + 4]))
            first = self._stranded[key] = seen.get(key, now)
            if now - first >= STRANDED_AFTER:
                found.add(slot)
        return found

    def _nonce_of(self, segid: int, size: int) -> int:
        """The nonce in parcel segment *segid*'s header (0 if it cannot be mapped)."""
        try:
            self._map(segid, size)
        except _wire.WireError:
            return 0
        return HEADER.unpack_from(self._maps[segid][0])[4]

    def unwrap(self, message, loads: Callable):
        """Decode the parcel *message* names and give its segment back to the pool (or
        lend it: zero-copy, see ``_lend``).

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
        whole = self._check_header(segid, size, nonce, n)
        me = self._pid
        mine = (segid, writer, READING, me, size)
        _ENTRY.pack_into(self._view, TABLE_OFF + slot * _ENTRY.size, *mine)
        if self._entry(slot) != mine:
            raise _wire.WireError(f"parcel in segment {segid} was reclaimed")
        if self._returned:
            with self._host.state_locked():
                self._give_back(me)
        keep = False
        try:
            view = whole[:_HDR_SIZE + n]
            try:
                if view[_HDR_SIZE] == _wire.OUT_OF_BAND:
                    if self.zero_copy and n >= ZERO_COPY_MIN:
                        if len(self._lent) < LEND_MAX:
                            return self._lend(slot, mine, view, loads)
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
            entry = self._entry(slot)
            if entry[2] == LENT or not self._attached:
                pass  # lent: it comes back through _give_back
            elif entry != mine:
                # Reclaimed meanwhile (we looked stranded): the slot is not ours any more.
                self._unmap(segid)
            elif keep:
                self._set(slot, segid, 0, POOLED, 0, size)
            else:
                self._unmap(segid)
                L.shmctl(segid, L.IPC_RMID, None)
                self._set(slot, 0, 0, FREE)

    def _lend(self, slot: int, mine: tuple, view: memoryview, loads: Callable):
        """Zero-copy: the buffers *loads* gets are views of this process's mapping of
        the segment, through an owner of their own whose end (a weakref callback, once
        the last object using them is gone) queues the segment for ``_give_back``; it
        stays LENT to this process until then."""
        segid, writer, _, me, size = mine
        owner = (ctypes.c_char * size).from_buffer(self._maps[segid][0])  # holds the mmap
        self._lent[segid] = (slot, size)
        self._set(slot, segid, writer, LENT, me, size)
        done = weakref.finalize(owner, self._views_gone, segid, me)
        done.atexit = False  # type: ignore[misc]  # (3.9's stubs list no atexit slot)
        return _loads_views(memoryview(owner).cast("B"), view, loads)

    def _views_gone(self, segid: int, lender: int) -> None:
        """Weakref callback: no view of lent segment *segid* is left in this process.
        Given back now unless the state lock is busy (perhaps held by the very thread
        this callback interrupts) or the cyclic collector is running (its garbage's
        ``__del__`` methods may still read the views): then at the collection's end,
        or at this process's next call on the table. (In a fork child that inherited
        the views nothing is to do: its lender removes the segment instead.)"""
        if os.getpid() != lender:
            return
        if not self._attached:
            self._free_detached(segid)
        else:
            self._returned.append(segid)
            if not _collecting:
                self.give_back_now()

    def give_back_now(self) -> None:
        """Give the segments whose views are gone back, if the state lock is free."""
        if self._attached and self._host.state_lock.free():
            try:
                with self._host.state_locked():
                    self._give_back(os.getpid())
            except OSError:
                pass  # removed from outside: the next call on the queue says so

    def _give_back(self, me: int) -> None:
        """Under the state lock: the lent segments whose views are gone go back to the
        pool, or away (shared with a fork child, over the pool's size, reclaimed)."""
        while self._returned:
            segid = self._returned.pop()
            slot, size = self._lent.pop(segid)
            shared = segid in self._shared
            self._shared.discard(segid)
            entry = self._entry(slot)
            if entry[0] != segid or entry[2] != LENT or entry[3] != me:
                self._unmap(segid)  # reclaimed or removed (the kernel frees it now)
            elif not shared and (size <= _POOL_ALWAYS
                                 or self._pooled_bytes() + size <= POOL_LIMIT):
                self._set(slot, segid, 0, POOLED, 0, size)
            else:
                self._unmap(segid)
                L.shmctl(segid, L.IPC_RMID, None)
                self._set(slot, 0, 0, FREE)

    def _free_detached(self, segid: int) -> None:
        """A lent segment whose views are gone after this process let go of the queue:
        removed, and its slot freed through a mapping of the control segment of its own
        (the lender alone writes a LENT slot, so no lock is needed)."""
        slot, size = self._lent.pop(segid)
        self._shared.discard(segid)
        self._unmap(segid)
        try:
            address, view = attach_view(self._owner)
        except OSError:
            return  # the queue is gone, and its parcels with it
        try:
            offset = TABLE_OFF + slot * _ENTRY.size
            now = _ENTRY.unpack_from(view, offset)
            if now[0] == segid and now[2] == LENT and now[3] == os.getpid():
                L.shmctl(segid, L.IPC_RMID, None)
                _ENTRY.pack_into(view, offset, 0, 0, FREE, 0, 0)
        finally:
            view.release()
            L.shmdt(address)

    def _unwrap_kept(self, slot: int, mine: tuple, view: memoryview, loads: Callable):
        """Zero-copy past ``LEND_MAX``: the segment leaves the table and becomes this
        process's; the buffers *loads* gets are slices of its mapping (``_ipc.mapping``),
        detached when the last of them is gone (removed now, the kernel frees it at that
        detach)."""
        segid = mine[0]
        whole, _ = self._maps.pop(segid)  # the mapping now belongs to the buffers
        L.shmctl(segid, L.IPC_RMID, None)
        if self._entry(slot) == mine:
            self._set(slot, 0, 0, FREE)
        return _loads_views(whole, view, loads)

    def _check_header(self, segid: int, size: int, nonce: int, n: int) -> memoryview:
        """Before touching the slot: the segment must be this queue's parcel that the
        message names (same nonce and length), else ``WireError`` and nothing changes.
        Returns this process's view of the whole segment."""
        hit = self._maps.get(segid)
        if hit is None or len(hit[0]) != size:
            self._map(segid, size)
            hit = self._maps[segid]
        whole = hit[0]
        magic, owner, _, _, nonce_now, n_now = HEADER.unpack_from(whole)
        if magic != MAGIC or owner != self._owner:
            raise _wire.WireError(f"segment {segid} is not a parcel of this queue")
        if (nonce_now, n_now) != (nonce, n):
            raise _wire.WireError(f"parcel message for segment {segid} does not match it "
                                  "(foreign, or its parcel was already taken)")
        return whole

    def _pooled_bytes(self) -> int:
        flat = _TABLE.unpack_from(self._view, TABLE_OFF)
        return sum(flat[i + 4] for i in range(0, len(flat), _WIDTH) if flat[i + 2] == POOLED)

    def remove_all(self) -> None:
        """Remove every parcel and pooled segment (the queue itself is going away)."""
        remove_listed(self._view)
        self.detach_all()

    def detach_all(self) -> None:
        """Drop this process's parcel mappings (at release; pooled segments stay); a
        lent segment's mapping stays until its views are gone, then it is removed."""
        self._attached = False
        for segid in self._returned:
            self._free_detached(segid)
        self._returned.clear()
        for segid in list(self._maps):
            if segid not in self._lent:
                self._unmap(segid)

    def after_fork_parent(self) -> None:
        """A child now has this process's views of the lent segments as well."""
        self._shared.update(self._lent)

    def after_fork_child(self) -> None:
        """In a fork child: the lent segments are the parent's to give back; their
        inherited mappings stay until the inherited views are gone."""
        self._pid = os.getpid()
        for segid in self._lent:
            self._maps.pop(segid, None)
        self._lent.clear()
        self._shared.clear()
        self._returned.clear()


_tables: "weakref.WeakSet[ParcelTable]" = weakref.WeakSet()
_collecting = False  # the cyclic collector is running (see ParcelTable._views_gone)


def _gc_phase(phase: str, _info: dict) -> None:
    global _collecting
    _collecting = phase == "start"
    if not _collecting:
        for table in list(_tables):
            if table._returned:
                table.give_back_now()


gc.callbacks.append(_gc_phase)


def _forked(parent: bool) -> None:
    for table in list(_tables):
        if parent:
            table.after_fork_parent()
        else:
            table.after_fork_child()


os.register_at_fork(after_in_parent=lambda: _forked(True), after_in_child=lambda: _forked(False))


def _loads_views(whole: memoryview, view: memoryview, loads: Callable):
    """The object an out-of-band parcel in *view* holds, its buffers slices of *whole*
    (the segment, its mapping's owner behind it)."""
    (pickle_off, pickle_len), pieces = _wire.parse_out_of_band(view, _HDR_SIZE, len(view))
    buffers = [whole[off:off + length] for off, length in pieces]
    del whole
    body = view[pickle_off:pickle_off + pickle_len]
    try:
        return loads(body, buffers=buffers)
    finally:
        body.release()


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
