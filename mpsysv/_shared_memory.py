"""SharedMemory over System V segments: the API of ``multiprocessing.shared_memory``.

A name maps to a key, a 256-byte trailer after the user's bytes (``_shm.trailer``)
proves that a segment is mpsysv's segment of that name, the mapping is owned by an
``mmap`` that every view of ``buf`` keeps alive (``_ipc.mapping``: detached when the
last view is gone), and ``track=True`` segments are removed when their program ends
(``_shm.tracker``). Kernel calls go through ``_ipc``; nothing here loads libc itself.
Public path: ``mpsysv.shared``.
"""

from __future__ import annotations

import errno
import functools
import operator
import os
import sys
import time
import types
from typing import Optional

from ._gc import collect as _gc
from ._ipc import libc as L
from ._ipc.errors import permission_denied, raise_errno, segment_size_hint
from ._ipc.mapping import map_segment
from ._ipc.names import check_name, name_key, random_name
from ._ipc.objects import Segment, SegmentStat, create_segment
from ._shm.trailer import (FLAG_HUGETLB, FLAG_TRACKED, PURPOSE_SHARED_MEMORY, TRAILER_SIZE,
                           VERSION, match_identity, pack_identity,
                           parse_identity, read_trailer)
from ._shm.tracker import (announce, announcement, forget, forget_raw, process_identity,
                           register, register_raw, tracker_identity, withdraw)

__all__ = ["SharedMemory", "ForeignSegmentError", "track_by_name", "untrack_by_name",
           "unlink_by_name"]


_ZEROS = bytes(TRAILER_SIZE)
_NO_TRACKER = (0, 0)
# A creator writes its trailer right after shmget+shmat; an attacher that finds it
# still zero waits this long before calling the segment foreign.
_CREATION_GRACE = 0.1
_MAX_SIZE = 2 ** 63 - TRAILER_SIZE


class ForeignSegmentError(FileExistsError):
    """A name's key is held by a segment that is not mpsysv's segment of that name: a
    segment some program made by key, or another name whose 31-bit key is the same.
    mpsysv never attaches it silently (``SharedMemory.from_key`` does, on purpose)."""


# name as given -> (bare name, key): checking and hashing a name cost more than the
# dict lookup that skips both for names seen before (made or attached here).
_known_names: dict = {}


def _name_and_key(name: str) -> tuple:
    """``(bare name, key)`` of a user's name; TypeError/ValueError for an invalid one."""
    known = _known_names.get(name) if type(name) is str else None
    if known is None:
        bare = check_name(name)
        known = _remember(name, bare)
    return known


# Random (name, key) pairs for creations without a name, hashed _BATCH at a time: right
# after the kernel calls of a creation the hash code runs cold, at several times its cost.
_BATCH = 64
_fresh: list = []
os.register_at_fork(after_in_child=_fresh.clear)


def _fresh_name() -> tuple:
    """A new random ``(bare name, key)``, remembered for attaching by that name here.

    ``multiprocessing.shared_memory._make_filename`` is looked up at each call: when it
    was replaced (a test's mock, a program's own naming scheme), its names are used, as
    the stdlib does; the stdlib's own function is not called, mpsysv's names (64 random
    bits, hashed in batches) serve instead.
    """
    stdlib = sys.modules.get("multiprocessing.shared_memory")
    make_filename = getattr(stdlib, "_make_filename", None)
    if make_filename is not None and not _is_stdlib_function(make_filename):
        return _name_and_key(make_filename())
    try:
        bare, key = _fresh.pop()
    except IndexError:
        _fresh.extend((bare, name_key("shm", bare))
                      for bare in [random_name() for _ in range(_BATCH)])
        bare, key = _fresh.pop()
    return _remember(bare, bare, key)


def _is_stdlib_function(f) -> bool:
    return (isinstance(f, types.FunctionType)
            and f.__module__ == "multiprocessing.shared_memory")


def _remember(name: str, bare: str, key: Optional[int] = None) -> tuple:
    """Cache and return ``(bare, key)`` for a name known to be valid."""
    if len(_known_names) >= 4096:
        _known_names.clear()
    known = _known_names[name] = (bare, name_key("shm", bare) if key is None else key)
    return known


def _check_size(size, create: bool) -> int:
    size = operator.index(size)
    if size < 0 or (create and size == 0):
        raise ValueError("'size' must be a positive integer")
    return size


def _check_mode(mode) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise ValueError(f"'mode' must be permission bits in 0..0o777, not {mode!r}")
    return mode


class SharedMemory:
    """A System V shared memory segment found by name, like the stdlib's SharedMemory.

    ``SharedMemory(create=True, size=n)`` makes a segment with a fresh random name,
    ``SharedMemory(name, create=True, size=n)`` one with that name (``FileExistsError``
    if it exists), ``SharedMemory(name)`` attaches (``FileNotFoundError`` if missing).
    ``buf`` is a memoryview of exactly ``size`` bytes, page-aligned.

    ``track`` (default: True for the creator, False for an attacher): removed when the
    program ends without having unlinked it, even if it was killed, with the resource
    tracker's leak warning. An attacher tracks only when given ``track=True``, as the
    stdlib's 3.13 does; by default a segment outlives the processes that merely attach
    it. ``_name`` is ``"/" + name`` as in the stdlib on POSIX. ``readonly=True``
    attaches with SHM_RDONLY. ``mode`` (default 0o600) and ``hugetlb`` apply on create.
    ``close()`` never unmaps memory a view still uses: the detach waits for the last
    view (a numpy array, a slice) to go away. ``unlink()`` frees the name at once;
    attached processes keep their mapping.
    """

    # Defaults, as the stdlib's class has them: close() and unlink() work on an instance
    # whose __init__ failed. Instances have a __dict__ (client code stores its own
    # attributes on them, as the stdlib allows).
    _name: Optional[str] = None  # "/" + name, as the stdlib's POSIX _name; None when raw
    _own_name: Optional[str] = None  # _name as this handle set it
    _id = -1
    _key = 0
    _size = 0
    _buf: Optional[memoryview] = None  # its obj owns the mapping (_ipc.mapping)
    _readonly = False
    _unlinked = False
    _purpose = 0
    _ctime = 0  # the creation time in its trailer (ns): which announcement unlink() withdraws
    _announced: Optional[bytes] = None  # this handle's announcement, when it created it

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0, *,
                 track: Optional[bool] = None, readonly: bool = False, mode: int = 0o600,
                 hugetlb: bool = False) -> None:
        """Create a new segment (*create* true, with *size* bytes) or attach the one
        called *name* (see the class for the keyword arguments)."""
        size = _check_size(size, create)
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        if create:
            if readonly:
                raise ValueError("a segment cannot be created read-only: create it, then "
                                 "attach it with readonly=True")
            self._create(name, size, track is not False, mode, hugetlb, PURPOSE_SHARED_MEMORY)
        else:
            self._attach(name, readonly, track is True)

    # --- the stdlib's API ---------------------------------------------------------------

    @property
    def buf(self) -> memoryview:
        """The segment's bytes (read-only after ``readonly=True``); None after close(),
        as the stdlib's (typed, as the stdlib's, for an open segment)."""
        return self._buf  # type: ignore[return-value]

    @property
    def name(self) -> Optional[str]:
        """The name other processes attach by (None for ``from_key``/``from_id``)."""
        name = self._name
        return name[1:] if name is not None and name.startswith("/") else name

    @property
    def size(self) -> int:
        """The exact size in bytes given at creation."""
        return self._size

    def close(self) -> None:
        """Drop this handle's ``buf``; idempotent, and never unmaps under a live view: the
        mapping goes with its last view (a slice, a numpy array), now if there is none."""
        buf = self._buf
        if buf is not None:
            self._buf = None
            try:
                buf.release()
            except BufferError:  # an export of buf itself (a ctypes from_buffer): it keeps
                pass             # the mapping, as every slice and array does

    def unlink(self) -> None:
        """Remove the segment's name now (IPC_RMID): it can be created again at once, and
        its memory is freed when the last process detaches.

        Raises ``FileNotFoundError`` when it was removed already (by this handle,
        another process, ``ipcrm`` or a tracker at its program's end).
        """
        name = self._name
        if (name is not self._own_name and name is not None and name != self._own_name
                and _name_and_key(name)[1] != self._key):
            # _name was set by hand (the stdlib unlinks whatever it names): unlink that one.
            other = SharedMemory(self._name)
            try:
                other.unlink()
            finally:
                other.close()
            return
        if self._unlinked:
            raise FileNotFoundError(errno.ENOENT, "Shared memory was already unlinked",
                                    self._label())
        if L.shmctl(self._id, L.IPC_RMID, None) == -1:
            err = L.get_errno()
            if err in (errno.EINVAL, errno.EIDRM):
                raise FileNotFoundError(
                    errno.ENOENT, "Shared memory was removed already (by another process, "
                    "`ipcrm`, or the tracker of the program that created it)", self._label())
            raise_errno(err, "shmctl(IPC_RMID)", self._what())
        self._unlinked = True
        # As the stdlib's unlink() unregisters: the tracker must neither remove the name
        # nor, at the program's end, report it as leaked.
        if self._name is None:
            forget_raw(self._id)
        else:
            withdraw(self._announced
                     or announcement(self._key, 0, self._ctime, self._name[1:]))

    def __reduce__(self):
        if self._name is None:
            return _from_id, (type(self), self._id, self._readonly)
        if self._readonly:
            return functools.partial(type(self), readonly=True), (self.name, False, self._size)
        return type(self), (self.name, False, self._size)

    def __repr__(self) -> str:
        if self._name is None:
            return f"{type(self).__name__}.from_id({self._id}, size={self._size})"
        return f"{type(self).__name__}({self.name!r}, size={self._size})"

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- System V extras ------------------------------------------------------------------

    @classmethod
    def from_key(cls, key: Optional[int], *, create: bool = False, size: int = 0,
                 readonly: bool = False, mode: int = 0o600, track: bool = True,
                 hugetlb: bool = False) -> "SharedMemory":
        """Attach (or create) the segment of a raw key, such as ``mpsysv.ftok(path, proj)``
        gives a C program. No trailer is read or written: ``buf`` covers the whole
        segment and ``name`` is None. ``key=None`` with ``create=True`` makes a private
        segment (reach it with ``from_id``)."""
        if create:
            if readonly:
                raise ValueError("a segment cannot be created read-only")
            segment = Segment(key, _check_size(size, True), create=True, exclusive=True,
                              mode=_check_mode(mode), hugetlb=hugetlb)
            if track:
                register_raw(segment.id, segment.key, process_identity()[0])
        else:
            segment = Segment(key)
        return cls._from_segment(segment, readonly)

    @classmethod
    def from_id(cls, id: int, *, readonly: bool = False) -> "SharedMemory":
        """Attach the segment with this kernel id (``ipcs -m``, ``shmget``'s return value);
        ``buf`` covers the whole segment."""
        return cls._from_segment(Segment(id=id), readonly)

    @property
    def id(self) -> int:
        """The kernel's id of the segment (``shmid``), valid in every process."""
        return self._id

    @property
    def key(self) -> int:
        """The segment's key: ``name_key("shm", name)`` or the raw key (0 when private)."""
        return self._key

    @property
    def readonly(self) -> bool:
        """True when this handle attached the segment read-only (``readonly=True``)."""
        return self._readonly

    def stat(self) -> SegmentStat:
        """The kernel's view (IPC_STAT): ``shm_segsz`` (``size`` plus the 256-byte trailer
        for named segments), ``shm_nattch``, ``shm_cpid``, ``shm_lpid``, ``shm_atime``,
        ``shm_dtime``, ``shm_ctime``, ``uid``, ``gid``, ``cuid``, ``cgid``, ``mode``, ``key``."""
        return Segment(id=self._id).stat()

    def set_mode(self, mode: int) -> None:
        """Change the permission bits (IPC_SET), e.g. 0o640 to let the group attach."""
        Segment(id=self._id).set(mode=_check_mode(mode))

    # --- plumbing -----------------------------------------------------------------------------

    def _create(self, name, size, track, mode, hugetlb, purpose) -> None:
        flags = L.IPC_CREAT | L.IPC_EXCL | _check_mode(mode) | (L.SHM_HUGETLB if hugetlb else 0)
        if size > _MAX_SIZE:
            raise_errno(errno.EINVAL, "shmget", f"shared memory of {size} bytes",
                        segment_size_hint(errno.EINVAL, size, TRAILER_SIZE))
        _gc.collect_garbage()  # once per program, as for queues: what killed programs left
        if name is not None:
            bare, key = _name_and_key(name)
        creator = process_identity()
        tracker = _NO_TRACKER
        announced = None
        while True:
            if name is None:
                bare, key = _fresh_name()
            ctime = time.time_ns()
            if track:
                announced = announce(key, creator[0], ctime, bare)
            try:
                ident = create_segment(key, size, flags, TRAILER_SIZE)
                if ident != -1:
                    break
                if name is not None:
                    raise _exists_error(bare, key)
            except OSError:
                if announced is not None:
                    withdraw(announced)
                raise
            if announced is not None:
                withdraw(announced)
        try:
            view = map_segment(ident, size + TRAILER_SIZE, False, bare)[0]
        except OSError:
            L.shmctl(ident, L.IPC_RMID, None)
            if announced is not None:
                withdraw(announced)
            raise
        if announced is not None:
            tracker = tracker_identity()
        trailer = pack_identity(bare, size, (FLAG_TRACKED if track else 0)
                                | (FLAG_HUGETLB if hugetlb else 0), purpose, ctime, creator,
                                tracker)
        view[size:] = trailer
        self._set(bare, ident, key, size, view[:size], False, purpose)
        self._ctime, self._announced = ctime, announced

    def _attach(self, name, readonly, track) -> None:
        bare, key = _name_and_key(name)
        ident = L.shmget(key, 0, 0)
        ds = L.shmid_ds()
        if ident == -1 or L.shmctl(ident, L.IPC_STAT, L.byref(ds)) == -1:
            err = L.get_errno()
            if err in (errno.ENOENT, errno.EINVAL, errno.EIDRM):
                raise FileNotFoundError(errno.ENOENT, "No shared memory with this name", bare)
            if err == errno.EACCES:
                raise _permission_error("shmget", bare, key)
            raise_errno(err, "shmget", f"shared memory {bare!r} (key={key:#010x})")
        segsz = ds.shm_segsz
        try:
            view = map_segment(ident, segsz, readonly, bare)[0]
        except PermissionError:
            raise _permission_error("shmat", bare, key, readonly) from None
        raw = _wait_for_trailer(view[segsz - TRAILER_SIZE:]) if segsz >= TRAILER_SIZE else None
        found = match_identity(raw, bare) if raw is not None else None
        if found is None or found[0] + TRAILER_SIZE != segsz:
            del view  # the last reference to the mapping: detached now
            identity = parse_identity(raw) if raw is not None else None
            raise ForeignSegmentError(errno.EEXIST, _foreign_message(bare, key, ds, identity),
                                      bare)
        size, purpose, ctime = found
        identity = parse_identity(raw) if track and raw is not None else None
        if identity is not None:
            # An explicit track=True on attach, as in the stdlib (3.13): this program's
            # tracker removes the segment when the program ends, whoever created it.
            register(key, identity.creator_pid, identity.ctime_ns, bare)
        self._set(bare, ident, key, size, view[:size], readonly, purpose)
        self._ctime = ctime

    @classmethod
    def _from_segment(cls, segment: Segment, readonly: bool) -> "SharedMemory":
        self = cls.__new__(cls)
        self._set(None, segment.id, segment.key & 0xFFFFFFFF, segment.size,
                  segment.attach(readonly).buf, readonly, 0)
        return self

    def _set(self, name, ident, key, size, buf, readonly, purpose) -> None:
        # unlink() tells a _name set by hand (the stdlib unlinks whatever _name names)
        # from the one set here by identity.
        self._name = self._own_name = None if name is None else "/" + name
        self._id, self._key, self._size = ident, key, size
        self._buf = buf
        self._readonly, self._unlinked, self._purpose = readonly, False, purpose

    def _label(self) -> str:
        name = self.name
        return name if name is not None else f"id={self._id}"

    def _what(self) -> str:
        return f"shared memory {self._label()!r} (id={self._id})"


def track_by_name(name) -> bool:
    """``resource_tracker.register(name, "shared_memory")`` for an mpsysv segment: this
    program's tracker removes it at the end, as after an attach with ``track=True``.
    False when *name* names no mpsysv segment."""
    try:
        SharedMemory(name, track=True).close()
    except (OSError, TypeError, ValueError):
        return False
    return True


def unlink_by_name(name) -> bool:
    """``resource_tracker._CLEANUP_FUNCS['shared_memory'](name)`` for an mpsysv segment:
    unlink it. False when *name* names no mpsysv segment (the caller tries the stdlib's
    POSIX ``shm_unlink``, which raises ``FileNotFoundError`` when it is no segment at all)."""
    try:
        shm = SharedMemory(name)
    except (OSError, TypeError, ValueError):
        return False
    try:
        shm.unlink()
    finally:
        shm.close()
    return True


def untrack_by_name(name) -> bool:
    """``resource_tracker.unregister(name, "shared_memory")`` for an mpsysv segment: this
    program's tracker forgets it (a no-op when it never tracked it). False when *name*
    is no valid mpsysv name."""
    try:
        bare, key = _name_and_key(name)
    except (TypeError, ValueError):
        return False
    forget(bare)
    return True


def _from_id(cls, ident, readonly):
    return cls.from_id(ident, readonly=readonly)


def _wait_for_trailer(tail: memoryview) -> bytes:
    """The trailer in *tail*, waiting up to _CREATION_GRACE while it is still all zero:
    its creator writes it right after shmget+shmat."""
    raw = bytes(tail)
    if raw == _ZEROS:
        deadline = time.monotonic() + _CREATION_GRACE
        while raw == _ZEROS and time.monotonic() < deadline:
            time.sleep(0.002)
            raw = bytes(tail)
    return raw


def _permission_error(call: str, bare: str, key: int, readonly: bool = True) -> PermissionError:
    """A PermissionError that says whose segment it is and what its mode allows."""
    if readonly:
        access, fix = "reading", "ask its owner for mode=0o640 or 0o644 (or set_mode())"
    else:
        access, fix = "writing", ("attach it with readonly=True, or ask its owner for "
                                  "mode=0o660 or 0o666 (or set_mode())")
    return permission_denied(call, f"shared memory {bare!r}", key,
                             f"does not allow {access} by uid {os.geteuid()}", fix, bare)


def _exists_error(bare: str, key: int) -> FileExistsError:
    """FileExistsError for our own segment of that name, ForeignSegmentError otherwise."""
    try:
        segment = Segment(key)
        raw = read_trailer(segment)
    except OSError:
        return FileExistsError(errno.EEXIST, "File exists (a segment holds its key "
                                             f"{key:#010x}; not readable here)", bare)
    identity = parse_identity(raw) if raw is not None else None
    if identity is not None and identity.name == bare:
        return FileExistsError(errno.EEXIST, "File exists", bare)
    ds = L.shmid_ds()
    L.shmctl(segment.id, L.IPC_STAT, L.byref(ds))
    return ForeignSegmentError(errno.EEXIST, _foreign_message(bare, key, ds, identity), bare)


def _foreign_message(bare, key, ds, identity) -> str:
    head = f"the key {key:#010x} of the name {bare!r} belongs to a segment that is not it: "
    if identity is not None and identity.name != bare:
        return head + (f"it is mpsysv's {identity.name!r}, whose name has the same 31-bit key; "
                       "use another name")
    if identity is not None:
        return head + f"its mpsysv format version is {identity.version}, not {VERSION}"
    return head + (f"it has no mpsysv trailer (made by key by another program: {ds.shm_segsz} "
                   f"bytes, creator pid {ds.shm_cpid}, uid {ds.shm_perm.uid}); "
                   f"SharedMemory.from_key({key:#x}) attaches it as raw memory")
