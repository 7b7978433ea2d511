"""The journal's bookkeeping over a plain buffer (no kernel objects): what a getter of a
bounded queue marks while it takes a message, and what a dead process's entry leaves."""

import ctypes
import os

from mpsysv import _journal
from mpsysv._layout import CTL_SIZE


def make_journal():
    raw = (ctypes.c_char * CTL_SIZE)()
    view = memoryview(raw).cast("B")
    journal = _journal.Journal(view)
    assert journal.claim() is not None
    return journal, view, raw


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_take_in_progress_in_a_live_process_hides_the_counts():
    journal, _, _raw = make_journal()
    idle = journal.movers()
    assert idle is not None
    first = journal.begin_move()
    second = journal.begin_move()  # a second thread of the same process
    assert journal.movers() is None
    journal.end_move(first)
    assert journal.movers() is None, "one getter is still between msgrcv and its post"
    journal.end_move(second)
    done = journal.movers()
    assert done is not None and done != idle, "two takes happened since the first look"


def test_a_getter_that_slept_resumes_its_take():
    journal, _, _raw = make_journal()
    word = journal.begin_move()
    journal.end_move(word)  # asleep, waiting for a message: not taking
    asleep = journal.movers()
    assert asleep is not None
    journal.resume_move(word)
    assert journal.movers() is None
    journal.end_move(word)


def test_the_take_count_wraps_without_disturbing_the_getters_in_flight():
    journal, view, _raw = make_journal()
    off = journal.mine()
    _journal._I32.pack_into(view, off + _journal._MOVING, -256)  # 0xFFFFFF00: no getter
    word = journal.begin_move()
    assert word[0] & 0xFF == 1
    journal.end_move(word)
    assert word[0] & 0xFF == 0


def test_a_dead_getters_take_does_not_hide_the_counts():
    journal, view, _raw = make_journal()
    pid = dead_pid()
    off = _journal.JOURNAL_OFF + 5 * _journal.ENTRY.size
    _journal.ENTRY.pack_into(view, off, pid, 0, 0, 0, 0, 0x101, 1, 0)
    assert journal.movers() is not None


def test_a_dead_entry_is_freed_and_reports_what_it_noted_and_held():
    journal, view, _raw = make_journal()
    pid = dead_pid()
    off = _journal.JOURNAL_OFF + 7 * _journal.ENTRY.size
    _journal.ENTRY.pack_into(view, off, pid, 2, 3, 4, 0, 0, 1, 0)
    journal.add_slots(1)  # this process's own notes stay
    journal.add_task()
    assert journal.noted() == (3, 4, 4)
    assert journal.any_dead()
    assert journal.collect_dead() == (2, 4, 0)
    assert journal.noted() == (1, 1, 0)
    assert _journal.ENTRY.unpack_from(view, off)[0] == 0
    assert not journal.any_dead()


def test_a_getter_counts_its_tasks_before_it_leaves_the_window():
    journal, view, _raw = make_journal()
    word = journal.begin_move()
    journal.end_move(word, held=3)
    journal.task_done()
    assert journal.noted() == (0, 0, 2)
    assert journal.take_held() == 2
    assert journal.noted() == (0, 0, 0)
