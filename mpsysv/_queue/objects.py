"""The kernel objects of one queue, attached in this process.

* a control segment (16 KiB, see ``layout``): identity, the other objects' ids,
  futex counters, crash markers, the parcel table and the journal; its attach count
  is the number of processes holding the queue;
* the main message queue: exactly one message per object (a whole pickle, or the
  head of a stream), so ``msg_qnum`` is the exact object count and user ``mtype``
  selection works as msgrcv(2) says;
* the stream queue: continuation frames of the one large object in flight (streams);
* a semaphore set: the stream lock and the state lock (both ``SEM_UNDO``, so a
  killed holder releases them) and the join gate of a JoinableQueue.

``QueueObjects`` creates, opens and removes them, and offers the few calls the
protocol's components share: send one message, look at the main queue, take and
give the semaphore-set locks, sleep on a counter while watching for removal. It
knows nothing of slots, tasks, streams or parcels.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
import weakref
from typing import Callable, Iterator, NoReturn, Optional

from .._ipc import libc as L
from .._ipc import names as _names
from .._ipc.errors import (RemovedError, WHY_REMOVED, message_size_error, permission_denied,
                           raise_errno, removed)
from .._ipc.futex import PosixSemaphore
from .._ipc.mutex import RobustMutex
from . import wire as _wire
from .layout import (_REMOVED_OFF, CTL_SIZE, FREE_SLOTS, MAGIC, NSEMS, ROOM_WAITERS, ROOM_WAKEUPS,
                     SEM_HOLDERS, SEM_OFFS, SEM_STREAM, SLOT_WAITERS, STATE_LOCK_OFF, TIMED_WAITERS,
                     TIMED_WAKEUPS, TYPED_WAITERS, pack_header, pack_name, parse_header)

__all__ = ["QueueObjects", "NoCopy"]

_ALIVE_CHECK = 1.0  # how often a futex wait checks that the queue was not removed

_E = errno
_EAGAIN, _EINTR = errno.EAGAIN, errno.EINTR
_get_errno = L.get_errno
_msgsnd, _size_arg, _sizes = L.msgsnd_fast, L.size_arg, L._size_args
_NOWAIT = L.IPC_NOWAIT
_TYPE1 = (1).to_bytes(8, "little")
_NUDGE, _NUDGE_MTYPE = bytes((_wire.NUDGE,)), _wire.NUDGE_MTYPE
_getpid = os.getpid


class NoCopy(Exception):
    """The kernel cannot copy a queued message (no ``MSG_COPY``)."""


class QueueObjects:
    """One queue's kernel objects, attached in this process."""

    def __init__(self, ctl_id: int, address: int):
        self.ctl_id = ctl_id
        self._address = address
        self._mem = (ctypes.c_char * CTL_SIZE).from_address(address)
        self._view = memoryview(self._mem).cast("B")
        header = parse_header(self._view)
        if header is None:
            raise ValueError(f"segment id={ctl_id} is not an mpsysv queue (bad magic "
                             f"{bytes(self._view[:8])!r})")
        self.kind, self.maxsize, self.creator, self.created = (header.kind, header.maxsize,
                                                               header.creator, header.created)
        self.named, self.mode, self.name = header.named, header.mode, header.name
        self.main_qid, self.stream_qid, self.semid, self.msgmax = (
            header.main_qid, header.stream_qid, header.semid, header.msgmax)
        self.sems = [PosixSemaphore(address + off, f"{self.what()} counter {i}")
                     for i, off in enumerate(SEM_OFFS)]
        # The count word of each glibc sem_t (checked at import): read without a call.
        self.words = [self._view[off:off + 4].cast("I") for off in SEM_OFFS]
        (self._timed_waiters_word, self._room_waiters_word, self._room_wakeups_word,
         self._slot_waiters_word, self._typed_waiters_word) = (
            self.words[i] for i in (TIMED_WAITERS, ROOM_WAITERS, ROOM_WAKEUPS, SLOT_WAITERS,
                                    TYPED_WAITERS))
        self.state_lock = RobustMutex(address + STATE_LOCK_OFF, f"{self.what()} state lock")
        self._detached = False
        self._sleepers = 0  # threads sleeping on a counter in the segment (see sleep_on)
        self._sleepers_lock = threading.Lock()

    # -- creation and opening -------------------------------------------------------

    @classmethod
    def create(cls, kind: int, maxsize: int, name: Optional[str] = None,
               mode: int = 0o600):
        """Create the four objects; a named queue's control segment is found by its name."""
        key = _names.name_key("queue", name) if name else L.IPC_PRIVATE
        flags = L.IPC_CREAT | L.IPC_EXCL | mode
        ctl_id = L.shmget(key, CTL_SIZE, flags)
        if ctl_id == -1:
            err = L.get_errno()
            raise_errno(err, "shmget", f"queue {name!r}" if name else "queue control segment",
                        "a queue of that name exists already: open it without create=True, "
                        f"or remove it first with unlink() or `python -m mpsysv rm {name}`"
                        if err == _E.EEXIST else "")
        address = _attach(ctl_id)
        created = []
        try:
            if not name:
                # Marked for removal at once: the kernel frees it when the last holder detaches,
                # even if every holder was killed.
                L.shmctl(ctl_id, L.IPC_RMID, None)
            main_qid = _create_sub(L.msgget, ctl_id, 1, mode)
            created.append(("msg", main_qid))
            stream_qid = _create_sub(L.msgget, ctl_id, 2, mode)
            created.append(("msg", stream_qid))
            msgmax = _message_size(main_qid, stream_qid)
            semid = _create_sub(lambda k, f: L.semget(k, NSEMS, f), ctl_id, 3, mode)
            created.append(("sem", semid))
            for num in (SEM_STREAM, SEM_HOLDERS):
                if L.semctl(semid, num, L.SETVAL, 1) == -1:
                    raise_errno(L.get_errno(), "semctl(SETVAL)", f"semaphore set id={semid}")
            view = memoryview((ctypes.c_char * CTL_SIZE).from_address(address)).cast("B")
            if name:
                pack_name(view, name)
            for i, off in enumerate(SEM_OFFS):
                PosixSemaphore(address + off).init(
                    maxsize if i == FREE_SLOTS and maxsize > 0 else 0)
            RobustMutex(address + STATE_LOCK_OFF).init()
            # The magic goes in last: openers by name wait for it.
            pack_header(view, kind, maxsize, _getpid(), name, mode, time.time(), main_qid,
                        stream_qid, semid, msgmax)
        except BaseException:
            for what, ident in created:
                (L.msgctl if what == "msg" else _semrm)(ident, L.IPC_RMID, None)
            L.shmdt(address)
            if name:
                L.shmctl(ctl_id, L.IPC_RMID, None)
            raise
        return cls(ctl_id, address)

    @classmethod
    def open_name(cls, name: str):
        """Attach the named queue; ``FileNotFoundError`` when there is none."""
        key = _names.name_key("queue", name)
        ctl_id = L.shmget(key, 0, 0)
        if ctl_id == -1:
            err = L.get_errno()
            if err == _E.EACCES:
                raise _permission_error("shmget", name, key)
            raise_errno(err, "shmget", f"queue {name!r}",
                        "no queue of that name: create=True makes one"
                        if err == _E.ENOENT else "")
        address = L.shmat(ctl_id, None, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            err = L.get_errno()
            if err == _E.EACCES:
                raise _permission_error("shmat", name, key)
            raise_errno(err, "shmat", f"queue {name!r} (control segment id={ctl_id})")
        view = memoryview((ctypes.c_char * CTL_SIZE).from_address(address)).cast("B")
        deadline = time.monotonic() + 2.0
        while bytes(view[:8]) != MAGIC and time.monotonic() < deadline:
            time.sleep(0.001)  # the creator is still initialising it
        try:
            chan = cls(ctl_id, address)
        except ValueError:
            L.shmdt(address)
            raise ValueError(f"the segment for queue name {name!r} is not an mpsysv queue "
                             "(a key collision or a foreign segment); refusing it") from None
        if chan.name != name:
            chan.detach()
            raise ValueError(f"queue name {name!r} collides with the mpsysv queue "
                             f"{chan.name!r}; pick another name")
        return chan

    @classmethod
    def open_id(cls, ctl_id: int, expect: tuple):
        """Attach by control segment id (what a pickled handle carries)."""
        address = L.shmat(ctl_id, None, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            err = L.get_errno()
            if err in (_E.EINVAL, _E.EIDRM):
                raise removed("shmat", f"mpsysv queue (control segment id={ctl_id})",
                              "no longer exists", err)
            raise_errno(err, "shmat", f"queue control segment id={ctl_id}")
        chan = cls(ctl_id, address)
        if (chan.main_qid, chan.stream_qid, chan.semid) != expect:
            chan.detach()
            raise RemovedError(_E.EIDRM, f"mpsysv queue (control segment id={ctl_id}) was "
                                         f"replaced by another queue (the first was "
                                         f"{WHY_REMOVED})")
        return chan

    def identity(self) -> tuple:
        return self.ctl_id, (self.main_qid, self.stream_qid, self.semid)

    def what(self) -> str:
        label = f"name={self.name!r}" if getattr(self, "name", None) else f"id={self.ctl_id}"
        return f"mpsysv queue {label}"

    def detach(self) -> None:
        if not self._detached:
            self._detached = True
            self._unmap()

    def _unmap(self) -> bool:
        """Unmap the control segment; False when another thread sleeps on a counter in
        it: unmapping now would crash that thread, so it is unmapped once nothing can
        use it any more (this object is garbage)."""
        with self._sleepers_lock:
            if self._sleepers:
                weakref.finalize(self, L.shmdt, self._address)
                return False
        for word in self.words:
            word.release()
        self._view.release()
        L.shmdt(self._address)
        return True

    # -- one message ----------------------------------------------------------------

    def try_send(self, payload, mtype: int, qid: Optional[int] = None,
                 flags: int = _NOWAIT) -> bool:
        """msgsnd *payload* typed *mtype* to *qid* (None: the main queue, waking a getter
        that waits on the futex, see ``_wake_timed``) with *flags* (by default without
        blocking); False when the queue is full.

        Every message goes out here; a small object's path is this one call. The
        message is built as one bytes object (type word + payload): cheaper than a
        copy into a pooled buffer, and safe to share between threads.
        """
        data = (_TYPE1 if mtype == 1 else mtype.to_bytes(8, "little")) + payload
        n = len(payload)
        size = _sizes.get(n) or _size_arg(n)
        while _msgsnd(self.main_qid if qid is None else qid, data, size, flags) == -1:
            err = _get_errno()
            if err == _EAGAIN:
                return False
            if err != _EINTR:
                self.fail("msgsnd", err)
        if qid is None and self._timed_waiters_word[0] and not (flags == 0 and self._detached):
            self._wake_timed()  # (a blocking send may return after a detach)
        return True

    def _wake_timed(self) -> None:
        """A message went in: wake a getter waiting on the futex (it looks again after
        waking). One is enough for one message, unless some wait for one mtype: the
        one woken might not want it, so then every waiter looks."""
        words = self.words
        missing = words[TIMED_WAITERS][0] - words[TIMED_WAKEUPS][0]
        if missing > 0:
            wake = self.sems[TIMED_WAKEUPS]
            for _ in range(missing if self._typed_waiters_word[0] else 1):
                wake.post()

    def nudge_getters(self, n: int) -> None:
        """Send *n* nudges (``wire``): each wakes one getter asleep in ``msgrcv``. A
        full queue takes none, and needs none: a getter of any type is not asleep then."""
        for _ in range(n):
            if not self.try_send(_NUDGE, _NUDGE_MTYPE, self.main_qid):  # (no futex wake-up)
                return

    def take_back_nudges(self) -> None:
        """Receive every nudge still in the main queue (nobody needed it)."""
        raw = ctypes.create_string_buffer(8 + 8)
        while True:
            n = L.msgrcv(self.main_qid, raw, 8, _NUDGE_MTYPE, L.IPC_NOWAIT | L.MSG_NOERROR)
            if n < 0:
                err = L.get_errno()
                if err == _E.ENOMSG:
                    return
                if err != _EINTR:
                    self.fail("msgrcv", err)

    # -- looking at the main queue ----------------------------------------------------

    def stat_main(self) -> L.msqid_ds:
        ds = L.msqid_ds()
        if L.msgctl(self.main_qid, L.IPC_STAT, L.byref(ds)) == -1:
            self.fail("msgctl(IPC_STAT)", L.get_errno())
        return ds

    def queue_state(self) -> tuple:
        """``(messages in the main queue, pid of the last process that took one)``."""
        ds = self.stat_main()
        return ds.msg_qnum, ds.msg_lrpid

    def queued_messages(self) -> Iterator[memoryview]:
        """The messages in the main queue, copied without taking them (``MSG_COPY``),
        last to first: a message that stays in the queue while this runs is never
        missed, because takers only move the messages behind them forward, towards the
        indices still to come. Raises ``NoCopy`` where the kernel cannot copy
        messages (built without ``CONFIG_CHECKPOINT_RESTORE``)."""
        raw = (ctypes.c_char * (8 + self.msgmax))()
        view = memoryview(raw).cast("B")
        flags = L.IPC_NOWAIT | L.MSG_COPY
        index = self.stat_main().msg_qnum - 1
        while index >= 0:
            n = L.msgrcv(self.main_qid, raw, self.msgmax, index, flags)
            if n < 0:
                err = L.get_errno()
                if err == _EINTR:
                    continue
                if err in (_E.ENOSYS, _E.EINVAL, _E.EPERM):
                    raise NoCopy
                if err != _E.ENOMSG:  # (gone meanwhile: taken)
                    self.fail("msgrcv(MSG_COPY)", err)
            else:
                yield view[8:8 + n]
            index -= 1

    # -- the semaphore-set locks -------------------------------------------------------

    def lock(self, num: int) -> None:
        op = L.sembuf(num, -1, L.SEM_UNDO)
        while L.semop(self.semid, L.byref(op), 1) == -1:
            err = L.get_errno()
            if err != _E.EINTR:
                self.fail("semop", err)

    def unlock(self, num: int) -> None:
        op = L.sembuf(num, 1, L.SEM_UNDO)
        if L.semop(self.semid, L.byref(op), 1) == -1:
            err = L.get_errno()
            if err not in (_E.EIDRM, _E.EINVAL):
                self.fail("semop", err)

    # -- sleeping on a counter ---------------------------------------------------------

    def wait(self, sem: PosixSemaphore, deadline: Optional[float],
             every: float = _ALIVE_CHECK) -> bool:
        """Take *sem* by *deadline*, checking *every* second or so that the queue still
        exists: a futex in our own mapping would never report a removal from outside."""
        while True:
            got = self.wait_slice(sem, deadline, every)
            if got is not None:
                return got

    def wait_slice(self, sem: PosixSemaphore, deadline: Optional[float],
                   every: float) -> Optional[bool]:
        """One slice of ``wait``: True (taken), False (*deadline* passed) or None (*every*
        seconds passed and the queue still exists: the caller may look around)."""
        step = time.monotonic() + every
        if self.sleep_on(sem, step if deadline is None or deadline > step else deadline):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        self.stat_main()
        return None

    def sleep_on(self, sem: PosixSemaphore, deadline: Optional[float]) -> bool:
        """``sem.acquire(deadline)``, counted: while a thread sleeps on a counter in the
        control segment, a ``detach()`` by another thread leaves the mapping in place
        (unmapped when the channel is garbage), and the sleeper then raises."""
        with self._sleepers_lock:
            self._sleepers += 1
        try:
            return sem.acquire(deadline)
        finally:
            with self._sleepers_lock:
                self._sleepers -= 1
            if self._detached:
                raise ValueError(f"{self.what()} was closed in this process while a thread "
                                 "waited in it")

    # -- lifetime ---------------------------------------------------------------------

    def holders(self) -> int:
        ds = L.shmid_ds()
        if L.shmctl(self.ctl_id, L.IPC_STAT, L.byref(ds)) == -1:
            return 0
        return ds.shm_nattch

    def _remove_objects(self) -> None:
        """Remove the message queues and the semaphore set (not the control segment)."""
        L.msgctl(self.main_qid, L.IPC_RMID, None)
        L.msgctl(self.stream_qid, L.IPC_RMID, None)
        L.semctl(self.semid, 0, L.IPC_RMID, 0)

    def fail(self, call: str, err: int) -> NoReturn:
        if err in (_E.EIDRM, _E.EINVAL):
            if not self._detached:
                self._view[_REMOVED_OFF] = 1  # (for the calls that make no system call)
            raise removed(call, self.what(), "was removed while in use")
        raise_errno(err, call, self.what())


def _permission_error(call: str, name: str, key: int) -> PermissionError:
    """A PermissionError that says whose queue it is and what its mode allows."""
    return permission_denied(call, f"mpsysv queue {name!r}", key,
                             f"does not let uid {os.getuid()} in",
                             "ask its owner to create it with mode=0o660 or 0o666")


def _attach(ctl_id: int) -> int:
    address = L.shmat(ctl_id, None, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        raise_errno(L.get_errno(), "shmat", f"queue control segment id={ctl_id}")
    return address


def attach_view(ctl_id: int):
    """``(address, view)`` of a fresh mapping of the control segment *ctl_id*."""
    address = _attach(ctl_id)
    return address, memoryview((ctypes.c_char * CTL_SIZE).from_address(address)).cast("B")


def _semrm(semid, cmd, _arg):
    return L.semctl(semid, 0, cmd, 0)


# The smallest message size a queue works with: a stream head or frame plus some payload.
MIN_MESSAGE = 128


def _message_size(*qids: int) -> int:
    """The size of the queue's messages: ``msgmax``, or the queues' capacity (``msgmnb``
    at creation) when that is smaller, since a message larger than its queue's capacity
    waits forever. Larger objects are framed or sent as parcels as usual."""
    size = L.read_limit("msgmax", 8192)
    ds = L.msqid_ds()
    for qid in qids:
        if L.msgctl(qid, L.IPC_STAT, L.byref(ds)) == -1:
            raise_errno(L.get_errno(), "msgctl(IPC_STAT)", f"queue message queue id={qid}")
        size = min(size, ds.msg_qbytes)
    if size < MIN_MESSAGE:
        raise message_size_error(size, MIN_MESSAGE)
    return size


def _create_sub(get: Callable, ctl_id: int, purpose: int, mode: int) -> int:
    """Create the object serving *purpose* under its tagged key, clearing a stale one."""
    key = _names.sub_key(ctl_id, purpose)
    for _ in range(2):
        ident = get(key, L.IPC_CREAT | L.IPC_EXCL | mode)
        if ident != -1:
            return ident
        err = L.get_errno()
        if err != _E.EEXIST:
            break
        # A leftover of a dead queue whose control segment had this slot: garbage.
        stale = get(key, 0)
        if stale != -1:
            if purpose == 3:
                L.semctl(stale, 0, L.IPC_RMID, 0)
            else:
                L.msgctl(stale, L.IPC_RMID, None)
    raise_errno(L.get_errno(), "msgget" if purpose < 3 else "semget",
                f"queue object key={key:#010x}")
