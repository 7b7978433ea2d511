"""Segment identity and the tracker that removes the segments a program forgot.

Every segment ``mpsysv.shared`` creates by name ends in a 256-byte trailer (magic,
format version, name, size, creator and tracker identity) that tells mpsysv's own
segments from foreign ones. ``track=True`` creations are announced, one one-way
write each, to a helper process started on first use; when every process of the
program is gone (exit, crash or SIGKILL) it removes those never unlinked, with a
UserWarning. Nothing here imports the stdlib-shaped API above it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
from typing import NamedTuple, Optional, Tuple

from .._ipc.objects import Segment
from .._ipc.procs import ipc_table, start_ticks

__all__ = ["TRAILER_SIZE", "MAGIC", "VERSION", "FLAG_TRACKED", "FLAG_HUGETLB",
           "PURPOSE_SHARED_MEMORY", "PURPOSE_SHAREABLE_LIST", "Identity", "pack_identity",
           "parse_identity", "match_identity", "read_trailer", "process_identity", "register",
           "register_raw", "forget", "tracker_identity", "live_segments", "main"]

# magic, version, flags, purpose, name length, size, creation time (ns since the epoch),
# creator pid, tracker pid, creator and tracker start times (clock ticks after boot, as in
# /proc/PID/stat: with the pid they name a process even after its pid is reused), name.
_TRAILER = struct.Struct("<8sHHHHQQIIQQ200s")
TRAILER_SIZE = _TRAILER.size
_HEAD = struct.Struct("<8sHHHHQ")  # magic, version, flags, purpose, name length, size
_NAME_AT = TRAILER_SIZE - 200
MAGIC = b"mpsysvSH"
VERSION = 1
FLAG_TRACKED = 1
FLAG_HUGETLB = 2
PURPOSE_SHARED_MEMORY = 1
PURPOSE_SHAREABLE_LIST = 2
# Where spawn and forkserver children find the program's tracker: a key of the process
# config that every multiprocessing Process copies at construction and carries to its
# child (as the authkey travels), so the program's os.environ is left alone.
CONFIG_KEY = "mpsysv_tracker"
SHM_DEST = 0o1000
_HANDSHAKE_TIMEOUT = 10.0
_PIPE_SIZE = 1 << 20
_CHUNK = 1 << 20
_NAP = 0.05
_BUSY_NAP = 0.005


class Identity(NamedTuple):
    """What a segment's trailer says about it."""

    version: int
    flags: int
    purpose: int
    name: str
    size: int
    ctime_ns: int
    creator_pid: int
    tracker_pid: int
    creator_start: int
    tracker_start: int


def pack_identity(name: str, size: int, flags: int, purpose: int, ctime_ns: int,
                  creator: Tuple[int, int], tracker: Tuple[int, int]) -> bytes:
    raw = name.encode("ascii")
    return _TRAILER.pack(MAGIC, VERSION, flags, purpose, len(raw), size, ctime_ns, creator[0],
                         tracker[0], creator[1], tracker[1], raw)


def parse_identity(raw: bytes) -> Optional[Identity]:
    """The identity in a trailer, or None when *raw* is not an mpsysv trailer."""
    if len(raw) != TRAILER_SIZE or raw[:8] != MAGIC:
        return None
    (_, version, flags, purpose, name_len, size, ctime_ns, cpid, tpid, cstart, tstart,
     name) = _TRAILER.unpack(raw)
    if name_len > len(name):
        return None
    return Identity(version, flags, purpose, name[:name_len].decode("ascii", "replace"), size,
                    ctime_ns, cpid, tpid, cstart, tstart)


def match_identity(raw: bytes, name: str) -> Optional[Tuple[int, int]]:
    """``(size, purpose)`` when *raw* is a current-format trailer of *name*, else None:
    the check of every attach, cheaper than building an Identity."""
    magic, version, _, purpose, name_len, size = _HEAD.unpack_from(raw)
    if (magic != MAGIC or version != VERSION or name_len != len(name)
            or raw[_NAME_AT:_NAME_AT + name_len] != name.encode("ascii")):
        return None
    return size, purpose


def read_trailer(segment: Segment) -> Optional[bytes]:
    """The last TRAILER_SIZE bytes of *segment* (mapped read-only for a moment), or None
    when it is smaller than that."""
    if segment.size < TRAILER_SIZE:
        return None
    attachment = segment.attach(readonly=True)
    try:
        return bytes(attachment.buf[segment.size - TRAILER_SIZE:])
    finally:
        attachment.detach()


def live_segments() -> list:
    """``(key, id, cuid, size)`` of every segment in /proc/sysvipc/shm."""
    return [(r["key"], r["shmid"], r["cuid"], r["size"]) for r in ipc_table("shm")]


def _ipc_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/ipc")
    except OSError:
        return "?"


# --- the program side ------------------------------------------------------------------

class _State:
    """This process's link to its tracker; fork children share the parent's."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.start: Optional[int] = None
        self.fd: Optional[int] = None
        self.sock: Optional[socket.socket] = None
        self.popen: Optional[subprocess.Popen] = None
        self.popen_owner = 0
        self.tracker = (0, 0)
        self.disabled = False

    def after_fork_in_child(self):
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.start = None


_state = _State()
os.register_at_fork(after_in_child=_state.after_fork_in_child)


def process_identity() -> Tuple[int, int]:
    """``(pid, start ticks)`` of this process, cached (and renewed after fork)."""
    if _state.start is None:
        _state.start = start_ticks(_state.pid)
    return _state.pid, _state.start


def tracker_identity() -> Tuple[int, int]:
    """``(pid, start ticks)`` of this program's tracker, starting it if needed."""
    if _state.fd is None:
        _connect()
    return _state.tracker


def register(key: int, pid: int, ctime_ns: int, name: str) -> Tuple[int, int]:
    """Announce a named segment about to be created; returns the tracker identity.

    Sent before ``shmget`` so that a SIGKILL right after creation cannot hide it;
    the tracker checks the trailer (creator pid + creation time) before removing,
    so an announcement whose creation failed removes nothing.
    """
    if _state.fd is None:
        _connect()
    _send(b"N %d %d %d %s\n" % (key, pid, ctime_ns, name.encode("ascii")))
    return _state.tracker


def register_raw(ident: int, key: int, pid: int) -> Tuple[int, int]:
    """Announce a segment without trailer (``from_key(create=True)``), just created."""
    if _state.fd is None:
        _connect()
    _send(b"R %d %d %d\n" % (ident, key & 0xFFFFFFFF, pid))
    return _state.tracker


def forget(key: int, name: str) -> None:
    """Stop tracking the named segment (``resource_tracker.unregister`` of it): the
    tracker no longer removes it at the program's end. Starts no tracker."""
    if _state.fd is None:
        with _state.lock:
            if _state.fd is None and not _join_parent_tracker():
                return
    _send(b"F %d %s\n" % (key, name.encode("ascii")))


def _send(message: bytes) -> None:
    fd = _state.fd
    if fd is None:
        return
    try:
        os.write(fd, message)
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
            raise
        warnings.warn(f"mpsysv: the segment tracker (pid {_state.tracker[0]}) died; starting a "
                      "new one (segments created before may be left behind: `ipcs -m`)",
                      RuntimeWarning, stacklevel=3)
        with _state.lock:
            if _state.fd == fd:
                _disconnect()
        _connect()
        if _state.fd is not None:
            os.write(_state.fd, message)


def _disconnect() -> None:
    if _state.sock is not None:
        _state.sock.close()
    elif _state.fd is not None:
        os.close(_state.fd)
    _state.fd = _state.sock = None
    if _state.popen is not None and _state.popen_owner == os.getpid():
        _state.popen.poll()
    _state.popen = None


def _connect() -> None:
    with _state.lock:
        if _state.fd is not None or _state.disabled:
            return
        if not _join_parent_tracker():
            try:
                _start_tracker()
            except OSError as exc:
                _state.disabled = True
                warnings.warn(f"mpsysv: cannot start the segment tracker ({exc}); segments "
                              "created with track=True will not be removed at exit",
                              RuntimeWarning, stacklevel=4)


def _join_parent_tracker() -> bool:
    """Use the tracker of the program that started us through multiprocessing (spawn,
    forkserver): a segment created by a worker lives as long as the whole program, as
    with the stdlib's shared resource tracker. Other children start their own."""
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is None or mp_process.parent_process() is None:
        return False
    value = mp_process.current_process()._config.get(CONFIG_KEY, "")
    if not value:
        return False
    namespace, _, address = value.rpartition("|")
    if namespace != _ipc_namespace():
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_HANDSHAKE_TIMEOUT)
        sock.connect("\0" + address)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "tracker is shutting down")
            reply += chunk
        word, pid, start = reply.split()
        if word != b"OK":
            raise ConnectionRefusedError(errno.ECONNREFUSED, "unexpected tracker reply")
        sock.settimeout(None)
    except (OSError, ValueError):
        sock.close()
        return False
    _state.sock, _state.fd, _state.tracker = sock, sock.fileno(), (int(pid), int(start))
    return True


def _start_tracker() -> None:
    address = f"mpsysv-tracker-{os.getpid()}-{secrets.token_hex(6)}"
    # Bound here, before the tracker runs, so that spawn children can queue their
    # connection at once; the tracker answers them when it is up.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except OSError:
        pass  # above fs.pipe-max-size: 64 KiB still works, writers may wait for a drain
    try:
        listener.bind("\0" + address)
        listener.listen(64)
        package_parent = os.path.abspath(__file__)
        for _ in range(3):  # mpsysv/_shm/tracker.py -> the folder that holds mpsysv
            package_parent = os.path.dirname(package_parent)
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                f"from mpsysv._shm.tracker import main; main({read_end}, {listener.fileno()})")
        popen = subprocess.Popen([sys.executable, "-I", "-c", code],
                                 pass_fds=(read_end, listener.fileno()),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
        listener.close()
    _state.fd, _state.popen, _state.popen_owner = write_end, popen, os.getpid()
    _state.tracker = (popen.pid, start_ticks(popen.pid))
    _publish(f"{_ipc_namespace()}|{address}")


def _publish(value: str) -> None:
    """Hand the tracker's address to the processes this one starts from now on."""
    from multiprocessing import process
    getattr(process.current_process(), "_config")[CONFIG_KEY] = value  # private, untyped
    # Processes constructed already but not started copied the config before this.
    for proc in list(getattr(process, "_dangling", ())):
        if getattr(proc, "_popen", True) is None:
            proc._config[CONFIG_KEY] = value


# --- the tracker process ---------------------------------------------------------------

def main(pipe_fd: int, listen_fd: int) -> None:
    """Run the tracker: collect announcements until every program process is gone,
    then remove what is still there and was never unlinked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.chdir("/")
    registry: dict = {}
    try:
        _serve(pipe_fd, socket.socket(fileno=listen_fd), registry)
    except Exception:  # noqa: BLE001 - a tracker bug must not remove live segments early
        traceback.print_exc()
        _read_until_eof(pipe_fd, registry)
    _clean_up(registry)


def _serve(pipe_fd: int, listener: socket.socket, registry: dict) -> None:
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
            _record(registry, lines)
            if len(registry) > limit:
                _prune(registry)
                limit = max(1024, 2 * len(registry))
        # While the tracker naps, announcements pile up in the pipe without waking it:
        # a write to a pipe whose reader is blocked costs the writer a cross-CPU wakeup.
        time.sleep(_BUSY_NAP if busy else _NAP)


def _read_until_eof(pipe_fd: int, registry: dict) -> None:
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
        _record(registry, lines)


def _record(registry: dict, lines: list) -> None:
    """Add announcements (parsed only when pruning or cleaning up); an ``F key name``
    line forgets the earlier announcements of that name (``resource_tracker.unregister``)."""
    if not any(line[:1] == b"F" for line in lines):
        registry.update(dict.fromkeys(lines))
        return
    for line in lines:
        if line[:1] != b"F":
            registry[line] = None
            continue
        parts = line.split(b" ")
        if len(parts) != 3:
            continue
        _, key, name = parts
        for entry in [e for e in registry if e[:1] == b"N"]:
            parts = entry.split(b" ")
            if len(parts) == 5 and parts[1] == key and parts[4] == name:
                del registry[entry]


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


def _parse(line: bytes):
    parts = line.split(b" ")
    try:
        if parts[0] == b"N" and len(parts) == 5:
            return ("N", int(parts[1]), int(parts[2]), int(parts[3]), parts[4].decode("ascii"))
        if parts[0] == b"R" and len(parts) == 4:
            return ("R", int(parts[1]), int(parts[2]), int(parts[3]), None)
    except (ValueError, UnicodeDecodeError):
        pass
    return None


def _prune(registry: dict) -> None:
    """Forget announcements of segments that are gone (unlinked ones are never reported):
    a named one whose key is free, a raw one whose id is."""
    rows = live_segments()
    live = {b"N": {row[0] for row in rows}, b"R": {row[1] for row in rows}}
    for line in list(registry):
        try:
            if int(line.split(b" ", 2)[1]) not in live[line[:1]]:
                del registry[line]
        except (KeyError, IndexError, ValueError):
            del registry[line]


def _clean_up(registry: dict) -> None:
    removed = []
    for entry in filter(None, map(_parse, registry)):
        try:
            if _remove_if_ours(entry):
                removed.append("/" + entry[4] if entry[0] == "N" else f"key={entry[2]:#010x}")
        except OSError:
            pass
    if removed:
        # The stdlib resource tracker's words, which log watchers and test suites look for.
        names = "{" + ", ".join(map(repr, removed)) + "}"
        try:
            warnings.warn_explicit(
                f"resource_tracker: There appear to be {len(removed)} leaked shared_memory "
                f"objects to clean up at shutdown: {names}", UserWarning,
                "mpsysv tracker", os.getpid())
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stderr must not stop the exit
            pass


def _remove_if_ours(entry) -> bool:
    kind, a, b, c, name = entry
    if kind == "R":
        try:
            segment = Segment(id=a)
        except OSError:
            return False
        st = segment.stat()
        if st.key & 0xFFFFFFFF != b or st.shm_cpid != c or st.mode & SHM_DEST:
            return False
        segment.remove()
        return True
    try:
        segment = Segment(a)
    except FileNotFoundError:
        return False
    raw = read_trailer(segment)
    identity = parse_identity(raw) if raw is not None else None
    if identity is not None:
        ours = identity.creator_pid == b and identity.ctime_ns == c and identity.name == name
    else:
        # Killed between shmget and writing the trailer: only the kernel knows it.
        ours = raw is not None and not raw.strip(b"\0") and segment.stat().shm_cpid == b
    if ours:
        segment.remove()
    return ours

