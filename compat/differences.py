"""The one table of cases whose assertions differ between the stdlib and mpsysv.

Only deliberate improvements belong in ``DIFFERENCES``. A case reaches its mpsysv
branch through ``CompatCase.differs(key)``, which fails for a key not listed here or
a row naming another case, and ``test_differences`` checks that every row names a
case that exists.
``KNOWN_BUGS`` lists stdlib behaviour mpsysv should have and does not yet: those cases
assert the stdlib's behaviour and are expected to fail on mpsysv until fixed.

``CPYTHON_TESTS`` maps CPython's own tests that fail on mpsysv by design to their row
(``compat/cpython_whole.py`` counts them as deliberate), and ``CLIENT_DIFFERENCES``
does the same for real clients' tests (``compat/clients.py``).
``python compat/differences.py`` prints the table as Markdown (for the README).
"""

from typing import NamedTuple


class Difference(NamedTuple):
    case: str      # "CaseClass.test_method"
    stdlib: str
    mpsysv: str
    why: str


DIFFERENCES = {
    "pickle-anywhere": Difference(
        "QueueLifetimeCase.test_queue_pickles_outside_process_start",
        "`pickle.dumps(queue)` outside process start raises `RuntimeError` (a pipe handle "
        "is only valid through inheritance)",
        "the handle pickles anywhere and attaches the same queue when unpickled, in any "
        "process of the machine",
        "a queue can travel through another queue, a Manager or a file; SysV objects are "
        "found by id, not inherited"),
    "negative-timeout": Difference(
        "QueueTimeoutCase.test_negative_timeout",
        "`get(timeout=-1)` acts like `get(block=False)`",
        "`ValueError: 'timeout' must be a non-negative number`",
        "`queue.Queue` raises `ValueError` too; a negative timeout is almost always an "
        "arithmetic mistake that a silent non-blocking call hides"),
    "unpicklable-put": Difference(
        "QueuePicklingCase.test_unpicklable_object_reports_and_queue_carries_on",
        "`put()` returns; the feeder thread later fails to pickle and calls "
        "`_on_queue_feeder_error` from that thread",
        "`put()` pickles in the caller and calls `_on_queue_feeder_error` before it "
        "returns (`strict=True` raises instead)",
        "the error is reported where the object was put, at once, and nothing broken "
        "ever reaches the queue"),
    "shareable-list-nul": Difference(
        "ShareableListCase.test_trailing_nul_bytes",
        "trailing `\\x00` bytes of a `bytes`/`str` item are stripped on read",
        "items read back exactly as stored",
        "a `ShareableList` must not corrupt binary data"),
    "shareable-list-negative-index": Difference(
        "ShareableListCase.test_negative_index_beyond_the_start",
        "`sl[-n - 1]` on a list of n items raises nothing and returns a value read "
        "from another item's slot",
        "`IndexError`, like a list",
        "an out-of-range index must not read another item"),
    "shareable-list-utf8": Difference(
        "ShareableListCase.test_non_ascii_str",
        "a `str` slot is sized by its length in characters, so `'ünïcode'` reads back "
        "as `'ünïcod'`",
        "a `str` whose UTF-8 does not fit the stdlib's slot gets one that holds it: every "
        "`str` reads back whole (slots and `format` are the stdlib's otherwise)",
        "a `ShareableList` must not truncate what it was given"),
    "mixed-start-methods": Difference(
        "QueueLifetimeCase.test_fork_context_queue_given_to_a_spawn_child",
        "a queue made by the fork context cannot go to a spawn child: `start()` raises "
        "`RuntimeError` (its locks are fork-only POSIX semaphores; before 3.11 the spawn "
        "child dies with SIGSEGV instead)",
        "the spawn child gets the queue and uses it",
        "the same reason as `pickle-anywhere`: a handle names kernel objects that every "
        "process can open, whatever the start method; refusing it would take away what "
        "works (CPython's `test_mixed_startmethod` expects the refusal)"),
    "no-file-per-segment": Difference(
        "SharedMemoryCase.test_a_handle_holds_open_files_of_its_segment",
        "each `SharedMemory` handle keeps file descriptors of `/dev/shm/NAME` open (its own "
        "and the mmap's copy; `psutil.Process().open_files()` lists them)",
        "no file descriptor: a System V segment is not a file",
        "cannot be honoured without opening a file per segment for no purpose; code that "
        "counts open files to check cleanup (UltraDict 0.0.6's `test_cleanup`) sees 0"),
    "not-a-posix-name": Difference(
        "SharedMemoryCase.test_posix_shm_unlink_of_the_private_name",
        "`_name` is a POSIX shared memory name: `_posixshmem.shm_unlink(shm._name)` "
        "removes the segment",
        "`_name` has the stdlib's form (`'/' + name`) but names a System V segment: "
        "`shm_unlink` finds no such file and raises `FileNotFoundError`",
        "cannot be honoured: the segment is not in `/dev/shm`; `unlink()`, and under "
        "`patch()` `resource_tracker.unregister` and "
        "`resource_tracker._CLEANUP_FUNCS['shared_memory']`, are the ways to reach it"),
}

# CPython's own tests (regrtest ids, as `python -m test -v` prints them) that fail on
# mpsysv because of a row above.
CPYTHON_TESTS = {
    "test_misc.TestStartMethod.test_mixed_startmethod": "mixed-start-methods",
}

KNOWN_BUGS: dict = {}

# Real clients' tests (``compat/clients.py``) whose outcome differs ("exit": the suite's
# exit status): the ``DIFFERENCES`` (or ``KNOWN_BUGS``) key it follows from and the
# client's code that meets it.
CLIENT_DIFFERENCES = {
    "UltraDict": {
        "tests.tests.UltraDictTests.test_cleanup": (
            "no-file-per-segment",
            "counts `psutil.Process().open_files()` and expects 4 for one `UltraDict` "
            "(tests/tests.py:142): each stdlib segment is an open file "
            "`/dev/shm/psm_...`, an mpsysv segment none, so the count stays 0"),
    },
}


def markdown() -> str:
    rows = ["| case | stdlib | mpsysv | why |", "| --- | --- | --- | --- |"]
    for key, d in DIFFERENCES.items():
        rows.append(f"| `{key}` ({d.case}) | {d.stdlib} | {d.mpsysv} | {d.why} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
