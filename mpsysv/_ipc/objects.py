"""One small object per System V primitive: MessageQueue, SemaphoreSet, Segment.

These are the raw building blocks of mpsysv's queues and shared memory, public for
users who want plain SysV IPC with Python errors, timeouts and EINTR handling. They
hold a kernel id and nothing else of note; removing the object is always explicit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from typing import Iterable, NoReturn, Optional, Sequence, Tuple

from . import libc as L
from .errors import raise_errno, segment_size_hint
from .mapping import map_segment
from .procs import ipc_table

__all__ = ["MessageQueue", "SemaphoreSet", "Segment", "Attachment", "ftok", "create_segment"]



def ftok(path: str, proj_id: int) -> int:
    """The key C programs derive from *path* and *proj_id* (``ftok(3)``)."""
    if not 0 < proj_id <= 255:
        raise ValueError(f"'proj_id' must be in 1..255, not {proj_id!r}")
    key = L.ftok_(os.fsencode(path), proj_id)
    if key == -1:
        raise_errno(L.get_errno(), "ftok", repr(path))
    return key


def _flags(create: bool, exclusive: bool, mode: int) -> int:
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"'mode' must be permission bits in 0..0o777, not {mode!r}")
    flags = mode
    if create:
        flags |= L.IPC_CREAT
        if exclusive:
            flags |= L.IPC_EXCL
    return flags


def _check_key(key) -> int:
    if key is None:
        return L.IPC_PRIVATE
    if not isinstance(key, int) or isinstance(key, bool):
        raise TypeError(f"'key' must be an int or None, not {type(key).__name__}")
    if not -2 ** 31 <= key < 2 ** 32:
        raise ValueError(f"'key' must fit in 32 bits, not {key!r}")
    return key - 2 ** 32 if key >= 2 ** 31 else key


class _Object:
    """What the three kinds share: a kernel id, a key, a kind name for messages."""

    _kind = "object"
    _ctl_name = ""

    def __init__(self, ident: int, key: int):
        self.id = ident
        self.key = key

    @property
    def key(self) -> int:
        """The key as ipcs shows it: unsigned 32 bits (the kernel stores it signed)."""
        return self._key

    @key.setter
    def key(self, value: int) -> None:
        self._key = value & 0xFFFFFFFF

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id}, key={self.key:#010x})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.id == self.id

    def __hash__(self) -> int:
        return hash((type(self), self.id))

    def __reduce__(self):
        return (type(self)._from_id, (self.id,))

    @classmethod
    def _from_id(cls, ident):
        return cls(id=ident)

    def _what(self) -> str:
        return f"{self._kind} id={self.id}"

    def _fail(self, call: str, hint: str = "") -> NoReturn:
        err = L.get_errno()
        if err == errno.EINVAL and not hint:
            hint = "invalid identifier"
        raise_errno(err, call, self._what(), hint)


class MessageQueue(_Object):
    """A System V message queue: typed messages of at most ``msgmax`` bytes each.

    ``MessageQueue(key, create=True)`` opens or creates by key (``key=None`` creates a
    private queue); ``MessageQueue(id=n)`` opens an existing id.
    """

    _kind = "message queue"

    def __init__(self, key: Optional[int] = None, *, id: Optional[int] = None,
                 create: bool = False, exclusive: bool = False, mode: int = 0o600):
        self._msgmax = L.read_limit("msgmax", 8192)
        if id is not None:
            if not isinstance(id, int) or id < 0:
                raise ValueError(f"'id' must be a non-negative int, not {id!r}")
            super().__init__(id, 0)
            self.key = self.stat().key
            return
        k = _check_key(key)
        if k == L.IPC_PRIVATE and not create:
            raise ValueError("a private queue (key=None) must be created: pass create=True")
        ident = L.msgget(k, _flags(create, exclusive, mode))
        if ident == -1:
            raise_errno(L.get_errno(), "msgget", f"message queue key={k & 0xffffffff:#010x}")
        super().__init__(ident, k)

    @property
    def max_message_size(self) -> int:
        """The kernel's ``msgmax``: the largest payload one message may carry."""
        return self._msgmax

    def send(self, data, mtype: int = 1, block: bool = True) -> None:
        """Send *data* (bytes-like) as one message of type *mtype* (> 0).

        Blocks while the queue is full unless ``block=False``, which raises
        ``BlockingIOError`` instead.
        """
        if not isinstance(mtype, int) or not 0 < mtype < 2 ** 63:
            raise ValueError(f"'mtype' must be a positive int below 2**63, not {mtype!r}")
        data = memoryview(data).cast("B")
        n = len(data)
        buf = (ctypes.c_char * (8 + n))()
        ctypes.c_long.from_buffer(buf).value = mtype
        memoryview(buf).cast("B")[8:] = data
        flags = 0 if block else L.IPC_NOWAIT
        while L.msgsnd(self.id, buf, n, flags) == -1:
            err = L.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.EINVAL and n > L.read_limit("msgmax", 8192):
                raise ValueError(f"message of {n} bytes is larger than the kernel's msgmax="
                                 f"{L.read_limit('msgmax', 8192)} (/proc/sys/kernel/msgmax)")
            if err == errno.EAGAIN:
                raise_errno(err, "msgsnd", self._what(), "queue is full")
            self._fail("msgsnd")

    def receive(self, mtype: int = 0, block: bool = True, *, size: Optional[int] = None,
                noerror: bool = False, except_type: bool = False) -> Tuple[bytes, int]:
        """Receive one message and return ``(data, mtype)``.

        *mtype* follows msgrcv(2): 0 takes the first message, ``n > 0`` the first of
        type n (with ``except_type=True``: the first not of type n), ``n < 0`` the first
        of the lowest type ``<= |n|``. *size* caps the payload (default ``msgmax``); a
        longer message raises ``OSError(E2BIG)`` and stays queued, unless ``noerror``
        truncates it. ``block=False`` raises ``BlockingIOError`` when nothing matches.
        """
        if not isinstance(mtype, int) or not -2 ** 63 < mtype < 2 ** 63:
            raise ValueError(f"'mtype' must be an int in the C long range, not {mtype!r}")
        cap = self._msgmax if size is None else size
        if cap < 0:
            raise ValueError(f"'size' must be >= 0, not {size!r}")
        buf = (ctypes.c_char * (8 + cap))()
        flags = (0 if block else L.IPC_NOWAIT) | (L.MSG_NOERROR if noerror else 0)
        if except_type:
            flags |= L.MSG_EXCEPT
        while True:
            n = L.msgrcv(self.id, buf, cap, mtype, flags)
            if n >= 0:
                return buf.raw[8:8 + n], ctypes.c_long.from_buffer(buf).value
            err = L.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.ENOMSG:
                raise BlockingIOError(errno.ENOMSG, f"msgrcv({self._what()}): no message of "
                                                    f"type {mtype} (block=False)")
            if err == errno.E2BIG:
                raise OSError(errno.E2BIG, f"msgrcv({self._what()}): the message is larger "
                                           f"than size={cap}; pass noerror=True to truncate it")
            self._fail("msgrcv")

    def stat(self) -> "MessageQueueStat":
        """The kernel's ``msqid_ds`` for this queue (``IPC_STAT``)."""
        ds = L.msqid_ds()
        if L.msgctl(self.id, L.IPC_STAT, L.byref(ds)) == -1:
            self._fail("msgctl(IPC_STAT)")
        return MessageQueueStat(ds)

    def set(self, *, qbytes: Optional[int] = None, mode: Optional[int] = None,
            uid: Optional[int] = None, gid: Optional[int] = None) -> None:
        """Change ``msg_qbytes``, permission bits or owner (``IPC_SET``)."""
        ds = L.msqid_ds()
        if L.msgctl(self.id, L.IPC_STAT, L.byref(ds)) == -1:
            self._fail("msgctl(IPC_STAT)")
        if qbytes is not None:
            if not isinstance(qbytes, int) or qbytes <= 0:
                raise ValueError(f"'qbytes' must be a positive int, not {qbytes!r}")
            ds.msg_qbytes = qbytes
        if mode is not None:
            ds.msg_perm.mode = _flags(False, False, mode)
        if uid is not None:
            ds.msg_perm.uid = uid
        if gid is not None:
            ds.msg_perm.gid = gid
        if L.msgctl(self.id, L.IPC_SET, L.byref(ds)) == -1:
            err = L.get_errno()
            if err == errno.EPERM and qbytes is not None:
                msgmnb = L.read_limit("msgmnb", 16384)
                raise PermissionError(err, f"msgctl(IPC_SET, {self._what()}): raising msg_qbytes "
                                           f"to {qbytes} above msgmnb={msgmnb} "
                                           "(/proc/sys/kernel/msgmnb) needs CAP_SYS_RESOURCE")
            self._fail("msgctl(IPC_SET)")

    def remove(self) -> None:
        """Remove the queue now (``IPC_RMID``); blocked senders and receivers get EIDRM."""
        if L.msgctl(self.id, L.IPC_RMID, None) == -1:
            self._fail("msgctl(IPC_RMID)")

    @property
    def current_messages(self) -> int:
        """The number of messages in the queue now (``msg_qnum``)."""
        return self.stat().msg_qnum


class _Stat:
    """Read-only view of a kernel status structure, with stdlib-style names."""

    __slots__ = ("_d",)

    def __init__(self, ds):
        object.__setattr__(self, "_d", ds.as_dict())

    def __getattr__(self, name):
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __dir__(self):
        return list(self._d)

    def as_dict(self) -> dict:
        return dict(self._d)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._d.items())
        return f"{type(self).__name__}({fields})"


class MessageQueueStat(_Stat):
    """``msqid_ds``: msg_qnum, msg_qbytes, msg_cbytes, msg_lspid, msg_lrpid, times, owner."""


class SegmentStat(_Stat):
    """``shmid_ds``: shm_segsz, shm_nattch, shm_cpid, shm_lpid, times, owner, mode."""


class SemaphoreSetStat(_Stat):
    """``semid_ds``: sem_nsems, sem_otime, sem_ctime, owner, mode."""


class SemaphoreSet(_Object):
    """A System V semaphore set: *nsems* counters in 0..32767 changed atomically by semop.

    ``undo=True`` on an operation asks the kernel to reverse it when this process
    exits, even when it is killed: the tool for locks that must not stay held.
    """

    _kind = "semaphore set"

    def __init__(self, key: Optional[int] = None, nsems: int = 1, *, id: Optional[int] = None,
                 create: bool = False, exclusive: bool = False, mode: int = 0o600):
        if id is not None:
            if not isinstance(id, int) or id < 0:
                raise ValueError(f"'id' must be a non-negative int, not {id!r}")
            super().__init__(id, 0)
            st = self.stat()
            self.key, self.nsems = st.key, st.sem_nsems
            return
        k = _check_key(key)
        if k == L.IPC_PRIVATE and not create:
            raise ValueError("a private semaphore set (key=None) must be created: pass create=True")
        if not isinstance(nsems, int) or nsems <= 0:
            raise ValueError(f"'nsems' must be a positive int, not {nsems!r}")
        ident = L.semget(k, nsems, _flags(create, exclusive, mode))
        if ident == -1:
            raise_errno(L.get_errno(), "semget", f"semaphore set key={k & 0xffffffff:#010x}",
                          "nsems larger than the existing set or than semmsl"
                          if L.get_errno() == errno.EINVAL else "")
        super().__init__(ident, k)
        # an existing set may hold more semaphores than asked for: semget only checks <=
        self.nsems = (nsems if k == L.IPC_PRIVATE or (create and exclusive)
                      else self.stat().sem_nsems)

    def op(self, num: int, delta: int, *, undo: bool = False, block: bool = True,
           timeout: Optional[float] = None) -> bool:
        """Add *delta* to semaphore *num* (0 waits for zero); False on timeout/would-block."""
        return self.ops([(num, delta, L.SEM_UNDO if undo else 0)], block=block, timeout=timeout)

    def ops(self, operations: Sequence[Tuple[int, int, int]], *, block: bool = True,
            timeout: Optional[float] = None) -> bool:
        """Apply several ``(num, delta, flags)`` operations atomically (all or none).

        Waits until all can proceed, up to *timeout* seconds (None: forever); signals
        do not cut the wait short (PEP 475). Returns False on timeout or, with
        ``block=False``, when it would block.
        """
        n = len(operations)
        if n == 0:
            raise ValueError("'operations' must not be empty")
        arr = (L.sembuf * n)()
        for i, (num, delta, flg) in enumerate(operations):
            if not 0 <= num < self.nsems:
                raise ValueError(f"semaphore number {num} out of range 0..{self.nsems - 1}")
            if not -L.SEMVMX <= delta <= L.SEMVMX:
                raise ValueError(f"'delta' must be within +-{L.SEMVMX}, not {delta}")
            arr[i].sem_num, arr[i].sem_op = num, delta
            arr[i].sem_flg = flg | (0 if block else L.IPC_NOWAIT)
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        deadline = None if timeout is None else L.monotonic() + timeout
        while True:
            if deadline is None:
                rc = L.semop(self.id, arr, n)
            else:
                ts = L.relative_timespec(deadline - L.monotonic())
                rc = L.semtimedop(self.id, arr, n, L.byref(ts))
            if rc == 0:
                return True
            err = L.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.EAGAIN:
                return False
            if err == errno.ERANGE:
                raise ValueError(f"semop({self._what()}): a value would exceed SEMVMX={L.SEMVMX}")
            if err == errno.E2BIG:
                raise ValueError(f"semop({self._what()}): {n} operations exceed semopm="
                                 f"{L.limits()['semopm']}")
            self._fail("semop")

    def _ctl(self, num: int, cmd: int, arg: int = 0, name: str = "") -> int:
        rc = L.semctl(self.id, num, cmd, arg)
        if rc == -1:
            self._fail(f"semctl({name})")
        return rc

    def _check_num(self, num: int) -> int:
        if not isinstance(num, int) or not 0 <= num < self.nsems:
            raise ValueError(f"semaphore number {num!r} out of range 0..{self.nsems - 1}")
        return num

    def getval(self, num: int = 0) -> int:
        """The value of semaphore *num* (``GETVAL``)."""
        return self._ctl(self._check_num(num), L.GETVAL, name="GETVAL")

    def setval(self, num: int, value: int) -> None:
        """Set semaphore *num* to *value* (``SETVAL``; 0..SEMVMX); waiters are woken as
        the value allows."""
        if not isinstance(value, int) or not 0 <= value <= L.SEMVMX:
            raise ValueError(f"'value' must be in 0..{L.SEMVMX}, not {value!r}")
        self._ctl(self._check_num(num), L.SETVAL, value, "SETVAL")

    def getall(self) -> list:
        """The values of every semaphore of the set, in order (``GETALL``)."""
        arr = (ctypes.c_ushort * self.nsems)()
        self._ctl(0, L.GETALL, ctypes.addressof(arr), "GETALL")
        return list(arr)

    def setall(self, values: Iterable[int]) -> None:
        """Set every semaphore of the set at once (``SETALL``): one value per semaphore."""
        values = list(values)
        if len(values) != self.nsems or not all(0 <= v <= L.SEMVMX for v in values):
            raise ValueError(f"'values' must be {self.nsems} ints in 0..{L.SEMVMX}")
        arr = (ctypes.c_ushort * self.nsems)(*values)
        self._ctl(0, L.SETALL, ctypes.addressof(arr), "SETALL")

    def getncnt(self, num: int = 0) -> int:
        """How many processes wait for semaphore *num* to increase."""
        return self._ctl(self._check_num(num), L.GETNCNT, name="GETNCNT")

    def getzcnt(self, num: int = 0) -> int:
        """How many processes wait for semaphore *num* to become zero."""
        return self._ctl(self._check_num(num), L.GETZCNT, name="GETZCNT")

    def getpid(self, num: int = 0) -> int:
        """The pid of the last process that operated on semaphore *num*."""
        return self._ctl(self._check_num(num), L.GETPID, name="GETPID")

    def stat(self) -> SemaphoreSetStat:
        """The kernel's ``semid_ds`` for this set (``IPC_STAT``)."""
        ds = L.semid_ds()
        self._ctl(0, L.IPC_STAT, ctypes.addressof(ds), "IPC_STAT")
        return SemaphoreSetStat(ds)

    def set(self, *, mode: Optional[int] = None, uid: Optional[int] = None,
            gid: Optional[int] = None) -> None:
        """Change the set's permission bits or owner (``IPC_SET``)."""
        ds = L.semid_ds()
        self._ctl(0, L.IPC_STAT, ctypes.addressof(ds), "IPC_STAT")
        if mode is not None:
            ds.sem_perm.mode = _flags(False, False, mode)
        if uid is not None:
            ds.sem_perm.uid = uid
        if gid is not None:
            ds.sem_perm.gid = gid
        self._ctl(0, L.IPC_SET, ctypes.addressof(ds), "IPC_SET")

    def remove(self) -> None:
        """Remove the set now; waiters get EIDRM."""
        self._ctl(0, L.IPC_RMID, 0, "IPC_RMID")


def create_segment(key: int, size: int, flags: int, overhead: int = 0) -> int:
    """The one way mpsysv makes a segment: ``shmget(key, size + overhead, flags)``, with
    ``IPC_CREAT`` in *flags*; *overhead* is what mpsysv adds to the user's *size* (the
    trailer of a named segment). Returns the id, or -1 when ``IPC_EXCL`` found the key
    taken (``EEXIST``: the caller knows what that means); any other failure raises,
    naming the kernel limit that refused it."""
    ident = L.shmget(key, size + overhead, flags)
    if ident == -1:
        err = L.get_errno()
        if err != errno.EEXIST or not flags & L.IPC_EXCL:
            _raise_create_error(err, key, size, overhead, bool(flags & L.SHM_HUGETLB))
    return ident


def _raise_create_error(err: int, key: int, size: int, overhead: int,
                        hugetlb: bool) -> NoReturn:
    lim = L.limits()
    total = size + overhead
    hint = ""
    if err == errno.EINVAL:
        hint = (segment_size_hint(err, size, overhead)
                or f"size {size} is larger than the existing segment's")
    elif err == errno.ENOSPC:
        rows = ipc_table("shm")
        page = os.sysconf("SC_PAGE_SIZE")
        used = sum(-(-row["size"] // page) for row in rows)
        if len(rows) >= lim["shmmni"]:
            hint = (f"shmmni={lim['shmmni']} segments exist already "
                    "(/proc/sys/kernel/shmmni; `ipcs -m` lists them)")
        else:
            hint = (f"shmall={lim['shmall']} pages would be exceeded: {used} pages in use, "
                    f"{-(-total // page)} more asked (/proc/sys/kernel/shmall)")
    elif err == errno.ENOMEM:
        hint = ("no free huge pages (HugePages_Free in /proc/meminfo; raise vm.nr_hugepages)"
                if hugetlb else segment_size_hint(err, size, overhead))
    elif err == errno.EPERM and hugetlb:
        hint = "huge pages need CAP_IPC_LOCK or membership of vm.hugetlb_shm_group"
    what = f"segment of {size} bytes" if key == L.IPC_PRIVATE else \
        f"segment of {size} bytes, key={key & 0xFFFFFFFF:#010x}"
    raise_errno(err, "shmget", what, hint)


class Attachment:
    """One mapping of a segment into this process: ``buf`` is a memoryview over it.

    ``detach()`` is memory-safe: the mapping is owned by an ``mmap`` (see
    ``_ipc.mapping``) and removed only once no view of it is left (slices of ``buf``,
    numpy arrays built on it), so nothing can ever touch unmapped memory.
    """

    def __init__(self, view: memoryview, address: int, size: int, readonly: bool):
        """Wrap *view*, a mapping ``map_segment`` made at *address*; ``buf`` is its
        first *size* bytes."""
        self.address = address
        self.size = size
        self.readonly = readonly
        self._owner = weakref.ref(view.obj)
        # None once detached (typed for an attached mapping, as SharedMemory.buf).
        self.buf: memoryview = view if len(view) == size else view[:size]

    def detach(self) -> bool:
        """Drop this process's view; True when unmapped now, False when views still live."""
        buf, self.buf = self.buf, None  # type: ignore[assignment]
        if buf is not None:
            try:
                buf.release()
            except BufferError:  # an export of buf itself: the mapping stays for it
                pass
            del buf
        return self._owner() is None

    def __repr__(self) -> str:
        state = "detached" if self.buf is None else "attached"
        return f"Attachment(address={self.address:#x}, size={self.size}, {state})"


class Segment(_Object):
    """A System V shared memory segment, found by key or id, mapped by ``attach()``."""

    _kind = "shared memory segment"

    def __init__(self, key: Optional[int] = None, size: int = 0, *, id: Optional[int] = None,
                 create: bool = False, exclusive: bool = False, mode: int = 0o600,
                 hugetlb: bool = False):
        if id is not None:
            if not isinstance(id, int) or id < 0:
                raise ValueError(f"'id' must be a non-negative int, not {id!r}")
            super().__init__(id, 0)
            st = self.stat()
            self.key, self.size = st.key, st.shm_segsz
            return
        k = _check_key(key)
        if k == L.IPC_PRIVATE and not create:
            raise ValueError("a private segment (key=None) must be created: pass create=True")
        if not isinstance(size, int) or size < 0 or (create and size == 0):
            raise ValueError(f"'size' must be a positive int, not {size!r}")
        flags = _flags(create, exclusive, mode) | (L.SHM_HUGETLB if hugetlb else 0)
        if create:
            ident = create_segment(k, size, flags)
            if ident == -1:
                raise_errno(errno.EEXIST, "shmget", f"segment key={k & 0xffffffff:#010x}")
        else:
            ident = L.shmget(k, size, flags)
            if ident == -1:
                err = L.get_errno()
                raise_errno(err, "shmget", f"segment key={k & 0xffffffff:#010x}",
                            f"size {size} is larger than the existing segment's"
                            if err == errno.EINVAL else "")
        super().__init__(ident, k)
        self.size = size if create else self.stat().shm_segsz

    def attach(self, readonly: bool = False) -> Attachment:
        """Map the segment (read-only with ``SHM_RDONLY``) and return the mapping."""
        view, address = map_segment(self.id, self.size, readonly)
        return Attachment(view, address, self.size, readonly)

    def stat(self) -> SegmentStat:
        """The kernel's ``shmid_ds`` for this segment (``IPC_STAT``)."""
        ds = L.shmid_ds()
        if L.shmctl(self.id, L.IPC_STAT, L.byref(ds)) == -1:
            self._fail("shmctl(IPC_STAT)")
        return SegmentStat(ds)

    def set(self, *, mode: Optional[int] = None, uid: Optional[int] = None,
            gid: Optional[int] = None) -> None:
        """Change the segment's permission bits or owner (``IPC_SET``)."""
        ds = L.shmid_ds()
        if L.shmctl(self.id, L.IPC_STAT, L.byref(ds)) == -1:
            self._fail("shmctl(IPC_STAT)")
        if mode is not None:
            ds.shm_perm.mode = (ds.shm_perm.mode & ~0o777) | _flags(False, False, mode)
        if uid is not None:
            ds.shm_perm.uid = uid
        if gid is not None:
            ds.shm_perm.gid = gid
        if L.shmctl(self.id, L.IPC_SET, L.byref(ds)) == -1:
            self._fail("shmctl(IPC_SET)")

    def remove(self) -> None:
        """Mark the segment for removal: its key is freed now, its memory at the last detach."""
        if L.shmctl(self.id, L.IPC_RMID, None) == -1:
            self._fail("shmctl(IPC_RMID)")
