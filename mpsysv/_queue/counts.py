"""The counts of a bounded or joinable queue: free slots, unfinished tasks, the join gate.

Glossary of the crash-safety words (the journal module has the table's layout):

* note -- what a process writes in its journal entry *before* it counts (a slot it is
  taking, a task it added) and clears *after* the object's message is in the queue;
* held -- tasks a process took out of the queue and has not marked done yet;
* window -- the moments an object moves between two counts, marked in the entry's
  ``moving`` word (``Window``): a getter's from before its ``msgrcv`` (asleep inside it
  too) until it counted the object out; a JoinableQueue putter's from before it counts
  its task until its note is cleared after the send; a ``task_done``'s while the count
  and ``held`` go down;
* nudge -- a message with no object that wakes one getter asleep in ``msgrcv``, so that
  a repair never waits for a getter that waits for an object (``_read_frozen``);
* freeze -- a repair reading the counts asks new windows to wait (the freeze flag);
* repair -- deriving a count again from what the kernel and the journal say, after a
  process died: free slots are ``maxsize`` minus queued objects minus live notes;
  unfinished tasks are queued objects plus live task notes plus every ``held``.

The futex counters are caches of those truths. A count that changes in two places
(a note or ``held`` and a futex counter) changes inside this process's window, which
every recount waits for, or, for a process without a journal entry, under the state
lock (a robust process-shared mutex: no system call when uncontended, and a killed
holder's lock goes to the next locker) with a crash marker naming the holder, so the
next holder knows to repair. Joiners sleep on a counter of their own that only a
``task_done()`` bringing the count to zero (or a repair) posts, and only when the
joiners' word says one waits. ``Counts`` is a component of ``Channel``; it uses the
queue's kernel objects (``QueueObjects``) and the journal, nothing above them.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Callable, List, NoReturn, Optional, Protocol

from .._ipc.futex import PosixSemaphore
from .._ipc.libc import msqid_ds
from .._ipc.mutex import RobustMutex
from .journal import MOVE, Journal
from .layout import (_REMOVED_OFF, _EXTRA, _EXTRA_OFF, _FREEZE_OFF, _HELD_GONE, _HELD_GONE_OFF,
                     _RECOUNT_OFF, _RECOVERED, _RECOVERED_OFF, _STATE_MARK_OFF,
                     _UNNOTED_OFF, FREE_SLOTS, JOIN_WAKEUPS, JOINERS, KIND_JOINABLE,
                     SLOT_WAITERS, SLOT_WAKEUPS, UNFINISHED_TASKS)
from .objects import _ALIVE_CHECK

__all__ = ["Counts"]

_REPAIR_EVERY = 0.05  # how often a putter that found no slot looks for dead processes' slots
_SLOT_CHECK = 0.1  # how often a putter waiting for a slot looks again
_FREEZE_WAIT = 0.05  # how long a repair waits for the windows open in live processes
_me = [b""]  # this process's pid as the crash mark's 4 bytes, kept current across fork


def _pid_bytes() -> bytes:
    if not _me[0]:
        _me[0] = os.getpid().to_bytes(4, "little")
    return _me[0]


os.register_at_fork(after_in_child=lambda: _me.__setitem__(0, b""))


class CountsHost(Protocol):
    """What ``Counts`` needs from its queue's kernel objects (``objects.QueueObjects``):
    the queue's kind and size, its futex counters (and their count words, read without
    a call), the state lock, and these calls."""

    kind: int
    maxsize: int
    sems: List[PosixSemaphore]
    words: List[memoryview]
    state_lock: RobustMutex

    def fail(self, call: str, err: int) -> NoReturn: ...  # an errno as the exception

    def stat_main(self) -> msqid_ds: ...  # the main queue's IPC_STAT

    def wait(self, sem: PosixSemaphore, deadline: Optional[float],
             every: float = ...) -> bool: ...  # sleep on a counter, watching for removal

    def wait_slice(self, sem: PosixSemaphore, deadline: Optional[float],
                   every: float) -> Optional[bool]: ...

    def nudge_getters(self, n: int) -> None: ...  # wake n getters asleep in msgrcv

    def take_back_nudges(self) -> None: ...


class Counts:
    """Slots, tasks and the join gate of one queue, exact across kills."""

    def __init__(self, host: CountsHost, view: memoryview, journal: Journal):
        self._q = host
        self.journal = journal
        self._view = view  # the control segment (the host's mapping of it)
        self.sems = host.sems
        self.words = host.words
        self._next_repair = 0.0
        self._wake_at = max(1, min(host.maxsize // 16, 32))  # (see slot_freed)
        self._state_lock = _StateLock(self)  # (it keeps no state of its own: one serves all)
        self.window = Window(self)

    # -- the state lock ---------------------------------------------------------------

    def state_locked(self) -> "_StateLock":
        return self._state_lock

    def add_extra(self, delta: int) -> None:
        """One locked update of the batch object count per batch message."""
        with self.state_locked():
            self._add_to(_EXTRA, _EXTRA_OFF, delta)

    def _add_to(self, field, off: int, delta: int) -> None:
        """Under the state lock: add *delta* to a count in the control segment."""
        field.pack_into(self._view, off, field.unpack_from(self._view, off)[0] + delta)

    def take_one(self) -> bool:
        """``take_slots(1, block=False)`` when a slot is free at once (the common case):
        noted before it is taken (see ``take_slots``)."""
        journal = self.journal
        if not journal.active:
            self.own_entry()  # (without an entry the slot goes unnoted)
        journal.add_slots(1)
        if self.sems[FREE_SLOTS].try_acquire():
            return True
        journal.slot_sent()  # (none taken: the note goes)
        return False

    # -- the task count of a JoinableQueue ------------------------------------------------

    def task_added(self, window: Optional[memoryview]) -> None:
        """Count one task; this process's journal entry notes it until it is sent.

        Inside this process's open *window* the note and the count need no lock: a task
        recount reads the counts only while no window is open, and a process killed in
        a window has its tasks derived again. Without one (no journal entry) the state
        lock makes them one step."""
        if self._view[_REMOVED_OFF]:
            self._q.fail("task_added", errno.EIDRM)
        if window is not None:
            self.journal.add_task()
            self.sems[UNFINISHED_TASKS].post()
            return
        with self.state_locked():
            if self.journal_entry() is not None:
                self.journal.add_task()
            else:
                self._view[_UNNOTED_OFF] = 1
            self.sems[UNFINISHED_TASKS].post()

    def task_done(self) -> None:
        """Take one task off the count and off this process's ``held`` (in a window, as
        ``task_added``), waking the joiners when none is left."""
        if self._view[_REMOVED_OFF]:
            self._q.fail("task_done", errno.EIDRM)
        window = self.window
        word = window.open()
        if word is None:
            with self.state_locked():
                if not self.sems[UNFINISHED_TASKS].try_acquire():
                    raise ValueError("task_done() called too many times")
                self._view[_UNNOTED_OFF] = 1
        else:
            done = 0
            try:
                if not self.sems[UNFINISHED_TASKS].try_acquire():
                    raise ValueError("task_done() called too many times")
                done = 1
            finally:
                window.close(word, -done)
        if self.words[JOINERS][0] and not self.words[UNFINISHED_TASKS][0]:
            self._wake_joiners()

    def unfinished(self) -> int:
        self.repair()
        return self.sems[UNFINISHED_TASKS].value

    def join_tasks(self) -> None:
        """Wait until every task put on the queue was marked done (the count is zero).

        A joiner counts itself among the joiners (``JOINERS``) before it reads the count, and
        ``task_done()`` reads ``JOINERS`` after it took its task off the count (both atomic
        read-modify-writes), so a joiner that finds work left is always woken. About once
        a second (and before the first wait) it settles what dead processes left --
        tasks counted and never sent -- and checks that the queue still exists."""
        q, wake, count = self._q, self.sems[JOIN_WAKEUPS], self.words[UNFINISHED_TASKS]
        joiners = self.sems[JOINERS]
        joiners.post()
        try:
            while True:
                self.repair()
                if not count[0]:
                    return
                q.wait(wake, time.monotonic() + _ALIVE_CHECK)
                q.stat_main()  # (a removal from outside ends the wait: RemovedError)
        finally:
            joiners.try_acquire()

    def _wake_joiners(self) -> None:
        """The count is zero: wake every joiner that waits (and has no wake-up yet; two
        callers at once may wake one twice: a joiner looks at the count when it wakes)."""
        wake = self.sems[JOIN_WAKEUPS]
        for _ in range(self.words[JOINERS][0] - self.words[JOIN_WAKEUPS][0]):
            wake.post()

    def _repair_state(self, dead: int) -> None:
        """Under the state lock: holder *dead* died inside it, maybe between a task's
        note and its count: derive the count again, and the gate from it."""
        self._view[_FREEZE_OFF] = 0
        self._q.take_back_nudges()  # (a repair killed half-way may have left some)
        if self._q.kind == KIND_JOINABLE:
            self._view[_RECOUNT_OFF] = 1
        self._repair_journal()
        if not self.words[UNFINISHED_TASKS][0]:
            self._wake_joiners()

    # -- the journal: what dead processes counted and never sent -----------------------

    def repair(self) -> None:
        """Settle what dead processes left: their notes (the slots and tasks they
        counted for objects never sent), a half-done update inside the state lock, a
        task count still to be derived again."""
        if int.from_bytes(self._view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4], "little") or \
                self._view[_RECOUNT_OFF] or self.journal.any_dead():
            with self.state_locked():
                self._repair_journal()

    def _repair_journal(self) -> None:
        """Under the state lock: free the entries of dead processes (what they held is
        kept in the control segment); the counts their notes stood in for are derived
        again (slots in ``repair_slots``, tasks here)."""
        view = self._view
        tasks, held, windows = self.journal.collect_dead()
        if windows and self._q.kind == KIND_JOINABLE:
            # A getter killed before it counted its object out: the object is lost,
            # and so is its task (a putter killed after its send: its object counts).
            view[_RECOUNT_OFF] = 1
        if held:
            self._add_to(_HELD_GONE, _HELD_GONE_OFF, held)
        if tasks:
            if view[_UNNOTED_OFF]:
                # Some process counts without notes: no count can be derived; give the
                # dead processes' unsent tasks back as noted (exact but for a kill
                # between a send and its note's clearing).
                unfinished = self.sems[UNFINISHED_TASKS]
                for _ in range(tasks):
                    unfinished.try_acquire()
                if not self.words[UNFINISHED_TASKS][0]:
                    self._wake_joiners()
            else:
                view[_RECOUNT_OFF] = 1
        if view[_RECOUNT_OFF]:
            self._recount_tasks()

    def _recount_tasks(self) -> None:
        """Under the state lock: set a JoinableQueue's unfinished count to what the
        kernel queue and the journal say: objects queued, tasks noted by live putters
        (not sent yet), tasks held by processes (taken, not done). Done only while no
        live process was in a window where an object moves between those counts (the
        journal's ``moving`` words, before and after); otherwise the next repair tries
        again."""
        view = self._view
        if self._q.kind != KIND_JOINABLE or view[_UNNOTED_OFF]:
            view[_RECOUNT_OFF] = 0
            return
        def read():
            tasks, _, held = self.journal.noted()
            return tasks + held + self._q.stat_main().msg_qnum

        counts = self._read_frozen(read)
        if counts is None:
            return
        truth = max(counts + _EXTRA.unpack_from(view, _EXTRA_OFF)[0]
                    + _HELD_GONE.unpack_from(view, _HELD_GONE_OFF)[0], 0)
        unfinished = self.sems[UNFINISHED_TASKS]
        now = unfinished.value
        for _ in range(truth - now):
            unfinished.post()
        for _ in range(now - truth):
            unfinished.try_acquire()
        if not truth:
            self._wake_joiners()
        view[_RECOUNT_OFF] = 0

    def _read_frozen(self, read: Callable[[], int]) -> Optional[int]:
        """Under the state lock: ``read()`` the counts while no live process is in a
        window. New windows wait (the freeze flag; a busy getter would otherwise open
        one every few microseconds); getters asleep in msgrcv get a nudge each (they
        wake, see the flag and step out), open windows are waited for (``_FREEZE_WAIT``
        at most), and the nudges nobody took are taken back before the read (so the
        kernel's message count is objects only). None when a window stayed open (a
        stopped process) or one moved while the counts were read (the journal's
        ``moving`` words, before and after)."""
        journal, view = self.journal, self._view
        view[_FREEZE_OFF] = 1
        nudged = False
        try:
            give_up = time.monotonic() + _FREEZE_WAIT
            while True:
                before = journal.movers()
                if before is not None:
                    break
                if not nudged:
                    nudged = True
                    self._q.nudge_getters(journal.open_windows())
                if time.monotonic() >= give_up:
                    return None
                time.sleep(0.0002)
            if nudged:
                nudged = False
                self._q.take_back_nudges()
            counts = read()
            return counts if journal.movers() == before else None
        finally:
            if nudged:
                self._q.take_back_nudges()
            view[_FREEZE_OFF] = 0

    def journal_entry(self) -> Optional[int]:
        """Under the state lock: this process's journal entry, claimed on first use
        (None while the table is full: then this process's counts go unjournaled)."""
        journal = self.journal
        off = journal.mine()
        if off is None and journal.may_claim():
            off = journal.claim()
            if off is None:
                self._repair_journal()
                off = journal.claim()
        return off

    def own_entry(self) -> bool:
        """Claim this process's journal entry if it has none; False (and slot recoveries
        stop for good) while every entry is taken by a live process."""
        journal = self.journal
        if journal.mine() is None:
            if journal.may_claim():
                with self.state_locked():
                    self.journal_entry()
            if journal.mine() is None:
                self._view[_UNNOTED_OFF] = 1
                return False
        return True

    # -- the slots of a bounded queue -------------------------------------------------

    def take_slots(self, n: int, block: bool, deadline: Optional[float]) -> bool:
        """Take *n* slots (all or none), waiting until *deadline* (None: for good) when
        *block*; False when they could not be had.

        A slot is noted in the journal before it is taken, so ``repair_slots`` never
        finds a slot that a live putter holds and no count shows. For the same reason
        a putter without a slot does not sleep on the slot count (a slot taken that way
        could not be noted first) but on a wake-up of its own, looking for lost slots while
        it waits.
        """
        self.own_entry()
        taken = 0
        waiting = False
        try:
            while taken < n:
                if self.take_one():
                    taken += 1
                elif not block:
                    self.repair_slots()
                    if not self.take_one():
                        return False
                    taken += 1
                elif not waiting:
                    # Counted as waiting before the next try: a getter that frees a slot
                    # after that try sees a waiter to wake.
                    self.sems[SLOT_WAITERS].post()
                    waiting = True
                    self.repair_slots()
                elif not self._wait_for_slot(deadline):
                    # A last look at the deadline: getters wake putters only once a few
                    # slots are free (``slot_freed``).
                    if not self.take_one():
                        return False
                    taken += 1
            taken = 0
            return True
        finally:
            if waiting:
                self.sems[SLOT_WAITERS].try_acquire()
            if taken:  # giving up, or an exception: hand back what was taken
                self.slots_freed(taken)
                self.journal.sent(0, taken)

    def _wait_for_slot(self, deadline: Optional[float]) -> bool:
        """Sleep on this putter's wake-up until *deadline* (False when it passed), or for
        ``_SLOT_CHECK`` s at most, looking for lost slots (and for the queue's removal)
        then: True means "look again"."""
        got = self._q.wait_slice(self.sems[SLOT_WAKEUPS], deadline, _SLOT_CHECK)
        if got is None:
            self.repair_slots()
            return True
        return got

    def slot_freed(self) -> None:
        """``slots_freed(1)``: a getter's, after each object. Waiting putters are woken
        once ``_wake_at`` slots are free (1 below 32 slots, up to 32 from 512), so that
        a full queue costs a wake-up per batch of objects instead of one per object; a
        putter that no wake-up reaches looks again after ``_SLOT_CHECK`` s and at its
        deadline."""
        self.sems[FREE_SLOTS].post()
        words = self.words
        waiting = words[SLOT_WAITERS][0] - words[SLOT_WAKEUPS][0]
        if waiting > 0:
            free = words[FREE_SLOTS][0]
            if free >= self._wake_at:
                wake = self.sems[SLOT_WAKEUPS]
                for _ in range(min(waiting, free)):
                    wake.post()

    def slots_freed(self, n: int) -> None:
        """*n* slots are free again: count them, and wake as many waiting putters."""
        slots = self.sems[FREE_SLOTS]
        for _ in range(n):
            slots.post()
        waiting = self.words[SLOT_WAITERS][0]
        if waiting:
            wake = self.sems[SLOT_WAKEUPS]
            for _ in range(min(n, waiting - self.words[SLOT_WAKEUPS][0])):
                wake.post()

    def repair_slots(self) -> None:
        """Give back the slots that no count shows, at most every ``_REPAIR_EVERY`` s
        (what a putter that finds no slot runs).

        The free-slot count is only a cache. The truth is ``maxsize`` minus the objects
        in the kernel queue (``msg_qnum`` plus the batch count) minus the slots live
        processes noted (dead processes' notes are dropped first). What a killed
        process took and never sent or gave back (a putter between taking a slot and
        sending, a getter between its msgrcv and giving the slot back) shows as a
        shortfall. The counts are read in the order an object moves through them
        (free, noted, queued), so a live putter can be counted twice but never
        missed. A live getter between msgrcv and its post would be missed, so the
        shortfall counts only if no live getter was in that window at any time while
        the counts were read (the journal's ``moving`` words, before and after).
        """
        now = time.monotonic()
        if now < self._next_repair:
            return
        self._next_repair = now + _REPAIR_EVERY
        def read():
            free = self.sems[FREE_SLOTS].value
            noted = self.journal.noted()[1]
            return free + noted + self._q.stat_main().msg_qnum

        with self.state_locked():
            self._repair_journal()
            if self._view[_UNNOTED_OFF]:
                return
            counts = self._read_frozen(read)
            if counts is None:
                return
            lost = self._q.maxsize - counts - _EXTRA.unpack_from(self._view, _EXTRA_OFF)[0]
            if lost > 0:
                self._add_to(_RECOVERED, _RECOVERED_OFF, lost)
                self.slots_freed(lost)

    def counted_sent(self, n: int) -> None:
        """*n* counted objects (one message each) are in the kernel queue now."""
        if self._q.kind == KIND_JOINABLE:
            self.journal.sent(n, n if self._q.maxsize > 0 else 0)
        elif n == 1:
            self.journal.slot_sent()
        else:
            self.journal.sent(0, n)

    def fold_held(self) -> None:
        """Before this handle's journal entry is freed: keep the tasks it took and did
        not mark done (another handle may mark them) in the control segment."""
        journal = self.journal
        if self._q.kind != KIND_JOINABLE or journal.mine() is None:
            return
        try:
            with self.state_locked():
                self._add_to(_HELD_GONE, _HELD_GONE_OFF, journal.take_held())
        except OSError:
            pass  # removed already: nothing left to count


class Window:
    """This process's journal window: while open, an object may be between two counts
    (see the glossary), and the entry's ``moving`` word says so to every repair.

    Getters open it before ``msgrcv`` (also before sleeping inside it) and close it once
    the object is counted out; a JoinableQueue putter opens it around its send and the
    clearing of its note. The one rule for callers::

        word = window.open()      # the statement right before ``try``
        try:
            ...
        finally:
            window.close(word)

    ``open()`` leaves nothing counted when it raises (a ``KeyboardInterrupt`` inside it
    is undone there), and from Python 3.11 nothing can raise between its return and the
    ``try`` (signals are checked at calls and backward jumps only). None: no window
    (this process has no journal entry, and counts unjournaled).
    """

    __slots__ = ("counts", "journal", "_view")

    def __init__(self, counts: Counts):
        self.counts = counts
        self.journal = counts.journal
        self._view = counts._view

    def open(self) -> Optional[memoryview]:
        journal = self.journal
        word = journal.moving_view if journal.active else None  # (active: False after fork)
        if word is None:
            if not self.counts.own_entry():
                return None
            word = self.journal.moving_word()
            if word is None:
                return None
        counted = False
        try:
            with journal.mutex:
                word[0] = (word[0] + MOVE) & 0xFFFFFFFF
                counted = True
            if self._view[_FREEZE_OFF]:
                self._yield_to_repair(word)
        except BaseException:
            if counted:
                self.close(word)
            raise
        return word

    def close(self, word: Optional[memoryview], held: int = 0) -> None:
        """Close the window (if *word*); *held* tasks were taken meanwhile (a getter's,
        recorded before the window closes)."""
        if word is not None:
            journal = self.journal
            with journal.mutex:
                if journal.active:
                    if held:
                        journal.held_word[0] += held
                    word[0] -= 1

    def step_out(self, word: Optional[memoryview]) -> None:
        """Close it while asleep on a futex (``step_in`` after, in a ``finally``)."""
        self.close(word)

    def step_in(self, word: Optional[memoryview]) -> None:
        if word is not None:
            journal = self.journal
            with journal.mutex:
                if journal.active:
                    word[0] = (word[0] + MOVE) & 0xFFFFFFFF
            if self._view[_FREEZE_OFF]:
                self._yield_to_repair(word)

    def _yield_to_repair(self, word: memoryview) -> None:
        """A repair froze the windows: step out leaving no trace, wait until it is done
        (``_FREEZE_WAIT`` at most), step in again."""
        journal, view = self.journal, self._view
        try:
            with journal.mutex:
                word[0] = (word[0] - MOVE) & 0xFFFFFFFF
            give_up = time.monotonic() + _FREEZE_WAIT
            while view[_FREEZE_OFF] and time.monotonic() < give_up:
                time.sleep(0.0002)
            if view[_FREEZE_OFF] and self.counts._q.state_lock.free():
                view[_FREEZE_OFF] = 0  # its repair was killed (the state lock is free)
        finally:
            with journal.mutex:
                if journal.active:
                    word[0] = (word[0] + MOVE) & 0xFFFFFFFF


class _StateLock:
    """The state lock with a crash marker: the next holder repairs a half-done update."""

    __slots__ = ("counts",)

    def __init__(self, counts: Counts):
        self.counts = counts

    def __enter__(self):
        counts = self.counts
        q = counts._q
        mutex = q.state_lock
        owner_died = mutex.try_acquire()  # the uncontended case: no system call
        while owner_died is None:
            owner_died = mutex.acquire(time.monotonic() + _ALIVE_CHECK)
            if owner_died is None:
                q.stat_main()  # (held that long: was the queue removed from outside?)
        if owner_died:
            # At once: the crash mark, not the mutex, says what to repair, and it stays
            # until a repair completes (a repairer killed half-way leaves it for the next
            # locker); a repair that raised must not leave the mutex unrecoverable.
            mutex.consistent()
        view = counts._view
        dead = int.from_bytes(view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4], "little")
        if dead:
            try:
                counts._repair_state(dead)
            except BaseException:
                mutex.release()
                raise
        view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4] = _pid_bytes()
        return self

    def __exit__(self, *exc):
        counts = self.counts
        counts._view[_STATE_MARK_OFF:_STATE_MARK_OFF + 4] = b"\0\0\0\0"
        counts._q.state_lock.release()
