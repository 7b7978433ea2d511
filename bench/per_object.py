"""put() + get() (+ task_done()) of a small int, N times, in one process: the loop that
callgrind and strace count per object.

    PY=$(python3 -c 'import sys; print(sys.executable)')
    for n in 1000 6000; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY bench/per_object.py $n j
    done        # instructions per object = (Ir(6000) - Ir(1000)) / 5000
    strace -f -c $PY bench/per_object.py 6000 j

KIND: q = Queue(), b = Queue(1000), j = JoinableQueue(1000).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mpsysv  # noqa: E402


def main(n: int, kind: str) -> None:
    make = {"q": lambda: mpsysv.Queue(), "b": lambda: mpsysv.Queue(1000),
            "j": lambda: mpsysv.JoinableQueue(1000)}[kind]
    q = make()
    joinable = kind == "j"
    for i in range(n + 1):  # (the first round warms caches)
        q.put(i)
        q.get()
        if joinable:
            q.task_done()
    q.close()
    q.join_thread()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "q")
