"""The documentation's shared-memory array example: a block of float64 created in the
parent, attached by name in a child that changes it (run through `python -m mpsysv run`)."""

import multiprocessing
import sys
from multiprocessing import shared_memory


def scale(name, n, factor):
    existing = shared_memory.SharedMemory(name=name)
    values = existing.buf.cast("d")
    for i in range(n):
        values[i] *= factor
    values.release()
    existing.close()


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "fork"
    multiprocessing.set_start_method(method)
    data = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    shm = shared_memory.SharedMemory(create=True, size=8 * len(data))
    values = shm.buf.cast("d")
    values[:] = memoryview(__import__("array").array("d", data)).cast("B").cast("d")
    p = multiprocessing.Process(target=scale, args=(shm.name, len(data), 2.0))
    p.start()
    p.join(60)
    print("segment type:", type(shm).__module__)
    print("scaled:", list(values))
    sl = shared_memory.ShareableList(["howdy", b"HoWdY", -273.154, 100, None, True, 42])
    print("list type:", type(sl).__module__, "items:", list(sl))
    values.release()
    for segment in (shm, sl.shm):
        segment.close()
        segment.unlink()


if __name__ == "__main__":
    main()
