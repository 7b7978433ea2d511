"""Pool benchmark: ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` on the stdlib's
pipes and on mpsysv's queues, side by side.

Both backends keep one warm pool each (and one warm executor each) for the whole run;
every case runs on both in each round, rounds interleaved and the first backend
alternating, so machine noise hits both alike. The table shows the median round,
the spread (slowest round / median round) and the speed ratio (stdlib time /
mpsysv time: above 1, mpsysv is faster) from the same run.

    python bench/bench_pool.py                  # 5 rounds, the issue's sizes
    python bench/bench_pool.py --rounds 3 --scale 0.25
    python bench/bench_pool.py --json out.json
    python bench/bench_pool.py --only arrays     # the NumPy array cases (need NumPy)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mpsysv  # noqa: E402

BIG = 200_000  # bytes each large result holds


def f(x):
    return x * 2


def g(x):
    return bytes(BIG)


def case_map_1(pool, n):
    assert len(pool.map(f, range(n), chunksize=1)) == n


def case_map_100(pool, n):
    assert len(pool.map(f, range(n), chunksize=100)) == n


def case_imap_unordered(pool, n):
    assert len(list(pool.imap_unordered(f, range(n), chunksize=4))) == n


def case_apply_async(pool, n):
    results = [pool.apply_async(f, (i,)) for i in range(n)]
    assert sum(r.get() for r in results) == n * (n - 1)


def case_map_large(pool, n):
    assert sum(len(b) for b in pool.map(g, range(n))) == n * BIG


_ARRAYS: list = []  # float64 arrays of 8 MiB, made once (outside the timings)


def _arrays(n):
    import numpy

    while len(_ARRAYS) < n:
        _ARRAYS.append(numpy.full(1 << 20, float(len(_ARRAYS))))
    return _ARRAYS[:n]


def total(a):
    return float(a.sum())


def echo(a):
    return a


def case_map_arrays_sums(pool, n):
    assert pool.map(total, _arrays(n), chunksize=1) == [float(i) * (1 << 20) for i in range(n)]


def case_map_arrays_back(pool, n):
    got = pool.map(echo, _arrays(n), chunksize=1)
    assert [float(a[0]) for a in got] == [float(i) for i in range(n)]


def case_executor_map(executor, n):
    assert len(list(executor.map(f, range(n), chunksize=10))) == n


# (name, function, objects at --scale 1, runs on the executor)
CASES = [
    ("map(f, range(4000), chunksize=1)", case_map_1, 4000, False),
    ("map(f, range(400000), chunksize=100)", case_map_100, 400_000, False),
    ("imap_unordered(f, range(4000), chunksize=4)", case_imap_unordered, 4000, False),
    ("4000 x apply_async(f, (i,)), then .get()", case_apply_async, 4000, False),
    ("map(g, range(400)), 200 KB results", case_map_large, 400, False),
    ("ProcessPoolExecutor.map(f, range(4000), chunksize=10)", case_executor_map, 4000, True),
    ("map(total, 64 float64 arrays of 8 MiB), their sums back", case_map_arrays_sums, 64, False),
    ("map(echo, 64 float64 arrays of 8 MiB), the arrays back", case_map_arrays_back, 64, False),
]


class Backend:
    def __init__(self, name, ctx, processes):
        self.name = name
        self.pool = ctx.Pool(processes)
        self.executor = concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx)
        self.pool.map(f, range(100))  # every worker started
        list(self.executor.map(f, range(100)))

    def close(self):
        self.executor.shutdown(wait=True)
        self.pool.close()
        self.pool.join()


def run(rounds, scale, processes, only=None):
    backends = [Backend("stdlib", mp.get_context("fork"), processes),
                Backend("mpsysv", mpsysv.get_context("fork"), processes)]
    cases = [c for c in CASES if only is None or any(o in c[0] for o in only)]
    times = {(c[0], b.name): [] for c in cases for b in backends}
    try:
        for r in range(rounds):
            for name, fn, n, on_executor in cases:
                count = max(int(n * scale), 1)
                order = backends if r % 2 == 0 else backends[::-1]
                for b in order:
                    target = b.executor if on_executor else b.pool
                    t0 = time.perf_counter()
                    fn(target, count)
                    times[(name, b.name)].append(time.perf_counter() - t0)
    finally:
        for b in backends:
            b.close()
    rows = []
    for name, _, n, _ in cases:
        std, ours = times[(name, "stdlib")], times[(name, "mpsysv")]
        med_std, med_ours = statistics.median(std), statistics.median(ours)
        rows.append({"case": name, "objects": max(int(n * scale), 1),
                     "stdlib_s": med_std, "mpsysv_s": med_ours,
                     "ratio": med_std / med_ours,
                     "spread_stdlib": max(std) / med_std, "spread_mpsysv": max(ours) / med_ours,
                     "rounds_stdlib": std, "rounds_mpsysv": ours})
    return rows


def table(rows):
    out = ["| case | stdlib | mpsysv | ratio (stdlib / mpsysv time) | spread stdlib | "
           "spread mpsysv |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        out.append(f"| `{row['case']}` | {row['stdlib_s'] * 1e3:.1f} ms | "
                   f"{row['mpsysv_s'] * 1e3:.1f} ms | {row['ratio']:.2f}x | "
                   f"{row['spread_stdlib']:.2f}x | {row['spread_mpsysv']:.2f}x |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="objects per case, times")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="cases whose name holds one of these")
    parser.add_argument("--json", help="also write the rows (every round's time) here")
    args = parser.parse_args()
    rows = run(args.rounds, args.scale, args.processes, args.only)
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, Pool({args.processes}) "
          f"and ProcessPoolExecutor({args.processes}) from get_context('fork'), "
          f"{args.rounds} interleaved rounds, scale {args.scale}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"python": platform.python_version(), "cpus": os.cpu_count(),
                       "rounds": args.rounds, "scale": args.scale,
                       "processes": args.processes, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
