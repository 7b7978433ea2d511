"""Processes named by pid *and* start time, so that a reused pid is never taken for
the process that died: the liveness checks of queues, parcels, the tracker and the
garbage collector, all read from /proc/PID/stat."""

from __future__ import annotations

import os
from typing import List, Optional

__all__ = ["proc_stat", "start_ticks", "alive"]


def proc_stat(pid: int) -> Optional[List[bytes]]:
    """The fields of /proc/PID/stat after the command name (the state first), or None
    when there is no such process."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _ticks(rest: Optional[List[bytes]]) -> int:
    try:
        return int(rest[19]) if rest else 0
    except (IndexError, ValueError):
        return 0


def start_ticks(pid: int) -> int:
    """When *pid* started, in clock ticks since boot (0 when unknown)."""
    return _ticks(proc_stat(pid))


def alive(pid: int, start: int = 0) -> bool:
    """True while process *pid* exists, is not a zombie (a killed process is a zombie
    until its parent waits for it) and, when *start* is given, started then."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    rest = proc_stat(pid)
    if not rest or rest[0] in (b"Z", b"X"):
        return False
    return not start or _ticks(rest) in (0, start)
