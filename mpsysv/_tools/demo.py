"""``python -m mpsysv demo``: one producer/consumer pipeline, run on multiprocessing and
on mpsysv, with a comparison table. Each backend gets the same jobs and must return
the same checksums."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
import zlib
from typing import Any, Callable, Iterator, Tuple

_CTX = mp.get_context("fork")


def _payloads(n: int) -> Iterator[Tuple[int, Any]]:
    """Mixed jobs: small records, medium strings and an occasional multi-MiB blob."""
    for i in range(n):
        if i % 500 == 499:
            yield i, hashlib.shake_256(b"%d" % i).digest(2 << 20)
        elif i % 10 == 0:
            yield i, ("text-%d " % i) * 2000
        else:
            yield i, {"id": i, "values": list(range(i % 17))}


def _worker(jobs: Any, results: Any) -> None:
    while True:
        job = jobs.get()
        if job is None:
            break
        i, payload = job
        if isinstance(payload, bytes):
            digest = zlib.crc32(payload)
        elif isinstance(payload, str):
            digest = zlib.crc32(payload.encode())
        else:
            digest = payload["id"] + sum(payload["values"])
        results.put((i, digest))


def _produce(jobs: Any, go: Any, n: int, workers: int) -> None:
    go.wait()
    for job in _payloads(n):
        jobs.put(job)
    for _ in range(workers):
        jobs.put(None)


def _run(make_queue: Callable[[], Any], n: int, workers: int) -> Tuple[float, str]:
    jobs, results = make_queue(), make_queue()
    go = _CTX.Event()
    procs = [_CTX.Process(target=_worker, args=(jobs, results)) for _ in range(workers)]
    procs.append(_CTX.Process(target=_produce, args=(jobs, go, n, workers)))
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    go.set()
    digests = dict(results.get() for _ in range(n))
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    for q in (jobs, results):
        q.close()
    return elapsed, hashlib.blake2b(repr(sorted(digests.items())).encode()).hexdigest()[:16]


def run(n: int = 20000, workers: int = 3) -> int:
    import mpsysv

    if n < 1 or workers < 1:
        raise ValueError(f"demo needs at least 1 job and 1 worker, not n={n}, workers={workers}")
    print(f"pipeline: 1 producer process -> {workers} worker processes -> this process, {n} jobs "
          "(small dicts, 20 KB strings, a 2 MiB blob every 500)")
    rows = []
    elapsed, check = _run(lambda: _CTX.Queue(), n, workers)
    rows.append(("multiprocessing.Queue", elapsed, n / elapsed, check))
    # The same unmodified code, switched to mpsysv by the patch (python -m mpsysv run
    # does this for a whole program).
    with mpsysv.patched():
        elapsed, check = _run(lambda: _CTX.Queue(), n, workers)
        probe = _CTX.Queue()
        kind = type(probe).__module__.split(".")[0]
        probe.close()
    rows.append((f"same code, patched: {kind}", elapsed, n / elapsed, check))
    base = rows[0][1]
    print(f"\n{'backend':30} {'seconds':>8} {'jobs/s':>10} {'speed':>7}  checksum")
    for name, elapsed, rate, check in rows:
        print(f"{name:30} {elapsed:8.2f} {rate:10,.0f} {base / elapsed:6.2f}x  {check}")
    same = rows[0][3] == rows[1][3]
    print("\nresults identical on both backends" if same else "\nRESULTS DIFFER")
    return 0 if same else 1
