"""Python 3.12+ warns (DeprecationWarning) when a process that runs more than one thread
forks. A program that uses mpsysv's queues, shared memory or pools and then forks must
not get that warning where the same program on the stdlib would not: mpsysv's threads
(the feeder, the Pool readers' watchers) must be gone by then. Each scenario of
tests/programs/fork_after_use.py runs as a program of its own (the test harness's own
threads, faulthandler's watchdog and xdist's I/O thread, make every fork inside a test
process warn), with this Python if it is 3.12+, else the newest 3.12+ under pyenv."""

import glob
import os
import re
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROGRAM = os.path.join(HERE, "programs", "fork_after_use.py")
WARNING = re.compile(r"DeprecationWarning: This process \(pid=\d+\) is multi-threaded")

# scenario: whether mpsysv's program warns (the stdlib's warns in every scenario where a
# feeder thread of its own is still running: all the queue ones but the closed one)
MPSYSV_WARNS = {
    "queue_put_get": False,
    "queue_put_only": False,
    "queue_large_objects": False,
    "queue_backlog_drained": True,   # the feeder that sent the backlog waits for more
    "queue_backlog_drained_and_closed": False,
    "simple_and_joinable_queues": False,
    "shared_memory": False,
    "pool_after_with_block": False,
    "executor_after_shutdown": False,
}


def _python_that_warns():
    if sys.version_info >= (3, 12):
        return sys.executable
    found = []
    for path in glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")):
        m = re.search(r"/3\.(\d+)\.(\d+)/bin/python3$", path)
        if m and int(m.group(1)) >= 12 and os.access(path, os.X_OK):
            found.append(((int(m.group(1)), int(m.group(2))), path))
    return max(found)[1] if found else None


PYTHON = _python_that_warns()


@unittest.skipIf(PYTHON is None, "needs Python 3.12+ (this one or one under ~/.pyenv)")
class ForkWarningTest(unittest.TestCase):
    def warns(self, backend, scenario):
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("PYTHONWARNINGS", None)
        proc = subprocess.run([PYTHON, PROGRAM, backend, scenario], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("child exit code: 0", proc.stdout)
        return bool(WARNING.search(proc.stderr)), proc.stdout

    def test_mpsysv_never_warns_where_the_stdlib_does_not(self):
        for scenario, expected in MPSYSV_WARNS.items():
            with self.subTest(scenario):
                stdlib, _ = self.warns("stdlib", scenario)
                mpsysv, threads = self.warns("mpsysv", scenario)
                self.assertEqual(mpsysv, expected, threads)
                if mpsysv:
                    self.assertTrue(stdlib, f"only mpsysv warns: {threads}")

    def test_queues_in_use_leave_no_thread_where_the_stdlib_has_its_feeder(self):
        stdlib, threads = self.warns("stdlib", "queue_put_get")
        self.assertTrue(stdlib, threads)
        self.assertIn("QueueFeederThread", threads)
        mpsysv, threads = self.warns("mpsysv", "queue_put_get")
        self.assertFalse(mpsysv, threads)
        self.assertIn("threads: ['MainThread']", threads)
