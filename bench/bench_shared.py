"""mpsysv.shared against multiprocessing.shared_memory, side by side in one run.

Cycle: create a 1 MiB segment, (attach it again by name,) close, unlink: the time of
one cycle. Bandwidth: ``buf[:] = data`` of 64 MiB into a fresh segment (page faults
included) and again into the same one, and ``bytes(buf)`` out of it. Both sides run
in alternation; the ratio is the median of the per-round ratios (robust to load).
Raw ctypes shmget/shmat/shmdt/IPC_RMID rows show the kernel's floor for both cycles,
and what touching one fresh page costs (mpsysv's identity trailer: written by the
creator, read by the second handle).

    python3 bench/bench_shared.py [--rounds 9] [--cycles 2000] [--mib 64]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from multiprocessing import shared_memory as std

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpsysv._ipc import libc as L  # noqa: E402
from mpsysv.shared import SharedMemory  # noqa: E402

CYCLE_SIZE = 1 << 20
RAW_KEY = 0x6D707362
TRAILER = 256
_TRAILER_BYTES = b"t" * TRAILER


def cycle_mpsysv(track=True):
    s = SharedMemory(create=True, size=CYCLE_SIZE, track=track)
    s.close()
    s.unlink()


def cycle_mpsysv_untracked():
    cycle_mpsysv(track=False)


def cycle_stdlib():
    s = std.SharedMemory(create=True, size=CYCLE_SIZE)
    s.close()
    s.unlink()


def cycle2_mpsysv():
    s = SharedMemory(create=True, size=CYCLE_SIZE)
    t = SharedMemory(s.name)
    t.close()
    s.close()
    s.unlink()


def cycle2_stdlib():
    s = std.SharedMemory(create=True, size=CYCLE_SIZE)
    t = std.SharedMemory(s.name)
    t.close()
    s.close()
    s.unlink()


def _raw(touch):
    ident = L.shmget(RAW_KEY, CYCLE_SIZE, L.IPC_CREAT | L.IPC_EXCL | 0o600)
    addr = L.shmat(ident, None, 0)
    if touch:
        ctypes.memset(addr, 1, 1)
    L.shmdt(addr)
    L.shmctl(ident, L.IPC_RMID, None)


def raw_cycle():
    _raw(False)


def raw_cycle_touch():
    _raw(True)


def _raw2(trailer):
    """The system calls of the two-handle cycle; *trailer*: write 256 bytes past the
    data and read them back through the second mapping, as mpsysv's identity check."""
    ident = L.shmget(RAW_KEY, CYCLE_SIZE + TRAILER, L.IPC_CREAT | L.IPC_EXCL | 0o600)
    addr = L.shmat(ident, None, 0)
    if trailer:
        ctypes.memmove(addr + CYCLE_SIZE, _TRAILER_BYTES, TRAILER)
    other = L.shmget(RAW_KEY, 0, 0)
    ds = L.shmid_ds()
    L.shmctl(other, L.IPC_STAT, ctypes.byref(ds))
    addr2 = L.shmat(other, None, 0)
    if trailer:
        ctypes.string_at(addr2 + ds.shm_segsz - TRAILER, TRAILER)
    L.shmdt(addr2)
    L.shmdt(addr)
    L.shmctl(ident, L.IPC_RMID, None)


def raw_cycle2():
    _raw2(False)


def raw_cycle2_trailer():
    _raw2(True)


def per_call_us(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bandwidth(make, data):
    """GB/s of the first write into a new segment (page faults), a rewrite, a read."""
    n = len(data)
    s = make(n)
    try:
        t0 = time.perf_counter()
        s.buf[:] = data
        t1 = time.perf_counter()
        s.buf[:] = data
        t2 = time.perf_counter()
        bytes(s.buf)
        t3 = time.perf_counter()
    finally:
        s.close()
        s.unlink()
    return n / (t1 - t0) / 1e9, n / (t2 - t1) / 1e9, n / (t3 - t2) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()

    rows = [
        ("create+close+unlink 1 MiB", cycle_mpsysv, cycle_stdlib),
        ("  same, track=False", cycle_mpsysv_untracked, cycle_stdlib),
        ("create+attach+close x2+unlink 1 MiB", cycle2_mpsysv, cycle2_stdlib),
        ("raw ctypes shmget+shmat+shmdt+RMID", raw_cycle, cycle_stdlib),
        ("  raw, touching 1 fresh page", raw_cycle_touch, cycle_stdlib),
        ("raw create+attach+shmdt x2+RMID", raw_cycle2, cycle2_stdlib),
        ("  raw, trailer written and read", raw_cycle2_trailer, cycle2_stdlib),
    ]
    for _, ours, theirs in rows:  # warm up: tracker start, imports, caches
        ours()
        theirs()
    samples = {label: ([], []) for label, _, _ in rows}
    for _ in range(args.rounds):
        for label, ours, theirs in rows:
            samples[label][0].append(per_call_us(ours, args.cycles))
            samples[label][1].append(per_call_us(theirs, args.cycles))

    print(f"mpsysv.shared vs multiprocessing.shared_memory - Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} interleaved rounds "
          f"of {args.cycles} cycles, medians")
    print(f"{'operation':40s} {'mpsysv':>11s} {'stdlib':>11s} {'ratio':>7s}")
    for label, _, _ in rows:
        ours, theirs = samples[label]
        # the ratio of each round (same load for both sides), then the median
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        print(f"{label:40s} {statistics.median(ours):8.1f} us "
              f"{statistics.median(theirs):8.1f} us {ratio:7.2f}")

    data = os.urandom(1 << 20) * args.mib
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(bandwidth(lambda n: SharedMemory(create=True, size=n), data))
        theirs.append(bandwidth(lambda n: std.SharedMemory(create=True, size=n), data))
    for i, what in enumerate(("first write (page faults)", "rewrite", "read bytes(buf)")):
        label = f"{args.mib} MiB {what}"
        a = statistics.median(sample[i] for sample in ours)
        b = statistics.median(sample[i] for sample in theirs)
        ratio = statistics.median(x[i] / y[i] for x, y in zip(ours, theirs))
        print(f"{label:40s} {a:6.2f} GB/s {b:6.2f} GB/s {ratio:7.2f}")


if __name__ == "__main__":
    main()
