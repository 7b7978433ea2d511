"""What each process has counted and not yet handed over, for its successors.

A bounded queue's slot and a JoinableQueue's task are counted before the object's
message goes out, and a parcel is complete before its message goes out; a process
killed in between (or with objects still in its feeder buffer) would leave a slot
taken, a task unfinished or a parcel stranded for good. Each process that counts
notes it in an entry of its own in the queue's control segment, with plain memory
writes (no system call):

    entry: pid i32 | tasks i32 | slots i32 | held i32 | unused i32 |
           moving u32 | start time u64 (clock ticks) | unsent parcel slots u64 (bits)

``tasks`` and ``slots`` count what this process counted and has not sent yet (a note
is made before the count and cleared after the send); ``held`` counts the tasks it
took from the queue minus those it marked done; the parcel bits name the parcel slots
whose message is still in this process. An owner is dead when its pid *and* start
time no longer match a process (a reused pid is no owner).

Dead owners' notes are not rolled back: a note may stand for a count never made or
an object already queued. The counts are derived again instead (``counts``): free
slots are ``maxsize`` minus the objects in the kernel queue minus the live slot notes;
unfinished tasks are the queued objects plus the live task notes plus every entry's
``held`` (and what freed entries held). ``moving`` makes that exact: its low byte
counts this process's threads in a window where an object moves between those counts
(a getter from before its ``msgrcv``, asleep in it too, until it counted the object
out; a JoinableQueue putter from before it counts its task until it cleared its note;
a ``task_done`` while the count goes down), its upper bits count
every such window, so a repair sees whether a live process was in one at any time
while it read the counts.
Parcel bits are not rolled back either: the parcel table's next writer reads them.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import weakref
from typing import Iterator, Optional, Tuple

from .._ipc.procs import alive, start_ticks
from .layout import (J_HELD, J_MOVING, J_PARCELS, J_PID, J_SLOTS, J_START, J_TASKS,
                     JOURNAL_ENTRIES, JOURNAL_ENTRY, JOURNAL_OFF)

__all__ = ["Journal", "JOURNAL_OFF", "NENTRIES", "ENTRY", "MOVE", "alive", "start_ticks"]

ENTRY, NENTRIES = JOURNAL_ENTRY, JOURNAL_ENTRIES
_RETRY = 1.0  # seconds a process that found the table full waits before it looks again
_PID, _TASKS, _SLOTS, _HELD, _MOVING, _START, _PARCELS = (J_PID, J_TASKS, J_SLOTS, J_HELD,
                                                          J_MOVING, J_START, J_PARCELS)
_OFFSETS = range(JOURNAL_OFF, JOURNAL_OFF + NENTRIES * ENTRY.size, ENTRY.size)
MOVE = 0x101  # one more thread in a window (low byte) and one more window (upper bits)
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_me = [os.getpid()]  # this process's pid, kept current across fork (cheaper than getpid)
_journals: "weakref.WeakSet[Journal]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _me[0] = os.getpid()
    for journal in list(_journals):
        journal.active = False  # (the parent's entry: see Journal.active)


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        # This handle has an entry of this process: False after a fork in the child (for
        # every journal, whatever its queue's own fork hook does), so the hot paths test
        # this one attribute.
        self.active = False
        # Views of this process's entry, used only while ``active`` (claimed).
        self.moving_view = memoryview(b"")  # the owner's ``moving`` (see counts.Window)
        self.held_word = memoryview(b"")  # the owner's ``held``
        self._tasks = memoryview(b"")  # the owner's ``tasks`` and ``slots``
        self._slots = memoryview(b"")
        self._retry_at = 0.0
        self.mutex = threading.Lock()
        _journals.add(self)

    def after_fork(self) -> None:
        """In a fork child: the parent's entry is not ours."""
        self._off = None
        self.active = False
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
        if self._off is not None and self._pid == _me[0]:
            return self._off
        return None

    def may_claim(self) -> bool:
        """False for a while after this process found every entry in use."""
        return self._retry_at == 0.0 or time.monotonic() >= self._retry_at

    def claim(self) -> Optional[int]:
        """Under the state lock: take a free entry (or one whose owner died with nothing
        noted); None when every entry is in use."""
        me = _me[0]
        spare = None
        for off, (pid, tasks, slots, held, _, moving, start, _) in self.entries():
            if pid == 0:
                spare = off
                break
            if spare is None and not (tasks or slots or held or moving & 0xFF) and \
                    not alive(pid, start):
                spare = off
        if spare is None:
            self._retry_at = time.monotonic() + _RETRY
            return None
        ENTRY.pack_into(self._view, spare, 0, 0, 0, 0, 0, 0, start_ticks(me), 0)
        self._put(spare + _PID, me)
        self._off, self._pid = spare, me
        self.moving_view = self._view[spare + _MOVING:spare + _MOVING + 4].cast("I")
        self.held_word = self._view[spare + _HELD:spare + _HELD + 4].cast("i")
        self._tasks = self._view[spare + _TASKS:spare + _TASKS + 4].cast("i")
        self._slots = self._view[spare + _SLOTS:spare + _SLOTS + 4].cast("i")
        self.active = True
        return spare

    def release(self) -> None:
        """This handle lets go of the queue: free its entry when it notes nothing (an
        entry that still does stays for the repair after this process ends; the
        caller folds ``held`` away first, see ``take_held``)."""
        off = self.mine()
        if off is not None:
            with self.mutex:  # (a thread in a window checks ``active`` under it)
                _, tasks, slots, held, _, moving, _, bits = ENTRY.unpack_from(self._view, off)
                if not (tasks or slots or held or bits or moving & 0xFF):
                    self._put(off + _PID, 0)  # one write: a claimer rewrites the rest
                self._off = None
                self.active = False
                for word in (self.moving_view, self.held_word, self._tasks, self._slots):
                    word.release()

    def add_slots(self, n: int) -> None:
        if self.active:
            with self.mutex:
                self._slots[0] += n

    def add_task(self) -> None:
        """In a window or under the state lock, with the task count going up."""
        if self.active:
            with self.mutex:
                self._tasks[0] += 1

    def take_held(self) -> int:
        """Under the state lock: this entry's ``held``, zeroed (its owner lets go)."""
        off = self.mine()
        if off is None:
            return 0
        with self.mutex:
            held = self._get(off + _HELD)
            self._put(off + _HELD, 0)
        return held

    def moving_word(self) -> Optional[memoryview]:
        """This process's ``moving`` word (None before it claimed an entry); only
        ``counts.Window`` changes it, under ``mutex``."""
        if self._off is not None and self._pid == _me[0]:
            return self.moving_view
        return None

    def sent(self, tasks: int, slots: int) -> None:
        """What this process counted is in the kernel queue now."""
        if self.active and (tasks or slots):
            with self.mutex:
                if tasks:
                    word = self._tasks
                    word[0] = max(word[0] - tasks, 0)
                if slots:
                    word = self._slots
                    word[0] = max(word[0] - slots, 0)

    def slot_sent(self) -> None:
        """``sent(0, 1)``: a bounded queue's object is in the kernel queue now."""
        if self.active:
            with self.mutex:
                word = self._slots
                if word[0] > 0:
                    word[0] -= 1

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

    def movers(self) -> Optional[tuple]:
        """Every entry's ``moving`` word, or None while a live process has a thread in
        a window where an object moves between the counts."""
        words = []
        for _, (pid, _, _, _, _, moving, start, _) in self.entries():
            if pid and moving & 0xFF and alive(pid, start):
                return None
            words.append(moving)
        return tuple(words)

    def open_windows(self) -> int:
        """Threads of live processes in a window now (getters asleep in msgrcv among them)."""
        return sum(moving & 0xFF for _, (pid, _, _, _, _, moving, start, _) in self.entries()
                   if pid and moving & 0xFF and alive(pid, start))

    def noted(self) -> Tuple[int, int, int]:
        """``(tasks, slots, held)`` summed over the entries in use."""
        tasks = slots = held = 0
        for _, entry in self.entries():
            if entry[0]:
                tasks += entry[1]
                slots += entry[2]
                held += entry[3]
        return tasks, slots, held

    def any_dead(self) -> bool:
        """Without a lock: is there an entry whose dead owner left something noted, or
        died inside a window?"""
        mine = self.mine()
        for off, (pid, tasks, slots, held, _, moving, start, _) in self.entries():
            if pid and off != mine and (tasks or slots or held or moving & 0xFF) and \
                    not alive(pid, start):
                return True
        return False

    def collect_dead(self) -> Tuple[int, int, int]:
        """Under the state lock: free the entries of dead owners that noted something or
        died inside a window; ``(tasks noted, tasks held, windows)`` summed over them
        (the caller derives the counts again and keeps what they held). Dead owners'
        empty entries are left for ``claim``."""
        mine = self.mine()
        tasks_dropped = held_kept = windows = 0
        for off, (pid, tasks, slots, held, _, moving, start, _) in self.entries():
            if not pid or off == mine or not (tasks or slots or held or moving & 0xFF) or \
                    alive(pid, start):
                continue
            tasks_dropped += tasks
            held_kept += held
            windows += moving & 0xFF
            ENTRY.pack_into(self._view, off, 0, 0, 0, 0, 0, 0, 0, 0)
        return tasks_dropped, held_kept, windows
