"""The soak test: 8 producers x 8 consumers on one mpsysv Queue, mixed sizes up to 4 MiB,
random SIGKILLs and restarts of producers and consumers, for 60 s.

Run as ``python3 bench/soak.py [--seconds 60] [--producers 8] [--consumers 8]``. It
reports objects/s and MB/s, proves that nothing was delivered twice or corrupt and that
every loss is explained (an object in flight in a killed consumer, or the unsent tail of
a killed producer), and samples RSS and the kernel objects so you can see they stay
flat. As root it runs in an IPC namespace of its own, so the kernel object counts are
exactly its own. Exit status 0 when every check passed. Not part of the test run.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import signal
import struct
import sys
import threading
import time
import warnings
from multiprocessing.sharedctypes import RawValue
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mpsysv  # noqa: E402
from mpsysv._queue import layout as _channel
from mpsysv._gc import collect as _gc  # noqa: E402

CLONE_NEWIPC = 0x08000000
MiB = 1 << 20
# (size, weight): mostly small objects, some framed (between msgmax and the parcel
# threshold), some parcels up to 4 MiB.
SIZES = [(16, 40), (200, 25), (2000, 15), (12_000, 8), (70_000, 6), (600_000, 4),
         (4 * MiB, 2)]
# One report: producer slot, consumer slot (FINISHED: the producer's own last word, with
# its object count as seq), producer generation, seq, intact, size class.
REC = struct.Struct("<HHIqBB")
FINISHED = 0xFFFF
BACKLOG = 300  # objects a producer lets wait in the queue before it slows down


SIZE_CLASS = {size: i for i, (size, _) in enumerate(SIZES)}


def blobs():
    """One random payload per size class and its digest (made once, before forking)."""
    out = {}
    rng = random.Random(1)
    for size, _ in SIZES:
        data = rng.randbytes(size)
        out[size] = (data, hashlib.blake2b(data, digest_size=16).digest())
    return out


def producer(q, slot: int, gen: int, stop, payloads, report_fd: int) -> None:
    rng = random.Random(slot * 1000 + gen)
    sizes, weights = zip(*SIZES)
    seq = 0
    while not stop.value:
        data, digest = payloads[rng.choices(sizes, weights)[0]]
        q.put((slot, gen, seq, digest, data))
        seq += 1
        while q.qsize() > BACKLOG and not stop.value:
            time.sleep(0.002)
    q.close()
    q.join_thread()
    os.write(report_fd, REC.pack(slot, FINISHED, gen, seq, 1, 0))


def consumer(q, slot: int, stop, report_fd: int) -> None:
    warnings.simplefilter("ignore")  # drops of dead writers' objects are expected here
    idle_since = None
    while True:
        try:
            pslot, gen, seq, digest, data = q.get(timeout=0.5)
        except mpsysv.Empty:
            if stop.value >= 2:  # producers are done: drain, then leave
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    return
            continue
        idle_since = None
        ok = hashlib.blake2b(data, digest_size=16).digest() == digest
        os.write(report_fd, REC.pack(pslot, slot, gen, seq, ok, SIZE_CLASS.get(len(data), 0)))


def spawn(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def kernel_objects() -> dict:
    counts = {}
    shm_bytes = 0
    for kind in ("msg", "sem", "shm"):
        with open(f"/proc/sysvipc/{kind}") as f:
            rows = [line.split() for line in f][1:]
        counts[kind] = len(rows)
        if kind == "shm":
            shm_bytes = sum(int(r[3]) for r in rows)
    counts["shm_MiB"] = round(shm_bytes / MiB, 1)
    return counts


class Reader(threading.Thread):
    """Collects the workers' fixed-size reports (so the pipe never fills up), packed,
    so that the harness's own memory does not show up as growth in the RSS samples."""

    def __init__(self, fd: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.raw = bytearray()

    def run(self) -> None:
        while True:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return
            self.raw += chunk

    @property
    def count(self) -> int:
        return len(self.raw) // REC.size

    def records(self, upto: int = None) -> list:
        end = (self.count if upto is None else upto) * REC.size
        return list(REC.iter_unpack(bytes(self.raw[:end])))


def soak(seconds: float, n_producers: int, n_consumers: int, kill_every: float,
         seed: int, maxsize: int = 0) -> dict:
    rng = random.Random(seed)
    payloads = blobs()
    q = mpsysv.Queue(maxsize)
    stop = RawValue(ctypes.c_int, 0)
    r, w = os.pipe()
    reader = Reader(r)
    reader.start()
    producers = {}   # slot -> (pid, generation)
    consumers = {}   # slot -> pid
    generations = {}  # (slot, gen) -> "running" | "killed" | "finished"
    kills = {"producer": 0, "consumer": 0}
    for slot in range(n_producers):
        producers[slot] = (spawn(producer, q, slot, 0, stop, payloads, w), 0)
        generations[(slot, 0)] = "running"
    for slot in range(n_consumers):
        consumers[slot] = spawn(consumer, q, slot, stop, w)

    samples = []
    start = time.monotonic()
    next_kill = start + rng.uniform(0.5, 2 * kill_every)
    next_sample = start
    last_count, last_progress, stalls = 0, start, []
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now >= next_kill:
            role = rng.choice(["producer", "consumer"])
            slot = rng.randrange(n_producers if role == "producer" else n_consumers)
            time.sleep(rng.uniform(0, 0.05))
            if role == "producer":
                pid, gen = producers[slot]
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                generations[(slot, gen)] = "killed"
                producers[slot] = (spawn(producer, q, slot, gen + 1, stop, payloads, w),
                                   gen + 1)
                generations[(slot, gen + 1)] = "running"
            else:
                os.kill(consumers[slot], signal.SIGKILL)
                os.waitpid(consumers[slot], 0)
                consumers[slot] = spawn(consumer, q, slot, stop, w)
            kills[role] += 1
            next_kill = now + rng.uniform(0.2 * kill_every, 1.8 * kill_every)
        if now >= next_sample:
            pids = [p for p, _ in producers.values()] + list(consumers.values())
            samples.append({"t": round(now - start, 1), "received": reader.count,
                            "rss_MiB_main": round(rss_kib(os.getpid()) / 1024, 1),
                            "rss_MiB_workers": round(sum(map(rss_kib, pids)) / 1024, 1),
                            **kernel_objects()})
            next_sample = now + max(seconds / 12, 1.0)
        count = reader.count
        if count != last_count:
            if now - last_progress > 2.0:
                stalls.append((round(last_progress - start, 1), round(now - last_progress, 1)))
            last_count, last_progress = count, now
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    in_run = reader.count

    # Let the producers finish their objects and the consumers drain the queue.
    stop.value = 1
    for slot, (pid, gen) in producers.items():
        if _wait(pid, 60) == 0:
            generations[(slot, gen)] = "finished"
        else:
            generations[(slot, gen)] = "hung"
    stop.value = 2
    hung_consumers = sum(_wait(pid, 60) != 0 for pid in consumers.values())
    slots_free = None
    if maxsize:
        # Everybody is gone and the queue drained: every slot must be free again, once
        # the slots that killed processes held are derived back (none twice).
        time.sleep(0.1)
        q._chan.counts.repair_slots()
        slots_free = q._chan.sems[_channel.FREE_SLOTS].value + q.qsize()  # (+ any left queued)
    os.close(w)
    reader.join(10)
    q.close()
    q.join_thread()
    time.sleep(0.5)
    leftover_garbage, _ = _gc.collect_garbage(force=True, inspect=True)
    final_objects = kernel_objects()

    # Accounting.
    seen, duplicates, corrupt, finished_counts = set(), 0, 0, {}
    records = reader.records()
    for pslot, cslot, gen, seq, ok, _ in records:
        if cslot == FINISHED:
            finished_counts[(pslot, gen)] = seq
            continue
        duplicates += (pslot, gen, seq) in seen
        seen.add((pslot, gen, seq))
        corrupt += not ok
    by_gen = {}
    for pslot, gen, seq in seen:
        by_gen.setdefault((pslot, gen), set()).add(seq)
    lost_inside = lost_tail = 0
    for key in generations:
        seqs = by_gen.get(key, set())
        top = max(seqs) if seqs else -1
        lost_inside += sum(1 for s in range(top) if s not in seqs)
        if key in finished_counts:  # everything it put must have arrived
            lost_tail += sum(1 for s in range(top + 1, finished_counts[key]))
    objects = sum(1 for rec in records[:in_run] if rec[1] != FINISHED)
    nbytes = sum(SIZES[rec[5]][0] for rec in records[:in_run] if rec[1] != FINISHED)
    return {
        "seconds": round(elapsed, 1), "producers": n_producers, "consumers": n_consumers,
        "kills": kills, "objects_received": objects, "objects_per_s": round(objects / elapsed),
        "MB_per_s": round(nbytes / elapsed / 1e6, 1), "duplicates": duplicates,
        "corrupt": corrupt, "lost": lost_inside + lost_tail,
        "losses_allowed_by_consumer_kills": kills["consumer"],
        "producer_generations": {s: sum(1 for v in generations.values() if v == s)
                                 for s in set(generations.values())},
        "hung_consumers_at_end": hung_consumers, "stalls_over_2s": stalls,
        "samples": samples, "garbage_after_close": [o.label() for o in leftover_garbage],
        "kernel_objects_after_close": final_objects, "maxsize": maxsize,
        "slots_free_after_drain": slots_free,
    }


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -signal.SIGKILL


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=1.0,
                        help="mean seconds between two SIGKILLs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maxsize", type=int, default=0,
                        help="a bounded queue: also check that every slot is free at the end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWIPC) != 0:
        print("note: not root, sharing the IPC namespace: kernel object counts include "
              "other programs'", file=sys.stderr)
    result = soak(args.seconds, args.producers, args.consumers, args.kill_every, args.seed,
                  args.maxsize)
    ok = (result["duplicates"] == 0 and result["corrupt"] == 0
          and result["lost"] <= result["losses_allowed_by_consumer_kills"]
          and not result["hung_consumers_at_end"]
          and result["producer_generations"].get("hung", 0) == 0
          and not any(result["kernel_objects_after_close"][k] for k in ("msg", "sem", "shm"))
          and result["slots_free_after_drain"] in (None, args.maxsize))
    result["ok"] = ok
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0 if ok else 1


def _print(r: dict) -> None:
    print(f"soak: {r['producers']} producers x {r['consumers']} consumers, {r['seconds']} s, "
          f"kills {r['kills']}")
    print(f"  {r['objects_received']} objects, {r['objects_per_s']} objects/s, "
          f"{r['MB_per_s']} MB/s")
    print(f"  duplicates {r['duplicates']}, corrupt {r['corrupt']}, lost {r['lost']} "
          f"(allowed: one per killed consumer = {r['losses_allowed_by_consumer_kills']})")
    print(f"  producer generations {r['producer_generations']}, consumers hung at end "
          f"{r['hung_consumers_at_end']}, stalls over 2 s (start, length) "
          f"{r['stalls_over_2s']}")
    print("  samples (t, received, RSS main/workers MiB, kernel msg/sem/shm, shm MiB):")
    for s in r["samples"]:
        print(f"    {s['t']:6.1f} {s['received']:8d} {s['rss_MiB_main']:7.1f} "
              f"{s['rss_MiB_workers']:8.1f}   {s['msg']}/{s['sem']}/{s['shm']} "
              f"{s['shm_MiB']:8.1f}")
    print(f"  garbage collected after close: {r['garbage_after_close']}")
    print(f"  kernel objects after close: {r['kernel_objects_after_close']}")
    if r["maxsize"]:
        print(f"  free slots (+ objects still queued) after the drain: "
              f"{r['slots_free_after_drain']} of {r['maxsize']}")
    print("  OK" if r["ok"] else "  FAILED")


if __name__ == "__main__":
    sys.exit(main())
