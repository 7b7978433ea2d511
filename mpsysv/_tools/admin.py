"""``python -m mpsysv ls|stat|clean|rm``: look at mpsysv's kernel objects and clean up.

A thin layer over ``_gc.collect``: it finds and classifies, this module prints and removes on
request. Exit codes are stable for scripts (see ``EXIT_*``); ``--json`` prints one
JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from .._gc import collect as _gc
from .._ipc.names import check_name, name_key

__all__ = ["add_subcommands", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NOT_FOUND",
           "EXIT_AMBIGUOUS", "EXIT_REFUSED"]

EXIT_OK = 0          # done (clean: also when there was nothing to do)
EXIT_FAILED = 1      # a removal or a kernel call failed (permissions, ...)
EXIT_USAGE = 2       # bad arguments (argparse)
EXIT_NOT_FOUND = 3   # no object matches NAME|ID
EXIT_AMBIGUOUS = 4   # several objects match: narrow it with --type
EXIT_REFUSED = 5     # rm of an object that is not mpsysv's, without --force

# What each command can exit with (the EXIT_* codes it uses).
_EPILOG_LS = "exit codes: 0 ok, 2 bad usage"
_EPILOG_STAT = ("exit codes: 0 ok, 2 bad usage (or a TARGET that is not a valid name or key), "
                "3 not found, 4 ambiguous (narrow it with --type)")
_EPILOG_CLEAN = ("exit codes: 0 ok (also when there was nothing to do), 1 a removal failed, "
                 "2 bad usage")
_EPILOG_RM = ("exit codes: 0 ok, 1 a removal failed or the object was removed already, 2 bad "
              "usage, 3 not found, 4 ambiguous (narrow it with --type), 5 refused (not "
              "mpsysv's: use --force)")
_TARGET_HELP = ("a queue or segment name, a kernel id (as ipcs shows it), or a key written "
                "0x... (as ipcs shows it)")
_ATTACH_HELP = ("also read segments no process has attached, by attaching them read-only for a "
                "moment (this sets their shm_atime, shm_dtime and shm_lpid, as any attach does); "
                "without it nothing about any object changes, as with ipcs")
_TYPES = ("queue", "segment", "msg", "sem", "shm")
_ROLE_ORDER = {_gc.QUEUE: 0, _gc.QUEUE_MAIN: 1, _gc.QUEUE_STREAM: 2, _gc.QUEUE_SEMS: 3,
               _gc.QUEUE_PARCEL: 4}


def add_subcommands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser(
        "ls", help="list mpsysv's queues, semaphore sets and segments",
        description="A table of mpsysv's System V objects in this IPC namespace: role, name, "
                    "key, id, owner, mode, size or bytes/messages, processes attached, creator "
                    "(and whether it is alive), and state: live, persistent (named; lives "
                    "until removed), unlinked (removed by name, freed when its last holder "
                    "detaches), garbage ('clean' removes it), suspect, broken, unknown (not "
                    "readable). Only reads: the kernel's tables, IPC_STAT, and segments "
                    "through the memory of a process that has them attached.",
        epilog=_EPILOG_LS)
    p.add_argument("-a", "--all", action="store_true",
                   help="also list System V objects that are not mpsysv's")
    p.add_argument("--attach", action="store_true", help=_ATTACH_HELP)
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")
    p.set_defaults(func=cmd_ls)

    p = subparsers.add_parser(
        "stat", help="everything about one queue or segment",
        description="Everything the kernel reports about the object (IPC_STAT, semaphore "
                    "values, waiters) and mpsysv's view (queue header, counters, stream and "
                    "crash markers, segment trailer). TARGET is a queue or segment name, a "
                    "kernel id, or a key written 0x....",
        epilog=_EPILOG_STAT)
    p.add_argument("target", metavar="NAME|ID|0xKEY", help=_TARGET_HELP)
    p.add_argument("--type", choices=_TYPES,
                   help="what TARGET names: a queue or segment by name; msg, sem or shm for a "
                        "kernel object (with a NAME: that queue's message queue, semaphore set "
                        "or control segment)")
    p.add_argument("--attach", action="store_true", help=_ATTACH_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stat)

    p = subparsers.add_parser(
        "clean", help="remove garbage (objects no process holds or will clean)",
        description="Remove mpsysv's garbage: the message queues and semaphore set of a queue "
                    "whose every holder is gone, track=True segments whose program and tracker "
                    "were both killed, named queues whose creator died while creating them. "
                    "Live objects, named queues and track=False segments are never touched.",
        epilog=_EPILOG_CLEAN)
    p.add_argument("-n", "--dry-run", action="store_true", help="only print what would go")
    p.add_argument("--all-users", action="store_true",
                   help="also other users' garbage (root); default: your own objects only")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_clean)

    p = subparsers.add_parser(
        "rm", help="remove a queue (all its objects) or a segment",
        description="Remove a queue (its control segment, message queues and semaphore set) "
                    "or a segment now, like unlink(): processes still using it get "
                    "RemovedError, attached segments stay mapped until detached. TARGET is a "
                    "name, a kernel id (any object of a queue names the whole queue) or 0xKEY.",
        epilog=_EPILOG_RM)
    p.add_argument("targets", metavar="NAME|ID|0xKEY", nargs="+",
                   help=_TARGET_HELP + "; several may be given")
    p.add_argument("--type", choices=_TYPES,
                   help="what TARGET names: a queue or segment by name; msg, sem or shm for a "
                        "kernel object")
    p.add_argument("-f", "--force", action="store_true",
                   help="also remove objects that are not mpsysv's (like ipcrm)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rm)


# --- ls ----------------------------------------------------------------------------------

def fail(args: argparse.Namespace, message: str) -> None:
    """Print *message* as every error of the command line is printed (argparse's way)."""
    print(f"{args.prog}: error: {message}", file=sys.stderr)


def cmd_ls(args: argparse.Namespace) -> int:
    found = _gc.scan(inspect=True, attach=args.attach)
    objects = sorted(found.objects if args.all else found.mpsysv(), key=_sort_key)
    if args.json:
        _print_json([o.as_dict() for o in objects])
        return EXIT_OK
    if not objects:
        print("no mpsysv objects" + ("" if args.all else " (--all lists every SysV object)"))
        _note_unread(args, found)
        return EXIT_OK
    header = ("KIND", "ROLE", "NAME", "KEY", "ID", "OWNER", "MODE", "SIZE", "HOLDERS",
              "CREATOR", "STATE")
    rows = [header] + [_row(o) for o in objects]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    garbage = [o for o in objects if o.garbage]
    if garbage:
        print(f"\n{len(garbage)} garbage object(s): '{_main_prog(args)} clean' removes them")
    _note_unread(args, found)
    return EXIT_OK


def _main_prog(args: argparse.Namespace) -> str:
    prog: str = args.prog
    return prog.rsplit(" ", 1)[0]


def _note_unread(args: argparse.Namespace, found: "_gc.Scan") -> None:
    """Say how many segments were not read because no process has them attached."""
    if args.attach or args.json:
        return
    unread = [o for o in found.objects if o.kind == "shm" and o.role == _gc.FOREIGN
              and o.fields["nattch"] == 0]
    if unread:
        print(f"\n{len(unread)} segment(s) no process has attached were not read (they may "
              f"be mpsysv's): '{_main_prog(args)} ls --attach' reads them")


def _sort_key(o: _gc.IpcObject) -> Tuple[int, Any, int, int]:
    if o.role == _gc.FOREIGN:
        return (2, o.kind, o.id, 0)
    if o.role in _ROLE_ORDER:
        return (0, o.queue if o.queue is not None else -o.key, _ROLE_ORDER[o.role], o.id)
    return (1, o.id, 0, 0)


def _row(o: _gc.IpcObject) -> Tuple[str, ...]:
    if o.creator_pid:
        alive = {True: "alive", False: "dead", None: "?"}[o.creator_alive]
        creator = f"{o.creator_pid} {alive}"
    else:
        creator = "-"
    if o.name:
        name = o.name
    elif o.role in _ROLE_ORDER and o.state == "unknown":
        name = "?"
    elif o.role in _ROLE_ORDER and o.state != "garbage":
        name = "(anonymous)"
    else:
        name = "-"
    if o.role in (_gc.QUEUE_MAIN, _gc.QUEUE_STREAM, _gc.QUEUE_SEMS, _gc.QUEUE_PARCEL):
        name = "  " + name
    holders = "-" if o.holders is None else str(o.holders)
    return (o.kind, o.role, name, f"{o.key:#010x}", str(o.id), o.owner,
            f"{o.mode & 0o777:o}", o.size_text(), holders, creator, o.state)


# --- stat --------------------------------------------------------------------------------

def cmd_stat(args: argparse.Namespace) -> int:
    found = _gc.scan(inspect=True, attach=args.attach)
    status, matches = _resolve(args, found, args.target, args.type)
    if status != EXIT_OK:
        return status
    objects = _with_group(found, matches[0])
    report = [dict(o.as_dict(), kernel=_kernel_stat(o)) for o in objects]
    if args.json:
        _print_json(report[0] if len(report) == 1 else {"objects": report})
        return EXIT_OK
    first = objects[0]
    unread = not args.attach and _unattached_and_unread(first)
    if unread:
        # Without --attach a segment nobody maps cannot be read: neither its role (a
        # segment of mpsysv's reads as foreign) nor its name is known, only its key.
        print(f"{_label(first, args.target)}: not read, since no process has it attached: "
              f"'{_main_prog(args)} stat --attach {args.target}' reads it (attaching it "
              "read-only for a moment)")
    else:
        print(f"{_label(first, args.target)}: {first.state}"
              + (f" ({first.reason})" if first.reason else ""))
    for o, d in zip(objects, report):
        role = "not read" if unread and o is first else o.role
        print(f"\n{role} - {o.kind} id={o.id} key={o.key:#010x}")
        _print_tree({k: v for k, v in d.items() if v is not None and k not in
                     ("kernel", "mpsysv", "role", "kind", "id", "key", "key_hex", "reason")})
        print("  kernel:")
        _print_tree(d["kernel"], indent=4)
        if d["mpsysv"]:
            print("  mpsysv:")
            _print_tree(d["mpsysv"], indent=4)
    return EXIT_OK


def _kernel_stat(o: _gc.IpcObject) -> Dict[str, Any]:
    """Everything the kernel says: IPC_STAT, the semaphores, and /proc/sysvipc's extras
    (resident and swapped bytes of a segment); /proc's row alone when IPC_STAT fails."""
    from ..primitives import MessageQueue, Segment, SemaphoreSet

    try:
        if o.kind == "msg":
            out = MessageQueue(id=o.id).stat().as_dict()
        elif o.kind == "shm":
            out = Segment(id=o.id).stat().as_dict()
            out.update(rss=o.fields.get("rss"), swap=o.fields.get("swap"))
        else:
            sems = SemaphoreSet(id=o.id)
            out = sems.stat().as_dict()
            out["values"] = sems.getall()
            out["waiting_for_increase"] = [sems.getncnt(i) for i in range(sems.nsems)]
            out["waiting_for_zero"] = [sems.getzcnt(i) for i in range(sems.nsems)]
            out["last_pids"] = [sems.getpid(i) for i in range(sems.nsems)]
    except OSError as exc:
        return dict(o.fields, error=str(exc))
    out["mode"] = f"{out['mode']:o}"
    out["key"] = f"{out['key'] & 0xFFFFFFFF:#010x}"
    return out


# --- clean -------------------------------------------------------------------------------

def cmd_clean(args: argparse.Namespace) -> int:
    removed, failed = _gc.collect_garbage(force=True, dry_run=args.dry_run,
                                          all_users=args.all_users, inspect=True)
    if args.json:
        _print_json({"dry_run": args.dry_run, "removed": [o.as_dict() for o in removed],
                     "failed": [{"object": what.as_dict() if what else None, "error": err}
                                for what, err in failed]})
    else:
        verb = "would remove" if args.dry_run else "removed"
        for o in removed:
            print(f"{verb} {o.label()}: {o.reason}")
        for what, err in failed:
            fail(args, f"{what.label() + ': ' if what else ''}{err}")
        if not removed and not failed:
            print("no garbage")
    return EXIT_FAILED if failed else EXIT_OK


# --- rm ----------------------------------------------------------------------------------

def cmd_rm(args: argparse.Namespace) -> int:
    found = _gc.scan(inspect=True)
    plan: List[_gc.IpcObject] = []
    for target in args.targets:
        status, matches = _resolve(args, found, target, args.type)
        if status != EXIT_OK:
            return status
        group = _with_group(found, matches[0])
        foreign = [o for o in group if o.role == _gc.FOREIGN]
        if foreign and not args.force:
            fail(args, f"{target}: {foreign[0].kind} id={foreign[0].id} is not an mpsysv "
                       "object; refusing (use --force, or ipcrm)")
            return EXIT_REFUSED
        first = matches[0]
        if first.state == "unlinked" or (first.role == _gc.FOREIGN and first.kind == "shm"
                                         and first.mode & _gc.SHM_DEST):
            fail(args, f"{target}: {first.label()} was removed already; the kernel frees it "
                       f"when the {first.fields['nattch']} process(es) attached detach")
            return EXIT_FAILED
        plan.extend(o for o in group if o not in plan)
    # A queue's message queues and semaphore set go before its control segment.
    plan.sort(key=lambda o: o.kind == "shm")
    removed, failed = [], []
    for o in plan:
        try:
            _gc.remove(o)
        except OSError as exc:
            failed.append((o, str(exc)))
        else:
            removed.append(o)
    if args.json:
        _print_json({"removed": [o.as_dict() for o in removed],
                     "failed": [{"object": o.as_dict(), "error": e} for o, e in failed]})
    else:
        for o in removed:
            note = ""
            if o.kind == "shm" and o.holders:
                note = f" ({o.holders} process(es) still attached keep their mapping)"
            print(f"removed {o.label()}{note}")
        for o, err in failed:
            fail(args, f"{o.label()}: {err}")
    return EXIT_FAILED if failed else EXIT_OK


# --- finding what a target names ---------------------------------------------------------

def _resolve(args: argparse.Namespace, found: "_gc.Scan", target: str,
             type_: Optional[str]) -> Tuple[int, List["_gc.IpcObject"]]:
    """``(EXIT_OK, [object])`` or an error status (after printing why)."""
    kinds = (type_,) if type_ in _gc.KINDS else _gc.KINDS
    if target.isdigit():
        matches = [o for o in found.objects if o.id == int(target) and o.kind in kinds]
    elif target.lower().startswith("0x"):
        try:
            key = int(target, 16)
        except ValueError:
            fail(args, f"{target!r} is not a hexadecimal key")
            return EXIT_USAGE, []
        matches = [o for o in found.objects if o.key == key and o.kind in kinds]
    else:
        try:
            bare = check_name(target)
        except (TypeError, ValueError) as exc:
            fail(args, str(exc))
            return EXIT_USAGE, []
        keys = {"queue": name_key("queue", bare), "segment": name_key("shm", bare)}
        # A name names a queue or a segment; --type msg or sem picks a queue's object.
        wanted = ([type_] if type_ in keys else ["queue"] if type_ in ("msg", "sem")
                  else list(keys))
        matches = []
        for o in found.objects:
            if o.kind != "shm":
                continue
            is_queue = o.role == _gc.QUEUE
            is_segment = o.role in (_gc.SHM, _gc.SHAREABLE_LIST)
            if ((o.name == bare and (("queue" in wanted and is_queue)
                                     or ("segment" in wanted and is_segment)))
                    or (o.name is None and o.key in (keys[w] for w in wanted))):
                matches.append(o)
        if type_ in ("msg", "sem"):
            matches = [m for q in matches for m in found.queue_members(q.id) if m.kind == type_]
            matches = matches[:1]  # a queue's main message queue comes before its stream queue
    if not matches:
        fail(args, f"no System V object matches {target!r}"
                   + (f" (--type {type_})" if type_ else ""))
        return EXIT_NOT_FOUND, []
    if len(matches) > 1:
        fail(args, f"{target!r} is ambiguous: "
                   + ", ".join(_label(m, target) for m in matches)
                   + "; narrow it with --type")
        return EXIT_AMBIGUOUS, []
    return EXIT_OK, matches


def _unattached_and_unread(o: "_gc.IpcObject") -> bool:
    """A segment scanned without attaching that no process maps: nothing of it was read."""
    return (o.kind == "shm" and o.fields.get("nattch") == 0
            and (o.role == _gc.FOREIGN or o.state == "unknown"))


def _label(o: "_gc.IpcObject", target: str) -> str:
    """``o.label()``; for an object the scan could not name that *target* names (by its
    key): the name, and which kind of object that key is for."""
    if o.name or target.isdigit() or target.lower().startswith("0x"):
        return o.label()
    try:
        bare = check_name(target)
    except (TypeError, ValueError):
        return o.label()
    for what, prefix in (("queue", "queue"), ("segment", "shm")):
        if o.key == name_key(prefix, bare):
            return f"{what} {bare!r} ({o.kind} id={o.id} key={o.key:#010x})"
    return o.label()


def _with_group(found: "_gc.Scan", obj: "_gc.IpcObject") -> List["_gc.IpcObject"]:
    """*obj* with the other objects of its queue (control segment first), if any."""
    if obj.queue is not None:
        return found.queue_members(obj.queue) or [obj]
    if obj.role in (_gc.QUEUE_MAIN, _gc.QUEUE_STREAM, _gc.QUEUE_SEMS):
        slot = _gc.group_of(obj)
        members = [o for o in found.objects
                   if o.role in _ROLE_ORDER and o.queue is None and _gc.group_of(o) == slot]
        return sorted(members, key=lambda o: _ROLE_ORDER[o.role])
    return [obj]


# --- output ------------------------------------------------------------------------------

def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _print_tree(d: Dict[str, Any], indent: int = 2) -> None:
    for key, value in d.items():
        if isinstance(value, dict):
            print(" " * indent + f"{key}:")
            _print_tree(value, indent + 2)
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if key.endswith("_ns"):
                value = _when(value / 1e9)
            elif key.endswith("time") or key == "created":
                value = _when(value)
            elif key == "key" and isinstance(value, int):
                value = f"{value & 0xFFFFFFFF:#010x}"
        print(" " * indent + f"{key}: {value}")



def _when(seconds: float) -> str:
    if not seconds:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f"{seconds % 1:.3f}"[1:]
