"""The /proc readers: processes named by pid *and* start time (/proc/PID/stat), so
that a reused pid is never taken for the process that died -- the one liveness check
of queues, parcels, the tracker and the garbage collector -- and the System V tables
(/proc/sysvipc), which every user may read."""

from __future__ import annotations

import os
import pwd
from typing import Dict, List, Optional, Tuple

__all__ = ["proc_stat", "start_ticks", "alive", "ipc_table", "segment_owner_and_mode",
           "SegmentMappings"]


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
_boot: List[float] = []


def _boot_time() -> float:
    """When the machine booted (epoch seconds; /proc/stat's btime; 0.0 unknown)."""
    if not _boot:
        boot = 0.0
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("btime "):
                        boot = float(line.split()[1])
                        break
        except OSError:
            pass
        _boot.append(boot)
    return _boot[0]


def ipc_table(kind: str) -> List[Dict[str, int]]:
    """Every row of /proc/sysvipc/*kind* ("msg", "sem" or "shm"; readable by every
    user, unlike IPC_STAT) as its columns: ``key`` as the unsigned 32-bit key, ``perms``
    as mode bits; [] when the table cannot be read."""
    rows: List[Dict[str, int]] = []
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


class SegmentMappings:
    """Where System V segments are mapped, from every readable /proc/PID/maps (a
    segment's mapping names ``/SYSV<key>`` and carries its shmid as the inode), so that
    a segment's bytes can be read through /proc/PID/mem of a process that has it
    attached -- without attaching it, which would change its ``shm_atime``,
    ``shm_dtime`` and ``shm_lpid`` (``ipcs`` only reads, and so does this)."""

    def __init__(self) -> None:
        self._where: Optional[Dict[int, List[Tuple[int, int, int, int]]]] = None

    def _load(self) -> Dict[int, List[Tuple[int, int, int, int]]]:
        """``{shmid: [(pid, start address, file offset, key at creation)]}`` of the processes
        in this IPC namespace (ids are per namespace)."""
        where: Dict[int, List[Tuple[int, int, int, int]]] = {}
        namespace = os.readlink("/proc/self/ns/ipc")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/ipc") != namespace:
                    continue
                with open(f"/proc/{entry}/maps", "rb") as f:
                    lines = [line for line in f if b" /SYSV" in line]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) < 6 or not fields[5].startswith(b"/SYSV"):
                    continue
                start = int(fields[0].split(b"-")[0], 16)
                where.setdefault(int(fields[4]), []).append(
                    (int(entry), start, int(fields[2], 16), int(fields[5][5:13], 16)))
        return where

    def read(self, shmid: int, key: int, offset: int, size: int) -> Optional[bytes]:
        """*size* bytes at *offset* of segment *shmid*, or None when no process this one
        may read has it attached. *key* is the segment's key now (0 once removed; a
        mapping keeps the key the segment was created with)."""
        if self._where is None:
            self._where = self._load()
        for pid, start, file_offset, created_key in self._where.get(shmid, []):
            if key not in (0, created_key):
                continue
            try:
                with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
                    f.seek(start + offset - file_offset)
                    data = f.read(size)
            except (OSError, ValueError, OverflowError):
                continue
            if len(data) == size:
                return data
        return None
