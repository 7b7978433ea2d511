"""The documentation's producer/consumer pattern: workers take tasks from one queue
and put results on another, with a sentinel per worker (run through `python -m mpsysv run`)."""

import multiprocessing
import sys
import time


def worker(tasks, results):
    for func, args in iter(tasks.get, "STOP"):
        results.put(f"{multiprocessing.current_process().name} says {func.__name__}{args} "
                    f"= {func(*args)}")


def mul(a, b):
    time.sleep(0.01)
    return a * b


def plus(a, b):
    time.sleep(0.01)
    return a + b


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "fork"
    multiprocessing.set_start_method(method)
    tasks, results = multiprocessing.Queue(), multiprocessing.Queue()
    for i in range(20):
        tasks.put((mul, (i, 7)))
    workers = [multiprocessing.Process(target=worker, args=(tasks, results)) for _ in range(4)]
    for w in workers:
        w.start()
    lines = [results.get(timeout=60) for _ in range(20)]
    for i in range(10):
        tasks.put((plus, (i, 8)))
    lines += [results.get(timeout=60) for _ in range(10)]
    for _ in workers:
        tasks.put("STOP")
    for w in workers:
        w.join(60)
    print("queue type:", type(tasks).__module__)
    print("results:", len(lines), "exit codes:", [w.exitcode for w in workers])
    print("products:", sorted(int(line.rsplit("= ", 1)[1]) for line in lines[:20]))


if __name__ == "__main__":
    main()
