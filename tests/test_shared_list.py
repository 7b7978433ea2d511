"""ShareableList (parity with the stdlib's, minus its NUL-stripping) and SharedMemoryManager."""

import pickle
import struct
import unittest
from multiprocessing import shared_memory as stdlib

from mpsysv._ipc.names import random_name
from mpsysv.shared import ShareableList, SharedMemory, SharedMemoryManager

from .helpers import fork, join_or_kill, spawn
from .test_shared import TIMEOUT, run_python, segment_exists

ITEMS = [7, -2 ** 63, 2 ** 63 - 1, 3.25, float("inf"), True, False, None, "", "abc",
         "eight ch", "a longer string value", b"", b"bytes", b"exactly8", "\u00e9t\u00e9"]


class ListTestCase(unittest.TestCase):

    def make(self, *args, **kwargs):
        sl = ShareableList(*args, **kwargs)
        self.addCleanup(self._dispose, sl.shm)
        return sl

    def make_stdlib(self, sequence):
        sl = stdlib.ShareableList(sequence)
        self.addCleanup(self._dispose, sl.shm)
        return sl

    @staticmethod
    def _dispose(shm):
        shm.close()
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


class StdlibParityTest(ListTestCase):
    """The same operations on both implementations give the same results."""

    def assert_same(self, ours, theirs):
        self.assertEqual(list(ours), list(theirs))
        self.assertEqual(len(ours), len(theirs))
        self.assertEqual(ours.format, theirs.format)
        self.assertEqual(repr(ours).replace(repr(ours.shm.name), "NAME"),
                         repr(theirs).replace(repr(theirs.shm.name), "NAME"))

    def both(self, sequence):
        return self.make(sequence), self.make_stdlib(sequence)

    def test_construction_reading_and_format(self):
        ours, theirs = self.both(ITEMS)
        self.assert_same(ours, theirs)
        for i in range(-len(ITEMS), len(ITEMS)):
            self.assertEqual(ours[i], theirs[i])
            self.assertIs(type(ours[i]), type(theirs[i]))

    def test_assignments_change_values_and_formats_alike(self):
        ours, theirs = self.both(ITEMS)
        changes = [(0, "short"), (9, 42), (9, "12345678"), (1, None), (7, 2.5), (8, True),
                   (-1, b"xyz"), (3, -1), (11, "fits in sixteen."[:16]), (12, 0.0)]
        for position, value in changes:
            with self.subTest(position=position, value=value):
                ours[position] = value
                theirs[position] = value
                self.assert_same(ours, theirs)

    def test_packing_format_of_each_item_alike(self):
        ours, theirs = self.both(ITEMS + ["encodés"])  # 7 characters, 8 bytes of UTF-8
        for i in range(-len(ours), len(ours)):
            self.assertEqual(ours._get_packing_format(i), theirs._get_packing_format(i))
        for i in (len(ours), -len(ours) - 1):
            with self.assertRaises(IndexError):
                ours._get_packing_format(i)
        ours[0], theirs[0] = "some", "some"
        self.assertEqual(ours._get_packing_format(0), theirs._get_packing_format(0))

    def test_too_long_str_or_bytes_raises_ValueError_in_both(self):
        ours, theirs = self.both(ITEMS)
        for position, value in ((0, "more than 8"), (9, "123456789"), (14, b"x" * 17)):
            for sl in (ours, theirs):
                with self.subTest(impl=type(sl).__module__, position=position):
                    with self.assertRaisesRegex(ValueError, "exceeds available storage"):
                        sl[position] = value
        self.assert_same(ours, theirs)

    def test_index_errors_alike(self):
        ours, theirs = self.both([1, 2, 3])
        for sl in (ours, theirs):
            for position in (3, 100):
                with self.assertRaises(IndexError):
                    sl[position]
                with self.assertRaises(IndexError):
                    sl[position] = 1

    def test_count_and_index_alike(self):
        sequence = [1, "a", 1, None, b"a", True, 1.0]
        ours, theirs = self.both(sequence)
        for value in (1, "a", None, b"a", True, 2):
            self.assertEqual(ours.count(value), theirs.count(value))
        for value in (1, "a", None, b"a"):
            self.assertEqual(ours.index(value), theirs.index(value))
        for sl in (ours, theirs):
            with self.assertRaisesRegex(ValueError, "not in this container"):
                sl.index("missing")

    def test_empty_lists_alike(self):
        for sequence in (None, []):
            ours = self.make(sequence)
            theirs = self.make_stdlib(sequence)
            self.assert_same(ours, theirs)
            self.assertEqual(len(ours), 0)

    def test_attach_by_name_and_pickle(self):
        ours = self.make(ITEMS)
        again = ShareableList(name=ours.shm.name)
        self.addCleanup(again.shm.close)
        self.assertEqual(list(again), ITEMS)
        again[0] = 99
        self.assertEqual(ours[0], 99)
        copy = pickle.loads(pickle.dumps(ours))
        self.addCleanup(copy.shm.close)
        self.assertEqual(list(copy), list(ours))
        self.assertEqual(copy.shm.name, ours.shm.name)

    def test_named_creation_and_generic_alias(self):
        name = random_name("list_")
        ours = self.make([1, 2], name=name)
        self.assertEqual(ours.shm.name, name)
        with self.assertRaises(FileExistsError):
            ShareableList([3], name=name)
        self.assertEqual(ShareableList[int].__origin__, ShareableList)

    def test_slices_are_refused(self):
        ours = self.make([1, 2, 3])
        with self.assertRaises(TypeError):
            ours[0:2]


class BeyondTheStdlibTest(ListTestCase):

    def test_trailing_nul_bytes_survive(self):
        ours = self.make([b"ab\0\0", "x\0", b"\0"])
        self.assertEqual(list(ours), [b"ab\0\0", "x\0", b"\0"])
        ours[0] = b"\0\0\0"
        self.assertEqual(ours[0], b"\0\0\0")
        theirs = self.make_stdlib([b"ab\0\0"])
        self.assertEqual(theirs[0], b"ab")  # the stdlib's known bug, for the record

    def test_index_below_minus_length_raises_IndexError(self):
        ours = self.make([1, 2, 3])  # the stdlib reads some other bytes for [-4]
        with self.assertRaises(IndexError):
            ours[-4]
        with self.assertRaises(IndexError):
            ours[-4] = 0
        self.assertEqual(list(ours), [1, 2, 3])

    def test_str_slots_are_sized_by_their_utf8_length(self):
        text = "\u00e9" * 7  # 7 characters, 14 bytes
        ours = self.make([text])
        self.assertEqual(ours[0], text)
        self.assertEqual(ours.format, "16s")
        ours[0] = "\u00e9" * 8
        with self.assertRaises(ValueError):
            ours[0] = "\u00e9" * 9

    def test_unsupported_type_raises_TypeError_and_creates_nothing(self):
        before = len(open("/proc/sysvipc/shm").readlines())
        for value in ([1], {"a": 1}, object()):
            with self.subTest(value=repr(value)), self.assertRaisesRegex(TypeError, "stores int"):
                ShareableList([1, value])
        ours = self.make([1])
        with self.assertRaises(TypeError):
            ours[0] = [1]
        self.assertEqual(ours[0], 1)
        self.assertEqual(len(open("/proc/sysvipc/shm").readlines()), before + 1)

    def test_int_beyond_64_bits_leaves_nothing_behind(self):
        name = random_name("big_")
        with self.assertRaises(struct.error):
            ShareableList([1, 2 ** 64], name=name)
        with self.assertRaises(FileNotFoundError):
            SharedMemory(name)

    def test_plain_segment_is_not_a_list(self):
        shm = SharedMemory(create=True, size=64)
        self.addCleanup(self._dispose, shm)
        with self.assertRaisesRegex(ValueError, "not a ShareableList"):
            ShareableList(name=shm.name)

    def test_spawn_child_changes_are_seen(self):
        ours = self.make([0, "", None])
        process = spawn.Process(target=_child_edits_list, args=(ours.shm.name,))
        process.start()
        join_or_kill([process], TIMEOUT)
        self.assertEqual(list(ours), [41, "child", 2.5])


def _child_edits_list(name):
    sl = ShareableList(name=name)
    sl[0] += 41
    sl[1] = "child"
    sl[2] = 2.5
    sl.shm.close()


class ManagerTest(unittest.TestCase):

    def test_with_block_unlinks_everything_it_made(self):
        with SharedMemoryManager() as smm:
            shm = smm.SharedMemory(128)
            sl = smm.ShareableList([1, "two", b"3"])
            shm.buf[:2] = b"ok"
            self.assertEqual(list(sl), [1, "two", b"3"])
            keys = [shm.key, sl.shm.key]
            names = [shm.name, sl.shm.name]
        for key, name in zip(keys, names):
            self.assertFalse(segment_exists(key))
            with self.assertRaises(FileNotFoundError):
                SharedMemory(name)
        self.assertEqual(bytes(shm.buf[:2]), b"ok")  # handles keep their mapping
        shm.close()
        sl.shm.close()

    def test_start_and_shutdown(self):
        smm = SharedMemoryManager()
        with self.assertRaisesRegex(ValueError, "not started"):
            smm.SharedMemory(8)
        smm.start()
        with self.assertRaisesRegex(ValueError, "already started"):
            smm.start()
        shm = smm.SharedMemory(8)
        shm.close()
        smm.shutdown()
        smm.shutdown()
        self.assertFalse(segment_exists(shm.key))
        with self.assertRaisesRegex(ValueError, "not started"):
            smm.ShareableList([1])

    def test_unrelated_segments_survive_shutdown(self):
        other = SharedMemory(create=True, size=8)
        self.addCleanup(other.unlink)
        self.addCleanup(other.close)
        with SharedMemoryManager() as smm:
            smm.SharedMemory(8).close()
        self.assertTrue(segment_exists(other.key))

    def test_segments_made_in_a_fork_child_are_unlinked_at_shutdown(self):
        with SharedMemoryManager() as smm:
            queue = fork.Queue()
            process = fork.Process(target=_child_uses_manager, args=(smm, queue))
            process.start()
            key = queue.get(timeout=TIMEOUT)
            join_or_kill([process], TIMEOUT)
            self.assertTrue(segment_exists(key))  # the child's exit unlinks nothing
        self.assertFalse(segment_exists(key))

    def test_manager_pickled_to_a_spawn_child(self):
        with SharedMemoryManager() as smm:
            queue = spawn.Queue()
            process = spawn.Process(target=_child_uses_manager, args=(smm, queue))
            process.start()
            key = queue.get(timeout=TIMEOUT)
            join_or_kill([process], TIMEOUT)
            self.assertTrue(segment_exists(key))
        self.assertFalse(segment_exists(key))

    def test_program_end_shuts_the_manager_down_silently(self):
        result = run_python("""
            from mpsysv.shared import SharedMemoryManager
            smm = SharedMemoryManager()
            smm.start()
            print(smm.SharedMemory(16).key, smm.ShareableList([1]).shm.key)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        for key in result.stdout.split():
            self.assertFalse(segment_exists(int(key)))


def _child_uses_manager(smm, queue):
    shm = smm.SharedMemory(32)
    queue.put(shm.key)
    shm.close()
    smm.shutdown()  # not the owner: must not unlink anything


if __name__ == "__main__":
    unittest.main()
