"""The program side of the tracker that removes the segments a program forgot.

``track=True`` creations are announced, one one-way write each, to a helper process
(``tracker_process``) started on first use; unlinks and ``resource_tracker.unregister``
withdraw them. When every process of the program is gone (exit, crash or SIGKILL) the
tracker removes what is still announced and there, with the stdlib resource tracker's
warning. The protocol, one ASCII line per message (``Line`` is a parsed one):

    N key pid ctime_ns name   a named segment is about to be created (before shmget)
    F key pid ctime_ns name   withdraw that announcement (the segment it announced was
                              unlinked, or its creation failed)
    F name                    forget every announcement of the name (unregistered)
    R id key pid              a segment without trailer was created (from_key)
    U id                      forget the segment without trailer (unlinked)
    X                         the program's main process is exiting normally

Nothing here imports the stdlib-shaped API above it.
"""

from __future__ import annotations

import atexit
import collections
import errno
import fcntl
import os
import secrets
import socket
import subprocess
import sys
import threading
import warnings
from typing import NamedTuple, Optional, Tuple

from .._ipc.procs import start_ticks

__all__ = ["Line", "parse_line", "process_identity", "announcement", "announce", "register",
           "register_raw", "withdraw", "forget", "forget_raw", "tracker_identity",
           "CONFIG_KEY"]

# Where spawn and forkserver children find the program's tracker: a key of the process
# config that every multiprocessing Process copies at construction and carries to its
# child (as the authkey travels), so the program's os.environ is left alone.
CONFIG_KEY = "mpsysv_tracker"
_HANDSHAKE_TIMEOUT = 10.0
_PIPE_SIZE = 1 << 20
_UNLINKED_BATCH = 64


class Line(NamedTuple):
    """One protocol line, parsed once (fields a kind does not carry are 0 or "")."""

    kind: str  # "N", "F", "R", "U" or "X"
    key: int  # N, F, R
    name: str  # N, F
    pid: int  # the creator: N, F, R
    ctime_ns: int  # N; F: 0 forgets every announcement of the name
    shmid: int  # R, U


def parse_line(line: bytes) -> Optional[Line]:
    """The ``Line`` of one protocol line, or None for a malformed one."""
    parts = line.split(b" ")
    kind, n = parts[0], len(parts)
    try:
        if kind in (b"N", b"F") and n == 5:
            return Line(kind.decode(), int(parts[1]), parts[4].decode("ascii"), int(parts[2]),
                        int(parts[3]), 0)
        if kind == b"F" and n == 2:
            return Line("F", 0, parts[1].decode("ascii"), 0, 0, 0)
        if kind == b"R" and n == 4:
            return Line("R", int(parts[2]), "", int(parts[3]), 0, int(parts[1]))
        if kind == b"U" and n == 2:
            return Line("U", 0, "", 0, 0, int(parts[1]))
        if kind == b"X" and n == 1:
            return Line("X", 0, "", 0, 0, 0)
    except (ValueError, UnicodeDecodeError):
        pass
    return None


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
        self.unlinked: collections.deque = collections.deque()  # see withdraw()
        # withdraw() lets lines wait: set where this process started the tracker and is
        # sure to run atexit (not a fork child, nor a multiprocessing child)
        self.batching = False
        self.forked = False

    def after_fork_in_child(self):
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.start = None
        self.unlinked = collections.deque()  # the parent sends its own
        self.batching = False
        self.forked = True


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


def announcement(key: int, pid: int, ctime_ns: int, name: str) -> bytes:
    """The ``N`` line of a named segment that *pid* creates at *ctime_ns*."""
    return b"N %d %d %d %s\n" % (key, pid, ctime_ns, name.encode("ascii"))


def announce(key: int, pid: int, ctime_ns: int, name: str) -> bytes:
    """Announce a named segment about to be created; returns the line (``withdraw()``
    takes it back).

    Sent before ``shmget`` so that a SIGKILL right after creation cannot hide it;
    the tracker checks the trailer (creator pid + creation time) before removing,
    so an announcement whose creation failed removes nothing.
    """
    if _state.fd is None:
        _connect()
    line = b"N %d %d %d %s\n" % (key, pid, ctime_ns, name.encode("ascii"))
    _send(_take_unlinked() + line if _state.unlinked else line)
    return line


def register(key: int, pid: int, ctime_ns: int, name: str) -> Tuple[int, int]:
    """``announce()``, returning the tracker's identity instead."""
    announce(key, pid, ctime_ns, name)
    return _state.tracker


def withdraw(announced: bytes) -> None:
    """Take back the announcement *announced* (an ``N`` line): its segment was unlinked
    here, or its creation failed. In a program's main process (it started the tracker and
    is no fork or multiprocessing child) the line rides with the next announcement (or
    goes at exit), sparing a write per unlink; any other process sends it at once: fork
    children end without running ``atexit``."""
    line = announced.replace(b"N", b"F", 1)
    if _state.batching:
        _state.unlinked.append(line)
        if len(_state.unlinked) >= _UNLINKED_BATCH:
            _send(_take_unlinked())
    elif _state.fd is not None or _join_tracker():
        _send(line)


def _take_unlinked() -> bytes:
    """The waiting unlink lines, taken one by one (each ``popleft`` is atomic: a line
    another thread adds meanwhile waits for the next call)."""
    waiting = _state.unlinked
    lines = []
    try:
        for _ in range(len(waiting)):
            lines.append(waiting.popleft())
    except IndexError:  # another thread took the rest
        pass
    return b"".join(lines)


def _at_exit() -> None:
    """In the process that started the tracker: what waits, and ``X``. A program that
    ends so has no segment announced and removed by someone else reported (a fork child
    that never joined the tracker, a manager's server, may have unlinked it)."""
    if _state.popen is not None and _state.popen_owner == os.getpid() and _state.fd is not None:
        _send(_take_unlinked() + b"X\n")


atexit.register(_at_exit)


def register_raw(ident: int, key: int, pid: int) -> Tuple[int, int]:
    """Announce a segment without trailer (``from_key(create=True)``), just created."""
    if _state.fd is None:
        _connect()
    _send(b"R %d %d %d\n" % (ident, key & 0xFFFFFFFF, pid))
    return _state.tracker


def forget(name: str) -> None:
    """Stop tracking the named segment (``resource_tracker.unregister`` of it): the
    tracker no longer removes it at the program's end. Starts no tracker."""
    if _state.fd is not None or _join_tracker():
        _send(b"F %s\n" % name.encode("ascii"))


def forget_raw(ident: int) -> None:
    """Stop tracking the segment without trailer of id *ident* (unlinked)."""
    if _state.fd is not None or _join_tracker():
        _send(b"U %d\n" % ident)


def _join_tracker() -> bool:
    """Connected to the program's tracker, joining the parent's (spawn, forkserver) if
    there is one; never starts one."""
    with _state.lock:
        return _state.fd is not None or _join_parent_tracker()


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
    _state.batching = False
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
                f"from mpsysv._shm.tracker_process import main; "
                f"main({read_end}, {listener.fileno()})")
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
    mp_process = sys.modules.get("multiprocessing.process")
    _state.batching = not _state.forked and (
        mp_process is None or mp_process.parent_process() is None)
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
