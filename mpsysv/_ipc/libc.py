"""ctypes bindings to the System V IPC calls of glibc: constants, structures, functions.

This is the only module that touches libc. Callers check the return value and hand
a failure's errno to ``errors.raise_errno`` (the one errno -> exception mapping).
Nothing here keeps state.
"""

from __future__ import annotations

import ctypes
import platform
import time

__all__ = [
    "IPC_CREAT", "IPC_EXCL", "IPC_NOWAIT", "IPC_PRIVATE", "IPC_RMID", "IPC_SET", "IPC_STAT",
    "IPC_INFO", "MSG_NOERROR", "MSG_EXCEPT", "MSG_COPY", "SHM_RDONLY", "SHM_RND", "SHM_HUGETLB",
    "SHM_NORESERVE", "SEM_UNDO", "GETPID", "GETVAL", "GETALL", "GETNCNT", "GETZCNT", "SETVAL",
    "SETALL", "SEMVMX", "ipc_perm", "msqid_ds", "shmid_ds", "semid_ds", "sembuf", "timespec",
    "limits",
]

# <sys/ipc.h>
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_PRIVATE = 0
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
IPC_INFO = 3
# <sys/msg.h>
MSG_NOERROR = 0o10000
MSG_EXCEPT = 0o20000
MSG_COPY = 0o40000
MSG_STAT = 11
# <sys/shm.h>
SHM_RDONLY = 0o10000
SHM_RND = 0o20000
SHM_HUGETLB = 0o4000
SHM_NORESERVE = 0o10000
SHM_STAT = 13
SHM_REMAP = 0o40000  # Linux: attach over an existing mapping of the range
# <sys/mman.h>
MAP_NORESERVE = 0x4000
# <sys/sem.h>
SEM_UNDO = 0x1000
GETPID = 11
GETVAL = 12
GETALL = 13
GETNCNT = 14
GETZCNT = 15
SETVAL = 16
SETALL = 17
SEM_STAT = 18
SEMVMX = 32767
# <time.h>
CLOCK_MONOTONIC = 1

_ARCH = platform.machine()
if _ARCH not in ("x86_64", "aarch64", "arm64"):  # pragma: no cover - checked at import
    raise ImportError(f"mpsysv supports x86-64 and aarch64 Linux with glibc, not {_ARCH!r}")
_X86 = _ARCH == "x86_64"

c_long, c_ulong, c_int, c_uint, c_ushort = (ctypes.c_long, ctypes.c_ulong, ctypes.c_int,
                                             ctypes.c_uint, ctypes.c_ushort)


class _ReadOnly(ctypes.Structure):
    """A kernel structure whose public fields read as plain Python values."""

    _public: tuple = ()
    _times: tuple = ()

    def as_dict(self) -> dict:
        out = {}
        for name in self._public:
            value = getattr(self, name)
            if isinstance(value, _ReadOnly):
                out.update(value.as_dict())
            else:
                out[name] = float(value) if name in self._times else value
        return out


# x86-64 has a 16-bit mode and padding, aarch64 a 32-bit mode. (Typed as a whole: a mypy
# for Python 3.9 infers the list from its first branch and refuses the other.)
_MODE_FIELDS: list[tuple[str, type[ctypes._SimpleCData[int]]]] = (
    [("mode", c_ushort), ("_pad1", c_ushort)] if _X86 else [("mode", c_uint)])


class ipc_perm(_ReadOnly):
    """Owner, creator and mode of an IPC object (glibc ``struct ipc_perm``)."""

    _fields_ = [
        ("key", c_int), ("uid", c_uint), ("gid", c_uint), ("cuid", c_uint), ("cgid", c_uint),
        *_MODE_FIELDS,
        ("seq", c_ushort), ("_pad2", c_ushort), ("_res1", c_ulong), ("_res2", c_ulong),
    ]
    _public = ("key", "uid", "gid", "cuid", "cgid", "mode")


class msqid_ds(_ReadOnly):
    """Message queue status (glibc ``struct msqid_ds``, 64-bit layout)."""

    _fields_ = [
        ("msg_perm", ipc_perm), ("msg_stime", c_long), ("msg_rtime", c_long),
        ("msg_ctime", c_long), ("msg_cbytes", c_ulong), ("msg_qnum", c_ulong),
        ("msg_qbytes", c_ulong), ("msg_lspid", c_int), ("msg_lrpid", c_int),
        ("_res4", c_ulong), ("_res5", c_ulong),
    ]
    _public = ("msg_perm", "msg_stime", "msg_rtime", "msg_ctime", "msg_cbytes", "msg_qnum",
               "msg_qbytes", "msg_lspid", "msg_lrpid")
    _times = ("msg_stime", "msg_rtime", "msg_ctime")


class shmid_ds(_ReadOnly):
    """Shared memory segment status (glibc ``struct shmid_ds``, 64-bit layout)."""

    _fields_ = [
        ("shm_perm", ipc_perm), ("shm_segsz", ctypes.c_size_t), ("shm_atime", c_long),
        ("shm_dtime", c_long), ("shm_ctime", c_long), ("shm_cpid", c_int), ("shm_lpid", c_int),
        ("shm_nattch", c_ulong), ("_res5", c_ulong), ("_res6", c_ulong),
    ]
    _public = ("shm_perm", "shm_segsz", "shm_atime", "shm_dtime", "shm_ctime", "shm_cpid",
               "shm_lpid", "shm_nattch")
    _times = ("shm_atime", "shm_dtime", "shm_ctime")


class semid_ds(_ReadOnly):
    """Semaphore set status (glibc ``struct semid_ds``; x86 keeps high-time padding)."""

    _fields_ = [
        ("sem_perm", ipc_perm), ("sem_otime", c_long),
        *([("_otime_high", c_ulong)] if _X86 else []),
        ("sem_ctime", c_long),
        *([("_ctime_high", c_ulong)] if _X86 else []),
        ("sem_nsems", c_ulong), ("_res3", c_ulong), ("_res4", c_ulong),
    ]
    _public = ("sem_perm", "sem_otime", "sem_ctime", "sem_nsems")
    _times = ("sem_otime", "sem_ctime")


class sembuf(ctypes.Structure):
    """One semaphore operation (``struct sembuf``)."""

    _fields_ = [("sem_num", c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", c_long), ("tv_nsec", c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_get_errno = ctypes.get_errno


def _fn(name, restype, *argtypes):
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = argtypes
    return f


_vp, _sz = ctypes.c_void_p, ctypes.c_size_t
msgget = _fn("msgget", c_int, c_int, c_int)
msgsnd = _fn("msgsnd", c_int, c_int, _vp, _sz, c_int)
msgrcv = _fn("msgrcv", ctypes.c_ssize_t, c_int, _vp, _sz, c_long, c_int)
msgctl = _fn("msgctl", c_int, c_int, c_int, _vp)
shmget = _fn("shmget", c_int, c_int, _sz, c_int)
shmat = _fn("shmat", _vp, c_int, _vp, c_int)
shmdt = _fn("shmdt", c_int, _vp)
shmctl = _fn("shmctl", c_int, c_int, c_int, _vp)
semget = _fn("semget", c_int, c_int, c_int, c_int)
semop = _fn("semop", c_int, c_int, _vp, _sz)
semtimedop = _fn("semtimedop", c_int, c_int, _vp, _sz, _vp)
# semctl is variadic; its optional fourth argument (union semun) is passed as one word.
semctl = _fn("semctl", c_int, c_int, c_int, c_int, c_ulong)
ftok_ = _fn("ftok", c_int, ctypes.c_char_p, c_int)
# The queue hot path: msgsnd/msgrcv without argtypes, ~0.8 us less per call here. Callers
# pass int for int parameters, a buffer (bytes or a ctypes array) for the message, and
# C-typed values (size_arg(), c_long) for the size_t and long ones.
msgsnd_fast = _libc["msgsnd"]
msgrcv_fast = _libc["msgrcv"]
msgrcv_fast.restype = ctypes.c_ssize_t
_size_args: dict = {}


def size_arg(n: int) -> ctypes.c_size_t:
    """*n* as a (cached) ``size_t`` argument for the ``*_fast`` calls."""
    try:
        return _size_args[n]
    except KeyError:
        arg = ctypes.c_size_t(n)
        if n < 65536:
            _size_args[n] = arg
        return arg
# POSIX unnamed semaphores, placed by mpsysv inside SysV segments: a futex-based counter
# whose uncontended post/wait never enters the kernel.
sem_init = _fn("sem_init", c_int, _vp, c_int, c_uint)
sem_post = _fn("sem_post", c_int, _vp)
sem_trywait = _fn("sem_trywait", c_int, _vp)
sem_wait = _fn("sem_wait", c_int, _vp)
sem_clockwait = _fn("sem_clockwait", c_int, _vp, c_int, _vp)
sem_getvalue = _fn("sem_getvalue", c_int, _vp, _vp)
SEM_T_SIZE = 32
SEM_VALUE_MAX = 2 ** 31 - 1
# Robust process-shared pthread mutexes, placed by mpsysv inside SysV segments: no system
# call when uncontended; a holder's death hands the lock to the next locker with
# EOWNERDEAD. These return an error number (not -1 and errno).
PTHREAD_MUTEX_ERRORCHECK = 2
PTHREAD_PROCESS_SHARED = 1
PTHREAD_MUTEX_ROBUST = 1
PTHREAD_MUTEXATTR_SIZE = 64  # (4 or 8 on glibc: room to spare)
pthread_mutexattr_init = _fn("pthread_mutexattr_init", c_int, _vp)
pthread_mutexattr_destroy = _fn("pthread_mutexattr_destroy", c_int, _vp)
pthread_mutexattr_settype = _fn("pthread_mutexattr_settype", c_int, _vp, c_int)
pthread_mutexattr_setpshared = _fn("pthread_mutexattr_setpshared", c_int, _vp, c_int)
pthread_mutexattr_setrobust = _fn("pthread_mutexattr_setrobust", c_int, _vp, c_int)
pthread_mutex_init = _fn("pthread_mutex_init", c_int, _vp, _vp)
pthread_mutex_lock = _fn("pthread_mutex_lock", c_int, _vp)
pthread_mutex_clocklock = _fn("pthread_mutex_clocklock", c_int, _vp, c_int, _vp)
pthread_mutex_consistent = _fn("pthread_mutex_consistent", c_int, _vp)
# The calls that never block, through a handle that keeps the GIL (no hand-off to
# another thread per call): the uncontended lock and every unlock. No argtypes: callers
# pass a prebuilt c_void_p.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
pthread_mutex_trylock_fast = _libc_gil["pthread_mutex_trylock"]
pthread_mutex_unlock_fast = _libc_gil["pthread_mutex_unlock"]
sem_post_fast = _libc_gil["sem_post"]
sem_trywait_fast = _libc_gil["sem_trywait"]


# The address of an object's buffer (a read-only one too, which ctypes' from_buffer
# refuses): the Py_buffer is released before returning; the caller keeps the object.
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, _vp, c_int)
_get_buffer.restype = c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (_vp,)
_release_buffer.restype = None
_PY_BUFFER = _vp * 16  # sizeof(Py_buffer) is 80 on 64-bit builds; .buf comes first


def buffer_address(obj) -> int:
    """The address of *obj*'s buffer (``PyBUF_SIMPLE``)."""
    view = _PY_BUFFER()
    if _get_buffer(obj, view, 0) != 0:  # pragma: no cover - raises the Python error
        raise BufferError(f"no buffer in {type(obj).__name__}")
    address = view[0] or 0
    _release_buffer(view)
    return address


def read_limit(name: str, default: int) -> int:
    """One value of ``/proc/sys/kernel/NAME`` (the first field), or *default*."""
    try:
        with open(f"/proc/sys/kernel/{name}") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def limits() -> dict:
    """The kernel's System V IPC limits, read now from ``/proc/sys/kernel``."""
    sem = [250, 32000, 32, 128]
    try:
        with open("/proc/sys/kernel/sem") as f:
            sem = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return {
        "msgmax": read_limit("msgmax", 8192), "msgmnb": read_limit("msgmnb", 16384),
        "msgmni": read_limit("msgmni", 32000), "shmmax": read_limit("shmmax", 2 ** 63),
        "shmall": read_limit("shmall", 2 ** 63), "shmmni": read_limit("shmmni", 4096),
        "semmsl": sem[0], "semmns": sem[1], "semopm": sem[2], "semmni": sem[3],
    }


def deadline_timespec(deadline: float) -> timespec:
    """An absolute ``CLOCK_MONOTONIC`` timespec for a ``time.monotonic()`` deadline."""
    sec = int(deadline)
    return timespec(sec, int((deadline - sec) * 1e9))


def relative_timespec(seconds: float) -> timespec:
    seconds = max(seconds, 0.0)
    sec = int(seconds)
    return timespec(sec, int((seconds - sec) * 1e9))


monotonic = time.monotonic
get_errno = _get_errno
addressof = ctypes.addressof
byref = ctypes.byref
