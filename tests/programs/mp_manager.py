"""A program written for ``multiprocessing``: a Manager's dict, list and queue shared by
processes, and a SimpleQueue. tests/test_dropin.py also runs it with only its import
changed."""

import multiprocessing
import sys


def record(shared, log, replies, i):
    shared[i] = i * i
    log.append(f"worker {i}")
    replies.put(i)


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    replies = multiprocessing.SimpleQueue()
    print("backend:", type(replies).__module__)
    with multiprocessing.Manager() as manager:
        shared, log = manager.dict(), manager.list()
        procs = [multiprocessing.Process(target=record, args=(shared, log, replies, i))
                 for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        print("dict:", sorted(shared.items()))
        print("list:", sorted(log))
    print("replies:", sorted(replies.get() for _ in range(3)))
    print("process name:", multiprocessing.current_process().name)
    replies.close()
