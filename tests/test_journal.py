"""The journal's bookkeeping over a plain buffer (no kernel objects): what a getter of a
bounded queue marks while it takes a message, and what a dead process's entry leaves."""

import ctypes
import os

from mpsysv._queue import journal as _journal
from mpsysv._queue.layout import CTL_SIZE


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


def enter(word):  # as the owner's code does it, inline (see Journal.moving_word)
    word[0] = (word[0] + _journal.MOVE) & 0xFFFFFFFF


def leave(word):
    word[0] -= 1


def test_a_window_open_in_a_live_process_hides_the_counts():
    journal, _, _raw = make_journal()
    idle = journal.movers()
    assert idle is not None
    word = journal.moving_word()
    enter(word)
    enter(word)  # a second thread of the same process
    assert journal.movers() is None
    leave(word)
    assert journal.movers() is None, "one thread is still in its window"
    leave(word)
    done = journal.movers()
    assert done is not None and done != idle, "two windows happened since the first look"


def test_the_window_count_wraps_without_disturbing_the_threads_in_flight():
    journal, view, _raw = make_journal()
    off = journal.mine()
    _journal._I32.pack_into(view, off + _journal._MOVING, -256)  # 0xFFFFFF00: none inside
    word = journal.moving_word()
    enter(word)
    assert word[0] & 0xFF == 1
    leave(word)
    assert word[0] & 0xFF == 0


def test_a_dead_process_window_does_not_hide_the_counts():
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


def test_held_tasks_are_folded_away_when_the_handle_lets_go():
    journal, view, _raw = make_journal()
    journal.held_word[0] += 3
    journal.held_word[0] -= 1  # (a task_done: counts.Window.close)
    assert journal.noted() == (0, 0, 2)
    assert journal.take_held() == 2
    assert journal.noted() == (0, 0, 0)
