"""Queue benchmark: multiprocessing vs mpsysv (and peers when installed), side by side.

Every case runs for every backend in each round, rounds interleaved, so machine
noise hits all backends alike; the table shows medians, the spread (min..max) and
the ratio to ``multiprocessing.Queue`` from the same run.

    python bench/bench_queues.py                 # the full table
    python bench/bench_queues.py --quick         # fewer objects and rounds
    python bench/bench_queues.py --json out.json --png chart.png
    python bench/bench_queues.py --from-json out.json --png chart.png   # redraw only
    python bench/bench_queues.py --arrays        # the NumPy array table (16 KiB..64 MiB)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mpsysv  # noqa: E402

ctx = mp.get_context("fork")


class SysvIpcPickle:
    """sysv_ipc (a C extension) plus pickle: one message per object, like a bare loop.
    Objects must fit one message; larger cases are skipped for it."""

    small_only = True

    def __init__(self):
        import sysv_ipc

        self._q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600)
        self._dumps, self._loads = pickle.dumps, pickle.loads

    def put(self, obj):
        self._q.send(self._dumps(obj, 5))

    def get(self):
        return self._loads(self._q.receive()[0])

    def close(self):
        if os.getpid() == self._owner:
            self._q.remove()

    def __getstate__(self):
        raise TypeError("fork only")


def _sysv_ipc_factory():
    q = SysvIpcPickle()
    q._owner = os.getpid()
    return q


def backends():
    """name -> factory of a queue object with put/get."""
    found = {
        "mp.Queue": ctx.Queue,
        "mp.SimpleQueue": ctx.SimpleQueue,
        "mpsysv.Queue": mpsysv.Queue,
    }
    try:
        import sysv_ipc  # noqa: F401

        found["sysv_ipc+pickle"] = _sysv_ipc_factory
    except ImportError:
        pass
    try:
        import faster_fifo

        # (room for two 64 MiB arrays: an object larger than the buffer raises Full)
        found["faster_fifo"] = lambda: faster_fifo.Queue(max_size_bytes=160 << 20)
    except ImportError:
        pass
    return found


def _close(q):
    for name in ("close",):
        f = getattr(q, name, None)
        if f:
            f()


def _produce(q, go, n, payload):
    go.wait()
    for _ in range(n):
        q.put(payload)
    if hasattr(q, "task_done"):
        q.join()  # (a JoinableQueue: put; get + task_done; join -- all in the timing)
    if hasattr(q, "join_thread"):
        q.close()
        q.join_thread()


def _consume(q, go, n, use=None):
    go.wait()
    done = getattr(q, "task_done", None)
    for _ in range(n):
        obj = q.get()
        if use is not None:
            use(obj)
        if done is not None:
            done()


def _sum(arr) -> None:
    arr.sum()


def throughput(factory, producers: int, consumers: int, n: int, payload,
               use=None) -> float:
    """Objects per second moved from *producers* to *consumers* processes."""
    q = factory()
    go = ctx.Event()
    per_p = [n // producers + (i < n % producers) for i in range(producers)]
    per_c = [n // consumers + (i < n % consumers) for i in range(consumers)]
    procs = [ctx.Process(target=_produce, args=(q, go, k, payload)) for k in per_p]
    cons = [ctx.Process(target=_consume, args=(q, go, k, use)) for k in per_c]
    for p in procs + cons:
        p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    for c in cons:
        c.join()
    if hasattr(q, "task_done"):
        for p in procs:  # the producers' join() returned: every task was done
            p.join()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    _close(q)
    return n / elapsed


def _produce_batches(q, go, n, payload, batch):
    go.wait()
    for _ in range(n // batch):
        q.put_many([payload] * batch)
    if hasattr(q, "join_thread"):
        q.close()
        q.join_thread()


def _consume_batches(q, go, n, batch):
    go.wait()
    got = 0
    while got < n:
        got += len(q.get_many(batch))


def batched(factory, n: int, payload, batch: int = 100) -> float:
    """Objects per second through put_many/get_many where the queue has them, else
    through put/get one by one (what a user of that queue would write)."""
    q = factory()
    if not hasattr(q, "put_many"):
        _close(q)
        return throughput(factory, 1, 1, n, payload)
    go = ctx.Event()
    p = ctx.Process(target=_produce_batches, args=(q, go, n, payload, batch))
    c = ctx.Process(target=_consume_batches, args=(q, go, n, batch))
    p.start()
    c.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    c.join()
    elapsed = time.perf_counter() - t0
    p.join()
    _close(q)
    return n / elapsed


def _echo(a, b, n, cpu):
    os.sched_setaffinity(0, {cpu})
    for _ in range(n):
        b.put(a.get())


def pingpong(factory, n: int) -> float:
    """Median one-way latency in microseconds, both processes on one CPU."""
    a, b = factory(), factory()
    cpu = min(os.sched_getaffinity(0))
    p = ctx.Process(target=_echo, args=(a, b, n + 100, cpu))
    p.start()
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        for i in range(100):  # warm-up
            a.put(i)
            b.get()
        samples = []
        clock = time.perf_counter_ns
        for i in range(n):
            t0 = clock()
            a.put(i)
            b.get()
            samples.append(clock() - t0)
    finally:
        os.sched_setaffinity(0, old)
    p.join()
    _close(a)
    _close(b)
    return statistics.median(samples) / 2000.0


def _counted(kind: str):
    """The bounded or joinable variant of the mp.Queue and mpsysv.Queue columns (the
    other columns have none: their cases skip them)."""
    variants = {ctx.Queue: {"bounded": lambda: ctx.Queue(1000),
                            "joinable": ctx.JoinableQueue,
                            "bounded joinable": lambda: ctx.JoinableQueue(1000)},
                mpsysv.Queue: {"bounded": lambda: mpsysv.Queue(1000),
                               "joinable": mpsysv.JoinableQueue,
                               "bounded joinable": lambda: mpsysv.JoinableQueue(1000)}}
    return lambda f: variants[f][kind] if f in variants else None


def _arrays(factory, n: int, elements: int, use=None):
    """``throughput()`` of float64 NumPy arrays (None without NumPy: no such row)."""
    try:
        import numpy
    except ImportError:
        return None
    return throughput(factory, 1, 1, n, numpy.ones(elements), use)


def cases(quick: bool):
    small = 40_000 if quick else 200_000
    bounded, joinable = _counted("bounded"), _counted("joinable")
    bounded_joinable = _counted("bounded joinable")

    def counted(variant, producers, consumers):
        return lambda f: (None if variant(f) is None else
                          throughput(variant(f), producers, consumers, small // 4, 12345))

    return [
        ("small objects 1->1", "obj/s", lambda f: throughput(f, 1, 1, small, 12345)),
        ("small objects 4->1", "obj/s", lambda f: throughput(f, 4, 1, small, 12345)),
        ("small objects 1->4", "obj/s", lambda f: throughput(f, 1, 4, small, 12345)),
        ("batches of 100 small objects 1->1", "obj/s",
         lambda f: batched(f, small, 12345)),
        ("ping-pong latency, one CPU", "us", lambda f: pingpong(f, 2000 if quick else 10_000)),
        ("1 MiB objects 1->1", "obj/s", lambda f: throughput(f, 1, 1, 40 if quick else 200,
                                                              b"x" * (1 << 20))),
        ("16 MiB objects 1->1", "obj/s", lambda f: throughput(f, 1, 1, 4 if quick else 16,
                                                               b"x" * (16 << 20))),
        ("64 MiB float64 array 1->1 (receiver sums it)", "obj/s",
         lambda f: _arrays(f, 4 if quick else 10, 8 << 20, _sum)),
        ("1 MiB arrays 1->1", "obj/s", lambda f: _arrays(f, 40 if quick else 200, 1 << 17)),
        ("Queue(1000), small objects 1->1", "obj/s", counted(bounded, 1, 1)),
        ("Queue(1000), small objects 1->4", "obj/s", counted(bounded, 1, 4)),
        ("Queue(1000), small objects 4->1", "obj/s", counted(bounded, 4, 1)),
        ("JoinableQueue (put; get+task_done; join), small objects 1->1", "obj/s",
         counted(joinable, 1, 1)),
        ("JoinableQueue (put; get+task_done; join), small objects 1->4", "obj/s",
         counted(joinable, 1, 4)),
        ("JoinableQueue(1000) (put; get+task_done; join), small objects 1->1", "obj/s",
         counted(bounded_joinable, 1, 1)),
        ("JoinableQueue(1000) (put; get+task_done; join), small objects 1->4", "obj/s",
         counted(bounded_joinable, 1, 4)),
    ]


# -- the array table: float64 arrays, one producer, one consumer that sums each --------------

ARRAY_SIZES = [(16 << 10, 2000), (64 << 10, 2000), (256 << 10, 1000), (512 << 10, 1000),
               (1 << 20, 200), (8 << 20, 48), (64 << 20, 16)]  # bytes, objects per run


def array_backends():
    """The array table's columns: the stdlib's queues, mpsysv both ways, faster_fifo."""
    found = {"mp.Queue": ctx.Queue, "mp.SimpleQueue": ctx.SimpleQueue,
             "mpsysv.Queue": mpsysv.Queue,
             "mpsysv.Queue(zero_copy=False)": lambda: mpsysv.Queue(zero_copy=False)}
    try:
        import faster_fifo

        found["faster_fifo"] = lambda: faster_fifo.Queue(max_size_bytes=160 << 20)
    except ImportError:
        pass
    return found


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _consume_arrays(q, go, n, out):
    import resource

    start = _rss_kib()
    go.wait()
    for _ in range(n):
        q.get().sum()
    out.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start)


def array_throughput(factory, nbytes: int, n: int):
    """``(arrays/s, receiver's peak RSS growth in MiB, CPU ms per array)`` for *n*
    float64 arrays of *nbytes* from one producer to one consumer that sums each; the
    CPU time is both processes' (every thread), which a busy machine disturbs least."""
    import numpy
    import resource

    q = factory()
    go = ctx.Event()
    got, out = ctx.Pipe(False)
    p = ctx.Process(target=_produce, args=(q, go, n, numpy.ones(nbytes // 8)))
    c = ctx.Process(target=_consume_arrays, args=(q, go, n, out))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    c.start()
    p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    c.join()
    elapsed = time.perf_counter() - t0
    p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _close(q)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n * 1e3
    return n / elapsed, got.recv() / 1024, cpu


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def run_arrays(rounds: int, quick: bool, path) -> int:
    """The array table: every size for every backend in each round, interleaved."""
    impls = array_backends()
    sizes = [(b, max(4, n // 4) if quick else n) for b, n in ARRAY_SIZES]
    found = {what: {_size(b): {name: [] for name in impls} for b, _ in sizes}
             for what in ("speed", "rss", "cpu")}
    for r in range(rounds):
        for nbytes, n in sizes:
            for name, factory in impls.items():
                for what, value in zip(("speed", "rss", "cpu"),
                                       array_throughput(factory, nbytes, n)):
                    found[what][_size(nbytes)][name].append(value)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    report_arrays(found, list(impls), rounds, sizes)
    if path:
        with open(path, "w") as f:
            json.dump({"rounds": rounds, "objects": {_size(b): n for b, n in sizes},
                       "arrays": found["speed"], "receiver_rss_mib": found["rss"],
                       "cpu_ms_per_array": found["cpu"]}, f, indent=1)
    return 0


def report_arrays(found, impls, rounds, sizes) -> None:
    med = statistics.median
    speed = found["speed"]
    print(f"\nfloat64 arrays 1->1, the receiver sums each; medians of {rounds} interleaved "
          "rounds (min..max); ratio to mp.Queue\n")
    print(f"| array (objects) | {' | '.join(impls)} | mpsysv / SimpleQueue | "
          "mpsysv / zero_copy=False |")
    print("| --- |" + " --- |" * (len(impls) + 2))
    for nbytes, n in sizes:
        size = _size(nbytes)
        cols = speed[size]
        base = med(cols["mp.Queue"])
        cells = [f"{med(v):,.0f}/s ({min(v):,.0f}..{max(v):,.0f}) **{med(v) / base:.2f}x**"
                 for v in cols.values()]
        ours = med(cols["mpsysv.Queue"])
        print(f"| {size} ({n}) | {' | '.join(cells)} | {ours / med(cols['mp.SimpleQueue']):.2f}x"
              f" | {ours / med(cols['mpsysv.Queue(zero_copy=False)']):.2f}x |")
    print("\nCPU time per array (producer + consumer, ms, median) and the receiver's peak "
          "RSS growth (MiB, median)\n")
    print(f"| array | {' | '.join(impls)} |")
    print("| --- |" + " --- |" * len(impls))
    for nbytes, _ in sizes:
        size = _size(nbytes)
        cells = [f"{med(found['cpu'][size][name]):,.2f} ms, +{med(found['rss'][size][name]):,.0f}"
                 f" MiB" for name in impls]
        print(f"| {size} | {' | '.join(cells)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller runs (3 rounds)")
    ap.add_argument("--only", help="run only cases whose title contains this text")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--png", help="draw a chart of the ratios (needs matplotlib)")
    ap.add_argument("--arrays", action="store_true",
                    help="run the NumPy array table instead (16 KiB..64 MiB, with RSS)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="run nothing: print the table (and --png chart) of a --json file")
    args = ap.parse_args(argv)
    if args.from_json:
        return _replay(args.from_json, args.png)
    rounds = 3 if args.quick and args.rounds == 5 else args.rounds
    if args.arrays:
        return run_arrays(rounds, args.quick, args.json)
    impls = backends()
    todo = [c for c in cases(args.quick) if not args.only or args.only in c[0]]
    results = {title: {name: [] for name in impls} for title, _, _ in todo}
    for r in range(rounds):
        for title, unit, run in todo:
            for name, factory in impls.items():
                if "MiB" in title and name == "sysv_ipc+pickle":
                    continue  # one message per object: 8 KiB at most
                value = run(factory)
                if value is not None:  # (None: this column has no such variant)
                    results[title][name].append(value)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    report(todo, results, impls, rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "results": results,
                       "units": {t: u for t, u, _ in todo}}, f, indent=1)
    if args.png:
        chart(todo, results, impls, args.png)
    return 0


def _replay(path: str, png) -> int:
    """The table and chart of results saved by ``--json``, without running anything."""
    with open(path) as f:
        saved = json.load(f)
    results, units = saved["results"], saved["units"]
    todo = [(title, units[title], None) for title in results]
    impls = list(next(iter(results.values())))
    report(todo, results, impls, saved["rounds"])
    if png:
        chart(todo, results, impls, png)
    return 0


def _ratio(unit, value, base):
    return base / value if unit == "us" else value / base


def report(todo, results, impls, rounds):
    print(f"\nmedians of {rounds} interleaved rounds; ratio = speed relative to mp.Queue "
          "(higher is better)\n")
    print(f"| case | {' | '.join(impls)} |")
    print("| --- |" + " --- |" * len(impls))
    for title, unit, _ in todo:
        base = statistics.median(results[title]["mp.Queue"])
        cells = []
        for name in impls:
            vals = results[title][name]
            if not vals:
                cells.append("n/a")
                continue
            med = statistics.median(vals)
            fmt = (lambda v: f"{v:,.1f}") if unit == "us" else (lambda v: f"{v:,.0f}")
            cells.append(f"{fmt(med)} {unit} ({fmt(min(vals))}..{fmt(max(vals))}) "
                         f"**{_ratio(unit, med, base):.2f}x**")
        print(f"| {title} | {' | '.join(cells)} |")


def chart(todo, results, impls, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(impls)
    for i, name in enumerate(impls):
        ys = []
        for title, unit, _ in todo:
            base = statistics.median(results[title]["mp.Queue"])
            vals = results[title][name]
            ys.append(_ratio(unit, statistics.median(vals), base) if vals else 0)
        ax.bar([x + i * width for x in range(len(todo))], ys, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(todo))])
    ax.set_xticklabels([t for t, _, _ in todo], rotation=15, fontsize=8)
    ax.set_ylabel("speed relative to mp.Queue")
    ax.axhline(1, color="grey", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
