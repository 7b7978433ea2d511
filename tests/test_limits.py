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


_CREATE_A_QUEUE = """
    import mpsysv
    try:
        mpsysv.Queue()
    except OSError as exc:
        print(type(exc).__name__, exc)
    print("left:", sum(1 for _ in open("/proc/sysvipc/msg")) - 1,
          sum(1 for _ in open("/proc/sysvipc/sem")) - 1,
          sum(1 for _ in open("/proc/sysvipc/shm")) - 1)
"""


def creation_error(limits: dict) -> str:
    """The error a queue's creation raises under *limits*; it must leave nothing behind."""
    run = run_with_limits(limits, _CREATE_A_QUEUE)
    assert run.returncode == 0, run.stderr[-3000:]
    error, left = run.stdout.splitlines()
    assert error.startswith("OSError [Errno 28]"), error
    assert left == "left: 0 0 0"
    return error


def test_queue_creation_names_msgmnb_when_a_queue_cannot_hold_a_message():
    error = creation_error({"msgmnb": 64})
    assert "msgmnb" in error and "sysctl -w kernel.msgmnb" in error


def test_running_out_of_msgmni_names_the_limit_and_its_sysctl():
    error = creation_error({"msgmni": 1})
    assert "No space left on device" in error
    assert "msgmni=1" in error and "sysctl -w kernel.msgmni" in error


def test_running_out_of_semmni_names_the_limit_and_its_sysctl():
    error = creation_error({"sem": "250 32000 32 0"})
    assert "semmni=0" in error and "kernel.sem" in error
