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
    idle = journal.takers()
    assert idle is not None
    first = journal.begin_take()
    second = journal.begin_take()  # a second thread of the same process
    assert journal.takers() is None
    journal.end_take(first)
    assert journal.takers() is None, "one getter is still between msgrcv and its post"
    journal.end_take(second)
    done = journal.takers()
    assert done is not None and done != idle, "two takes happened since the first look"


def test_a_getter_that_slept_resumes_its_take():
    journal, _, _raw = make_journal()
    word = journal.begin_take()
    journal.end_take(word)  # asleep, waiting for a message: not taking
    asleep = journal.takers()
    assert asleep is not None
    journal.resume_take(word)
    assert journal.takers() is None
    journal.end_take(word)


def test_the_take_count_wraps_without_disturbing_the_getters_in_flight():
    journal, view, _raw = make_journal()
    off = journal.mine()
    _journal._I32.pack_into(view, off + _journal._TAKING, -256)  # 0xFFFFFF00: no getter
    word = journal.begin_take()
    assert word[0] & 0xFF == 1
    journal.end_take(word)
    assert word[0] & 0xFF == 0


def test_a_dead_getters_take_does_not_hide_the_counts():
    journal, view, _raw = make_journal()
    pid = dead_pid()
    off = _journal.JOURNAL_OFF + 5 * _journal.ENTRY.size
    _journal.ENTRY.pack_into(view, off, pid, 0, 0, 0, 0, 0x101, 1, 0)
    assert journal.takers() is not None


def test_a_dead_entry_gives_back_its_tasks_and_drops_its_slot_notes():
    journal, view, _raw = make_journal()
    pid = dead_pid()
    off = _journal.JOURNAL_OFF + 7 * _journal.ENTRY.size
    _journal.ENTRY.pack_into(view, off, pid, 2, 3, 0, 0, 0, 1, 0)
    journal.add_slots(1)  # this process's own note stays
    assert journal.slots_noted() == 4
    assert journal.collect_dead(unfinished=5) == 2
    assert journal.slots_noted() == 1
    assert _journal.ENTRY.unpack_from(view, off)[0] == 0
