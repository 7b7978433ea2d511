"""Processes SIGKILLed (or stopped) inside multi-step updates: slots, tasks and batch
counts stay exact."""

import os
import random
import signal
import time
from contextlib import suppress

import pytest

import mpsysv
from mpsysv._queue import layout as C
from mpsysv._queue import journal as _journal
from mpsysv._queue import parcels as _parcels
from mpsysv import JoinableQueue, Queue

from . import seams
from .helpers import sysv_counts

from .crash_toolkit import (
    BIG, WATCHDOG, fork_run, wait_pid, kill, payload, obj, kernel_state, parcel_states,
    assert_reclaimed, round_trip_in_child, close_queue, die_at, put_and_die_at,
    get_and_die_at)
from .crash_toolkit import close_leftover_queues  # noqa: F401 - fixtures


def _kill_a_consumer_before_its_slot_release(q) -> None:
    """A forked consumer takes one object and is SIGKILLed just before it gives the
    object's slot back."""
    class Dying:
        def post(self):
            os.kill(os.getpid(), signal.SIGKILL)

    def victim():
        q._chan.sems[C.FREE_SLOTS] = Dying()
        q.get(timeout=5)

    wait_pid(fork_run(victim), WATCHDOG)


def test_consumer_killed_between_receive_and_slot_release_keeps_slots_exact():
    q = Queue(2)
    q.put("a")
    q.put("b")
    _kill_a_consumer_before_its_slot_release(q)
    # "a" was in flight in the dead consumer (lost, as documented); "b" is queued: 1 free.
    assert q.qsize() == 1
    q.put_nowait("c")
    close_queue(q)


def test_putter_waiting_on_a_quiet_queue_recovers_the_slot_of_a_consumer_killed_holding_it():
    q = Queue(1)
    q.put("a")

    def putter():
        started = time.monotonic()
        q.put("b", timeout=10)
        assert time.monotonic() - started < 2, "the lost slot came back late"

    _kill_a_consumer_before_its_slot_release(q)
    try:
        assert wait_pid(fork_run(putter), WATCHDOG) == 0, "the lost slot never came back"
        assert q.get(timeout=5) == "b"
        assert q._chan.sems[C.FREE_SLOTS].value == 1
    finally:
        close_queue(q)


def test_a_live_getter_between_receive_and_slot_release_is_never_counted_as_lost():
    """The repair must tell a getter stopped in that window (alive) from a dead one."""
    q = Queue(2)
    q.put("a")
    q.put("b")

    class Stopping:
        def __init__(self, real):
            self.real = real

        def post(self):
            os.kill(os.getpid(), signal.SIGSTOP)
            self.real.post()

    def getter():
        q._chan.sems[C.FREE_SLOTS] = Stopping(q._chan.sems[C.FREE_SLOTS])
        assert q.get(timeout=5) == "a"

    pid = fork_run(getter)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        with pytest.raises(mpsysv.Full):
            q.put_nowait("c")  # its slot is not given away while it lives
        assert q._chan.sems[C.FREE_SLOTS].value == 0
        os.kill(pid, signal.SIGCONT)
        assert wait_pid(pid, WATCHDOG) == 0
        q.put_nowait("c")
        time.sleep(2 * seams.value(seams.REPAIR_EVERY))
        with pytest.raises(mpsysv.Full):
            q.put_nowait("d")  # "b" and "c" fill it: no slot came from nowhere
        assert [q.get(timeout=5), q.get(timeout=5)] == ["b", "c"]
    finally:
        kill(pid)
        close_queue(q)


def _asleep_in_get(q, pid: int) -> None:
    """Wait until the getter *pid* is in its window (asleep inside msgrcv by then)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for entry in C.journal_entries(bytes(q._chan._view)):
            if entry["pid"] == pid and entry["threads_moving_an_object"]:
                time.sleep(0.1)
                return
        time.sleep(0.01)
    raise AssertionError("the getter never went to sleep in its window")


def _sleeping_getter(q, expect) -> int:
    def getter():
        assert q.get() == expect
    pid = fork_run(getter)
    _asleep_in_get(q, pid)
    return pid


@pytest.mark.parametrize("kind", [Queue, JoinableQueue])
def test_a_lost_slot_comes_back_while_another_getter_sleeps_in_msgrcv(kind):
    """A getter asleep inside msgrcv is in its window; the repair nudges it out instead
    of waiting for it (a putter would otherwise wait for that getter, and it for him)."""
    q = kind(1)
    q.put("a")
    _kill_a_consumer_before_its_slot_release(q)
    sleeper = _sleeping_getter(q, "b")

    def putter():
        started = time.monotonic()
        q.put("b", timeout=10)
        assert time.monotonic() - started < 2, "the lost slot came back late"

    try:
        assert wait_pid(fork_run(putter), WATCHDOG) == 0, "the lost slot never came back"
        assert wait_pid(sleeper, WATCHDOG) == 0, "the sleeping getter missed its object"
        assert q._chan.sems[C.FREE_SLOTS].value == 1
        assert q.qsize() == 0  # (no nudge left behind)
    finally:
        kill(sleeper)
        close_queue(q)


@pytest.mark.parametrize("maxsize", [0, 2])
def test_joinable_getter_killed_asleep_in_msgrcv_keeps_counts_exact(maxsize):
    """Killed in its window while it held nothing: no task, no slot is lost or made."""
    q = JoinableQueue(maxsize)
    sleeper = _sleeping_getter(q, "never")
    kill(sleeper)
    try:
        q.put("a")
        q.put("b")
        assert q.qsize() == 2
        assert [q.get(timeout=5), q.get(timeout=5)] == ["a", "b"]
        q.task_done()
        assert q._chan.counts.unfinished() == 1
        q.task_done()
        q.join()
        with pytest.raises(ValueError):
            q.task_done()
        if maxsize:
            assert q._chan.sems[C.FREE_SLOTS].value == 2
    finally:
        close_queue(q)


def test_a_repair_killed_after_nudging_the_sleepers_leaves_counts_exact():
    """The repairing putter dies between its nudges and taking back the unused ones (the
    state lock's next holder takes them back): the sleeper still gets its object, the
    slot still comes back, and qsize counts objects only."""
    q = Queue(1)
    q.put("a")
    _kill_a_consumer_before_its_slot_release(q)
    sleeper = _sleeping_getter(q, "b")

    def repairer():
        die_at(*seams.NUDGES_TAKEN_BACK)
        q.put("never", timeout=10)

    try:
        assert wait_pid(fork_run(repairer), WATCHDOG) == -9
        q.put("b", timeout=10)
        assert wait_pid(sleeper, WATCHDOG) == 0, "the sleeping getter missed its object"
        assert q.qsize() == 0
        q.put_nowait("c")
        with pytest.raises(mpsysv.Full):
            q.put_nowait("d")
        assert q.get(timeout=5) == "c"
        assert q._chan.sems[C.FREE_SLOTS].value == 1
    finally:
        kill(sleeper)
        close_queue(q)


@pytest.mark.parametrize("at", ["try_acquire", "try_send", "counted_sent"])
def test_producer_killed_around_its_slot_keeps_slots_exact(at):
    """Killed after noting a slot but before taking it, after taking it but before
    sending, and after sending but before clearing its note."""
    q = Queue(1)

    def victim():
        die_at(*{"try_acquire": seams.COUNTER_TRY_ACQUIRE, "try_send": seams.SEND,
                  "counted_sent": seams.NOTE_CLEARED}[at])
        q.put("sent")

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        if at == "counted_sent":
            assert q.qsize() == 1
            with pytest.raises(mpsysv.Full):
                q.put_nowait("x")  # the slot of the queued object is not given back
            assert q.get(timeout=1) == "sent"
        q.put_nowait("fits")  # raises Full when the dead producer's slot is gone
        time.sleep(2 * seams.value(seams.REPAIR_EVERY))
        with pytest.raises(mpsysv.Full):
            q.put_nowait("x")
        assert q.get(timeout=1) == "fits"
        assert q._chan.sems[C.FREE_SLOTS].value == 1
    finally:
        close_queue(q)


@pytest.mark.xfail(strict=True, reason="known issue (README): a consumer of an unbounded "
                   "Queue killed between taking a put_many() batch and counting its objects "
                   "out leaves qsize() that many objects too high")
def test_consumer_killed_between_taking_a_batch_and_counting_it_out_keeps_qsize_exact():
    q = Queue()
    q.put_many([1, 2, 3])

    get_and_die_at(q, *seams.BATCH_COUNTED)
    try:
        assert q.qsize() == 0
    finally:
        close_queue(q)


@pytest.mark.parametrize("joinable", [False, True])
def test_consumer_killed_after_taking_one_of_a_put_many_keeps_counts_exact(joinable):
    """A bounded or joinable queue sends one message per object of put_many(), so a
    consumer killed before counting out what it took leaves exact counts."""
    q = (JoinableQueue if joinable else Queue)(4)
    q.put_many([1, 2, 3])

    get_and_die_at(q, *seams.DECODE)  # (after msgrcv, before the window closes)
    try:
        assert q.qsize() == 2
        q.put_nowait(4)
        q.put_nowait(5)
        with pytest.raises(mpsysv.Full):
            q.put_nowait(6)
        if joinable:  # the lost object's task went with it
            assert q._chan.counts.unfinished() == 4
    finally:
        close_queue(q)


def _bounded_worker(q, role: str, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        if role == "put":
            with suppress(mpsysv.Full):
                q.put(rng.randrange(1 << 30), timeout=0.05)
        else:
            with suppress(mpsysv.Empty):
                q.get(timeout=0.05)


def test_random_kills_leave_the_slots_of_a_bounded_queue_exact():
    """Producers and consumers SIGKILLed at random moments, hundreds of times, then all
    of them: once the queue is drained, every slot is free again, none twice."""
    maxsize = 3
    q = Queue(maxsize)
    rng = random.Random(os.getpid())
    workers = {}
    try:
        for i in range(4):
            role = ("put", "get")[i % 2]
            workers[fork_run(_bounded_worker, q, role, i)] = role
        for n in range(150):
            time.sleep(rng.uniform(0, 0.02))
            pid = rng.choice(list(workers))
            role = workers.pop(pid)
            kill(pid)
            workers[fork_run(_bounded_worker, q, role, 100 + n)] = role
    finally:
        for pid in workers:
            kill(pid)
    try:
        drained = 0
        while True:
            try:
                q.get_nowait()
                drained += 1
            except mpsysv.Empty:
                break
        assert drained <= maxsize
        assert q.qsize() == 0
        for _ in range(maxsize):
            time.sleep(2 * seams.value(seams.REPAIR_EVERY))
            q.put_nowait("x")  # Full: a slot was lost
        time.sleep(2 * seams.value(seams.REPAIR_EVERY))
        with pytest.raises(mpsysv.Full):
            q.put_nowait("y")  # a slot was given back twice
    finally:
        close_queue(q)


def test_joinable_producer_killed_between_send_and_clearing_its_note_keeps_counts_exact():
    jq = JoinableQueue()
    jq.put("kept")

    put_and_die_at(jq, *seams.NOTE_CLEARED, "sent")
    try:
        assert jq._chan.counts.unfinished() == 2, "the task of a queued object was given back"
        assert sorted([jq.get(timeout=5), jq.get(timeout=5)]) == ["kept", "sent"]
        jq.task_done()
        assert jq._chan.counts.unfinished() == 1
        jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() hung"
        with pytest.raises(ValueError):
            jq.task_done()
    finally:
        close_queue(jq)


def test_a_task_recount_waits_for_a_live_putter_between_its_send_and_its_note():
    """A recount must not count a live putter's object twice (queued, and noted as
    unsent): it waits until that putter is out of its window."""
    jq = JoinableQueue()
    owner, attr = seams.NOTE_CLEARED
    real = getattr(owner, attr)

    def stopping_putter():
        def stop_then_clear(self, n):
            os.kill(os.getpid(), signal.SIGSTOP)
            real(self, n)
        setattr(owner, attr, stop_then_clear)
        jq.put("x")

    def dying_putter():  # leaves a task noted and counted, never sent: a recount is due
        die_at(*seams.SEND)
        jq.put("lost")

    stopped = fork_run(stopping_putter)
    try:
        _, status = os.waitpid(stopped, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        wait_pid(fork_run(dying_putter), WATCHDOG)
        assert jq._chan.counts.unfinished() == 2  # not derived while "x" is moving
        os.kill(stopped, signal.SIGCONT)
        assert wait_pid(stopped, WATCHDOG) == 0
        assert jq._chan.counts.unfinished() == 1
        assert jq.get(timeout=5) == "x"
        jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() hung"
    finally:
        kill(stopped)
        close_queue(jq)


@pytest.mark.parametrize("where", ["before counting it out", "after counting it out"])
def test_joinable_consumer_killed_in_get_loses_the_task_only_with_the_object(where):
    """Killed before it counted its object out, a consumer loses the object and its
    task (join() does not wait for what nobody can get); killed after, it holds the
    task as if killed between get() and task_done() (join() waits, as the stdlib's)."""
    jq = JoinableQueue()
    jq.put("a")
    jq.put("b")

    def victim():
        if where == "before counting it out":
            die_at(*seams.DECODE)  # (after msgrcv, before the window closes)
        jq.get(timeout=5)
        if where == "after counting it out":
            os.kill(os.getpid(), signal.SIGKILL)

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        assert jq._chan.counts.unfinished() == (1 if where == "before counting it out" else 2)
        assert jq.get(timeout=5) == "b"
        jq.task_done()
        joiner = fork_run(jq.join)
        status = wait_pid(joiner, 3)
        if where == "before counting it out":
            assert status == 0, "join() waited for the task of a lost object"
        else:
            assert status is None, "join() returned with a task still held"
    finally:
        close_queue(jq)


def test_joinable_producer_killed_between_count_and_send_keeps_counts_exact():
    jq = JoinableQueue()

    put_and_die_at(jq, *seams.SEND, "lost")
    try:
        assert jq._chan.counts.unfinished() == 0, "a task was counted for an object never sent"
    finally:
        close_queue(jq)


def test_join_gives_back_the_task_of_a_producer_killed_between_count_and_send():
    jq = JoinableQueue()
    jq.put("kept")

    put_and_die_at(jq, *seams.SEND, "lost")
    assert jq.get(timeout=5) == "kept"
    jq.task_done()
    joiner = fork_run(jq.join)  # the first to look: join() itself repairs
    try:
        assert wait_pid(joiner, 5) == 0, "join() waited for a task that was never sent"
    finally:
        kill(joiner)
        close_queue(jq)


@pytest.mark.parametrize("at", ["before the count went up", "after the count went up"])
def test_joinable_producer_killed_inside_the_task_count_update_keeps_counts_exact(at):
    jq = JoinableQueue()
    jq.put("kept")

    def victim():
        if at == "before the count went up":
            die_at(*seams.COUNTER_POST)
        else:
            die_at(*seams.COUNTED_SEND)  # (the task is counted inside the putter's window)
        jq.put("lost")

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        assert jq._chan.counts.unfinished() == 1, "the dead producer's half-counted task remains"
        assert jq.get(timeout=5) == "kept"
        jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() hung after the repair"
    finally:
        close_queue(jq)


def _fill_and_die_with_a_backlog(q) -> None:
    """Put until some objects wait in this process's feeder buffer, then die."""
    while q._feeder.pending < 5:
        q.put(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("maxsize", [0, 100])
def test_producer_killed_with_objects_in_its_buffer_gives_back_their_tasks_and_slots(maxsize):
    jq = JoinableQueue(maxsize)
    wait_pid(fork_run(_fill_and_die_with_a_backlog, jq), WATCHDOG)
    try:
        queued = kernel_state(jq)["main"][0]
        assert 0 < queued < 100
        assert jq._chan.counts.unfinished() == queued, "tasks counted for objects never sent remain"
        for _ in range(queued):
            jq.get(timeout=5)
            jq.task_done()
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 5) == 0, "join() waited for objects that were never sent"
        if maxsize:
            for i in range(maxsize):
                jq.put_nowait(i)  # Full if the dead producer's slots were not given back
    finally:
        close_queue(jq)


def test_queue_works_without_notes_when_every_journal_entry_is_taken():
    jq = JoinableQueue(3)
    view, me = jq._chan._view, os.getpid()
    entries = [_journal.JOURNAL_OFF + i * _journal.ENTRY.size for i in range(_journal.NENTRIES)]
    for off in entries:  # live owners (this process) with nothing to roll back
        _journal.ENTRY.pack_into(view, off, me, 0, 0, 0, 0, 0, _journal.start_ticks(me), 0)
    try:
        for i in range(3):
            jq.put(i)
        with pytest.raises(mpsysv.Full):
            jq.put_nowait(3)
        assert jq._chan.journal.mine() is None
        assert [jq.get(timeout=5) for _ in range(3)] == [0, 1, 2]
        for _ in range(3):
            jq.task_done()
        jq.join()
        assert jq._chan.counts.unfinished() == 0
    finally:
        for off in entries:
            _journal.ENTRY.pack_into(view, off, 0, 0, 0, 0, 0, 0, 0, 0)
        close_queue(jq)


def test_handles_let_go_give_their_journal_entries_back():
    import pickle
    from multiprocessing.reduction import ForkingPickler
    jq = JoinableQueue(3)
    handle = ForkingPickler.dumps(jq)
    for i in range(2 * _journal.NENTRIES):  # e.g. a worker given the queue with each task
        other = pickle.loads(handle)
        other.put(i)
        assert other.get(timeout=5) == i
        other.task_done()
        other.close()
        other.join_thread()
    try:
        assert [e for _, e in jq._chan.journal.entries() if e[0]] == []
    finally:
        close_queue(jq)


def test_producer_killed_with_a_parcel_in_its_buffer_leaves_no_parcel_behind():
    q = Queue()

    def victim():
        while q._feeder.pending < 2:
            q.put(b"x" * 1000)
        q.put(obj("P", 0, payload(0, BIG)))  # a parcel whose message waits in the buffer
        assert q._feeder.pending >= 3
        os.kill(os.getpid(), signal.SIGKILL)

    wait_pid(fork_run(victim), WATCHDOG)
    try:
        assert [state for state, _ in parcel_states(q)] == [_parcels.SENT]
        while kernel_state(q)["main"][0]:
            q.get(timeout=5)
        round_trip_in_child(q)  # its parcel claim reclaims the dead writer's parcel
        assert_reclaimed(q)
    finally:
        close_queue(q)


def _die_inside_task_update(jq, when: str) -> None:
    """Take the state lock and die half-way through a task-count update."""
    chan = jq._chan
    with chan.counts.state_locked():
        unfinished = chan.sems[C.UNFINISHED_TASKS]
        if when == "task_done after decrement":
            unfinished.try_acquire()
        elif when == "task_added after increment":
            unfinished.post()
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("when", ["holding the lock", "task_done after decrement",
                                  "task_added after increment"])
def test_killed_inside_a_task_update_is_repaired_by_the_next_locker(when):
    """The lock was released by SEM_UNDO; the next locker sees the marker and derives
    the count again: one task held here ("t1"), one queued ("t2"). An update killed
    half-way did not happen."""
    jq = JoinableQueue()
    jq.put("t1")
    jq.put("t2")
    assert jq.get(timeout=5) == "t1"
    wait_pid(fork_run(_die_inside_task_update, jq, when), WATCHDOG)
    assert jq._chan.counts.unfinished() == 2
    jq.task_done()
    assert jq.get(timeout=5) == "t2"
    jq.task_done()
    joiner = fork_run(jq.join)
    assert wait_pid(joiner, 10) == 0, "join() hung after the repair"
    assert jq._chan.counts.unfinished() == 0
    close_queue(jq)


def test_a_task_done_killed_in_its_window_did_not_happen_and_join_still_returns():
    """Killed after the count went down and before its window closed (and its ``held``
    changed): the count is derived again, with the task still held by its getter."""
    jq = JoinableQueue()
    jq.put("t")
    assert jq.get(timeout=5) == "t"

    def victim():
        die_at(*seams.WINDOW_CLOSE)
        jq.task_done()

    assert wait_pid(fork_run(victim), WATCHDOG) == -9
    try:
        assert jq._chan.counts.unfinished() == 1
        jq.task_done()
        assert jq._chan.counts.unfinished() == 0
        joiner = fork_run(jq.join)
        assert wait_pid(joiner, 10) == 0, "join() hung after the repair"
    finally:
        close_queue(jq)


def test_a_task_done_killed_half_way_did_not_happen_and_join_still_returns():
    jq = JoinableQueue()
    jq.put("t")
    jq.get(timeout=5)
    wait_pid(fork_run(_die_inside_task_update, jq, "task_done after decrement"), WATCHDOG)
    assert jq._chan.counts.unfinished() == 1  # derived again: the task is still held here
    jq.task_done()
    assert jq._chan.counts.unfinished() == 0
    joiner = fork_run(jq.join)
    try:
        assert wait_pid(joiner, 3) == 0, "join() blocked on a gate nobody will lower"
    finally:
        kill(joiner)
        close_queue(jq)


def test_killed_holders_never_stop_the_last_one_from_removing_the_queue():
    before = sysv_counts()
    q = JoinableQueue()
    for _ in range(4):
        pid = fork_run(lambda: (q.put("x"), time.sleep(60)))
        time.sleep(0.05)
        kill(pid)
    assert q._chan.holders() == 1
    q.close()
    q.join_thread()
    assert sysv_counts() == before
