"""Which System V objects are mpsysv's, which of those are garbage, and removing the garbage.

Identity comes from the objects themselves, never from sizes: a queue's two message
queues and semaphore set carry keys tagged with their control segment's slot and
sequence bits (``_names.sub_key``), a control segment starts with the queue magic, a
parcel segment starts with its own magic and its queue's control segment id, a
``mpsysv.shared`` segment ends in its trailer. Garbage is only what no process can
reach or will clean any more; an object that might be live is always left alone.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pwd
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from .._ipc import libc as L
from .._ipc import names as _names
from .._ipc.errors import raise_errno
from .._ipc.procs import SegmentMappings, alive, ipc_table
from .._ipc.futex import PosixSemaphore
from .._queue import layout as _layout
from .._queue import parcels as _parcels
from .._shm import trailer as _trailer

__all__ = ["IpcObject", "Scan", "scan", "collect_garbage", "remove", "group_of", "process_alive"]

KINDS = ("msg", "sem", "shm")
# Roles of mpsysv's objects (anything else is "foreign").
QUEUE, QUEUE_MAIN, QUEUE_STREAM, QUEUE_SEMS = "queue", "queue.main", "queue.stream", "queue.sems"
QUEUE_PARCEL = "queue.parcel"
SHM, SHAREABLE_LIST = "shm", "shareable-list"
FOREIGN = "foreign"
_SUB_ROLES = {1: QUEUE_MAIN, 2: QUEUE_STREAM, 3: QUEUE_SEMS}
_SUB_KIND = {1: "msg", 2: "msg", 3: "sem"}
_SHM_ROLES = {_trailer.PURPOSE_SHARED_MEMORY: SHM, _trailer.PURPOSE_SHAREABLE_LIST: SHAREABLE_LIST}
SHM_DEST = 0o1000
# A control segment's header can be read only while no holder is deciding whether it
# is the last one (that decision counts attachments): under the queue's holders lock.
_LOCK_TIMEOUT = 1.0
_FAILED = ctypes.c_void_p(-1).value


@dataclass
class IpcObject:
    """One kernel object as /proc/sysvipc reports it, plus what mpsysv knows of it."""

    kind: str                         # "msg", "sem" or "shm"
    id: int
    key: int                          # unsigned, as ipcs prints it
    mode: int                         # permission bits and, for shm, SHM_DEST etc.
    uid: int
    cuid: int
    fields: Dict[str, int]            # every column of /proc/sysvipc/<kind>
    role: str = FOREIGN
    name: Optional[str] = None
    queue: Optional[int] = None       # the control segment id of a queue's object
    creator_pid: Optional[int] = None
    created: Optional[float] = None   # seconds since the epoch
    creator_alive: Optional[bool] = None
    holders: Optional[int] = None     # processes attached (a queue's: its control segment's)
    state: str = "live"               # live persistent unlinked garbage suspect broken unknown
    reason: str = ""
    view: Dict[str, object] = field(default_factory=dict)

    @property
    def garbage(self) -> bool:
        return self.state == "garbage"

    @property
    def owner(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def size_text(self) -> str:
        f = self.fields
        if self.kind == "shm":
            return f"{f['size']} B"
        if self.kind == "msg":
            return f"{f['cbytes']} B/{f['qnum']} msg"
        return f"{f['nsems']} sems"

    def as_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "key": self.key, "key_hex": f"{self.key:#010x}",
                "role": self.role, "name": self.name, "queue": self.queue, "owner": self.owner,
                "uid": self.uid, "mode": f"{self.mode & 0o777:o}",
                "creator_pid": self.creator_pid, "created": self.created,
                "creator_alive": self.creator_alive, "holders": self.holders,
                "state": self.state, "reason": self.reason, "kernel": dict(self.fields),
                "mpsysv": dict(self.view)}

    def label(self) -> str:
        what = f"{self.role} {self.name!r}" if self.name else self.role
        return f"{what} ({self.kind} id={self.id} key={self.key:#010x})"


@dataclass
class Scan:
    """Every object of this IPC namespace, classified."""

    objects: List[IpcObject]

    def mpsysv(self) -> List[IpcObject]:
        return [o for o in self.objects if o.role != FOREIGN]

    def garbage(self) -> List[IpcObject]:
        return [o for o in self.objects if o.garbage]

    def queue_members(self, ctl_id: int) -> List[IpcObject]:
        """The objects of the queue whose control segment is *ctl_id* (itself first)."""
        members = [o for o in self.objects if o.queue == ctl_id]
        members.sort(key=lambda o: (o.role != QUEUE, o.role))
        return members


# --- reading the kernel's tables ---------------------------------------------------------

def _read_table(kind: str) -> List[IpcObject]:
    rows = []
    for cols in ipc_table(kind):
        ident = cols.get("msqid", cols.get("semid", cols.get("shmid", -1)))
        rows.append(IpcObject(kind, ident, cols["key"], cols["perms"], cols["uid"],
                              cols["cuid"], cols))
    return rows


def process_alive(pid: int, started_before: Optional[float] = None,
                  start_ticks: Optional[int] = None) -> bool:
    """True when *pid* is a live process that is plausibly the one meant (``procs.alive``):
    with exactly *start_ticks* when that is known, else started before *started_before*."""
    return alive(pid, start_ticks or 0, None if start_ticks else started_before)


# --- reading mpsysv's own headers --------------------------------------------------------

def _attach_readonly(shm_id: int) -> Optional[int]:
    address: Optional[int] = L.shmat(shm_id, None, L.SHM_RDONLY)
    if address is None or address == _FAILED:
        return None
    return address


class Attaching:
    """Reads a segment by attaching it read-only for a moment: what the collection, ``clean``
    and ``rm`` do. Changes the segment's ``shm_atime``, ``shm_dtime`` and ``shm_lpid``;
    ``ls`` and ``stat`` read through ``SegmentMappings`` instead, which changes nothing."""

    def read(self, shmid: int, key: int, offset: int, size: int) -> Optional[bytes]:
        address = _attach_readonly(shmid)
        if address is None:
            return None
        try:
            return ctypes.string_at(address + offset, size)
        finally:
            L.shmdt(address)


Reader = Union[Attaching, SegmentMappings]


def _counter_values(raw: bytes) -> List[int]:
    """The control segment's POSIX semaphores' values, read from a copy of its bytes."""
    copy = ctypes.create_string_buffer(raw, len(raw))
    base = ctypes.addressof(copy)
    return [PosixSemaphore(base + off).value for off in _layout.SEM_OFFS]


def _read_queue_header(ctl: IpcObject, semid: Optional[int],
                       reader: Reader) -> Optional[Dict[str, Any]]:
    """The control segment's header and counters; when *reader* attaches, under the
    queue's holders lock (so that no holder miscounts the attachments while this process
    is attached). None when it cannot be read (permissions, or the lock is busy)."""
    locked = False
    if semid is not None and isinstance(reader, Attaching):
        op = L.sembuf(_layout.SEM_HOLDERS, -1, L.SEM_UNDO)
        ts = L.relative_timespec(_LOCK_TIMEOUT)
        if L.semtimedop(semid, L.byref(op), 1, L.byref(ts)) == -1:
            return None
        locked = True
    try:
        raw = reader.read(ctl.id, ctl.key, 0, _layout.CTL_SIZE)
    finally:
        if locked:
            op = L.sembuf(_layout.SEM_HOLDERS, 1, L.SEM_UNDO)
            L.semop(semid, L.byref(op), 1)
    return None if raw is None else _parse_queue_header(raw, _counter_values(raw))


def _parse_queue_header(raw: bytes, counters: List[int]) -> Dict[str, Any]:
    info = _layout.describe(raw, counters)
    if "journal" in info:
        info["journal"] = [{"pid": e["pid"], "start_ticks": e["start_ticks"],
                            "alive": alive(e["pid"], e["start_ticks"]), **e}
                           for e in info["journal"]]
    return info


def _read_trailer(seg: IpcObject, reader: Reader) -> Optional[_trailer.Identity]:
    size = seg.fields["size"]
    if size < _trailer.TRAILER_SIZE:
        return None
    raw = reader.read(seg.id, seg.key, size - _trailer.TRAILER_SIZE, _trailer.TRAILER_SIZE)
    if raw is None:
        return None
    identity = _trailer.parse_identity(raw)
    if identity is None or identity.size + _trailer.TRAILER_SIZE != size:
        return None
    return identity


def _ctl_magic_is_blank(ctl: IpcObject, reader: Reader) -> bool:
    magic = reader.read(ctl.id, ctl.key, 0, 8)
    return magic is not None and not magic.strip(b"\0")


def _unread_reason(ctl: IpcObject, reader: Reader) -> str:
    if isinstance(reader, SegmentMappings) and ctl.fields["nattch"] == 0:
        return ("no process has it attached, so it was not read; --attach reads it, "
                "attaching it read-only for a moment")
    if os.geteuid() not in (0, ctl.uid, ctl.cuid):
        return (f"not readable by this user (it belongs to {ctl.owner}, mode "
                f"{ctl.mode & 0o777:o})")
    return "header not readable (permissions, or its queue's state lock is busy)"


# --- classification ----------------------------------------------------------------------

def group_of(obj: IpcObject) -> Optional[Tuple[int, int]]:
    """The (slot, sequence bits) of the control segment a tagged key names, else None."""
    parsed = _names.parse_sub_key(obj.key)
    return None if parsed is None else parsed[1:]


def _slot(ident: int) -> Tuple[int, int]:
    """What a tagged key keeps of an id: the 15-bit slot index and 7 sequence bits."""
    parsed = _names.parse_sub_key(_names.sub_key(ident, 1))
    return parsed[1], parsed[2]


def scan(*, inspect: bool = True, uid: Optional[int] = None, attach: bool = True) -> Scan:
    """Classify every object of this IPC namespace.

    *inspect* reads every readable segment's header or trailer (what ``ls`` shows);
    without it only the segments that may be garbage are read, which keeps the automatic
    collection cheap. Segments are read by attaching them read-only for a moment, or,
    with ``attach=False``, only through the memory of a process that has them attached
    (``SegmentMappings``: nothing about the objects changes, and a segment no process
    has attached is classified from the kernel's tables alone). The tables are read in the order
    message queues, semaphore sets, segments: a queue makes its control segment before
    its other objects, so any queue object seen has its control segment listed after
    it unless that segment is really gone. With *uid*, segments of other users are not
    read (only what the collection may remove is looked at).
    """
    msgs = _read_table("msg")
    sems = _read_table("sem")
    shms = _read_table("shm")
    by_slot = {_slot(s.id): s for s in shms}
    groups: Dict[Tuple[int, int], Dict[int, IpcObject]] = {}
    for obj in msgs + sems:
        parsed = _names.parse_sub_key(obj.key)
        if parsed is None:
            continue
        purpose, slot, seq7 = parsed
        if _SUB_KIND.get(purpose) != obj.kind or (obj.kind == "sem"
                                                  and obj.fields["nsems"] != _layout.NSEMS):
            continue  # a foreign object whose key happens to carry the tag
        groups.setdefault((slot, seq7), {})[purpose] = obj

    ctls: Dict[int, IpcObject] = {}
    for where, members in groups.items():
        ctl = by_slot.get(where)
        for purpose, obj in members.items():
            obj.role = _SUB_ROLES[purpose]
        if ctl is not None:
            ctl.role, ctl.queue = QUEUE, ctl.id
            ctls[ctl.id] = ctl
            for obj in members.values():
                obj.queue = ctl.id
            continue
        if len(members) >= 2:
            reason = ("its queue's control segment is gone: every process that held the "
                      "queue exited or was killed")
            for obj in members.values():
                obj.state, obj.reason = "garbage", reason
        else:
            # One lone object with a tagged key could be a foreign key that looks like ours.
            for obj in members.values():
                obj.state = "suspect"
                obj.reason = ("a lone object with an mpsysv queue key whose queue is gone; "
                              "not removed automatically (`python -m mpsysv rm ID` does)")

    shm_ids = {s.id for s in shms}
    reader: Reader = Attaching() if attach else SegmentMappings()
    for seg in shms:
        if uid is not None and uid not in (seg.uid, seg.cuid):
            continue
        if seg.id in ctls:
            _classify_ctl(seg, groups.get(_slot(seg.id), {}), inspect, reader)
        elif seg.key == 0 and (inspect or _may_be_orphan_parcel(seg)):
            if not _classify_parcel(seg, shm_ids, reader):
                _classify_segment(seg, inspect, reader)
        elif inspect or _may_be_garbage_segment(seg):
            _classify_segment(seg, inspect, reader)
    for seg in shms:
        owner = ctls.get(seg.queue) if seg.role == QUEUE_PARCEL and seg.queue else None
        if owner is not None:
            seg.name = owner.name
    for ctl in ctls.values():
        for obj in groups.get(_slot(ctl.id), {}).values():
            obj.name, obj.holders = ctl.name, ctl.holders
            obj.creator_pid, obj.created = ctl.creator_pid, ctl.created
            obj.creator_alive = ctl.creator_alive
            if ctl.state in ("garbage", "persistent", "unknown"):
                obj.state, obj.reason = ctl.state, ctl.reason
    return Scan(msgs + sems + shms)


def _classify_ctl(ctl: IpcObject, members: Dict[int, IpcObject], inspect: bool,
                  reader: Reader) -> None:
    f = ctl.fields
    ctl.holders = f["nattch"]
    ctl.creator_pid = f["cpid"] or None
    blank_named = (ctl.key != 0 and f["size"] == _layout.CTL_SIZE and f["nattch"] == 0
                   and f["cpid"] and not process_alive(f["cpid"]) and len(members) >= 2)
    if blank_named and _ctl_magic_is_blank(ctl, reader):
        ctl.state = "garbage"
        ctl.creator_alive = False
        ctl.reason = ("a named queue whose creator died while creating it (its name could "
                      "never be used again)")
        return
    if not inspect:
        return
    sems = members.get(3)
    header = _read_queue_header(ctl, sems.id if sems is not None else None, reader)
    if header is None:
        ctl.state, ctl.reason = "unknown", _unread_reason(ctl, reader)
        return
    ctl.view = header
    if "version" not in header:
        ctl.state, ctl.reason = "live", "being created"
        ctl.creator_alive = process_alive(f["cpid"])
        return
    ctl.name = header["name"]
    ctl.created = header["created"]
    ctl.creator_pid = header["creator_pid"]
    same_ns = f["cpid"] == header["creator_pid"]
    ctl.creator_alive = (process_alive(header["creator_pid"], header["created"])
                         if same_ns else None)
    if header["named"] and ctl.mode & SHM_DEST:
        ctl.state = "unlinked"
        ctl.reason = "removed by name; the kernel frees it when its last holder detaches"
        return
    expected = {1: header["main_qid"], 2: header["stream_qid"], 3: header["semid"]}
    missing = [p for p, ident in expected.items()
               if p not in members or members[p].id != ident]
    if missing:
        ctl.state = "broken"
        ctl.reason = ("its " + ", ".join(_SUB_ROLES[p] for p in missing) + " was removed "
                      "from outside (ipcrm, RemoveIPC=yes); every call raises RemovedError")
    elif header["named"]:
        ctl.state = "persistent"
        ctl.reason = "a named queue: it lives until unlink() or `python -m mpsysv rm`"


def _may_be_garbage_segment(seg: IpcObject) -> bool:
    """A cheap filter: unattached, not being removed, created by a process that is gone."""
    f = seg.fields
    return (f["nattch"] == 0 and not seg.mode & SHM_DEST and f["cpid"] != 0
            and f["size"] >= _trailer.TRAILER_SIZE and not process_alive(f["cpid"]))


def _may_be_orphan_parcel(seg: IpcObject) -> bool:
    return seg.fields["nattch"] == 0 and not seg.mode & SHM_DEST


def _classify_parcel(seg: IpcObject, shm_ids: Set[int], reader: Reader) -> bool:
    """True when *seg* is a parcel (a large object, or a pooled segment, of a queue)."""
    if seg.fields["size"] < _parcels.HEADER.size:
        return False
    raw = reader.read(seg.id, seg.key, 0, _parcels.HEADER.size)
    if raw is None:
        return False
    magic, owner, writer, created = _parcels.HEADER.unpack(raw)[:4]
    if magic != _parcels.MAGIC:
        return False
    seg.role, seg.queue, seg.holders = QUEUE_PARCEL, owner, seg.fields["nattch"]
    seg.creator_pid, seg.created = writer, created
    seg.creator_alive = process_alive(writer, created)
    seg.view = {"magic": magic.decode(), "queue_control_segment": owner, "writer_pid": writer,
                "created": created}
    if seg.mode & SHM_DEST:
        seg.state = "unlinked"
        seg.reason = ("a zero-copy parcel: a receiver's arrays are views of it; freed when "
                      "the last process mapping it lets go")
    elif owner not in shm_ids and seg.fields["nattch"] == 0:
        seg.state = "garbage"
        seg.reason = ("a parcel (large object or pooled segment) of a queue that is gone: "
                      "every process that held the queue exited or was killed")
    return True


def _classify_segment(seg: IpcObject, inspect: bool, reader: Reader) -> None:
    f = seg.fields
    seg.holders = f["nattch"]
    if inspect and f["size"] == _layout.CTL_SIZE:
        if reader.read(seg.id, seg.key, 0, 8) == _layout.MAGIC:
            # A queue without its message queues: they were removed from outside.
            seg.role = QUEUE
            seg.queue = seg.id
            _classify_ctl(seg, {}, inspect, reader)
            return
    identity = _read_trailer(seg, reader)
    if identity is None:
        return
    seg.role = _SHM_ROLES.get(identity.purpose, SHM)
    seg.name = identity.name
    seg.creator_pid = identity.creator_pid
    seg.created = identity.ctime_ns / 1e9
    tracked = bool(identity.flags & _trailer.FLAG_TRACKED)
    same_ns = f["cpid"] == identity.creator_pid
    creator_alive = process_alive(identity.creator_pid, start_ticks=identity.creator_start)
    tracker_alive = bool(identity.tracker_pid) and process_alive(
        identity.tracker_pid, start_ticks=identity.tracker_start)
    seg.creator_alive = creator_alive if same_ns else None
    seg.view = {"name": identity.name, "size": identity.size, "format_version": identity.version,
                "purpose": seg.role, "tracked": tracked,
                "hugetlb": bool(identity.flags & _trailer.FLAG_HUGETLB),
                "creator_pid": identity.creator_pid, "creator_start_ticks": identity.creator_start,
                "created_ns": identity.ctime_ns, "tracker_pid": identity.tracker_pid,
                "tracker_start_ticks": identity.tracker_start, "tracker_alive": tracker_alive}
    if seg.mode & SHM_DEST:
        seg.state = "unlinked"
        seg.reason = "removed by name; the kernel frees it when its last holder detaches"
    elif not tracked:
        seg.state = "persistent"
        seg.reason = "track=False: it lives until unlink() or `python -m mpsysv rm`"
    elif (same_ns and not creator_alive and not tracker_alive and f["nattch"] == 0):
        seg.state = "garbage"
        seg.reason = ("track=True, and its creator and the creator's tracker are gone "
                      "without removing it (both killed)")


# --- removal ---------------------------------------------------------------------------------

def _still_same(obj: IpcObject) -> bool:
    """The id still names the object that was classified (same key, nothing attached)."""
    if obj.kind == "msg":
        msq = L.msqid_ds()
        if L.msgctl(obj.id, L.IPC_STAT, L.byref(msq)) == -1:
            return False
        return bool(msq.msg_perm.key & 0xFFFFFFFF == obj.key)
    if obj.kind == "sem":
        sem = L.semid_ds()
        if L.semctl(obj.id, 0, L.IPC_STAT, ctypes.addressof(sem)) == -1:
            return False
        return bool(sem.sem_perm.key & 0xFFFFFFFF == obj.key)
    ds = L.shmid_ds()
    if L.shmctl(obj.id, L.IPC_STAT, L.byref(ds)) == -1:
        return False
    if ds.shm_perm.key & 0xFFFFFFFF != obj.key:
        return False
    if obj.state != "garbage":
        return True
    if obj.role == QUEUE_PARCEL and L.shmctl(obj.queue, L.IPC_STAT, L.byref(L.shmid_ds())) == 0:
        # Its queue was created while the table was being read: a live parcel after all.
        return False
    return bool(ds.shm_nattch == 0)


def remove(obj: IpcObject) -> None:
    """``IPC_RMID`` *obj* by id (an ``OSError`` subclass when that fails)."""
    if obj.kind == "msg":
        rc, call = L.msgctl(obj.id, L.IPC_RMID, None), "msgctl(IPC_RMID)"
    elif obj.kind == "sem":
        rc, call = L.semctl(obj.id, 0, L.IPC_RMID, 0), "semctl(IPC_RMID)"
    else:
        rc, call = L.shmctl(obj.id, L.IPC_RMID, None), "shmctl(IPC_RMID)"
    if rc == -1:
        raise_errno(L.get_errno(), call, f"{obj.kind} id={obj.id}")


def _ours(obj: IpcObject) -> bool:
    me = os.geteuid()
    return obj.uid == me or obj.cuid == me


_lock = threading.Lock()
_collected = False


def collect_garbage(*, force: bool = False, dry_run: bool = False, all_users: bool = False,
                    inspect: bool = False
                    ) -> Tuple[List[IpcObject], List[Tuple[Optional[IpcObject], str]]]:
    """Remove mpsysv's garbage in this IPC namespace: ``(removed, failed)``.

    Runs once per program (fork children inherit "done"; ``force=True`` runs again).
    Removes only this user's objects unless *all_users*. Never raises: a failure to
    read or remove is reported in *failed* and the object is left as it is.
    """
    global _collected
    with _lock:
        if _collected and not force:
            return [], []
        _collected = True
        try:
            found = scan(inspect=inspect, uid=None if all_users else os.geteuid())
        except Exception as exc:  # noqa: BLE001 - collection must never break a program
            return [], [(None, f"scan failed: {exc}")]
        removed: List[IpcObject] = []
        failed: List[Tuple[Optional[IpcObject], str]] = []
        # A queue's message queues and semaphore set go before its control segment.
        order = sorted(found.garbage(), key=lambda o: (o.kind == "shm", o.id))
        for obj in order:
            if not (all_users or _ours(obj)):
                continue
            if dry_run:
                removed.append(obj)
                continue
            try:
                if not _still_same(obj):
                    continue
                remove(obj)
            except OSError as exc:
                failed.append((obj, str(exc)))
            else:
                removed.append(obj)
        return removed, failed


def collect_at_exit() -> None:
    """This process let go of a queue others still hold: if they are all killed, no
    holder is left to remove it, so collect garbage once more when this program ends
    (a forked child of ours killed after we let go is the usual case)."""
    me = os.getpid()
    if _exit_collect[0] != me:
        _exit_collect[0] = me
        atexit.register(_collect_now, me)


def _collect_now(pid: int) -> None:
    if os.getpid() == pid:  # not in a fork child that inherited the handler
        collect_garbage(force=True)


_exit_collect = [0]  # the pid that registered _collect_now


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
