"""Kernel limits a user can run into: msgmnb smaller than one message, msgmni and semmni
exhausted. Each case runs in a private IPC namespace (``unshare --ipc``) whose limits it
lowers, so the host's limits are never touched."""

import functools
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_UNSHARES = (["unshare", "--ipc"], ["unshare", "--user", "--map-root-user", "--ipc"])


@functools.lru_cache(maxsize=None)
def _unshare():
    """The ``unshare`` command line that gives a private IPC namespace whose limits this
    user may write, or None."""
    if shutil.which("unshare") is None:
        return None
    for argv in _UNSHARES:
        probe = subprocess.run(argv + ["sh", "-c", "echo 4096 > /proc/sys/kernel/msgmnb"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return argv
    return None


def run_with_limits(limits: dict, code: str, timeout: float = 60):
    """Run *code* in a fresh IPC namespace with /proc/sys/kernel/<name> set to each value."""
    argv = _unshare()
    if argv is None:
        pytest.skip("needs `unshare --ipc` with permission to write the namespace's "
                    "/proc/sys/kernel limits (root, or unprivileged user namespaces)")
    setup = "".join(f"open('/proc/sys/kernel/{name}', 'w').write({str(value)!r})\n"
                    for name, value in limits.items())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(argv + [sys.executable, "-c", setup + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


_ROUND_TRIP = """
    import multiprocessing as mp
    import mpsysv

    objs = [b"x" * 5000, "small", "s" * 3000, b"p" * 50000, list(range(2000)), b"y" * 20000]

    def produce(q):
        for obj in objs:
            q.put(obj)
        q.close()
        if hasattr(q, "join_thread"):
            q.join_thread()

    for q in (mpsysv.Queue(), mpsysv.Queue(2), mpsysv.JoinableQueue(), mpsysv.SimpleQueue()):
        p = mp.get_context("fork").Process(target=produce, args=(q,), daemon=True)
        p.start()
        assert [q.get() for _ in objs] == objs
        p.join(10)
        assert p.exitcode == 0, p.exitcode
        q.put(b"z" * 6000)
        assert q.get() == b"z" * 6000
        q.close()
    print("delivered")
"""


@pytest.mark.parametrize("msgmnb", [4096, 1024])
def test_objects_arrive_whole_when_msgmnb_is_smaller_than_one_message(msgmnb):
    run = run_with_limits({"msgmnb": msgmnb}, _ROUND_TRIP)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "delivered"


def test_queue_creation_names_msgmnb_when_a_queue_cannot_hold_a_message():
    run = run_with_limits({"msgmnb": 64}, """
        import mpsysv
        try:
            mpsysv.Queue()
        except OSError as exc:
            print(type(exc).__name__, exc)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("OSError")
    assert "msgmnb" in run.stdout and "sysctl -w kernel.msgmnb" in run.stdout


def test_running_out_of_msgmni_names_the_limit_and_its_sysctl():
    run = run_with_limits({"msgmni": 1}, """
        import mpsysv
        try:
            mpsysv.Queue()
        except OSError as exc:
            print(type(exc).__name__, exc)
        print("left:", sum(1 for _ in open("/proc/sysvipc/msg")) - 1,
              sum(1 for _ in open("/proc/sysvipc/shm")) - 1)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    first, left = run.stdout.splitlines()
    assert first.startswith("OSError") and "No space left on device" in first
    assert "msgmni=1" in first and "sysctl -w kernel.msgmni" in first
    assert left == "left: 0 0"


def test_running_out_of_semmni_names_the_limit_and_its_sysctl():
    run = run_with_limits({"sem": "250 32000 32 0"}, """
        import mpsysv
        try:
            mpsysv.Queue()
        except OSError as exc:
            print(type(exc).__name__, exc)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("OSError")
    assert "semmni=0" in run.stdout and "kernel.sem" in run.stdout
