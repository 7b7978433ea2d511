"""Every sleep on the path Pool's objects take ends when its condition comes true.

Each test makes the time slices that bound a sleep far longer than the test's own
timeouts, so a wake-up that is lost (never posted, posted for the wrong condition,
or taken by a thread that leaves the object behind) fails the test instead of
costing a slice; the kernel queue's byte limit is lowered to make it full with a
few small objects.
"""

import pickle
import threading
import time
import unittest

import mpsysv
from mpsysv import _connection
from mpsysv._ipc import libc as L
from mpsysv._queue import channel
from mpsysv._queue.layout import ROOM_WAITERS, TIMED_WAITERS

from .helpers import wait_until

QBYTES = 1000  # below the bytes a getter frees before it announces room (1024)
PROMPT = 5.0  # seconds within which a woken thread must have moved on
LONG_SLICE = 120.0


class _LongSlices(unittest.TestCase):
    def setUp(self):
        for module in (channel, _connection):
            saved = module._SLICE
            module._SLICE = LONG_SLICE
            self.addCleanup(setattr, module, "_SLICE", saved)

    def new_queue(self, cls=mpsysv.Queue):
        q = cls()
        self.addCleanup(q.close)
        self.addCleanup(q.unlink)  # (also ends a thread a failed test leaves waiting)
        return q

    @staticmethod
    def fill(q) -> int:
        """Lower *q*'s kernel queue to QBYTES bytes and fill it: how many objects."""
        chan = q._chan
        ds = chan.stat_main()
        ds.msg_qbytes = QBYTES
        assert L.msgctl(chan.main_qid, L.IPC_SET, L.byref(ds)) == 0, L.get_errno()
        n = 0
        while chan.try_send(pickle.dumps(("filler", n)), 1):
            n += 1
        assert n > 2
        return n

    def thread(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        return t


class RoomWakeupTest(_LongSlices):
    def test_a_writer_waiting_for_room_gets_in_as_soon_as_one_object_leaves(self):
        q = self.new_queue(mpsysv.SimpleQueue)
        n = self.fill(q)
        sender = self.thread(q._writer.send, ("task", 0))
        time.sleep(0.2)
        self.assertTrue(sender.is_alive(), "send() returned while the queue was full")
        self.assertEqual(q.get(), ("filler", 0))
        sender.join(PROMPT)
        self.assertFalse(sender.is_alive(), "send() still waits though a message left")
        got = [q.get() for _ in range(n)]
        self.assertEqual(got, [("filler", i) for i in range(1, n)] + [("task", 0)])

    def test_a_writer_behind_buffered_objects_is_woken_as_the_queue_drains(self):
        q = self.new_queue()
        n = self.fill(q)
        q.put(("put", 0))  # buffered: this process now has an object ahead of send()
        sender = self.thread(q._writer.send, ("task", 0))
        time.sleep(0.2)
        got = []
        for _ in range(n + 2):
            got.append(q.get(timeout=PROMPT))
        sender.join(PROMPT)
        self.assertFalse(sender.is_alive())
        self.assertEqual(got, [("filler", i) for i in range(n)] + [("put", 0), ("task", 0)])

    def test_a_feeder_waiting_for_room_is_woken_when_a_timed_getter_drains_its_queue(self):
        q = self.new_queue()
        n = self.fill(q)
        q.put(("put", 0))
        self.assertTrue(wait_until(lambda: q._chan.words[ROOM_WAITERS][0] == 1),
                        "the feeder thread never waited for room")
        got = [q.get(timeout=PROMPT) for _ in range(n + 1)]
        self.assertEqual(got[-1], ("put", 0))

    def test_a_feeder_waiting_for_room_is_woken_when_a_blocking_getter_drains_its_queue(self):
        q = self.new_queue()
        n = self.fill(q)
        q.put(("put", 0))
        self.assertTrue(wait_until(lambda: q._chan.words[ROOM_WAITERS][0] == 1),
                        "the feeder thread never waited for room")
        got = []
        getter = self.thread(lambda: got.extend(q.get() for _ in range(n + 1)))
        getter.join(PROMPT)
        self.assertFalse(getter.is_alive(), f"{len(got)} of {n + 1} objects arrived")
        self.assertEqual(got[-1], ("put", 0))


class GetterWakeupTest(_LongSlices):
    def test_a_wake_up_taken_by_a_reader_watcher_is_passed_on_to_a_getter(self):
        q = self.new_queue()
        reader = q._reader
        for i in range(10):
            reader.fileno()  # re-arms the watcher: the queue is empty
            got = []
            getter = self.thread(lambda out: out.append(q.get(timeout=LONG_SLICE)), got)
            self.assertTrue(wait_until(lambda: q._chan.words[TIMED_WAITERS][0] == 2),
                            "the getter and the watcher never both waited")
            q.put(i)
            getter.join(PROMPT)
            self.assertFalse(getter.is_alive(), f"round {i}: the getter slept on")
            self.assertEqual(got, [i])


class WatchedReaderTest(_LongSlices):
    """A Reader waited on with ``connection.wait()`` (ProcessPoolExecutor's manager
    thread) keeps its watcher armed between messages instead of re-arming it per wait."""

    def wait(self, reader, timeout):
        from multiprocessing import connection
        return connection.wait([reader], timeout)

    def test_a_watched_reader_is_ready_for_every_message_and_idle_once_drained(self):
        q = self.new_queue(mpsysv.SimpleQueue)
        reader = q._reader
        self.assertEqual(self.wait(reader, 0), [])
        for i in range(30):
            self.assertTrue(wait_until(lambda: q._chan.words[TIMED_WAITERS][0] == 1),
                            f"round {i}: the watcher is not armed")
            timer = threading.Timer(0.002, q.put, (i,))
            timer.start()
            self.assertEqual(self.wait(reader, PROMPT), [reader], f"round {i}: no wake-up")
            self.assertEqual(reader.recv(), i)
            self.assertEqual(self.wait(reader, 0), [], f"round {i}: still readable when empty")
            timer.join()

    def test_a_watcher_parked_by_unread_messages_is_woken_when_they_are_read(self):
        q = self.new_queue(mpsysv.SimpleQueue)
        reader = q._reader
        self.assertEqual(self.wait(reader, 0), [])
        q.put(1)
        self.assertEqual(self.wait(reader, PROMPT), [reader])
        q.put(2)  # comes while the pipe is still readable: nobody polls, the watcher parks
        self.assertTrue(wait_until(lambda: q._chan.words[TIMED_WAITERS][0] == 0),
                        "the watcher still costs the writers a wake-up per message")
        self.assertEqual([q.get(), q.get()], [1, 2])
        self.assertEqual(self.wait(reader, 0), [])  # drains the pipe, unparks the watcher
        self.assertTrue(wait_until(lambda: q._chan.words[TIMED_WAITERS][0] == 1), "never re-armed")
        timer = threading.Timer(0.002, q.put, (3,))
        timer.start()
        self.assertEqual(self.wait(reader, PROMPT), [reader])
        self.assertEqual(reader.recv(), 3)
        timer.join()
