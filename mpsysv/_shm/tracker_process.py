"""The tracker process: removes the segments its program announced and never unlinked.

Started by ``tracker.py`` on a program's first tracked creation, it reads protocol
lines (see ``tracker``) from the program's pipe and from the sockets of its spawn and
forkserver children until every one of them is closed, i.e. every process of the
program is gone (exit, crash or SIGKILL). Then it removes each announced segment that
is still there and still the one announced (its trailer names the creator and the
creation time), and warns as the stdlib's resource tracker does. After a program that
did not end normally (no ``X``) it names also the announced segments someone else
removed meanwhile, with the error the removal met, as the stdlib does.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
import warnings
from typing import Dict, List

from .._ipc.objects import Segment
from .._ipc.procs import start_ticks
from .trailer import live_segments, parse_identity, read_trailer
from .tracker import Line, parse_line

__all__ = ["main", "Registry"]

SHM_DEST = 0o1000
_CHUNK = 1 << 20
_NAP = 0.05
_BUSY_NAP = 0.005
REMOVED, GONE, NOT_OURS = "removed", "gone", "not ours"


class Registry:
    """The announcements still in force: named ones by name (a name can be announced
    more than once: creations that failed, or made again after an unlink), raw ones by
    segment id."""

    def __init__(self) -> None:
        self.named: Dict[str, List[Line]] = {}
        self.raw: Dict[int, Line] = {}
        self.ended = False  # the main process said it exits normally

    def __len__(self) -> int:
        return len(self.named) + len(self.raw)

    def record(self, lines: list) -> None:
        for raw in lines:
            line = parse_line(raw)
            if line is None:
                continue
            kind = line.kind
            if kind == "N":
                self.named.setdefault(line.name, []).append(line)
            elif kind == "R":
                self.raw[line.shmid] = line
            elif kind == "U":
                self.raw.pop(line.shmid, None)
            elif kind == "X":
                self.ended = True
            elif line.ctime_ns == 0:
                self.named.pop(line.name, None)
            else:
                left = [n for n in self.named.get(line.name, ()) if n.ctime_ns != line.ctime_ns]
                if left:
                    self.named[line.name] = left
                else:
                    self.named.pop(line.name, None)

    def prune(self) -> None:
        """Forget announcements of segments that are gone: a named one whose key is
        free, a raw one whose id is."""
        rows = live_segments()
        keys, ids = {row[0] for row in rows}, {row[1] for row in rows}
        for name in [n for n, lines in self.named.items() if lines[0].key not in keys]:
            del self.named[name]
        for ident in [i for i in self.raw if i not in ids]:
            del self.raw[ident]


def main(pipe_fd: int, listen_fd: int) -> None:
    """Run the tracker: collect announcements until every program process is gone,
    then remove what is still there and was never unlinked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.chdir("/")
    registry = Registry()
    try:
        _serve(pipe_fd, socket.socket(fileno=listen_fd), registry)
    except Exception:  # noqa: BLE001 - a tracker bug must not remove live segments early
        traceback.print_exc()
        _read_until_eof(pipe_fd, registry)
    _clean_up(registry)


def _serve(pipe_fd: int, listener: socket.socket, registry: "Registry") -> None:
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(pipe_fd, selectors.EVENT_READ)
    selector.register(listener, selectors.EVENT_READ)
    partial = {pipe_fd: b""}
    connections: dict = {}
    limit = 1024
    me = f"OK {os.getpid()} {start_ticks(os.getpid())}\n".encode()
    while True:
        if not partial and not _accept_all(listener, me, selector, partial, connections):
            listener.close()
            return
        busy = False
        for key, _ in selector.select():
            if key.fileobj is listener:
                _accept_all(listener, me, selector, partial, connections)
                continue
            fd = key.fd
            data = os.read(fd, _CHUNK)
            if not data:
                selector.unregister(fd)
                del partial[fd]
                if fd in connections:
                    connections.pop(fd).close()
                else:
                    os.close(fd)
                continue
            busy = busy or len(data) == _CHUNK
            lines = (partial[fd] + data).split(b"\n")
            partial[fd] = lines.pop()
            registry.record(lines)
            if len(registry) > limit:
                registry.prune()
                limit = max(1024, 2 * len(registry))
        # While the tracker naps, announcements pile up in the pipe without waking it:
        # a write to a pipe whose reader is blocked costs the writer a cross-CPU wakeup.
        time.sleep(_BUSY_NAP if busy else _NAP)


def _read_until_eof(pipe_fd: int, registry: "Registry") -> None:
    pending = b""
    while True:
        try:
            data = os.read(pipe_fd, 65536)
        except OSError:
            return
        if not data:
            return
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        registry.record(lines)


def _accept_all(listener, reply, selector, partial, connections) -> bool:
    """Accept every queued connection from this user; True if any was accepted."""
    accepted = False
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError:
            return accepted
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        try:
            if uid != os.getuid():
                raise PermissionError
            conn.setblocking(True)
            conn.sendall(reply)
        except OSError:
            conn.close()
            continue
        selector.register(conn.fileno(), selectors.EVENT_READ)
        partial[conn.fileno()] = b""
        connections[conn.fileno()] = conn
        accepted = True


def _clean_up(registry: Registry) -> None:
    leaked, errors = [], []
    outcomes = [(f"/{name}", _remove_named(name, lines))
                for name, lines in registry.named.items()]
    outcomes += [(f"key={line.key & 0xFFFFFFFF:#010x}", _remove_raw(line))
                 for line in registry.raw.values()]
    for label, outcome in outcomes:
        if outcome == NOT_OURS or (outcome == GONE and registry.ended):
            continue  # made again by someone else: theirs; or unlinked within the program
        leaked.append(label)
        if outcome == GONE:
            errors.append(f"resource_tracker: {label!r}: "
                          f"{FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))}")
    if leaked:
        # The stdlib resource tracker's words, which log watchers and test suites look for.
        names = "{" + ", ".join(map(repr, leaked)) + "}"
        try:
            for message in [f"resource_tracker: There appear to be {len(leaked)} leaked "
                            f"shared_memory objects to clean up at shutdown: {names}", *errors]:
                warnings.warn_explicit(message, UserWarning, "mpsysv tracker", os.getpid())
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stderr must not stop the exit
            pass


def _remove_raw(line: Line) -> str:
    try:
        segment = Segment(id=line.shmid)
        st = segment.stat()
    except OSError:
        return GONE
    if st.key & 0xFFFFFFFF != line.key & 0xFFFFFFFF or st.shm_cpid != line.pid:
        return GONE  # the id was reused
    if st.mode & SHM_DEST:
        return GONE  # removed by someone else; freed at its last detach
    segment.remove()
    return REMOVED


def _remove_named(name: str, lines: List[Line]) -> str:
    try:
        segment = Segment(lines[0].key)
        raw = read_trailer(segment)
    except FileNotFoundError:
        return GONE
    except OSError:
        return NOT_OURS
    identity = parse_identity(raw) if raw is not None else None
    if identity is not None:
        ours = identity.name == name and any(
            identity.creator_pid == n.pid and identity.ctime_ns == n.ctime_ns for n in lines)
    else:
        # Killed between shmget and writing the trailer: only the kernel knows it.
        cpid = segment.stat().shm_cpid
        ours = raw is not None and not raw.strip(b"\0") and any(n.pid == cpid for n in lines)
    if not ours:
        return NOT_OURS
    segment.remove()
    return REMOVED
