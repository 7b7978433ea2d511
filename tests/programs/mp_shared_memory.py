"""A program written for ``multiprocessing``: shared memory and a ShareableList written
by a child. tests/test_dropin.py also runs it with only its imports changed."""

import multiprocessing
import sys
from multiprocessing import shared_memory
from multiprocessing.shared_memory import ShareableList, SharedMemory


def fill(name, list_name):
    shm = SharedMemory(name)
    shm.buf[:5] = b"hello"
    shm.close()
    items = ShareableList(name=list_name)
    items[0] = items[0] * 10
    items.shm.close()


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    shm = shared_memory.SharedMemory(create=True, size=4096)
    items = ShareableList([4, 2.5, "text"])
    print("backend:", type(shm).__module__, type(items).__module__)
    p = multiprocessing.Process(target=fill, args=(shm.name, items.shm.name))
    p.start()
    p.join()
    print("exit code:", p.exitcode)
    print("bytes:", bytes(shm.buf[:5]))
    print("list:", list(items))
    shm.close()
    shm.unlink()
    items.shm.close()
    items.shm.unlink()
