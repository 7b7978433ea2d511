"""``python -m mpsysv ls|stat|clean|rm``: tables, JSON, exit codes, and that clean and rm
remove exactly what they say.

Most calls go through ``mpsysv.cli.main`` in this process (fast); a few run the real
``python -m mpsysv`` in a subprocess.
"""

import json
import os
import signal
import subprocess
import sys
from contextlib import suppress

import pytest

from mpsysv._tools import admin as _admin
from mpsysv._gc import collect as _gc
from mpsysv._ipc import libc as L
from mpsysv._queue.layout import CTL_SIZE
from mpsysv import JoinableQueue, Queue, RemovedError
from mpsysv.cli import main
from mpsysv.shared import SharedMemory

from .helpers import unique_name


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of the CLI run in this process."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def make_garbage() -> None:
    """A forked child creates a queue holding a parcel and is SIGKILLed: the queue's
    message queues, semaphore set and parcel segment are left behind."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        q = Queue()
        q.put(b"g" * 100_000)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.fixture
def objects():
    """A live anonymous queue, a named JoinableQueue and a named segment."""
    q = Queue()
    q.put("one")
    name = unique_name("jobs")
    jq = JoinableQueue(name=name, create=True)
    jq.put("task")
    seg = SharedMemory(unique_name("seg"), create=True, size=1000)
    yield q, jq, seg
    for thing in (jq, seg):
        with suppress(FileNotFoundError, OSError):
            thing.unlink()
    seg.close()
    jq.close()
    q.close()


@pytest.mark.parametrize("command", ["ls", "stat", "clean", "rm"])
def test_every_subcommand_documents_itself_and_its_exit_codes(command):
    out = subprocess.run([sys.executable, "-m", "mpsysv", command, "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--json" in out.stdout and "exit codes" in out.stdout


def test_ls_shows_each_object_with_role_name_holders_and_creator(capsys, objects):
    q, jq, seg = objects
    foreign = L.msgget(0x7EADBEEF, L.IPC_CREAT | 0o600)
    try:
        code, out, _ = run(capsys, "ls")
        assert code == 0
        header = out.splitlines()[0].split()
        assert header == ["KIND", "ROLE", "NAME", "KEY", "ID", "OWNER", "MODE", "SIZE",
                          "HOLDERS", "CREATOR", "STATE"]
        assert jq.name in out and seg.name in out and "(anonymous)" in out
        assert f"{os.getpid()} alive" in out
        assert "0x7eadbeef" not in out

        rows = run_json(capsys, "ls")
        by_id = {(r["kind"], r["id"]): r for r in rows}
        ctl = by_id[("shm", jq._chan.ctl_id)]
        assert (ctl["role"], ctl["name"], ctl["holders"], ctl["state"]) == (
            "queue", jq.name, 1, "persistent")
        assert ctl["mpsysv"]["type"] == "JoinableQueue"
        assert ctl["creator_pid"] == os.getpid() and ctl["creator_alive"] is True
        main_q = by_id[("msg", q._chan.main_qid)]
        assert (main_q["role"], main_q["queue"], main_q["kernel"]["qnum"]) == (
            "queue.main", q._chan.ctl_id, 1)
        assert by_id[("sem", q._chan.semid)]["role"] == "queue.sems"
        segment = by_id[("shm", seg.id)]
        assert (segment["role"], segment["name"], segment["mode"]) == ("shm", seg.name, "600")
        assert segment["mpsysv"]["size"] == 1000 and segment["mpsysv"]["tracked"] is True

        everything = run_json(capsys, "ls", "--all")
        assert [r["role"] for r in everything if r["id"] == foreign and r["kind"] == "msg"] \
            == ["foreign"]
    finally:
        L.msgctl(foreign, L.IPC_RMID, None)


def test_ls_with_nothing_to_show(capsys):
    code, out, _ = run(capsys, "ls")
    assert (code, out.strip()) == (0, "no mpsysv objects (--all lists every SysV object)")
    assert run_json(capsys, "ls") == []


def test_stat_shows_the_kernel_view_and_mpsysvs_view(capsys, objects):
    q, jq, seg = objects
    report = run_json(capsys, "stat", jq.name)
    roles = [o["role"] for o in report["objects"]]
    assert roles[0] == "queue" and sorted(roles[1:]) == ["queue.main", "queue.sems",
                                                         "queue.stream"]
    ctl = report["objects"][0]
    assert ctl["mpsysv"]["counters"]["unfinished_tasks"] == 1
    assert ctl["mpsysv"]["main_qid"] == jq._chan.main_qid
    assert ctl["kernel"]["shm_nattch"] == 1 and ctl["kernel"]["shm_segsz"] == CTL_SIZE
    sems = next(o for o in report["objects"] if o["role"] == "queue.sems")
    assert sems["kernel"]["values"][:2] == [1, 1]  # stream and state locks are free
    main_q = next(o for o in report["objects"] if o["role"] == "queue.main")
    assert main_q["kernel"]["msg_qnum"] == 1 and main_q["kernel"]["msg_qbytes"] > 0

    # Any object of a queue, by id, names the whole queue; text output has both views.
    # (--type: ids of different kinds may be equal in one namespace)
    code, out, _ = run(capsys, "stat", str(q._chan.stream_qid), "--type", "msg")
    assert code == 0
    assert out.startswith("queue (shm id=") and "kernel:" in out and "mpsysv:" in out
    assert "msg_qbytes" in out and "free_slots" in out

    segment = run_json(capsys, "stat", seg.name)
    assert segment["id"] == seg.id and segment["mpsysv"]["name"] == seg.name
    assert segment["kernel"]["shm_segsz"] == 1000 + 256


def test_stat_and_rm_exit_codes(capsys, objects):
    q, jq, seg = objects
    code, _, err = run(capsys, "stat", "no-such-name")
    assert code == _admin.EXIT_NOT_FOUND and "no System V object matches" in err
    assert run(capsys, "stat", "99999999")[0] == _admin.EXIT_NOT_FOUND
    assert run(capsys, "rm", "no-such-name")[0] == _admin.EXIT_NOT_FOUND
    code, _, err = run(capsys, "stat", "bad/name")
    assert code == _admin.EXIT_USAGE and "'name'" in err
    assert run(capsys, "stat", "0xnothex")[0] == _admin.EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["stat"])
    assert exc.value.code == _admin.EXIT_USAGE
    capsys.readouterr()
    # A queue and a segment of the same name: ambiguous until --type says which.
    twin = SharedMemory(jq.name, create=True, size=10)
    try:
        code, _, err = run(capsys, "stat", jq.name)
        assert code == _admin.EXIT_AMBIGUOUS and "--type" in err
        assert run_json(capsys, "stat", jq.name, "--type", "segment")["id"] == twin.id
        assert run_json(capsys, "stat", jq.name, "--type", "queue")["objects"][0]["id"] \
            == jq._chan.ctl_id
        assert run_json(capsys, "stat", f"{twin.key:#x}")["id"] == twin.id
    finally:
        twin.close()
        twin.unlink()


def test_clean_removes_garbage_only_and_dry_run_removes_nothing(capsys, objects):
    q, jq, seg = objects
    make_garbage()
    live = {(o.kind, o.id) for o in _gc.scan().objects if not o.garbage}

    dry = run_json(capsys, "clean", "--dry-run")
    assert dry["dry_run"] is True and not dry["failed"]
    assert sorted(o["role"] for o in dry["removed"]) == [
        "queue.main", "queue.parcel", "queue.sems", "queue.stream"]
    assert all(o["state"] == "garbage" and o["reason"] for o in dry["removed"])
    assert len(_gc.scan().garbage()) == 4

    code, out, _ = run(capsys, "clean")
    assert code == 0
    assert out.count("removed ") == 4 and "control segment is gone" in out
    assert {(o.kind, o.id) for o in _gc.scan().objects} == live
    q.put("still works")
    assert q.get(timeout=5) == "one"
    assert run(capsys, "clean")[1].strip() == "no garbage"


def test_rm_removes_every_object_of_a_queue_and_segments(capsys, objects):
    q, jq, seg = objects
    before = {(o.kind, o.id) for o in _gc.scan().objects}
    report = run_json(capsys, "rm", jq.name)
    by_id = run_json(capsys, "rm", str(seg.id), "--type", "shm")  # ids of kinds may be equal
    assert not report["failed"] and not by_id["failed"]
    gone = {(o["kind"], o["id"]) for o in report["removed"] + by_id["removed"]}
    assert gone == {("shm", jq._chan.ctl_id), ("msg", jq._chan.main_qid),
                    ("msg", jq._chan.stream_qid), ("sem", jq._chan.semid), ("shm", seg.id)}
    # Still attached here: the segments linger (marked) until detached; names are free.
    with pytest.raises(FileNotFoundError):
        JoinableQueue(name=jq.name)
    with pytest.raises(FileNotFoundError):
        SharedMemory(seg.name)
    with pytest.raises(RemovedError):
        jq.put("x")
    assert {(o.kind, o.id) for o in _gc.scan().objects} <= before


def test_rm_of_a_live_anonymous_queue_makes_its_holders_raise(capsys):
    q = Queue()
    code, out, _ = run(capsys, "rm", str(q._chan.ctl_id), "--type", "shm")
    assert code == 0 and out.count("removed ") == 4
    with pytest.raises(RemovedError, match="python -m mpsysv rm"):
        q.put("x")
    q.close()


def test_rm_refuses_objects_that_are_not_mpsysvs(capsys):
    foreign = L.msgget(L.IPC_PRIVATE, L.IPC_CREAT | 0o600)
    try:
        code, _, err = run(capsys, "rm", str(foreign), "--type", "msg")
        assert code == _admin.EXIT_REFUSED and "not an mpsysv object" in err
        assert L.msgctl(foreign, L.IPC_STAT, L.byref(L.msqid_ds())) == 0
        code, out, _ = run(capsys, "rm", str(foreign), "--type", "msg", "--force")
        assert code == 0 and "removed foreign" in out
    finally:
        L.msgctl(foreign, L.IPC_RMID, None)


def test_real_command_line_round_trip():
    """``python -m mpsysv`` as a script would call it: ls --json, clean, exit codes."""
    q = Queue()
    make_garbage()
    try:
        def cli(*argv):
            return subprocess.run([sys.executable, "-m", "mpsysv", *argv],
                                  capture_output=True, text=True, timeout=60)
        # Without --attach, the parcel no process has attached is not read (nor listed).
        listed = json.loads(cli("ls", "--json").stdout)
        assert sum(r["state"] == "garbage" for r in listed) == 3
        assert "not read" in cli("ls").stdout
        listed = json.loads(cli("ls", "--attach", "--json").stdout)
        assert sum(r["state"] == "garbage" for r in listed) == 4
        assert any(r["id"] == q._chan.ctl_id and r["state"] == "live" for r in listed)
        cleaned = cli("clean")
        assert cleaned.returncode == 0 and cleaned.stdout.count("removed ") == 4
        assert cli("stat", "nothing-here").returncode == _admin.EXIT_NOT_FOUND
        assert cli("rm").returncode == _admin.EXIT_USAGE
    finally:
        _gc.collect_garbage(force=True)
        q.close()


def test_stat_keeps_the_stream_marker_apart_from_the_parcel_table(capsys):
    q = Queue(name=unique_name("q"), create=True)
    try:
        q.put(b"p" * 100_000)  # a parcel: a sent entry in the table
        q._chan.streams._set_mark(os.getpid(), 1234, 1)  # as if a stream were going out
        try:
            ctl = run_json(capsys, "stat", q.name)["objects"][0]["mpsysv"]
        finally:
            q._chan.streams._set_mark(0, 0, 0)
        assert [p["state"] for p in ctl["parcels"]] == ["sent"]
        assert ctl["stream_marker"] == {"writer_pid": os.getpid(), "reader_pid": 0,
                                        "stream_id": 1234, "state": "streaming"}
        assert q.get(timeout=5) == b"p" * 100_000
    finally:
        q.close()
        q.unlink()


# --- what a new user meets first --------------------------------------------------------

def cli(*argv, **kwargs):
    """The real ``python -m mpsysv`` in a subprocess (in this test's IPC namespace)."""
    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "mpsysv", *argv], text=True, timeout=60,
                          **kwargs)


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "must be at least 1, not 0"),
    (["--jobs", "-5"], "must be at least 1, not -5"),
    (["--jobs", "many"], "must be an integer, not 'many'"),
])
def test_demo_refuses_counts_that_would_hang_or_make_no_sense(argv, message):
    out = cli("demo", *argv)
    assert out.returncode == _admin.EXIT_USAGE
    assert out.stderr.splitlines()[-1] == f"python -m mpsysv demo: error: argument {argv[0]}: " \
                                          f"{message}"


def test_demo_options_and_every_command_have_help_text():
    demo = cli("demo", "--help").stdout
    assert "how many jobs" in demo and "how many worker processes" in demo
    top = cli("--help")
    assert top.returncode == 0
    assert "(later)" not in top.stdout and "``" not in top.stdout
    for command in ("demo", "run", "ls", "stat", "clean", "rm"):
        assert command in top.stdout


def test_version_is_printed():
    import mpsysv

    out = cli("--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"mpsysv {mpsysv.__version__}")


def test_output_into_a_closed_pipe_ends_quietly():
    seg = SharedMemory(unique_name("pipe"), create=True, size=100)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = cli("stat", seg.name, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
        seg.close()
        seg.unlink()
    assert out.returncode == 1
    assert out.stderr == ""


def test_every_error_has_one_prefix():
    assert cli("stat", "nothing-here").stderr.startswith("python -m mpsysv stat: error: ")
    assert cli("rm", "0xzz").stderr.startswith("python -m mpsysv rm: error: ")
    assert cli("rm").stderr.splitlines()[-1].startswith("python -m mpsysv rm: error: ")
    assert cli("run", "/no/such/file.py").stderr.startswith("python -m mpsysv run: error: ")


def test_rm_of_a_segment_removed_already_fails(capsys):
    seg = SharedMemory(unique_name("rmtwice"), create=True, size=100)
    try:
        code, out, _ = run(capsys, "rm", seg.name)
        assert code == 0 and "removed shm" in out
        code, out, err = run(capsys, "rm", str(seg.id), "--type", "shm")
        assert code == _admin.EXIT_FAILED and out == ""
        assert err.startswith("python -m mpsysv rm: error: ")
        assert "was removed already" in err and "1 process(es) attached" in err
    finally:
        seg.close()


def test_unlinked_queues_and_segments_show_the_same_state(capsys):
    q = Queue(name=unique_name("unl"), create=True)
    seg = SharedMemory(unique_name("unl"), create=True, size=100)
    try:
        q.unlink()
        seg.unlink()
        rows = {(r["kind"], r["id"]): r for r in run_json(capsys, "ls")}
        ctl, segment = rows[("shm", q._chan.ctl_id)], rows[("shm", seg.id)]
        assert ctl["state"] == segment["state"] == "unlinked"
        assert ctl["reason"] == segment["reason"]
    finally:
        seg.close()
        q.close()


def test_stat_prints_keys_in_hex_and_times_readable(capsys):
    foreign = L.msgget(0x9EADBEEF, L.IPC_CREAT | 0o600)
    seg = SharedMemory(unique_name("hex"), create=True, size=100)
    try:
        code, out, _ = run(capsys, "stat", str(foreign), "--type", "msg")
        assert code == 0
        assert "key: 0x9eadbeef" in out and "-1632780305" not in out and "key: -" not in out
        code, out, _ = run(capsys, "stat", seg.name)
        (created,) = [line.split(": ", 1)[1] for line in out.splitlines()
                      if line.strip().startswith("created_ns:")]
        assert created[:2] == "20" and created[4] == "-" and created[13] == ":", created
    finally:
        L.msgctl(foreign, L.IPC_RMID, None)
        seg.close()
        seg.unlink()


def _hold_a_queue_and_a_segment(names, ready, done, ids):
    """A fork child's work: hold both objects until *done* (the test process itself must
    not map them: a fork of a process that maps a segment sets its shm_lpid)."""
    q = Queue(name=names[0], create=True)
    q.put("x")
    seg = SharedMemory(names[1], create=True, size=100)
    ids.put((q._chan.ctl_id, q._chan.semid, seg.id))
    ready.set()
    done.wait(60)
    seg.close()
    seg.unlink()
    q.unlink()
    q.close()


def test_ls_and_stat_change_nothing_about_the_objects_they_read():
    from mpsysv._queue.layout import SEM_HOLDERS
    from mpsysv.primitives import Segment, SemaphoreSet

    from .helpers import fork

    names = (unique_name("ro"), unique_name("ro"))
    ready, done, ids = fork.Event(), fork.Event(), fork.SimpleQueue()
    holder = fork.Process(target=_hold_a_queue_and_a_segment, args=(names, ready, done, ids))
    holder.start()
    try:
        assert ready.wait(30)
        ctl_id, semid, seg_id = ids.get()

        def seen():
            ctl, shm = Segment(id=ctl_id).stat(), Segment(id=seg_id).stat()
            return (ctl.shm_lpid, ctl.shm_atime, ctl.shm_nattch, shm.shm_lpid, shm.shm_atime,
                    SemaphoreSet(id=semid).getpid(SEM_HOLDERS))
        before = seen()
        for argv in (["ls"], ["ls", "--json"], ["stat", names[0]], ["stat", names[1]]):
            out = cli(*argv)
            assert out.returncode == 0, out.stderr
            assert all(name in out.stdout for name in (set(argv) & set(names) or names))
        assert seen() == before
    finally:
        done.set()
        holder.join(30)
    assert holder.exitcode == 0


def _ls_as_nobody(*argv) -> str:
    """What ``ls`` prints for user nobody (a forked child that drops root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.dup2(write_end, 1)
            sys.stdout = os.fdopen(1, "w")
            main(["ls", *argv])
            sys.stdout.flush()
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to look as another user")
def test_a_queue_another_user_cannot_read_is_shown_as_unreadable_not_anonymous():
    q = Queue(name=unique_name("other"), create=True)
    try:
        rows = json.loads(_ls_as_nobody("--json"))
        (ctl,) = [r for r in rows if r["id"] == q._chan.ctl_id and r["kind"] == "shm"]
        assert ctl["state"] == "unknown" and "not readable by this user" in ctl["reason"]
        table = _ls_as_nobody()
        assert "(anonymous)" not in table and " ? " in table
    finally:
        q.close()
        q.unlink()


def test_stat_of_a_name_honours_the_type(capsys):
    q = Queue(name=unique_name("typed"), create=True)
    seg = SharedMemory(unique_name("typed"), create=True, size=100)
    try:
        report = run_json(capsys, "stat", q.name, "--type", "msg")
        assert [o["role"] for o in report["objects"]][:2] == ["queue", "queue.main"]
        code, _, err = run(capsys, "stat", seg.name, "--type", "msg")
        assert code == _admin.EXIT_NOT_FOUND and "(--type msg)" in err
        code, _, _ = run(capsys, "stat", seg.name, "--type", "sem")
        assert code == _admin.EXIT_NOT_FOUND
        assert run_json(capsys, "stat", seg.name, "--type", "segment")["role"] == "shm"
    finally:
        seg.close()
        seg.unlink()
        q.close()
        q.unlink()


@pytest.mark.parametrize("argv", [["ls", "--bogus"], ["stat", "x", "--bogus"],
                                  ["clean", "--bogus"], ["demo", "--bogus"],
                                  ["run", "--bogus", "x.py"]])
def test_an_unknown_option_is_reported_by_its_command(argv):
    out = cli(*argv)
    assert out.returncode == _admin.EXIT_USAGE
    assert out.stderr.startswith(f"usage: python -m mpsysv {argv[0]} ")
    assert out.stderr.splitlines()[-1] == \
        f"python -m mpsysv {argv[0]}: error: unrecognized arguments: --bogus"


def test_each_command_documents_only_the_exit_codes_it_uses():
    for command in ("ls", "clean"):
        assert "--type" not in cli(command, "--help").stdout.split("exit codes:")[1]
    for command in ("stat", "rm"):
        help_text = cli(command, "--help").stdout
        assert "NAME|ID|0xKEY" in help_text and "a queue or segment name, a kernel id" \
            in " ".join(help_text.split())


def test_stat_names_an_unattached_named_object_and_how_to_read_it(capsys):
    """Without --attach a segment no process maps is not read: stat says so, with the
    name it was asked for, instead of calling mpsysv's own segment foreign."""
    name = unique_name("dup")
    q = Queue(name=name, create=True)
    q.close()
    seg = SharedMemory(name, create=True, size=100, track=False)
    seg.close()
    try:
        for type_, what in (("queue", "queue"), ("segment", "segment")):
            code, out, _ = run(capsys, "stat", name, "--type", type_)
            assert code == 0
            first = out.splitlines()[0]
            assert first.startswith(f"{what} {name!r} (shm id=")
            assert first.endswith(f"not read, since no process has it attached: 'python -m "
                                  f"mpsysv stat --attach {name}' reads it (attaching it "
                                  "read-only for a moment)")
            assert "foreign" not in out
        code, _, err = run(capsys, "stat", name)
        assert code == _admin.EXIT_AMBIGUOUS
        assert f"queue {name!r} (shm id=" in err and f"segment {name!r} (shm id=" in err
        code, out, _ = run(capsys, "stat", name, "--type", "segment", "--attach")
        assert out.startswith(f"shm {name!r} (shm id=") and ": persistent" in out
    finally:
        run(capsys, "rm", "--type", "queue", name)
        run(capsys, "rm", "--type", "segment", name)
