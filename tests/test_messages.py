"""Errors a new user meets first name the cause and the fix: named queues that exist or
do not, a named queue opened with another maxsize, sizes the kernel refuses for a
segment, and the report of an object that cannot be pickled."""

import errno
import io
import os
import threading
import unittest
from contextlib import redirect_stderr
from unittest import mock

from mpsysv import JoinableQueue, Queue, Segment, SharedMemory

from .helpers import unique_name


class NamedQueueMessagesTest(unittest.TestCase):
    def setUp(self):
        self.name = unique_name("msg")
        self.q = Queue(5, name=self.name, create=True)
        self.addCleanup(self.q.unlink)
        self.addCleanup(self.q.close)

    def test_creating_a_name_that_exists_says_how_to_open_or_remove_it(self):
        with self.assertRaises(FileExistsError) as cm:
            Queue(name=self.name, create=True)
        self.assertIn("open it without create=True", str(cm.exception))
        self.assertIn(f"`python -m mpsysv rm {self.name}`", str(cm.exception))

    def test_opening_a_missing_name_says_how_to_make_it(self):
        with self.assertRaises(FileNotFoundError) as cm:
            Queue(name=unique_name("absent"))
        self.assertIn("no queue of that name: create=True makes one", str(cm.exception))

    def test_opening_with_another_maxsize_raises_naming_both(self):
        with self.assertRaises(ValueError) as cm:
            Queue(10, name=self.name)
        self.assertEqual(str(cm.exception),
                         f"queue {self.name!r} has maxsize 5, not 10: open it without maxsize "
                         "(a name opens the queue as it was made)")
        unbounded = JoinableQueue(name=unique_name("unbounded"), create=True)
        try:
            with self.assertRaisesRegex(ValueError, r"has maxsize 0 \(unbounded\), not 3"):
                JoinableQueue(3, name=unbounded.name)
        finally:
            unbounded.close()
            unbounded.unlink()

    def test_opening_without_maxsize_or_with_its_own_works_and_holds_nothing_more(self):
        for maxsize in (0, 5):
            q = Queue(maxsize, name=self.name)
            self.assertEqual(q.maxsize, 5)
            q.close()
        self.q.put("still usable")
        self.assertEqual(self.q.get(timeout=5), "still usable")


class SegmentSizeMessagesTest(unittest.TestCase):
    def test_a_size_no_segment_can_have_names_the_real_limit(self):
        for make in (lambda: SharedMemory(create=True, size=2 ** 63, track=False),
                     lambda: Segment(create=True, size=2 ** 63)):
            with self.assertRaises(OSError) as cm:
                make()
            self.assertEqual(cm.exception.errno, errno.EINVAL)
            message = str(cm.exception)
            self.assertIn("more than any segment can be", message)
            self.assertIn("2**63-1", message)
            self.assertNotIn("more than the kernel's shmmax", message)

    def test_memory_the_kernel_will_not_promise_names_overcommit(self):
        with open("/proc/sys/vm/overcommit_memory") as f:
            overcommit = f.read().strip()
        with open("/proc/meminfo") as f:
            meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        room = meminfo["MemTotal"] + meminfo.get("SwapTotal", 0)
        size = 1 << 40
        if overcommit != "0" or room >= size:
            self.skipTest("needs vm.overcommit_memory=0 and less than 1 TiB of RAM + swap")
        with self.assertRaises(OSError) as cm:
            SharedMemory(create=True, size=size, track=False)
        self.assertEqual(cm.exception.errno, errno.ENOMEM)
        self.assertIn("vm.overcommit_memory=0", str(cm.exception))
        self.assertIn("sysctl -w vm.overcommit_memory=1", str(cm.exception))

    def test_strict_overcommit_names_the_commit_limit(self):
        from mpsysv._ipc import errors

        real_open = open

        def fake_open(path, *args, **kwargs):
            if path == "/proc/sys/vm/overcommit_memory":
                return io.StringIO("2\n")
            return real_open(path, *args, **kwargs)

        with mock.patch("builtins.open", fake_open):
            hint = errors.segment_size_hint(errno.ENOMEM, 1 << 40)
        self.assertIn("strict overcommit (vm.overcommit_memory=2)", hint)
        self.assertIn("CommitLimit", hint)


def _put_an_unpicklable_object(q):
    q.put(threading.Lock())  # the line the report must show


class UnpicklableReportTest(unittest.TestCase):
    def test_the_report_shows_the_put_line_of_the_caller(self):
        for put in (_put_an_unpicklable_object, lambda q: q.put_many([threading.Lock()])):
            q = Queue()
            try:
                err = io.StringIO()
                with redirect_stderr(err):
                    put(q)
                q.put("next")
                self.assertEqual(q.get(timeout=5), "next")
            finally:
                q.close()
            report = err.getvalue()
            self.assertIn("Traceback (most recent call last):", report)
            self.assertIn(f'File "{os.path.abspath(__file__)}"', report)
            self.assertIn("cannot pickle", report)
            if put is _put_an_unpicklable_object:
                self.assertIn("q.put(threading.Lock())  # the line the report must show",
                              report)
            self.assertIn("test_the_report_shows_the_put_line_of_the_caller", report)
