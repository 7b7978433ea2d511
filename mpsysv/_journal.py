"""What each process has counted but not yet handed to the kernel, for its successors.

A bounded queue's slot and a JoinableQueue's task are counted before the object's
message goes out, and a parcel is complete before its message goes out; a process
killed in between (or with objects still in its feeder buffer) would leave a slot
taken, a task unfinished or a parcel stranded for good. Each process that counts
notes it in an entry of its own in the queue's control segment, with plain memory
writes (no system call):

    entry: pid i32 | tasks i32 | slots i32 | txn tasks i32 | txn unfinished i32 |
           taking u32 | start time u64 (clock ticks) | unsent parcel slots u64 (bits)

``tasks`` and ``slots`` count what this process counted and has not sent yet; the
parcel bits name the parcel slots whose message is still in this process. The next
process that finds the entry's owner dead (pid *and* start time, so a reused pid is
no owner) rolls its tasks back under the queue's state lock and drops its slot
notes. The ``txn`` fields make the task count's update repairable when its owner
dies inside the state lock.

Slots are not rolled back from notes: a slot is noted *before* it is taken and the
note is cleared *after* the send, so a note may stand for a slot never taken or an
object already queued. ``Channel.repair_slots`` derives the free slots from the
kernel's message count instead, and ``taking`` is what makes that exact: its low byte
counts this process's getters between starting a ``msgrcv`` and giving the slot
back, its upper bits count every such take, so a repair sees whether a live getter
was in that window at any point while it read the counts.

What remains: a task's count and its note change together under the state lock (the
txn fields make that exact), but the note is cleared right after the send returns;
a kill between that call returning and the next Python statement (a few bytecodes)
gives the task back although its object is queued (``join()`` may then return
before that task is done, or a ``task_done()`` raises).
Parcel bits are not rolled back: the parcel table's next writer reads them.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import Iterator, Optional, Tuple

from ._layout import CTL_SIZE
from ._procs import alive, start_ticks

__all__ = ["Journal", "JOURNAL_OFF", "NENTRIES", "ENTRY", "alive", "start_ticks"]

JOURNAL_OFF = 2240
ENTRY = struct.Struct("<iiiiiiQQ")
NENTRIES = (CTL_SIZE - JOURNAL_OFF) // ENTRY.size  # 353, to the end of the control segment
_RETRY = 1.0  # seconds a process that found the table full waits before it looks again
_PID, _TASKS, _SLOTS, _TXN_TASKS, _TXN_UNF = 0, 4, 8, 12, 16
_TAKING, _START, _PARCELS = 20, 24, 32
_OFFSETS = range(JOURNAL_OFF, JOURNAL_OFF + NENTRIES * ENTRY.size, ENTRY.size)
_TAKE = 0x101  # one more getter in the window (low byte) and one more take (upper bits)
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_getpid = os.getpid


class Journal:
    """The journal table of one queue (a view into its attached control segment).

    Only an entry's owner writes it while the owner lives (its threads take
    ``mutex``); others read it, and write it only under the state lock once the owner
    is dead.
    """

    def __init__(self, view: memoryview):
        self._view = view
        self._off: Optional[int] = None
        self._pid = 0
        self._taking: Optional[memoryview] = None
        self._retry_at = 0.0
        self.mutex = threading.Lock()

    def after_fork(self) -> None:
        """In a fork child: the parent's entry is not ours."""
        self._off = None
        self._retry_at = 0.0
        self.mutex = threading.Lock()

    def _get(self, off: int) -> int:
        return _I32.unpack_from(self._view, off)[0]

    def _put(self, off: int, value: int) -> None:
        _I32.pack_into(self._view, off, value)

    def entries(self) -> Iterator[Tuple[int, tuple]]:
        table = bytes(self._view[JOURNAL_OFF:JOURNAL_OFF + NENTRIES * ENTRY.size])
        return zip(_OFFSETS, ENTRY.iter_unpack(table))

    # -- the owner's side -----------------------------------------------------------

    def mine(self) -> Optional[int]:
        """The offset of this process's entry, None before it claimed one."""
        if self._off is not None and self._pid == _getpid():
            return self._off
        return None

    def may_claim(self) -> bool:
        """False for a while after this process found every entry in use."""
        return self._retry_at == 0.0 or time.monotonic() >= self._retry_at

    def claim(self) -> Optional[int]:
        """Under the state lock: take a free entry (or one whose owner died with nothing
        to roll back); None when every entry is in use."""
        me = _getpid()
        spare = None
        for off, (pid, tasks, slots, _, txn, _, start, _) in self.entries():
            if pid == 0:
                spare = off
                break
            if spare is None and not (tasks or slots or txn) and not alive(pid, start):
                spare = off
        if spare is None:
            self._retry_at = time.monotonic() + _RETRY
            return None
        ENTRY.pack_into(self._view, spare, 0, 0, 0, 0, 0, 0, start_ticks(me), 0)
        self._put(spare + _PID, me)
        self._off, self._pid = spare, me
        self._taking = self._view[spare + _TAKING:spare + _TAKING + 4].cast("I")
        return spare

    def release(self) -> None:
        """This handle lets go of the queue: free its entry when it notes nothing (an
        entry that still does stays for the repair after this process ends)."""
        off = self.mine()
        if off is not None:
            with self.mutex:
                _, tasks, slots, _, txn, _, _, bits = ENTRY.unpack_from(self._view, off)
                if not (tasks or slots or txn or bits):
                    self._put(off + _PID, 0)  # one write: a claimer rewrites the rest
            self._off = None
            self._taking.release()

    def add_slots(self, n: int) -> None:
        off = self.mine()
        if off is not None:
            with self.mutex:
                self._put(off + _SLOTS, self._get(off + _SLOTS) + n)

    def begin_take(self) -> Optional[memoryview]:
        """A getter of a bounded queue is about to take a message: until ``end_take`` it
        may hold one whose slot it has not given back. Returns what ``end_take``
        needs (None when this process has no entry)."""
        if self.mine() is None:
            return None
        word = self._taking
        self.resume_take(word)
        return word

    def end_take(self, word: memoryview) -> None:
        with self.mutex:
            word[0] -= 1

    def resume_take(self, word: memoryview) -> None:
        """``begin_take`` again after an ``end_take`` (a getter that slept in between)."""
        with self.mutex:
            word[0] = (word[0] + _TAKE) & 0xFFFFFFFF

    def begin_task(self, off: int, unfinished_after: int) -> None:
        """Under the state lock and ``mutex``, before the task count goes up: if this
        process dies before ``end_task``, the next locker can tell whether it did."""
        tasks = self._get(off + _TASKS)
        self._put(off + _TXN_TASKS, tasks)
        self._put(off + _TXN_UNF, unfinished_after)
        self._put(off + _TASKS, tasks + 1)

    def end_task(self, off: int) -> None:
        self._put(off + _TXN_UNF, 0)

    def sent(self, tasks: int, slots: int) -> None:
        """What this process counted is in the kernel queue now."""
        off = self.mine()
        if off is not None and (tasks or slots):
            with self.mutex:
                if tasks:
                    self._put(off + _TASKS, max(self._get(off + _TASKS) - tasks, 0))
                if slots:
                    self._put(off + _SLOTS, max(self._get(off + _SLOTS) - slots, 0))

    def parcel_made(self, off: int, slot: int) -> None:
        """Under the state lock: parcel *slot* is this process's, its message not sent."""
        with self.mutex:
            bits = _U64.unpack_from(self._view, off + _PARCELS)[0]
            _U64.pack_into(self._view, off + _PARCELS, bits | (1 << slot))

    def parcel_sent(self, slot: int) -> None:
        off = self.mine()
        if off is not None:
            with self.mutex:
                bits = _U64.unpack_from(self._view, off + _PARCELS)[0]
                _U64.pack_into(self._view, off + _PARCELS, bits & ~(1 << slot))

    # -- everybody else's side ------------------------------------------------------

    def parcel_unsent(self, writer: int, slot: int) -> Optional[bool]:
        """Whether *writer* still holds parcel *slot*'s message (None: it has no entry;
        an older entry of a process that had the same pid counts as its own)."""
        found = None
        for _, (pid, _, _, _, _, _, _, bits) in self.entries():
            if pid == writer:
                if bits >> slot & 1:
                    return True
                found = False
        return found

    def takers(self) -> Optional[tuple]:
        """Every entry's ``taking`` word, or None while a live process has a getter
        between taking a message and giving its slot back."""
        words = []
        for _, (pid, _, _, _, _, taking, start, _) in self.entries():
            if pid and taking & 0xFF and alive(pid, start):
                return None
            words.append(taking)
        return tuple(words)

    def slots_noted(self) -> int:
        """Slots every process (live or dead) noted as taken for objects not sent."""
        return sum(entry[2] for _, entry in self.entries() if entry[0])

    def any_dead(self) -> bool:
        """Without a lock: is there an entry whose dead owner left something to undo?"""
        mine = self.mine()
        for off, (pid, tasks, slots, _, txn, _, start, _) in self.entries():
            if pid and off != mine and (tasks or slots or txn) and not alive(pid, start):
                return True
        return False

    def settle(self, pid: int, unfinished: int) -> None:
        """Under the state lock, whose previous holder *pid* died inside it: finish or
        forget its half-done task update (*unfinished* is the count now)."""
        for off, (owner, tasks, _, txn_tasks, txn, _, _, _) in self.entries():
            if owner == pid and txn:
                if unfinished != txn:  # the count never went up: forget the note
                    self._put(off + _TASKS, txn_tasks)
                self._put(off + _TXN_UNF, 0)

    def collect_dead(self, unfinished: int) -> int:
        """Under the state lock: free the entries of dead owners that counted something
        and return the tasks they had not sent (the caller gives them back; their slot
        notes are dropped, see the module's doc). Dead owners' empty entries are left
        for ``claim``."""
        mine = self.mine()
        tasks_back = 0
        for off, (pid, tasks, slots, txn_tasks, txn, _, start, _) in self.entries():
            if not pid or off == mine or not (tasks or slots or txn) or alive(pid, start):
                continue
            if txn and unfinished != txn:
                tasks = txn_tasks
            tasks_back += tasks
            ENTRY.pack_into(self._view, off, 0, 0, 0, 0, 0, 0, 0, 0)
        return tasks_back
