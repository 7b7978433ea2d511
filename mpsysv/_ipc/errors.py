"""errno -> Python exceptions: the one mapping every layer uses.

A failed call becomes the ``OSError`` subclass users already catch, with a message
that names the call, the object and, where one helps, the fix. ``EIDRM`` (and an
id that stopped being valid) becomes ``RemovedError``, which says who may have
removed the object. Nothing here calls the kernel except to look up an owner.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, NoReturn, Optional

from .libc import limits
from .procs import segment_owner_and_mode

__all__ = ["RemovedError", "WHY_REMOVED", "raise_errno", "removed", "permission_denied",
           "limit_hint", "message_size_error", "segment_size_hint"]


class RemovedError(OSError):
    """The IPC object was removed (``EIDRM``) while this process was using it."""


RemovedError.__module__ = "mpsysv"  # its public name (and the one pickles carry)

WHY_REMOVED = ("removed by its last holder, `ipcrm`, `python -m mpsysv rm`, or systemd-logind's "
               "RemoveIPC=yes at logout")
_EXC = {
    errno.EEXIST: FileExistsError,
    errno.ENOENT: FileNotFoundError,
    errno.EACCES: PermissionError,
    errno.EPERM: PermissionError,
    errno.EINTR: InterruptedError,
    errno.EAGAIN: BlockingIOError,
    errno.EIDRM: RemovedError,
}


def raise_errno(err: int, call: str, what: str, hint: str = "") -> NoReturn:
    """Raise the ``OSError`` subclass for *err*, naming the call, the object and a hint."""
    cls = _EXC.get(err, OSError)
    if err == errno.EIDRM:
        message = f"{call}: {what} was removed while in use ({WHY_REMOVED})"
    elif err == errno.EINVAL and "invalid identifier" in hint:
        cls = RemovedError
        message = f"{call}: {what} does not exist any more ({WHY_REMOVED})"
    else:
        message = f"{call}({what}): {os.strerror(err)}"
        if err == errno.ENOSPC and not hint:
            hint = limit_hint(call)
    if hint and cls is not RemovedError:
        message += f" ({hint})"
    raise cls(err, message)


def removed(call: str, what: str, how: str, err: int = errno.EIDRM) -> RemovedError:
    """``RemovedError`` for *what*, which *how* (e.g. "was removed while in use")."""
    return RemovedError(err, f"{call}: {what} {how} ({WHY_REMOVED})")


def limit_hint(call: str) -> str:
    """Which kernel limit an ``ENOSPC`` from *call* (msgget, semget, shmget) ran into, its
    value, and the sysctl that raises it; "" for other calls."""
    lim = limits()
    if call.startswith("msgget"):
        return (f"the kernel's msgmni={lim['msgmni']} message queues exist already: raise it "
                "with `sysctl -w kernel.msgmni=N` (/proc/sys/kernel/msgmni); each mpsysv queue "
                "uses two, `ipcs -q` lists them")
    if call.startswith("semget"):
        return (f"the kernel's semmni={lim['semmni']} semaphore sets (or semmns={lim['semmns']} "
                "semaphores) exist already: raise them with `sysctl -w kernel.sem='SEMMSL SEMMNS "
                "SEMOPM SEMMNI'` (/proc/sys/kernel/sem, 4th and 2nd fields); each mpsysv queue "
                "uses one set, `ipcs -s` lists them")
    if call.startswith("shmget"):
        return (f"the kernel's shmmni={lim['shmmni']} segments exist already or shmall="
                f"{lim['shmall']} pages are in use: raise them with `sysctl -w kernel.shmmni=N` "
                "or `kernel.shmall=N`; `ipcs -m` lists the segments")
    return ""


# The largest size of a file of the kernel's shmem filesystem (MAX_LFS_FILESIZE on 64-bit
# Linux: a signed 64-bit offset); every System V segment is one.
SHMEM_MAX_FILE_SIZE = 2 ** 63 - 1


def segment_size_hint(err: int, size: int, extra: int = 0) -> str:
    """Why ``shmget`` refused a segment of *size* bytes (+ *extra* of the caller's) with
    ``EINVAL`` or ``ENOMEM``, naming the limit and the fix; "" for another errno."""
    total = size + extra
    plus = f" (+{extra} of mpsysv trailer)" if extra else ""
    if err == errno.EINVAL:
        shmmax = limits()["shmmax"]
        if total > shmmax:
            return (f"{size} bytes{plus} is more than the kernel's shmmax={shmmax}: raise it "
                    "with `sysctl -w kernel.shmmax=N` (/proc/sys/kernel/shmmax)")
        if total > SHMEM_MAX_FILE_SIZE:
            return (f"{size} bytes{plus} is more than any segment can be: the kernel keeps a "
                    f"segment as a file, at most 2**63-1 = {SHMEM_MAX_FILE_SIZE} bytes")
        return ""
    if err != errno.ENOMEM:
        return ""
    overcommit = _read_first_word("/proc/sys/vm/overcommit_memory")
    meminfo = _meminfo_kib()
    gib = 1 << 20  # KiB
    if overcommit == "0" and "MemTotal" in meminfo:
        room = (meminfo["MemTotal"] + meminfo.get("SwapTotal", 0)) / gib
        return (f"not enough memory for {size} bytes: the kernel reserves a segment's size "
                f"when it is made, and its heuristic (vm.overcommit_memory=0) refuses more "
                f"than RAM + swap ({room:.1f} GiB here); with `sysctl -w "
                "vm.overcommit_memory=1` it promises any size and pages come when touched")
    if overcommit == "2" and "CommitLimit" in meminfo:
        free = (meminfo["CommitLimit"] - meminfo.get("Committed_AS", 0)) / gib
        return (f"not enough memory for {size} bytes: strict overcommit "
                f"(vm.overcommit_memory=2) leaves {free:.1f} GiB to reserve (CommitLimit - "
                "Committed_AS in /proc/meminfo; vm.overcommit_ratio raises it)")
    return f"not enough memory for {size} bytes"


def _read_first_word(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _meminfo_kib() -> Dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                out[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def message_size_error(size: int, needed: int) -> OSError:
    """The error for a queue whose message queues hold fewer than *needed* bytes."""
    return OSError(errno.ENOSPC, f"msgget: a queue holds only {size} bytes, fewer than the "
                                 f"{needed} an mpsysv queue needs: raise the kernel's msgmnb "
                                 "(`sysctl -w kernel.msgmnb=16384`, /proc/sys/kernel/msgmnb) "
                                 "or msgmax")


def permission_denied(call: str, what: str, key: int, refused: str, fix: str,
                      filename: Optional[str] = None) -> PermissionError:
    """A ``PermissionError`` that says whose object *what* is, what its mode allows
    (*refused*: what it does not) and the *fix*."""
    owner, mode = segment_owner_and_mode(key)
    message = (f"{call}: Permission denied: {what} belongs to {owner} with mode {mode}, "
               f"which {refused}; {fix}")
    if filename is None:
        return PermissionError(errno.EACCES, message)
    return PermissionError(errno.EACCES, message, filename)
