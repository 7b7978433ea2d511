"""Where zero-copy starts to pay: CPU time per ``put()`` + ``get()`` + ``sum()`` of one
float64 array in one process, three ways, for sizes around ``ZERO_COPY_MIN``.

* zero-copy: buffers out of band, the receiver gets views of the (lent) segment;
* out-of-band copy: buffers out of band, the receiver copies them (``zero_copy=False``);
* in-band: the array pickled whole, the parcel holds that pickle.

Process CPU time (not wall time) is what a busy machine disturbs least; rounds are
interleaved and the table shows medians and the spread (min..max).

    python bench/array_crossover.py                # 16 KiB .. 1 MiB, 5 rounds
    python bench/array_crossover.py --kib 192,256,320,384,448,512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy  # noqa: E402

import mpsysv  # noqa: E402
from mpsysv._queue import parcels  # noqa: E402
from mpsysv._queue.pickler import Pickler  # noqa: E402

WAYS = ("zero-copy", "out-of-band copy", "in-band")


def per_object(way: str, nbytes: int, n: int) -> float:
    """Microseconds of this process's CPU time per put + get + sum."""
    q = mpsysv.Queue(zero_copy=way == "zero-copy")
    q._pickler = Pickler(1 << 40 if way == "in-band" else 4096)
    saved, parcels.ZERO_COPY_MIN = parcels.ZERO_COPY_MIN, 0
    try:
        arr = numpy.ones(nbytes // 8)
        for _ in range(20):  # the pool warm
            q.put(arr)
            q.get().sum()
        t0 = time.process_time()
        for _ in range(n):
            q.put(arr)
            q.get().sum()
        return (time.process_time() - t0) / n * 1e6
    finally:
        parcels.ZERO_COPY_MIN = saved
        q.close()
        q.join_thread()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kib", default="16,64,128,256,320,384,512,1024")
    args = ap.parse_args()
    sizes = [int(k) << 10 for k in args.kib.split(",")]
    got = {(s, w): [] for s in sizes for w in WAYS}
    for r in range(args.rounds):
        for s in sizes:
            for w in WAYS:
                got[s, w].append(per_object(w, s, max(200, (64 << 20) // s // 8)))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"\nCPU µs per put+get+sum in one process, medians of {args.rounds} interleaved "
          f"rounds (min..max); ZERO_COPY_MIN is {parcels.ZERO_COPY_MIN >> 10} KiB\n")
    print("| array | " + " | ".join(WAYS) + " | cheapest |")
    print("| --- |" + " --- |" * (len(WAYS) + 1))
    for s in sizes:
        meds = {w: statistics.median(got[s, w]) for w in WAYS}
        cells = [f"{meds[w]:.1f} ({min(got[s, w]):.1f}..{max(got[s, w]):.1f})" for w in WAYS]
        label = f"{s >> 20} MiB" if s >= 1 << 20 else f"{s >> 10} KiB"
        print(f"| {label} | " + " | ".join(cells) + f" | {min(meds, key=meds.get)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
