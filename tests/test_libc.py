"""The ctypes layer against the C headers and the kernel: structure layouts, constants,
the status structures the kernel fills, ftok, errno mapping and the raw hot-path calls.

A tiny C program, compiled here when ``cc`` exists, is the reference for layouts,
constants and ftok; ``/proc/sysvipc`` is the reference for what IPC_STAT returns.
"""

import ctypes
import errno
import os
import shutil
import subprocess

import pytest

import mpsysv
from mpsysv._ipc import libc as L
from mpsysv._ipc.errors import raise_errno
from mpsysv import MessageQueue, SemaphoreSet, Segment

from .helpers import unique_key



# ---------------------------------------------------------------------------------------
# the C reference

# (ctypes structure, C struct name, [(ctypes field, C field)])
_LAYOUTS = [
    (L.ipc_perm, "ipc_perm", [("key", "__key"), ("uid", "uid"), ("gid", "gid"),
                              ("cuid", "cuid"), ("cgid", "cgid"), ("mode", "mode"),
                              ("seq", "__seq")]),
    (L.msqid_ds, "msqid_ds", [("msg_perm", "msg_perm"), ("msg_stime", "msg_stime"),
                              ("msg_rtime", "msg_rtime"), ("msg_ctime", "msg_ctime"),
                              ("msg_cbytes", "__msg_cbytes"), ("msg_qnum", "msg_qnum"),
                              ("msg_qbytes", "msg_qbytes"), ("msg_lspid", "msg_lspid"),
                              ("msg_lrpid", "msg_lrpid")]),
    (L.shmid_ds, "shmid_ds", [("shm_perm", "shm_perm"), ("shm_segsz", "shm_segsz"),
                              ("shm_atime", "shm_atime"), ("shm_dtime", "shm_dtime"),
                              ("shm_ctime", "shm_ctime"), ("shm_cpid", "shm_cpid"),
                              ("shm_lpid", "shm_lpid"), ("shm_nattch", "shm_nattch")]),
    (L.semid_ds, "semid_ds", [("sem_perm", "sem_perm"), ("sem_otime", "sem_otime"),
                              ("sem_ctime", "sem_ctime"), ("sem_nsems", "sem_nsems")]),
    (L.sembuf, "sembuf", [("sem_num", "sem_num"), ("sem_op", "sem_op"),
                          ("sem_flg", "sem_flg")]),
    (L.timespec, "timespec", [("tv_sec", "tv_sec"), ("tv_nsec", "tv_nsec")]),
]

_CONSTANTS = ["IPC_CREAT", "IPC_EXCL", "IPC_NOWAIT", "IPC_PRIVATE", "IPC_RMID", "IPC_SET",
              "IPC_STAT", "IPC_INFO", "MSG_NOERROR", "MSG_EXCEPT", "MSG_COPY", "MSG_STAT",
              "SHM_RDONLY", "SHM_RND", "SHM_HUGETLB", "SHM_NORESERVE", "SHM_STAT", "SEM_UNDO",
              "GETPID", "GETVAL", "GETALL", "GETNCNT", "GETZCNT", "SETVAL", "SETALL",
              "SEM_STAT", "CLOCK_MONOTONIC"]


def _probe_source() -> str:
    lines = [
        "#define _GNU_SOURCE",
        "#include <stdio.h>", "#include <stdlib.h>", "#include <stddef.h>",
        "#include <semaphore.h>", "#include <time.h>", "#include <sys/ipc.h>",
        "#include <sys/msg.h>", "#include <sys/shm.h>", "#include <sys/sem.h>",
        "int main(int argc, char **argv) {",
        '  if (argc == 4) { printf("%d\\n", (int)ftok(argv[2], atoi(argv[3]))); return 0; }',
        '  printf("sizeof sem_t %zu\\n", sizeof(sem_t));',
    ]
    for _, cname, fields in _LAYOUTS:
        lines.append(f'  printf("sizeof {cname} %zu\\n", sizeof(struct {cname}));')
        for pyname, cfield in fields:
            lines.append(f'  printf("offsetof {cname}.{pyname} %zu\\n", '
                         f'offsetof(struct {cname}, {cfield}));')
    for name in _CONSTANTS:
        lines.append(f'  printf("const {name} %ld\\n", (long)({name}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_probe(tmp_path_factory):
    """The path of the compiled reference program (the test is skipped without ``cc``)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    d = tmp_path_factory.mktemp("probe")
    src, exe = d / "probe.c", d / "probe"
    src.write_text(_probe_source())
    done = subprocess.run([cc, "-o", str(exe), str(src)], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        pytest.fail(f"the reference C program did not compile:\n{done.stderr}")
    return str(exe)


@pytest.fixture(scope="module")
def c_facts(c_probe):
    out = subprocess.run([c_probe], capture_output=True, text=True, check=True, timeout=30)
    facts = {}
    for line in out.stdout.splitlines():
        what, name, value = line.split()
        facts[(what, name)] = int(value)
    return facts


class TestStructLayout:
    @pytest.mark.skipif(L._ARCH != "x86_64", reason="the sizes are those of x86-64 glibc")
    def test_structure_sizes_are_those_of_x86_64_glibc(self):
        assert ctypes.sizeof(L.ipc_perm) == 48
        assert ctypes.sizeof(L.msqid_ds) == 120
        assert ctypes.sizeof(L.shmid_ds) == 112
        assert ctypes.sizeof(L.semid_ds) == 104
        assert ctypes.sizeof(L.sembuf) == 6
        assert ctypes.sizeof(L.timespec) == 16

    @pytest.mark.parametrize("struct,cname,fields", _LAYOUTS, ids=[c for _, c, _ in _LAYOUTS])
    def test_sizes_and_offsets_match_the_c_headers(self, c_facts, struct, cname, fields):
        assert ctypes.sizeof(struct) == c_facts[("sizeof", cname)]
        for pyname, _ in fields:
            assert getattr(struct, pyname).offset == c_facts[("offsetof", f"{cname}.{pyname}")], \
                f"offset of {cname}.{pyname}"

    def test_sem_t_fits_the_space_reserved_for_it(self, c_facts):
        assert L.SEM_T_SIZE == c_facts[("sizeof", "sem_t")]

    @pytest.mark.parametrize("name", _CONSTANTS)
    def test_constants_match_the_c_headers(self, c_facts, name):
        assert getattr(L, name) == c_facts[("const", name)]


# ---------------------------------------------------------------------------------------
# IPC_STAT against /proc/sysvipc

# /proc/sysvipc column -> field of the stat object; every other column is ignored.
_PROC_COLUMNS = {
    "msg": {"key": "key", "msqid": "id", "perms": "mode", "cbytes": "msg_cbytes",
            "qnum": "msg_qnum", "lspid": "msg_lspid", "lrpid": "msg_lrpid",
            "uid": "uid", "gid": "gid", "cuid": "cuid", "cgid": "cgid",
            "stime": "msg_stime", "rtime": "msg_rtime", "ctime": "msg_ctime"},
    "shm": {"key": "key", "shmid": "id", "perms": "mode", "size": "shm_segsz",
            "cpid": "shm_cpid", "lpid": "shm_lpid", "nattch": "shm_nattch",
            "uid": "uid", "gid": "gid", "cuid": "cuid", "cgid": "cgid",
            "atime": "shm_atime", "dtime": "shm_dtime", "ctime": "shm_ctime"},
    "sem": {"key": "key", "semid": "id", "perms": "mode", "nsems": "sem_nsems",
            "uid": "uid", "gid": "gid", "cuid": "cuid", "cgid": "cgid",
            "otime": "sem_otime", "ctime": "sem_ctime"},
}


def proc_sysvipc(kind: str, ident: int) -> dict:
    """The row of /proc/sysvipc/KIND for *ident*, as {stat field name: int}, columns
    found by the header line."""
    with open(f"/proc/sysvipc/{kind}") as f:
        header = f.readline().split()
        rows = [dict(zip(header, line.split())) for line in f if line.strip()]
    columns = _PROC_COLUMNS[kind]
    assert set(columns) <= set(header), f"/proc/sysvipc/{kind} header changed: {header}"
    for row in rows:
        if int(row[header[1]]) == ident:
            return {field: int(row[col], 8 if col == "perms" else 10)
                    for col, field in columns.items()}
    raise AssertionError(f"id {ident} not in /proc/sysvipc/{kind}")


def stat_fields(obj, kind: str) -> dict:
    d = obj.stat().as_dict()
    d["id"] = obj.id
    return {field: int(d[field]) for field in _PROC_COLUMNS[kind].values()}


class TestStatAgainstProc:
    def test_message_queue_stat_matches_proc_sysvipc_msg(self):
        q = MessageQueue(unique_key(), create=True, exclusive=True, mode=0o640)
        try:
            q.send(b"12345", 3)
            q.send(b"1234567", 4)
            q.receive(3)
            mine = stat_fields(q, "msg")
            assert mine == proc_sysvipc("msg", q.id)
            assert (mine["msg_cbytes"], mine["msg_qnum"]) == (7, 1)
            assert mine["msg_lspid"] == mine["msg_lrpid"] == os.getpid()
            assert mine["mode"] & 0o777 == 0o640
            # the kernel keeps keys signed; the object shows them as ipcs does
            assert mine["key"] < 0 and mine["key"] & 0xFFFFFFFF == q.key
        finally:
            q.remove()

    def test_segment_stat_matches_proc_sysvipc_shm(self):
        g = Segment(unique_key(), 12345, create=True, exclusive=True)
        try:
            a = g.attach()
            b = g.attach(readonly=True)
            b.detach()
            mine = stat_fields(g, "shm")
            assert mine == proc_sysvipc("shm", g.id)
            assert (mine["shm_segsz"], mine["shm_nattch"]) == (12345, 1)
            assert mine["shm_cpid"] == mine["shm_lpid"] == os.getpid()
            assert mine["shm_dtime"] > 0
            a.detach()
        finally:
            g.remove()

    def test_semaphore_set_stat_matches_proc_sysvipc_sem(self):
        s = SemaphoreSet(unique_key(), 3, create=True, exclusive=True)
        try:
            s.op(2, 1)
            mine = stat_fields(s, "sem")
            assert mine == proc_sysvipc("sem", s.id)
            assert mine["sem_nsems"] == 3
            assert mine["sem_otime"] > 0
        finally:
            s.remove()


# ---------------------------------------------------------------------------------------
# ftok, errno mapping, limits, time helpers

class TestFtok:
    def test_ftok_matches_the_c_library(self, c_probe, tmp_path):
        path = tmp_path / "anchor"
        path.write_text("")
        for proj_id in (1, 65, 255):
            out = subprocess.run([c_probe, "ftok", str(path), str(proj_id)],
                                 capture_output=True, text=True, check=True, timeout=30)
            assert mpsysv.ftok(str(path), proj_id) == int(out.stdout)

    def test_ftok_is_deterministic_and_depends_on_proj_id(self, tmp_path):
        path = tmp_path / "anchor"
        path.write_text("")
        assert mpsysv.ftok(str(path), 7) == mpsysv.ftok(os.fsencode(path), 7)
        assert mpsysv.ftok(str(path), 7) != mpsysv.ftok(str(path), 8)

    def test_ftok_on_a_missing_path_raises_file_not_found(self, tmp_path):
        missing = str(tmp_path / "missing")
        with pytest.raises(FileNotFoundError, match="ftok") as info:
            mpsysv.ftok(missing, 1)
        assert info.value.errno == errno.ENOENT
        assert missing in str(info.value)

    @pytest.mark.parametrize("proj_id", [0, 256, -1])
    def test_ftok_rejects_proj_id_outside_one_byte(self, tmp_path, proj_id):
        with pytest.raises(ValueError, match="proj_id"):
            mpsysv.ftok(str(tmp_path), proj_id)


class TestErrnoMapping:
    @pytest.mark.parametrize("err,cls", [
        (errno.EEXIST, FileExistsError), (errno.ENOENT, FileNotFoundError),
        (errno.EACCES, PermissionError), (errno.EPERM, PermissionError),
        (errno.EAGAIN, BlockingIOError), (errno.EIDRM, mpsysv.RemovedError),
        (errno.ENOSPC, OSError),
    ])
    def test_errno_becomes_the_builtin_oserror_subclass(self, err, cls):
        with pytest.raises(cls) as info:
            raise_errno(err, "msgget", "message queue key=0x00000001")
        assert type(info.value) is cls
        assert info.value.errno == err
        assert "msgget" in str(info.value) and "key=0x00000001" in str(info.value)

    def test_removed_error_is_an_oserror_that_explains_the_likely_causes(self):
        assert issubclass(mpsysv.RemovedError, OSError)
        with pytest.raises(mpsysv.RemovedError, match="was removed") as info:
            raise_errno(errno.EIDRM, "msgrcv", "message queue id=3")
        assert "ipcrm" in str(info.value)

    def test_invalid_identifier_reads_as_removed(self):
        with pytest.raises(mpsysv.RemovedError, match="does not exist") as info:
            raise_errno(errno.EINVAL, "semop", "semaphore set id=9", "invalid identifier")
        assert info.value.errno == errno.EINVAL

    def test_hint_is_appended_to_the_message(self):
        with pytest.raises(BlockingIOError, match=r"\(queue is full\)"):
            raise_errno(errno.EAGAIN, "msgsnd", "message queue id=1", "queue is full")


class TestLimitsAndTime:
    def test_limits_are_read_from_proc_sys_kernel(self):
        lim = L.limits()
        with open("/proc/sys/kernel/msgmax") as f:
            assert lim["msgmax"] == int(f.read())
        with open("/proc/sys/kernel/msgmnb") as f:
            assert lim["msgmnb"] == int(f.read())
        with open("/proc/sys/kernel/sem") as f:
            semmsl, semmns, semopm, semmni = (int(x) for x in f.read().split())
        assert (lim["semmsl"], lim["semmns"], lim["semopm"], lim["semmni"]) == \
            (semmsl, semmns, semopm, semmni)

    def test_missing_limit_falls_back_to_the_default(self):
        assert L.read_limit("no_such_limit_mpsysv", 1234) == 1234

    def test_relative_timespec_splits_seconds_and_clamps_negative(self):
        ts = L.relative_timespec(1.25)
        assert (ts.tv_sec, ts.tv_nsec) == (1, 250_000_000)
        ts = L.relative_timespec(-3.0)
        assert (ts.tv_sec, ts.tv_nsec) == (0, 0)

    def test_deadline_timespec_is_on_the_clock_of_time_monotonic(self):
        ts = L.deadline_timespec(L.monotonic() + 2.5)
        now = ctypes.c_int64 * 2
        raw = now()
        ctypes.CDLL(None).clock_gettime(L.CLOCK_MONOTONIC, raw)
        ahead = (ts.tv_sec + ts.tv_nsec / 1e9) - (raw[0] + raw[1] / 1e9)
        assert 2.4 < ahead <= 2.5


# ---------------------------------------------------------------------------------------
# the raw calls the hot paths use

class TestRawCalls:
    def test_msgsnd_msgrcv_round_trip_through_preallocated_buffers(self):
        qid = L.msgget(L.IPC_PRIVATE, 0o600)
        assert qid >= 0
        try:
            out = (ctypes.c_char * (8 + 16))()
            ctypes.c_long.from_buffer(out).value = 42
            out[8:13] = b"hello"
            assert L.msgsnd(qid, out, 5, 0) == 0
            back = (ctypes.c_char * (8 + 16))()
            assert L.msgrcv(qid, back, 16, 0, L.IPC_NOWAIT) == 5
            assert ctypes.c_long.from_buffer(back).value == 42
            assert back.raw[8:13] == b"hello"
            assert L.msgrcv(qid, back, 16, 0, L.IPC_NOWAIT) == -1
            assert L.get_errno() == errno.ENOMSG
        finally:
            assert L.msgctl(qid, L.IPC_RMID, None) == 0

    def test_semctl_passes_the_variadic_argument_as_one_word(self):
        sid = L.semget(L.IPC_PRIVATE, 3, 0o600)
        assert sid >= 0
        try:
            vals = (ctypes.c_ushort * 3)(5, 32767, 9)
            assert L.semctl(sid, 0, L.SETALL, ctypes.addressof(vals)) == 0
            assert L.semctl(sid, 1, L.GETVAL, 0) == 32767
            assert L.semctl(sid, 2, L.SETVAL, 11) == 0
            back = (ctypes.c_ushort * 3)()
            assert L.semctl(sid, 0, L.GETALL, ctypes.addressof(back)) == 0
            assert list(back) == [5, 32767, 11]
        finally:
            assert L.semctl(sid, 0, L.IPC_RMID, 0) == 0

    def test_semop_beyond_semvmx_fails_with_erange(self):
        sid = L.semget(L.IPC_PRIVATE, 1, 0o600)
        try:
            assert L.semctl(sid, 0, L.SETVAL, L.SEMVMX) == 0
            op = L.sembuf(0, 1, L.IPC_NOWAIT)
            assert L.semop(sid, ctypes.byref(op), 1) == -1
            assert L.get_errno() == errno.ERANGE
        finally:
            L.semctl(sid, 0, L.IPC_RMID, 0)

    def test_shmat_returns_an_address_and_shmdt_releases_it(self):
        shmid = L.shmget(L.IPC_PRIVATE, 4096, 0o600)
        assert shmid >= 0
        try:
            addr = L.shmat(shmid, None, 0)
            assert addr not in (None, ctypes.c_void_p(-1).value)
            ctypes.memmove(addr, b"xyz", 3)
            ds = L.shmid_ds()
            assert L.shmctl(shmid, L.IPC_STAT, ctypes.byref(ds)) == 0
            assert ds.shm_nattch == 1 and ds.shm_segsz == 4096
            assert ctypes.string_at(addr, 3) == b"xyz"
            assert L.shmdt(addr) == 0
            assert L.shmctl(shmid, L.IPC_STAT, ctypes.byref(ds)) == 0
            assert ds.shm_nattch == 0
        finally:
            assert L.shmctl(shmid, L.IPC_RMID, None) == 0

    def test_posix_semaphore_in_a_segment_posts_and_trywaits(self):
        g = Segment(create=True, size=4096)
        try:
            a = g.attach()
            addr = a.address
            assert L.sem_init(addr, 1, 0) == 0
            assert L.sem_trywait(addr) == -1 and L.get_errno() == errno.EAGAIN
            assert L.sem_post(addr) == 0
            value = ctypes.c_int()
            L.sem_getvalue(addr, ctypes.byref(value))
            assert value.value == 1
            assert L.sem_trywait(addr) == 0
            assert a.detach()
        finally:
            g.remove()
