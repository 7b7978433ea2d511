"""One workload on an mpsysv context and on Ray's Pool and Queue.

    python examples/ray_pool.py [--items N] [--workers N] [--only mpsysv|ray]

The workload has the two shapes of the README's "Beyond one machine": a ``Pool.map``
of a pure function over ``range(N)``, and producers that put their results on a
queue which the main program drains until every producer has sent its ``None``.
It runs first on ``mpsysv.get_context("spawn")`` (``ctx.Pool``, ``ctx.Queue``,
``ctx.Process``; System V objects of this host) and then on a local Ray started
here (``ray.util.multiprocessing.Pool``, ``ray.util.queue.Queue``, producers as Ray
tasks). The code that differs between the two is only what the README lists: where
the pool, queue and producers come from, and which ``Empty`` is caught.

It prints one line per backend with checksums of both results and exits 1 when the
two backends disagree (or when ``ray`` is not installed and ``--only mpsysv`` was
not given).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import sys
import time

try:
    import mpsysv
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mpsysv

TIMEOUT = 120.0  # seconds for any one wait


def digest(x: int) -> int:
    """The pure function the pool maps: a little CPU work per item."""
    h = hashlib.sha256(str(x).encode())
    for _ in range(200):
        h = hashlib.sha256(h.digest())
    return int.from_bytes(h.digest()[:4], "little")


def produce(q, first: int, count: int) -> None:
    """Put ``(x, digest(x))`` for a slice of the items, then ``None``."""
    for x in range(first, first + count):
        q.put((x, digest(x)))
    q.put(None)


def drain(q, producers: int, empty: type) -> list:
    """Get until every producer has sent its ``None``; *empty* is the queue's Empty."""
    got, done = [], 0
    while done < producers:
        try:
            item = q.get(timeout=TIMEOUT)
        except empty:
            raise SystemExit(f"no item for {TIMEOUT}s ({done} of {producers} producers done)")
        if item is None:
            done += 1
        else:
            got.append(item)
    return sorted(got)


def slices(items: int, workers: int) -> list:
    step = -(-items // workers)
    return [(first, min(step, items - first)) for first in range(0, items, step)]


def run_mpsysv(items: int, workers: int) -> tuple:
    ctx = mpsysv.get_context("spawn")
    with ctx.Pool(workers) as pool:
        mapped = pool.map(digest, range(items))
    q = ctx.Queue()
    procs = [ctx.Process(target=produce, args=(q, first, count)) for first, count in
             slices(items, workers)]
    for p in procs:
        p.start()
    queued = drain(q, len(procs), queue.Empty)
    for p in procs:
        p.join(TIMEOUT)
    q.close()
    q.join_thread()
    return mapped, queued, f"{type(q).__module__}.{type(q).__qualname__}"


def run_ray(items: int, workers: int) -> tuple:
    import ray
    from ray.util.multiprocessing import Pool
    from ray.util.queue import Empty, Queue

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024, configure_logging=False)
    try:
        with Pool(workers) as pool:
            mapped = pool.map(digest, range(items))
        q = Queue()
        remote_produce = ray.remote(produce)
        tasks = [remote_produce.remote(q, first, count) for first, count in
                 slices(items, workers)]
        queued = drain(q, len(tasks), Empty)
        ray.get(tasks, timeout=TIMEOUT)
        q.shutdown()
        return mapped, queued, (f"{type(q).__module__}.{type(q).__qualname__}, "
                                f"Ray {ray.__version__}")
    finally:
        ray.shutdown()


def checksum(values) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=("mpsysv", "ray"))
    args = parser.parse_args(argv)
    backends = {"mpsysv": run_mpsysv, "ray": run_ray}
    results = {}
    for name, run in backends.items():
        if args.only and name != args.only:
            continue
        start = time.monotonic()
        try:
            mapped, queued, queue_type = run(args.items, args.workers)
        except ImportError as exc:
            print(f"{name}: not installed ({exc}); pip install '.[ray]'")
            return 1
        elapsed = time.monotonic() - start
        ok = (len(mapped) == args.items and len(queued) == args.items
              and [d for _, d in queued] == mapped)
        results[name] = (checksum(mapped), checksum(queued))
        print(f"{name}: map of {len(mapped)} items, checksum {results[name][0]}; "
              f"queue ({queue_type}) {len(queued)} items, checksum {results[name][1]}; "
              f"{'consistent' if ok else 'INCONSISTENT'}; {elapsed:.1f}s", flush=True)
        if not ok:
            return 1
    if len(set(results.values())) > 1:
        print("the backends disagree")
        return 1
    if len(results) > 1:
        print("same results on every backend")
    return 0


if __name__ == "__main__":
    sys.exit(main())
