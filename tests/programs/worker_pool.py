"""The documentation's Pool examples: map, imap_unordered, apply_async, a timeout, an
error raised in a worker (run through `python -m mpsysv run`)."""

import multiprocessing
import os
import sys
import time


def f(x):
    return x * x


def fail(x):
    raise ValueError(f"bad input {x}")


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "fork"
    multiprocessing.set_start_method(method)
    with multiprocessing.Pool(processes=4) as pool:
        print("queue type:", type(pool._inqueue).__module__)
        print("map:", pool.map(f, range(10)))
        print("imap_unordered:", sorted(pool.imap_unordered(f, range(10))))
        res = pool.apply_async(f, (20,))
        print("apply_async:", res.get(timeout=10))
        res = pool.apply_async(os.getpid, ())
        print("worker pid differs:", res.get(timeout=10) != os.getpid())
        res = pool.apply_async(time.sleep, (10,))
        try:
            res.get(timeout=0.2)
        except multiprocessing.TimeoutError:
            print("timeout: TimeoutError")
        try:
            pool.apply(fail, (3,))
        except ValueError as exc:
            print("error:", exc)
        print("large result:", len(pool.apply(bytes, (5 << 20,))))
    print("argv:", sys.argv[1:])
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)


if __name__ == "__main__":
    main()
