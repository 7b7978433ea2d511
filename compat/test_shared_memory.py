"""SharedMemory, ShareableList and SharedMemoryManager: identical assertions on both backends."""

import os
import pickle
import subprocess
import sys
import textwrap

from .support import TIMEOUT, CompatCase, install_cases


def write_by_name(cls, name, data):
    sm = cls(name)
    sm.buf[:len(data)] = data
    sm.close()


def set_item_by_name(cls, name, index, value):
    sl = cls(name=name)
    sl[index] = value
    sl.shm.close()


def _shm_files():
    """Open file descriptors of this process on /dev/shm (what psutil's open_files() lists)."""
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/")
               for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))


def write_through_handle(sm, data):
    sm.buf[:len(data)] = data
    sm.close()


class _SharedMemoryHelpers(CompatCase):
    def new_segment(self, size, name=None):
        sm = self.SharedMemory(name, create=True, size=size)
        self.addCleanup(_unlink_quietly, sm)
        self.addCleanup(sm.close)
        return sm

    def new_list(self, sequence):
        sl = self.ShareableList(sequence)
        self.addCleanup(_unlink_quietly, sl.shm)
        self.addCleanup(sl.shm.close)
        return sl


class SharedMemoryCase(_SharedMemoryHelpers):
    def test_create_attach_and_see_the_same_bytes(self):
        sm = self.new_segment(512)
        self.assertIsInstance(sm.name, str)
        self.assertGreaterEqual(sm.size, 512)
        self.assertGreaterEqual(len(sm.buf), 512)
        sm.buf[:5] = b"hello"
        other = self.SharedMemory(sm.name)
        self.assertEqual(bytes(other.buf[:5]), b"hello")
        other.buf[5] = 33
        self.assertEqual(sm.buf[5], 33)
        other.close()

    def test_a_handle_holds_open_files_of_its_segment(self):
        before = _shm_files()
        sm = self.new_segment(64)
        other = self.SharedMemory(sm.name)
        self.addCleanup(other.close)
        if self.differs("no-file-per-segment"):
            self.assertEqual(_shm_files(), before)
        else:
            self.assertGreaterEqual(_shm_files(), before + 2)  # its fd (and mmap's copy)

    def test_posix_shm_unlink_of_the_private_name(self):
        import _posixshmem
        from multiprocessing import resource_tracker

        sm = self.new_segment(16)
        if self.differs("not-a-posix-name"):
            with self.assertRaises(FileNotFoundError):
                _posixshmem.shm_unlink(sm._name)
            self.SharedMemory(sm.name).close()  # still there
        else:
            _posixshmem.shm_unlink(sm._name)
            resource_tracker.unregister(sm._name, "shared_memory")
            with self.assertRaises(FileNotFoundError):
                self.SharedMemory(sm.name)

    def test_repr_names_the_segment_and_its_size(self):
        sm = self.new_segment(512)
        self.assertIn(sm.name, repr(sm))
        self.assertIn(str(sm.size), repr(sm))

    def test_attach_ignores_the_size_argument(self):
        sm = self.new_segment(512)
        same = self.SharedMemory(sm.name, size=20 * sm.size)
        self.assertEqual(same.size, sm.size)
        same.close()

    def test_create_with_a_taken_name_raises_file_exists(self):
        sm = self.new_segment(64)
        with self.assertRaises(FileExistsError):
            self.SharedMemory(sm.name, create=True, size=64)

    def test_attach_to_a_missing_name_raises_file_not_found(self):
        with self.assertRaises(FileNotFoundError):
            self.SharedMemory("compat_no_such_segment_here")

    def test_bad_arguments_raise_value_error(self):
        for size in (-2, 0):
            with self.assertRaises(ValueError):
                self.SharedMemory(create=True, size=size)
        with self.assertRaises(ValueError):
            self.SharedMemory(create=True)
        with self.assertRaises(ValueError):
            self.SharedMemory(create=False)

    def test_unlink_frees_the_name_and_keeps_the_mapping(self):
        sm = self.SharedMemory(create=True, size=64)
        sm.buf[0] = 7
        sm.unlink()
        with self.assertRaises(FileNotFoundError):
            self.SharedMemory(sm.name)
        self.assertEqual(sm.buf[0], 7)
        sm.close()

    def test_close_drops_the_buffer(self):
        sm = self.new_segment(64)
        sm.close()
        self.assertIsNone(sm.buf)
        sm.close()

    def test_pickle_attaches_the_same_segment(self):
        sm = self.new_segment(64)
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            with self.subTest(proto=proto):
                other = pickle.loads(pickle.dumps(sm, proto))
                other.buf[proto] = proto + 1
                self.assertEqual(sm.buf[proto], proto + 1)
                self.assertEqual(other.name, sm.name)
                other.close()


class SharedMemoryAcrossProcessesCase(_SharedMemoryHelpers):
    START_METHODS = ("fork", "spawn", "forkserver")

    def test_child_attaches_by_name_and_writes(self):
        sm = self.new_segment(4096)
        self.start_and_join(write_by_name, self.SharedMemory, sm.name, b"from the child")
        self.assertEqual(bytes(sm.buf[:14]), b"from the child")

    def test_child_gets_the_segment_as_an_argument(self):
        sm = self.new_segment(4096)
        self.start_and_join(write_through_handle, sm, b"handed over")
        self.assertEqual(bytes(sm.buf[:11]), b"handed over")

    def test_child_changes_a_shareable_list(self):
        sl = self.new_list([0, "abc", 1.5])
        self.start_and_join(set_item_by_name, self.ShareableList, sl.shm.name, 0, 42)
        self.start_and_join(set_item_by_name, self.ShareableList, sl.shm.name, 1, "xyz")
        self.assertEqual(list(sl), [42, "xyz", 1.5])


class ShareableListCase(_SharedMemoryHelpers):
    ITEMS = [1, -2 ** 63, 2.5, True, False, "text", b"bytes", None]

    def test_items_round_trip(self):
        sl = self.new_list(self.ITEMS)
        self.assertEqual(len(sl), len(self.ITEMS))
        self.assertEqual(list(sl), self.ITEMS)
        self.assertEqual([type(x) for x in sl], [type(x) for x in self.ITEMS])
        self.assertEqual(sl[-1], None)
        self.assertEqual(sl[-3], "text")

    def test_index_errors(self):
        sl = self.new_list([1, 2])
        with self.assertRaises(IndexError):
            sl[2]
        with self.assertRaises(IndexError):
            sl[5] = 1

    def test_negative_index_beyond_the_start(self):
        sl = self.new_list([1, 2])
        if self.differs("shareable-list-negative-index"):
            with self.assertRaises(IndexError):
                sl[-3]
        else:
            sl[-3]  # no IndexError: it reads a slot that belongs to another item

    def test_non_ascii_str(self):
        sl = self.new_list(["ünïcode"])
        if self.differs("shareable-list-utf8"):
            self.assertEqual(sl[0], "ünïcode")
        else:
            self.assertEqual(sl[0], "ünïcod")

    def test_set_items(self):
        sl = self.new_list([1, 2.0, "abcdef", b"xyz"])
        sl[0] = 99
        sl[1] = -0.5
        sl[2] = "ab"
        sl[3] = b"q"
        self.assertEqual(list(sl), [99, -0.5, "ab", b"q"])

    def test_a_longer_str_than_the_slot_raises_value_error(self):
        sl = self.new_list(["abc"])
        with self.assertRaises(ValueError):
            sl[0] = "x" * 100
        self.assertEqual(sl[0], "abc")

    def test_count_and_index(self):
        sl = self.new_list([3, "a", 3, None])
        self.assertEqual(sl.count(3), 2)
        self.assertEqual(sl.index("a"), 1)
        self.assertEqual(sl.index(None), 3)
        with self.assertRaises(ValueError):
            sl.index(4)

    def test_attach_by_name_and_pickle(self):
        sl = self.new_list(["shared", 7])
        other = self.ShareableList(name=sl.shm.name)
        other[1] = 8
        self.assertEqual(sl[1], 8)
        other.shm.close()
        again = pickle.loads(pickle.dumps(sl))
        self.assertEqual(list(again), ["shared", 8])
        again.shm.close()

    def test_empty_list(self):
        sl = self.new_list([])
        self.assertEqual(len(sl), 0)
        self.assertEqual(list(sl), [])

    def test_trailing_nul_bytes(self):
        sl = self.new_list([b"ab\x00\x00", "cd\x00"])
        if self.differs("shareable-list-nul"):
            self.assertEqual(list(sl), [b"ab\x00\x00", "cd\x00"])
        else:
            self.assertEqual(list(sl), [b"ab", "cd"])


class SharedMemoryManagerCase(_SharedMemoryHelpers):
    def test_shutdown_unlinks_what_the_manager_made(self):
        with self.SharedMemoryManager() as smm:
            sm = smm.SharedMemory(size=128)
            sl = smm.ShareableList(["a", 1])
            sm.buf[0] = 5
            self.assertEqual(list(sl), ["a", 1])
            names = [sm.name, sl.shm.name]
            sl.shm.close()
        self.assertEqual(sm.buf[0], 5)  # still mapped here
        sm.close()
        for name in names:
            with self.assertRaises(FileNotFoundError):
                self.SharedMemory(name)

    def test_segments_from_the_manager_reach_a_child(self):
        with self.SharedMemoryManager() as smm:
            sm = smm.SharedMemory(size=64)
            self.start_and_join(write_by_name, self.SharedMemory, sm.name, b"via manager",
                                timeout=TIMEOUT)
            self.assertEqual(bytes(sm.buf[:11]), b"via manager")
            sm.close()


def _unlink_quietly(sm):
    try:
        sm.unlink()
    except FileNotFoundError:
        pass


_GARBAGE_PROGRAM = textwrap.dedent("""
    import gc, sys
    if sys.argv[1] == "mpsysv":
        from mpsysv import SharedMemory
    else:
        from multiprocessing.shared_memory import SharedMemory

    class Holder:
        def __del__(self):
            print("read in __del__:", bytes(self.view[:5]).decode())

    h = Holder()
    h.shm = SharedMemory(create=True, size=4096)
    h.shm.buf[:5] = b"hello"
    h.view = h.shm.buf[0:10]
    h.cycle = h
    name = h.shm.name
    del h
    gc.collect()
    from multiprocessing.shared_memory import SharedMemory as Std
    (SharedMemory(name) if sys.argv[1] == "mpsysv" else Std(name)).unlink()
    """)


class SharedMemoryGarbageCase(CompatCase):
    def test_view_held_by_cyclic_garbage_is_readable_in_its_del(self):
        # UltraDict 0.0.6 keeps slices of a segment's buf and reads one in __del__; when
        # the collector frees it with its SharedMemory, the slice must still be mapped.
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (repo, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run([sys.executable, "-c", _GARBAGE_PROGRAM, self.backend],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual((proc.returncode, proc.stdout), (0, "read in __del__: hello\n"),
                         proc.stderr[-3000:])


install_cases(globals())
