"""track=True: a program's forgotten segments are removed when it ends, however it ends.

Each scenario runs as its own program (a subprocess) so that its tracker's whole
life is observed; ``subprocess.run`` returns once the tracker, which shares the
program's stderr, has finished too.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import unittest

from mpsysv._shm import tracker as _tracker
from mpsysv._ipc.names import name_key, random_name
from mpsysv.primitives import Segment
from mpsysv.shared import SharedMemory
from .helpers import fork, join_or_kill, wait_until
from .test_shared import ROOT, TIMEOUT, SegmentTestCase, run_python, segment_exists


def process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


class TrackedProgramTest(unittest.TestCase):

    def test_forgotten_segment_is_removed_at_normal_exit_with_a_warning(self):
        result = run_python("""
            from mpsysv._shm import tracker as _tracker
            from mpsysv.shared import SharedMemory
            shm = SharedMemory(create=True, size=4096)
            shm.buf[0] = 1
            print(shm.name, shm.key, _tracker.tracker_identity()[0])
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        name, key, tracker_pid = result.stdout.split()
        self.assertFalse(segment_exists(int(key)))
        self.assertIn("UserWarning", result.stderr)
        self.assertIn(name, result.stderr)
        self.assertTrue(wait_until(lambda: process_gone(int(tracker_pid))),
                        "the tracker outlived its program")

    def test_segment_of_a_sigkilled_creator_is_removed(self):
        code = textwrap.dedent("""
            import time
            from mpsysv.shared import SharedMemory
            shm = SharedMemory(create=True, size=1 << 20)
            print(shm.name, shm.key, flush=True)
            time.sleep(120)
            """)
        proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(TIMEOUT, proc.kill)
        watchdog.start()
        try:
            name, key = proc.stdout.readline().split()
            self.assertTrue(segment_exists(int(key)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(TIMEOUT)
            self.assertTrue(wait_until(lambda: not segment_exists(int(key)), 5.0),
                            "the killed program's segment is still there")
            _, stderr = proc.communicate(timeout=TIMEOUT)
        finally:
            watchdog.cancel()
            proc.kill()
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        self.assertIn(name, stderr)

    def test_untracked_segment_outlives_its_creator(self):
        result = run_python("""
            from mpsysv.shared import SharedMemory
            shm = SharedMemory(create=True, size=64, track=False)
            shm.buf[:4] = b"kept"
            print(shm.name)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Warning", result.stderr)
        shm = SharedMemory(result.stdout.strip())
        try:
            self.assertEqual(bytes(shm.buf[:4]), b"kept")
        finally:
            shm.close()
            shm.unlink()

    def test_only_the_forgotten_one_of_many_is_removed(self):
        # Thousands of announcements of unlinked segments make the tracker prune.
        result = run_python("""
            from mpsysv.shared import SharedMemory
            keep = SharedMemory(create=True, size=8, track=False)
            for _ in range(3000):
                s = SharedMemory(create=True, size=8)
                s.close()
                s.unlink()
            forgotten = SharedMemory(create=True, size=8)
            print(keep.name, forgotten.name, forgotten.key)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        keep, forgotten, key = result.stdout.split()
        self.assertFalse(segment_exists(int(key)))
        self.assertIn("resource_tracker: There appear to be 1 leaked shared_memory objects to "
                      f"clean up at shutdown: {{{'/' + forgotten!r}}}", result.stderr)
        shm = SharedMemory(keep)
        shm.close()
        shm.unlink()

    def test_unlinked_segments_give_no_warning(self):
        result = run_python("""
            from mpsysv.shared import SharedMemory
            a = SharedMemory(create=True, size=8)
            b = SharedMemory(a.name)
            a.unlink()
            b.close()
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")

    def test_fork_children_share_the_tracker_and_remove_nothing_when_they_exit(self):
        result = run_python("""
            import os, sys
            from mpsysv._shm import tracker as _tracker
            from mpsysv.shared import SharedMemory
            parent = SharedMemory(create=True, size=8)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                child = SharedMemory(create=True, size=8)
                os.write(w, f"{child.name} {_tracker.tracker_identity()[0]}".encode())
                sys.exit(0)  # a normal exit: atexit handlers and finalizers run
            os.waitpid(pid, 0)
            child_name, child_tracker = os.read(r, 200).decode().split()
            for name in (parent.name, child_name):
                SharedMemory(name).close()  # both still there after the child's exit
            print(parent.name, child_name, child_tracker == str(_tracker.tracker_identity()[0]))
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        parent, child, same_tracker = result.stdout.split()
        self.assertEqual(same_tracker, "True")
        self.assertIn("There appear to be 2 leaked shared_memory objects", result.stderr)
        self.assertIn(parent, result.stderr)
        self.assertIn(child, result.stderr)
        self.assertEqual(result.stderr.count("UserWarning"), 1)

    def test_spawn_child_segments_live_as_long_as_the_program(self):
        result = run_python("""
            import multiprocessing as mp
            from mpsysv.shared import SharedMemory

            def child(queue):
                shm = SharedMemory(create=True, size=8)
                shm.buf[0] = 7
                queue.put(shm.name)

            if __name__ == "__main__":
                mine = SharedMemory(create=True, size=8)
                ctx = mp.get_context("spawn")
                queue = ctx.Queue()
                p = ctx.Process(target=child, args=(queue,))
                p.start()
                name = queue.get(timeout=60)
                p.join(60)
                theirs = SharedMemory(name)  # the worker is gone, its segment is not
                print(mine.name, name, theirs.buf[0], p.exitcode)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        mine, theirs, value, exitcode = result.stdout.split()
        self.assertEqual((value, exitcode), ("7", "0"))
        self.assertIn("There appear to be 2 leaked shared_memory objects", result.stderr)
        self.assertIn(theirs, result.stderr)

    def test_tracking_leaves_the_programs_environment_alone_and_spawn_children_still_join(self):
        result = run_python("""
            import multiprocessing as mp, os
            from mpsysv._shm import tracker as _tracker
            from mpsysv.shared import SharedMemory

            def child(queue):
                shm = SharedMemory(create=True, size=8, track=False)
                queue.put((_tracker.tracker_identity(), shm.name))
                shm.close()
                shm.unlink()

            if __name__ == "__main__":
                before = dict(os.environ)
                queue = mp.get_context("spawn").Queue()
                early = mp.get_context("spawn").Process(target=child, args=(queue,))
                mine = SharedMemory(create=True, size=8)
                for method in ("spawn", "forkserver", "early"):
                    if method == "early":  # constructed before the tracker started
                        p = early
                    else:
                        p = mp.get_context(method).Process(target=child, args=(queue,))
                    p.start()
                    tracker, name = queue.get(timeout=60)
                    p.join(60)
                    print(method, tracker == _tracker.tracker_identity(), p.exitcode)
                print("environ unchanged", dict(os.environ) == before)
                mine.close()
                mine.unlink()
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines(), ["spawn True 0", "forkserver True 0",
                                                      "early True 0", "environ unchanged True"])

    def test_an_attach_with_explicit_track_true_removes_the_segment_at_its_programs_end(self):
        shm = SharedMemory(create=True, size=8, track=False)
        self.addCleanup(shm.close)
        result = run_python(f"""
            from mpsysv.shared import SharedMemory
            SharedMemory({shm.name!r}).close()             # the default: no tracking
            SharedMemory({shm.name!r}, track=True).close()  # the stdlib's 3.13 semantics
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("resource_tracker: There appear to be 1 leaked shared_memory objects to "
                      f"clean up at shutdown: {{{'/' + shm.name!r}}}", result.stderr)
        self.assertFalse(segment_exists(shm.key))

    def test_resource_tracker_unregister_of_a_patched_segment_untracks_it(self):
        result = run_python("""
            import mpsysv
            mpsysv.patch()
            from multiprocessing import resource_tracker, shared_memory
            kept = shared_memory.SharedMemory(create=True, size=8)
            dropped = shared_memory.SharedMemory(create=True, size=8)
            resource_tracker.unregister(kept._name, "shared_memory")
            resource_tracker.unregister("/never_made_here", "shared_memory")
            print(kept.name, kept.key, dropped.key, resource_tracker._resource_tracker._pid)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        kept, kept_key, dropped_key, stdlib_tracker = result.stdout.split()
        self.assertEqual(stdlib_tracker, "None")  # the stdlib's tracker was never started
        self.assertTrue(segment_exists(int(kept_key)))
        SharedMemory(kept).unlink()
        self.assertFalse(segment_exists(int(dropped_key)))
        self.assertIn("There appear to be 1 leaked shared_memory objects", result.stderr)
        self.assertNotIn(kept, result.stderr)

    def test_resource_tracker_register_of_a_patched_segment_tracks_it(self):
        shm = SharedMemory(create=True, size=8, track=False)
        self.addCleanup(shm.close)
        result = run_python(f"""
            import mpsysv
            mpsysv.patch()
            from multiprocessing import resource_tracker
            resource_tracker.register({'/' + shm.name!r}, "shared_memory")
            print(resource_tracker._resource_tracker._pid)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["None"])
        self.assertFalse(segment_exists(shm.key))
        self.assertIn(shm.name, result.stderr)

    def test_resource_trackers_cleanup_function_unlinks_a_patched_segment(self):
        result = run_python("""
            import mpsysv
            mpsysv.patch()
            from multiprocessing import resource_tracker, shared_memory
            shm = shared_memory.SharedMemory(create=True, size=8)
            resource_tracker._CLEANUP_FUNCS["shared_memory"](shm._name)
            for name in (shm._name, "/never_made_here"):
                try:
                    resource_tracker._CLEANUP_FUNCS["shared_memory"](name)
                except FileNotFoundError as exc:
                    print(exc.errno)
            mpsysv.unpatch()
            print(resource_tracker._CLEANUP_FUNCS["shared_memory"].__module__)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split(), ["2", "2", "_posixshmem"])
        self.assertEqual(result.stderr, "")  # unlinked: the tracker forgot it

    def test_a_segment_someone_else_unlinked_is_reported_as_the_stdlib_reports_it(self):
        # CPython's test_resource_tracker (shared_memory): a program announces two
        # segments, another process unlinks one, the program is terminated; its tracker
        # removes the other and names both, the first with the error of its removal.
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from mpsysv.shared import SharedMemory
            first, second = SharedMemory(create=True, size=10), SharedMemory(create=True, size=10)
            print(first._name, second._name, flush=True)
            time.sleep(60)
            """)], env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            first, second = proc.stdout.readline().split()
            SharedMemory(first).unlink()
            proc.terminate()
            _, stderr = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
        self.assertTrue(wait_until(lambda: not segment_exists(name_key("shm", second[1:]))))
        self.assertIn("resource_tracker: There appear to be 2 leaked shared_memory objects",
                      stderr)
        self.assertIn(f"resource_tracker: {first!r}: [Errno 2] No such file or directory",
                      stderr)

    def test_the_stdlibs_shared_memory_manager_under_patch_leaves_no_warning(self):
        # CPython's test_shared_memory_SharedMemoryManager_reuses_resource_tracker: the
        # manager's server process (a fork child) starts a tracker, creates and unlinks.
        result = run_python("""
            import mpsysv
            mpsysv.patch()
            from multiprocessing.managers import SharedMemoryManager
            smm = SharedMemoryManager()
            smm.start()
            sl = smm.ShareableList(range(10))
            smm.shutdown()
            """)
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_a_fork_child_with_its_own_tracker_withdraws_what_it_unlinked(self):
        result = run_python("""
            import os
            from mpsysv.shared import SharedMemory
            pid = os.fork()
            if pid == 0:
                for _ in range(3):
                    shm = SharedMemory(create=True, size=8)
                    shm.close()
                    shm.unlink()
                os._exit(0)
            os.waitpid(pid, 0)
            """)
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_subprocess_gets_its_own_tracker(self):
        result = run_python("""
            import subprocess, sys
            from mpsysv.shared import SharedMemory
            mine = SharedMemory(create=True, size=8)
            code = ("from mpsysv.shared import SharedMemory; "
                    "print(SharedMemory(create=True, size=8).name)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            try:
                SharedMemory(out.stdout.strip())
                print("still there")
            except FileNotFoundError:
                print("removed")
            mine.unlink()
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "removed")

    def test_raw_segment_created_by_key_is_tracked_too(self):
        key = 0x5A000000 | os.getpid() & 0xFFFF
        result = run_python(f"""
            from mpsysv.shared import SharedMemory
            tracked = SharedMemory.from_key({key}, create=True, size=100)
            untracked = SharedMemory.from_key({key + 1}, create=True, size=100, track=False)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(segment_exists(key))
        self.assertIn(f"key={key:#010x}", result.stderr)
        untracked = SharedMemory.from_key(key + 1)
        untracked.close()
        untracked.unlink()


class TrackerIdentityTest(SegmentTestCase):
    """The tracker removes only what its program created: it checks the trailer."""

    def test_name_created_again_by_someone_else_survives_the_first_creators_exit(self):
        name = random_name("reused_")
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import sys
                from mpsysv.shared import SharedMemory
                shm = SharedMemory({name!r}, create=True, size=8)
                shm.unlink()
                print("unlinked", flush=True)
                sys.stdin.readline()
                """)],
            env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(proc.stdout.readline().strip(), "unlinked")
            mine = self.make(name, create=True, size=8, track=False)
            _, stderr = proc.communicate("go\n", timeout=TIMEOUT)
        finally:
            proc.kill()
        self.assertEqual(stderr, "")
        self.assertTrue(segment_exists(mine.key))

    def test_creation_cut_short_before_the_trailer_is_removed_but_nothing_else(self):
        name = random_name("cut_")
        other = random_name("cut_other_")
        # The test process makes a trailer-less segment under a name that the
        # program below announces: not the program's, so it must survive.
        foreign = Segment(name_key("shm", other), 4096, create=True, exclusive=True)
        self.addCleanup(foreign.remove)
        result = run_python(f"""
            import os, time
            from mpsysv._shm import tracker as _tracker
            from mpsysv._ipc.names import name_key
            from mpsysv.primitives import Segment
            pid = os.getpid()
            for name in ({name!r}, {other!r}):
                _tracker.register(name_key("shm", name), pid, time.time_ns(), name)
            # as if killed between shmget and writing the trailer:
            Segment(name_key("shm", {name!r}), 4096, create=True, exclusive=True)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(segment_exists(name_key("shm", name)))
        self.assertTrue(segment_exists(name_key("shm", other)))
        self.assertIn(name, result.stderr)
        self.assertNotIn(other, result.stderr)


def _fork_child_creates(queue):
    shm = SharedMemory(create=True, size=8)
    queue.put((shm.name, _tracker.tracker_identity()))


class InProcessForkTest(SegmentTestCase):

    def test_fork_child_uses_the_parents_tracker(self):
        mine = self.make(create=True, size=8)
        queue = fork.Queue()
        process = fork.Process(target=_fork_child_creates, args=(queue,))
        process.start()
        name, tracker = queue.get(timeout=TIMEOUT)
        join_or_kill([process], TIMEOUT)
        theirs = self.make(name)
        self.addCleanup(theirs.unlink)
        self.assertEqual(tracker, _tracker.tracker_identity())
        self.assertTrue(segment_exists(mine.key))


if __name__ == "__main__":
    unittest.main()


class ProtocolLineTest(unittest.TestCase):
    """Each tracker protocol line is parsed once, into a ``Line``."""

    def test_every_kind_of_line_parses_into_its_fields(self):
        announced = _tracker.announcement(0x1234, 77, 10 ** 18, "seg")
        self.assertEqual(_tracker.parse_line(announced.rstrip(b"\n")),
                         _tracker.Line("N", 0x1234, "seg", 77, 10 ** 18, 0))
        withdrawn = announced.replace(b"N", b"F", 1).rstrip(b"\n")
        self.assertEqual(_tracker.parse_line(withdrawn),
                         _tracker.Line("F", 0x1234, "seg", 77, 10 ** 18, 0))
        self.assertEqual(_tracker.parse_line(b"F seg"), _tracker.Line("F", 0, "seg", 0, 0, 0))
        self.assertEqual(_tracker.parse_line(b"R 5 4660 77"),
                         _tracker.Line("R", 4660, "", 77, 0, 5))
        self.assertEqual(_tracker.parse_line(b"U 5"), _tracker.Line("U", 0, "", 0, 0, 5))

    def test_malformed_lines_parse_to_none(self):
        for line in (b"", b"N 1 2 3", b"N x 2 3 seg", b"F", b"R 1 2", b"U x", b"Z 1",
                     b"N 1 2 3 \xff"):
            self.assertIsNone(_tracker.parse_line(line), line)

    def test_a_withdrawn_announcement_leaves_the_names_other_announcements(self):
        from mpsysv._shm.tracker_process import Registry
        registry = Registry()
        first = _tracker.announcement(1, 10, 100, "seg")
        second = _tracker.announcement(1, 10, 200, "seg")
        registry.record([first.rstrip(b"\n"), second.rstrip(b"\n"),
                         first.replace(b"N", b"F", 1).rstrip(b"\n")])
        self.assertEqual([line.ctime_ns for line in registry.named["seg"]], [200])
        registry.record([b"F seg"])
        self.assertEqual(len(registry), 0)
