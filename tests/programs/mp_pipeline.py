"""A program written for ``multiprocessing``: a producer, two workers and a collector
joined by queues, with an Event, a Lock and a Value. tests/test_dropin.py also runs it with
only its import changed."""

import multiprocessing
import sys


def produce(tasks, n):
    for i in range(n):
        tasks.put(i)


def work(tasks, results, done, lock, counter):
    while True:
        item = tasks.get()
        if item is None:
            tasks.task_done()
            break
        results.put((item, item * 3))
        with lock:
            counter.value += 1
        tasks.task_done()
    done.set()


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    tasks = multiprocessing.JoinableQueue()
    results = multiprocessing.Queue()
    done = multiprocessing.Event()
    lock = multiprocessing.Lock()
    counter = multiprocessing.Value("i", 0)
    print("backend:", type(tasks).__module__, type(results).__module__)
    producer = multiprocessing.Process(target=produce, args=(tasks, 40))
    workers = [multiprocessing.Process(target=work, args=(tasks, results, done, lock, counter))
               for _ in range(2)]
    for p in [producer, *workers]:
        p.start()
    producer.join()
    for _ in workers:
        tasks.put(None)
    tasks.join()
    print("results:", sorted(results.get(timeout=60) for _ in range(40))[:5])
    for p in workers:
        p.join()
    print("counted:", counter.value, "event:", done.is_set())
    print("exit codes:", [p.exitcode for p in [producer, *workers]])
    print("children left:", multiprocessing.active_children())
    results.close()
    results.join_thread()
