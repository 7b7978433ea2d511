"""The /proc readers: processes named by pid *and* start time (/proc/PID/stat), so
that a reused pid is never taken for the process that died -- the one liveness check
of queues, parcels, the tracker and the garbage collector -- and the System V tables
(/proc/sysvipc), which every user may read."""

from __future__ import annotations

import os
import pwd
from typing import Dict, List, Optional, Tuple

__all__ = ["proc_stat", "start_ticks", "alive", "ipc_table", "segment_owner_and_mode"]


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


def alive(pid: int, start: int = 0, started_before: Optional[float] = None) -> bool:
    """True while process *pid* exists, is not a zombie (a killed process is a zombie
    until its parent waits for it) and, when *start* is given, started then (clock
    ticks since boot); or, when only *started_before* is known (epoch seconds: when an
    object it made was created), started no later than that (a reused pid started
    after it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: /proc still tells
    rest = proc_stat(pid)
    if not rest or rest[0] in (b"Z", b"X"):
        return False
    if start:
        return _ticks(rest) in (0, start)
    if started_before is not None:
        return _boot_time() + _ticks(rest) / _CLK_TCK <= started_before + _START_SLACK
    return True


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_START_SLACK = 2.0  # seconds: /proc's start time and an object's creation time differ
_boot = [None]


def _boot_time() -> float:
    """When the machine booted (epoch seconds; /proc/stat's btime)."""
    if _boot[0] is None:
        _boot[0] = 0.0
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("btime "):
                        _boot[0] = float(line.split()[1])
                        break
        except OSError:
            pass
    return _boot[0]


def ipc_table(kind: str) -> List[Dict[str, int]]:
    """Every row of /proc/sysvipc/*kind* ("msg", "sem" or "shm"; readable by every
    user, unlike IPC_STAT) as its columns: ``key`` as the unsigned 32-bit key, ``perms``
    as mode bits; [] when the table cannot be read."""
    rows = []
    try:
        f = open(f"/proc/sysvipc/{kind}")
    except OSError:
        return rows
    with f:
        header = f.readline().split()
        for line in f:
            values = line.split()
            if len(values) < len(header):
                continue
            row = {name: int(value, 8) if name == "perms" else int(value)
                   for name, value in zip(header, values)}
            row["key"] &= 0xFFFFFFFF
            rows.append(row)
    return rows


def segment_owner_and_mode(key: int) -> Tuple[str, str]:
    """``("uid N (user)", "octal mode")`` of the segment with *key*, for permission
    errors that say whose object it is. ``("uid ?", "?")`` when unknown."""
    for row in ipc_table("shm"):
        if row["key"] == key:
            uid = row["uid"]
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = "no user name"
            return f"uid {uid} ({user})", f"{row['perms']:o}"
    return "uid ?", "?"
