"""mpsysv.shared.SharedMemory: names, sizes, unlink/close semantics, processes, SysV extras.

Every test that starts a process bounds it with a timeout; the leak guard in
conftest.py fails any test that leaves a segment behind.
"""

import ctypes
import errno
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from unittest import mock

import mpsysv
from mpsysv._shm import trailer as _trailer
from mpsysv._ipc.names import name_key, random_name
from mpsysv.primitives import Segment
from mpsysv.shared import ForeignSegmentError, SharedMemory

from .helpers import fork, join_or_kill, spawn

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the test extras
    np = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60
PAGE = os.sysconf("SC_PAGE_SIZE")


def run_python(code, timeout=TIMEOUT, **kwargs):
    """Run *code* as a script (spawn children can import its functions) in a fresh
    interpreter that imports mpsysv from this checkout."""
    with tempfile.TemporaryDirectory(prefix="mpsysv-test-") as tmp:
        script = os.path.join(tmp, "program.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(code))
        return subprocess.run([sys.executable, script], env=dict(os.environ, PYTHONPATH=ROOT),
                              capture_output=True, text=True, timeout=timeout, **kwargs)


def segment_exists(key):
    try:
        Segment(key)
    except FileNotFoundError:
        return False
    return True


class SegmentTestCase(unittest.TestCase):
    """Closes and unlinks what a test made, even when it fails half-way."""

    def make(self, *args, **kwargs):
        shm = SharedMemory(*args, **kwargs)
        self.addCleanup(self._dispose, shm, kwargs.get("create", len(args) > 1 and args[1]))
        return shm

    @staticmethod
    def _dispose(shm, created):
        shm.close()
        if created:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass


# --- names and sizes ---------------------------------------------------------------------

class NamesAndSizesTest(SegmentTestCase):

    def test_create_without_name_picks_a_fresh_random_name(self):
        a = self.make(create=True, size=10)
        b = self.make(create=True, size=10)
        self.assertIsInstance(a.name, str)
        self.assertNotEqual(a.name, b.name)
        self.assertNotEqual(a.id, b.id)

    def test_fork_child_never_hands_out_the_parents_next_random_names(self):
        random_name()  # the pool of random bits is filled now
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.write(write_end, " ".join(random_name() for _ in range(3)).encode())
            os._exit(0)
        os.close(write_end)
        try:
            os.waitpid(pid, 0)
            theirs = set(os.read(read_end, 4096).decode().split())
        finally:
            os.close(read_end)
        mine = {random_name() for _ in range(3)}
        self.assertEqual(len(theirs), 3)
        self.assertFalse(mine & theirs)

    def test_attach_by_name_sees_the_same_bytes(self):
        a = self.make(create=True, size=100)
        a.buf[:5] = b"hello"
        b = self.make(a.name)
        self.assertEqual(bytes(b.buf[:5]), b"hello")
        b.buf[99] = 7
        self.assertEqual(a.buf[99], 7)

    def test_size_is_exact_on_create_and_on_attach(self):
        for size in (1, 100, PAGE, PAGE + 1, 3 * PAGE - 5):
            with self.subTest(size=size):
                a = self.make(create=True, size=size)
                b = self.make(a.name)
                self.assertEqual((a.size, len(a.buf), a.buf.nbytes), (size, size, size))
                self.assertEqual((b.size, len(b.buf)), (size, size))

    def test_buf_is_page_aligned_and_writable(self):
        a = self.make(create=True, size=PAGE)
        self.assertFalse(a.buf.readonly)
        address = ctypes.addressof(ctypes.c_char.from_buffer(a.buf))
        self.assertEqual(address % PAGE, 0)

    def test_create_with_existing_name_raises_FileExistsError(self):
        a = self.make(create=True, size=10)
        with self.assertRaises(FileExistsError) as cm:
            SharedMemory(a.name, create=True, size=10)
        self.assertNotIsInstance(cm.exception, ForeignSegmentError)
        self.assertEqual(cm.exception.errno, errno.EEXIST)
        self.assertEqual(cm.exception.filename, a.name)

    def test_attach_to_missing_name_raises_FileNotFoundError(self):
        name = random_name("missing_")
        with self.assertRaises(FileNotFoundError) as cm:
            SharedMemory(name)
        self.assertEqual(cm.exception.filename, name)

    def test_size_must_be_positive_on_create(self):
        for size in (0, -1):
            with self.subTest(size=size), self.assertRaisesRegex(ValueError, "'size'"):
                SharedMemory(create=True, size=size)
        with self.assertRaises(ValueError):
            SharedMemory("some_name", size=-1)
        with self.assertRaises(TypeError):
            SharedMemory(create=True, size=1.5)

    def test_name_is_required_to_attach(self):
        with self.assertRaisesRegex(ValueError, "'name' can only be None if create=True"):
            SharedMemory()

    def test_bad_names_are_rejected(self):
        for name in ("", "/", "a b", "x" * 201, "é"):
            with self.subTest(name=name), self.assertRaises(ValueError):
                SharedMemory(name, create=True, size=1)
        with self.assertRaises(TypeError):
            SharedMemory(b"bytes", create=True, size=1)

    def test_leading_slash_is_dropped_like_the_stdlib(self):
        name = random_name("slash_")
        a = self.make("/" + name, create=True, size=8)
        self.assertEqual(a.name, name)
        b = self.make(name)
        self.assertEqual(b.id, a.id)

    def test_private_name_has_the_stdlibs_leading_slash(self):
        name = random_name("under_")
        a = self.make(name, create=True, size=8)
        self.assertEqual((a._name, a.name), ("/" + name, name))
        b = self.make(create=True, size=8)
        self.assertEqual(b._name, "/" + b.name)

    def test_a_mocked_make_filename_names_anonymous_segments_and_a_taken_name_is_retried(self):
        names = ["/psm_" + random_name("mock1_"), "/psm_" + random_name("mock2_")]
        with mock.patch("multiprocessing.shared_memory._make_filename") as make_filename:
            make_filename.side_effect = names
            first = self.make(create=True, size=1)
            make_filename.side_effect = names
            second = self.make(create=True, size=1)  # the first name exists: the next one
        self.assertEqual((first._name, second._name), tuple(names))
        self.assertEqual(second.name, names[1][1:])

    def test_a_name_with_a_nul_byte_raises_ValueError_also_from_unlink(self):
        a = self.make(random_name("nul_"), create=True, size=8)
        with self.assertRaises(ValueError):
            SharedMemory(a.name + "\0a")
        own = a._name
        a._name = own + "\0a"
        with self.assertRaises(ValueError):
            a.unlink()
        a._name = own
        a.unlink()

    def test_unlink_removes_the_segment_its_name_attribute_names(self):
        a = self.make(random_name("first_"), create=True, size=8)
        b = self.make(random_name("second_"), create=True, size=8)
        own = a._name
        a._name = b._name  # as the stdlib's unlink() does: shm_unlink(self._name)
        a.unlink()
        with self.assertRaises(FileNotFoundError):
            SharedMemory(b.name)
        a._name = own
        SharedMemory(a.name).close()  # a's own segment is still there

    def test_key_is_the_name_key_and_segment_is_owner_only(self):
        a = self.make(create=True, size=8)
        self.assertEqual(a.key, name_key("shm", a.name))
        self.assertEqual(a.stat().mode & 0o777, 0o600)

    def test_a_names_key_is_the_blake2b_of_kind_and_name_as_documented(self):
        import hashlib
        for kind, name, index in (("shm", "a", 0), ("queue", "q-1", 2), ("shm", "x" * 200, 0)):
            digest = hashlib.blake2b(f"mpsysv\0{kind}\0{name}\0{index}".encode(),
                                     digest_size=4).digest()
            key = int.from_bytes(digest, "little") & 0x7FFFFFFF
            if key >> 24 == 0x4D:
                key ^= 1 << 24
            self.assertEqual(name_key(kind, name, index), key or 1)

    def test_pickles_name_the_public_module(self):
        from mpsysv.shared import ShareableList, SharedMemoryManager
        a = self.make(create=True, size=16)
        sl = ShareableList([1, "x"])
        self.addCleanup(sl.shm.unlink)
        self.addCleanup(sl.shm.close)
        with SharedMemoryManager() as manager:
            for obj, path in ((a, b"mpsysv.shared"), (sl, b"mpsysv.shared"),
                              (manager, b"mpsysv.shared")):
                for protocol in (0, pickle.HIGHEST_PROTOCOL):
                    data = pickle.dumps(obj, protocol)
                    self.assertIn(path, data)
                    self.assertNotIn(b"_shared_memory", data)
                    self.assertNotIn(b"_shareable_list", data)
                    self.assertNotIn(b"_shared_manager", data)
            raw = SharedMemory.from_id(a.id)
            self.addCleanup(raw.close)
            self.assertNotIn(b"_shared_memory", pickle.dumps(raw))

    def test_repr_and_pickle_reattach_by_name(self):
        a = self.make(create=True, size=32)
        self.assertEqual(repr(a), f"SharedMemory({a.name!r}, size=32)")
        a.buf[0] = 42
        b = pickle.loads(pickle.dumps(a))
        self.addCleanup(b.close)
        self.assertEqual((b.name, b.size, b.buf[0]), (a.name, 32, 42))
        self.assertNotEqual(ctypes.addressof(ctypes.c_char.from_buffer(b.buf)),
                            ctypes.addressof(ctypes.c_char.from_buffer(a.buf)))

    def test_context_manager_closes(self):
        a = self.make(create=True, size=8)
        with SharedMemory(a.name) as b:
            b.buf[0] = 1
        self.assertIsNone(b.buf)
        self.assertEqual(a.buf[0], 1)


class ForeignSegmentTest(SegmentTestCase):

    def raw_segment_at(self, key, size=PAGE):
        segment = Segment(key, size, create=True, exclusive=True)
        self.addCleanup(segment.remove)
        return segment

    def test_segment_made_by_key_by_another_program_is_refused(self):
        name = random_name("foreign_")
        self.raw_segment_at(name_key("shm", name))
        with self.assertRaises(ForeignSegmentError) as cm:
            SharedMemory(name)
        self.assertIsInstance(cm.exception, FileExistsError)
        self.assertIn("no mpsysv trailer", str(cm.exception))
        self.assertIn("from_key", str(cm.exception))
        with self.assertRaises(ForeignSegmentError):
            SharedMemory(name, create=True, size=10)

    def test_small_foreign_segment_is_refused(self):
        name = random_name("tiny_")
        self.raw_segment_at(name_key("shm", name), size=10)
        with self.assertRaises(ForeignSegmentError):
            SharedMemory(name)

    def test_another_name_with_the_same_key_is_refused(self):
        seen = {}
        while True:
            name = random_name("k")
            key = name_key("shm", name)
            if key in seen:
                break
            seen[key] = name
        first = self.make(seen[key], create=True, size=16)
        with self.assertRaisesRegex(ForeignSegmentError, "same 31-bit key") as cm:
            SharedMemory(name)
        self.assertIn(first.name, str(cm.exception))
        with self.assertRaises(ForeignSegmentError):
            SharedMemory(name, create=True, size=16)

    def test_trailer_of_an_unknown_format_version_is_refused(self):
        name = random_name("future_")
        identity = _trailer.pack_identity(name, 16, 0, 1, 0, (1, 1), (0, 0))
        future = identity[:8] + (99).to_bytes(2, "little") + identity[10:]
        segment = self.raw_segment_at(name_key("shm", name), size=16 + len(future))
        attachment = segment.attach()
        attachment.buf[16:] = future
        attachment.detach()
        with self.assertRaisesRegex(ForeignSegmentError, "version is 99"):
            SharedMemory(name)


# --- unlink and close ---------------------------------------------------------------------

class UnlinkTest(SegmentTestCase):

    def test_unlink_frees_the_name_at_once_and_attached_handles_keep_working(self):
        a = self.make(create=True, size=64)
        b = self.make(a.name)
        a.unlink()
        with self.assertRaises(FileNotFoundError):
            SharedMemory(a.name)
        b.buf[:3] = b"abc"
        self.assertEqual(bytes(a.buf[:3]), b"abc")
        again = self.make(a.name, create=True, size=64)
        self.assertNotEqual(again.id, a.id)
        self.assertEqual(bytes(again.buf[:3]), b"\0\0\0")
        self.assertEqual(bytes(b.buf[:3]), b"abc")

    def test_second_unlink_raises_FileNotFoundError(self):
        a = self.make(create=True, size=8)
        a.unlink()
        with self.assertRaises(FileNotFoundError):
            a.unlink()

    def test_unlink_after_removal_from_outside_raises_FileNotFoundError(self):
        a = SharedMemory(create=True, size=8)
        a.close()
        Segment(id=a.id).remove()
        with self.assertRaisesRegex(FileNotFoundError, "removed already"):
            a.unlink()

    def test_memory_is_freed_at_the_last_detach(self):
        a = SharedMemory(create=True, size=8)
        b = SharedMemory(a.name)
        a.unlink()
        a.close()
        self.assertEqual(Segment(id=a.id).stat().shm_nattch, 1)
        b.close()
        with self.assertRaises(OSError):
            Segment(id=a.id)


class CloseTest(SegmentTestCase):

    def nattch(self, shm):
        return Segment(id=shm.id).stat().shm_nattch

    def test_close_is_idempotent_and_drops_buf(self):
        a = self.make(create=True, size=8)
        view = a.buf
        a.close()
        a.close()
        self.assertIsNone(a.buf)
        with self.assertRaises(ValueError):
            view[0]
        self.assertEqual(self.nattch(a), 0)

    @unittest.skipIf(np is None, "needs numpy")
    def test_close_with_a_live_numpy_array_defers_the_detach(self):
        a = self.make(create=True, size=8 * 1000)
        b = self.make(a.name)
        array = np.ndarray((1000,), dtype=np.int64, buffer=b.buf)
        array[:] = np.arange(1000)
        b.close()
        self.assertIsNone(b.buf)
        self.assertEqual(self.nattch(a), 2)
        array[10] = -5
        self.assertEqual(int(array.sum()), sum(range(1000)) - 10 - 5)
        self.assertEqual(np.frombuffer(a.buf, dtype=np.int64)[10], -5)
        del array
        self.assertEqual(self.nattch(a), 1)

    @unittest.skipIf(np is None, "needs numpy")
    def test_every_kind_of_numpy_view_stays_valid_after_close(self):
        # np.ndarray(buffer=shm.buf) then close() crashes the stdlib at the next access.
        makers = {
            "ndarray": lambda buf: np.ndarray((512,), dtype=np.int64, buffer=buf),
            "frombuffer": lambda buf: np.frombuffer(buf, dtype=np.int64),
            "slice": lambda buf: np.frombuffer(buf[:64], dtype=np.uint8),
            "asarray": lambda buf: np.asarray(buf),
        }
        for how, make in makers.items():
            with self.subTest(how=how):
                a = SharedMemory(create=True, size=4096)
                array = make(a.buf)
                a.close()
                a.unlink()
                array[:] = 3
                self.assertEqual(int(array[-1]), 3)
                self.assertEqual(Segment(id=a.id).stat().shm_nattch, 1)
                del array
                with self.assertRaises(OSError):
                    Segment(id=a.id)

    @unittest.skipIf(np is None, "needs numpy")
    def test_array_outlives_unlink_and_close(self):
        a = SharedMemory(create=True, size=4096)
        array = np.frombuffer(a.buf, dtype=np.uint8)
        a.unlink()
        a.close()
        a.close()
        self.assertEqual(array.sum(), 0)
        array_id = a.id
        self.assertEqual(Segment(id=array_id).stat().shm_nattch, 1)
        del array
        with self.assertRaises(OSError):
            Segment(id=array_id)

    def test_close_with_a_live_slice_keeps_the_slice_valid(self):
        a = self.make(create=True, size=16)
        part = a.buf[4:8]
        a.close()
        part[:] = b"wxyz"
        self.assertEqual(bytes(part), b"wxyz")
        b = self.make(a.name)
        self.assertEqual(bytes(b.buf[4:8]), b"wxyz")
        part.release()
        self.assertEqual(self.nattch(b), 1)


# --- processes ----------------------------------------------------------------------------

def _child_writes_inherited(shm, value):
    shm.buf[0] = value


def _child_attaches_by_name(name, payload):
    shm = SharedMemory(name)
    shm.buf[:len(payload)] = payload
    shm.close()


def _child_uses_pickled(shm, payload):
    shm.buf[:len(payload)] = payload
    shm.close()


class ProcessesTest(SegmentTestCase):

    def test_fork_child_uses_the_inherited_buf(self):
        a = self.make(create=True, size=8)
        process = fork.Process(target=_child_writes_inherited, args=(a, 99))
        process.start()
        join_or_kill([process], TIMEOUT)
        self.assertEqual(a.buf[0], 99)

    def test_os_fork_child_shares_the_mapping(self):
        a = self.make(create=True, size=8)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            a.buf[1] = 5
            os._exit(0)
        deadline = time.monotonic() + TIMEOUT
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                self.fail("forked child hung")
            time.sleep(0.01)
        self.assertEqual(a.buf[1], 5)

    def test_spawn_child_attaches_by_name(self):
        a = self.make(create=True, size=16)
        process = spawn.Process(target=_child_attaches_by_name, args=(a.name, b"from spawn"))
        process.start()
        join_or_kill([process], TIMEOUT)
        self.assertEqual(bytes(a.buf[:10]), b"from spawn")

    def test_spawn_child_receives_a_pickled_segment(self):
        a = self.make(create=True, size=16)
        process = spawn.Process(target=_child_uses_pickled, args=(a, b"pickled"))
        process.start()
        join_or_kill([process], TIMEOUT)
        self.assertEqual(bytes(a.buf[:7]), b"pickled")

    def test_unrelated_process_attaches_by_name(self):
        a = self.make(create=True, size=32)
        a.buf[:6] = b"parent"
        result = run_python(f"""
            from mpsysv.shared import SharedMemory
            shm = SharedMemory({a.name!r})
            print(bytes(shm.buf[:6]).decode(), shm.size)
            shm.buf[6:11] = b"child"
            shm.close()
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["parent", "32"])
        self.assertEqual(bytes(a.buf[:11]), b"parentchild")

    def test_segment_made_by_an_unrelated_process_is_found_by_name(self):
        name = random_name("later_")
        result = run_python(f"""
            from mpsysv.shared import SharedMemory
            shm = SharedMemory({name!r}, create=True, size=100, track=False)
            shm.buf[:4] = b"made"
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        b = self.make(name)
        self.addCleanup(b.unlink)
        self.assertEqual((bytes(b.buf[:4]), b.size), (b"made", 100))


# --- System V extras ----------------------------------------------------------------------

class ExtrasTest(SegmentTestCase):

    def test_readonly_attach_refuses_writes(self):
        a = self.make(create=True, size=8)
        a.buf[0] = 3
        ro = self.make(a.name, readonly=True)
        self.assertTrue(ro.readonly)
        self.assertTrue(ro.buf.readonly)
        self.assertEqual(ro.buf[0], 3)
        with self.assertRaises(TypeError):
            ro.buf[0] = 1
        a.buf[0] = 4
        self.assertEqual(ro.buf[0], 4)
        copy = pickle.loads(pickle.dumps(ro))
        self.addCleanup(copy.close)
        self.assertTrue(copy.buf.readonly)
        with self.assertRaises(ValueError):
            SharedMemory(create=True, size=8, readonly=True)

    def test_stat_reports_size_attachments_pids_times_owner_and_mode(self):
        before = time.time()
        a = self.make(create=True, size=100)
        b = self.make(a.name)
        st = a.stat()
        self.assertEqual(st.shm_segsz, 100 + _trailer.TRAILER_SIZE)
        self.assertEqual(st.shm_nattch, 2)
        self.assertEqual((st.shm_cpid, st.shm_lpid), (os.getpid(), os.getpid()))
        self.assertGreaterEqual(st.shm_atime, int(before))
        self.assertGreaterEqual(st.shm_ctime, int(before))
        self.assertEqual((st.uid, st.cuid, st.gid), (os.geteuid(), os.geteuid(), os.getegid()))
        self.assertEqual(st.mode & 0o777, 0o600)
        self.assertEqual(st.key, a.key)
        b.close()
        self.assertEqual(a.stat().shm_nattch, 1)

    def test_set_mode_changes_the_permission_bits(self):
        a = self.make(create=True, size=8, mode=0o640)
        self.assertEqual(a.stat().mode & 0o777, 0o640)
        a.set_mode(0o600)
        self.assertEqual(a.stat().mode & 0o777, 0o600)
        for bad in (-1, 0o1000, "0o600"):
            with self.subTest(mode=bad), self.assertRaises(ValueError):
                a.set_mode(bad)

    def test_from_id_and_from_key_cover_the_whole_raw_segment(self):
        segment = Segment(None, 5000, create=True)
        self.addCleanup(segment.remove)
        raw = SharedMemory.from_id(segment.id)
        self.addCleanup(raw.close)
        self.assertIsNone(raw.name)
        self.assertEqual(raw.size, 5000)
        raw.buf[4999] = 1
        self.assertEqual(repr(raw), f"SharedMemory.from_id({segment.id}, size=5000)")
        copy = pickle.loads(pickle.dumps(raw))
        self.addCleanup(copy.close)
        self.assertEqual(copy.buf[4999], 1)

        key = name_key("test", random_name())
        made = SharedMemory.from_key(key, create=True, size=300, track=False)
        self.addCleanup(made.unlink)
        self.addCleanup(made.close)
        other = SharedMemory.from_key(key, readonly=True)
        self.addCleanup(other.close)
        made.buf[:3] = b"raw"
        self.assertEqual((bytes(other.buf[:3]), other.size, other.key), (b"raw", 300, key))

    def test_named_segment_can_be_mapped_raw_by_id(self):
        a = self.make(create=True, size=10)
        raw = SharedMemory.from_id(a.id)
        self.addCleanup(raw.close)
        self.assertEqual(raw.size, 10 + _trailer.TRAILER_SIZE)
        self.assertEqual(bytes(raw.buf[10:18]), _trailer.MAGIC)

    def test_one_gibibyte_segment_touching_a_few_pages(self):
        size = 1 << 30
        a = self.make(create=True, size=size)
        b = self.make(a.name)
        for offset in (0, size // 2, size - 1):
            a.buf[offset] = offset % 251
        self.assertEqual(b.size, size)
        self.assertEqual([b.buf[o] for o in (0, size // 2, size - 1)],
                         [o % 251 for o in (0, size // 2, size - 1)])

    def test_huge_pages(self):
        total = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Total:"):
                    total = int(line.split()[1])
        if total == 0:
            self.skipTest("no huge pages configured (HugePages_Total is 0)")
        try:
            a = self.make(create=True, size=2 << 20, hugetlb=True)
        except OSError as exc:
            if exc.errno in (errno.ENOMEM, errno.EPERM):
                self.skipTest(f"huge pages not available here: {exc}")
            raise
        a.buf[-1] = 9
        self.assertEqual(self.make(a.name).buf[-1], 9)

    def test_huge_pages_failure_names_the_cause(self):
        with open("/proc/meminfo") as f:
            free = [int(line.split()[1]) for line in f if line.startswith("HugePages_Free:")]
        if free and free[0] > 0:
            self.skipTest("huge pages are available here")
        with self.assertRaisesRegex(OSError, "huge pages|HugePages") as cm:
            SharedMemory(create=True, size=2 << 20, hugetlb=True, track=False)
        self.assertIn(cm.exception.errno, (errno.ENOMEM, errno.EPERM))


class KernelLimitsTest(unittest.TestCase):
    """Run in a private IPC namespace (root only) whose limits the test may lower."""

    def test_size_errors_name_shmmax_shmall_and_shmmni(self):
        if not shutil.which("unshare") or os.geteuid() != 0:
            self.skipTest("needs root and unshare(1) for a private IPC namespace")
        code = textwrap.dedent("""
            import sys
            sys.path.insert(0, sys.argv[1])
            from mpsysv.shared import SharedMemory
            def limit(name, value):
                with open("/proc/sys/kernel/" + name, "w") as f:
                    f.write(str(value))
            def error(size):
                try:
                    SharedMemory(create=True, size=size, track=False)
                except OSError as exc:
                    return str(exc)
                return "no error"
            limit("shmmax", 1 << 20)
            print("shmmax:", error(2 << 20))
            limit("shmmax", 1 << 40)
            limit("shmall", 4)
            print("shmall:", error(5 * 4096))
            limit("shmall", 1 << 30)
            limit("shmmni", 1)
            keep = SharedMemory(create=True, size=8, track=False)
            print("shmmni:", error(8))
            keep.close(); keep.unlink()
            """)
        result = subprocess.run(["unshare", "--ipc", sys.executable, "-c", code, ROOT],
                                capture_output=True, text=True, timeout=TIMEOUT)
        if result.returncode != 0 and "unshare" in result.stderr:
            self.skipTest(f"unshare --ipc failed: {result.stderr.strip()}")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
        self.assertIn("shmmax=1048576", lines["shmmax"])
        self.assertIn("shmall=4 pages", lines["shmall"])
        self.assertIn("shmmni=1", lines["shmmni"])


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

/* create PATH | read PATH OFFSET | readkey KEY OFFSET */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    key_t key = strcmp(argv[1], "readkey") == 0 ? (key_t)strtol(argv[2], NULL, 0)
                                                : ftok(argv[2], 'M');
    if (strcmp(argv[1], "create") == 0) {
        int id = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) { perror("shmget"); return 1; }
        char *p = shmat(id, NULL, 0);
        if (p == (char *)-1) { perror("shmat"); return 1; }
        strcpy(p, "hello from C");
        shmdt(p);
        printf("%d\n", id);
        return 0;
    }
    int id = shmget(key, 0, 0);
    if (id < 0) { perror("shmget"); return 1; }
    char *p = shmat(id, NULL, SHM_RDONLY);
    if (p == (char *)-1) { perror("shmat"); return 1; }
    printf("%s\n", p + atoi(argv[3]));
    shmdt(p);
    return 0;
}
"""


class CProgramTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if compiler is None:
            raise unittest.SkipTest("no C compiler")
        cls.tmp = tempfile.mkdtemp(prefix="mpsysv-c-")
        source = os.path.join(cls.tmp, "shm.c")
        cls.program = os.path.join(cls.tmp, "shm")
        with open(source, "w") as f:
            f.write(C_PROGRAM)
        result = subprocess.run([compiler, "-O1", "-o", cls.program, source],
                                capture_output=True, text=True, timeout=TIMEOUT)
        if result.returncode != 0:
            shutil.rmtree(cls.tmp)
            raise unittest.SkipTest(f"cannot compile the C helper: {result.stderr}")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def c(self, *args):
        result = subprocess.run([self.program, *map(str, args)], capture_output=True,
                                text=True, timeout=TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.strip()

    def test_python_reads_what_a_c_program_wrote_under_an_ftok_key(self):
        path = tempfile.mkdtemp(dir=self.tmp)
        ident = int(self.c("create", path))
        key = mpsysv.ftok(path, ord("M"))
        shm = SharedMemory.from_key(key)
        self.addCleanup(shm.unlink)
        self.addCleanup(shm.close)
        self.assertEqual((shm.id, shm.size, shm.key), (ident, 4096, key & 0xFFFFFFFF))
        self.assertEqual(bytes(shm.buf[:12]), b"hello from C")
        by_id = SharedMemory.from_id(ident)
        self.addCleanup(by_id.close)
        by_id.buf[64:81] = b"hello from Python"
        self.assertEqual(self.c("read", path, 64), "hello from Python")

    def test_c_program_reads_what_python_wrote(self):
        path = tempfile.mkdtemp(dir=self.tmp)
        shm = SharedMemory.from_key(mpsysv.ftok(path, ord("M")), create=True, size=64,
                                    track=False)
        self.addCleanup(shm.unlink)
        self.addCleanup(shm.close)
        shm.buf[:6] = b"to C\0\0"
        self.assertEqual(self.c("read", path, 0), "to C")
        named = SharedMemory(create=True, size=32)
        self.addCleanup(named.unlink)
        self.addCleanup(named.close)
        named.buf[:11] = b"named data\0"
        self.assertEqual(self.c("readkey", hex(named.key), 0), "named data")


if __name__ == "__main__":
    unittest.main()
