"""Test harness shared by tests/ and compat/: the System V leak guard.

Every test is checked: the message queues, semaphore sets and segments that exist
after it must be those that existed before it. Each pytest process (every xdist
worker) first moves into an IPC namespace of its own when the kernel lets it (root,
as in CI), so another run's live objects can never be mistaken for this run's leak;
at the end the namespace must be empty, and the session fails otherwise. Without
that privilege the guard compares the machine-wide lists (run one suite at a time).
"""

import ctypes
import faulthandler
import os
import time

import pytest

CLONE_NEWIPC = 0x08000000
TEST_TIMEOUT = float(os.environ.get("MPSYSV_TEST_TIMEOUT", "300"))
_LEAKED_AT_END = []


def sysv_objects():
    """The ids of all queues, semaphore sets and segments visible to this process."""
    found = set()
    for kind in ("msg", "sem", "shm"):
        with open(f"/proc/sysvipc/{kind}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields:
                    found.add((kind, int(fields[1]), int(fields[0])))
    return found


def _describe(objs):
    return ", ".join(f"{kind} id={ident} key={key & 0xffffffff:#010x}"
                     for kind, ident, key in sorted(objs))


def _own_namespace() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(CLONE_NEWIPC) == 0


def pytest_configure(config):
    if os.environ.get("MPSYSV_SHARED_NS") != "1":
        config._mpsysv_private_ns = _own_namespace()


@pytest.fixture(autouse=True)
def sysv_leak_guard(request):
    """Fail the test that leaves a System V object behind (after a short grace period
    for children that are still exiting)."""
    before = sysv_objects()
    # The watchdog of last resort: a hung test dumps every thread's stack and ends its
    # worker (xdist reports the crash and goes on) instead of hanging the run.
    faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    deadline = time.monotonic() + 5.0
    leaked = sysv_objects() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = sysv_objects() - before
    if leaked:
        for kind, ident, _ in leaked:
            flag = {"msg": "-q", "sem": "-s", "shm": "-m"}[kind]
            os.system(f"ipcrm {flag} {ident} 2>/dev/null")
        pytest.fail(f"test left System V objects behind: {_describe(leaked)}", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    if getattr(session.config, "_mpsysv_private_ns", False):
        left = sysv_objects()
        if left:
            _LEAKED_AT_END.extend(left)
            session.exitstatus = 1
            print(f"\nmpsysv leak guard: objects left in this worker's namespace: "
                  f"{_describe(left)}")


def pytest_collection_modifyitems(config, items):
    """``slow`` tests run only when asked for (``MPSYSV_SLOW=1`` or ``-m slow``)."""
    if os.environ.get("MPSYSV_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with MPSYSV_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
