"""A program written for ``multiprocessing``: a Pool (map, imap, starmap, apply_async,
an error from a worker). tests/test_dropin.py also runs it with only its import changed."""

import multiprocessing
import sys


def square(x):
    return x * x


def power(x, n):
    return x ** n


def refuse(x):
    raise ValueError(f"refused {x}")


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    print("start method:", multiprocessing.get_start_method())
    with multiprocessing.Pool(processes=2) as pool:
        print("backend:", type(pool._inqueue).__module__)
        print("map:", pool.map(square, range(10)))
        print("imap:", list(pool.imap(square, range(5))))
        print("starmap:", pool.starmap(power, [(2, 3), (3, 2)]))
        print("apply_async:", pool.apply_async(square, (12,)).get(timeout=60))
        try:
            pool.apply_async(refuse, (7,)).get(timeout=60)
        except ValueError as exc:
            print("error:", exc)
    print("cpus:", multiprocessing.cpu_count() >= 1)
