"""Type checking: the package passes mypy, a user's script that does what the README shows
passes ``mypy --strict``, and a wrong use is caught; the package passes ruff."""

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed (pip install '.[test]' brings it)")
needs_ruff = pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                                reason="ruff is not installed (pip install '.[test]' brings it)")

USER_SCRIPT = '''
    """What the README shows, as a user would write it with annotations."""
    import multiprocessing
    import multiprocessing.queues
    import queue
    from typing import List, Optional

    import mpsysv


    def produce(q: "mpsysv.Queue[int]", n: int) -> None:
        for i in range(n):
            q.put(i)
        q.close()
        q.join_thread()


    def consume(q: "mpsysv.JoinableQueue[str]") -> List[str]:
        out: List[str] = []
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                return out
            out.append(item.upper())
            q.task_done()


    def takes_a_stdlib_queue(q: "multiprocessing.queues.Queue[int]") -> None:
        q.put(0)


    def main() -> None:
        numbers: "mpsysv.Queue[int]" = mpsysv.Queue()
        takes_a_stdlib_queue(numbers)
        numbers.put(1)
        numbers.put_many([2, 3])
        first: int = numbers.get(timeout=0.5) + numbers.get(timeout=0.5)
        rest: List[int] = numbers.get_many(2)
        print(first + sum(rest), numbers.qsize(), numbers.empty(), numbers.full())
        numbers.close()
        numbers.join_thread()

        jobs: "mpsysv.JoinableQueue[str]" = mpsysv.JoinableQueue(0, name="jobs", create=True)
        name: Optional[str] = jobs.name
        jobs.put("a", mtype=2)
        print(name, consume(jobs), jobs.maxsize)
        jobs.join()
        jobs.unlink()
        jobs.close()

        simple: "mpsysv.SimpleQueue[bytes]" = mpsysv.SimpleQueue()
        simple.put(b"x")
        data: bytes = simple.get()
        simple.close()

        shm = mpsysv.SharedMemory(create=True, size=10)
        shm.buf[:5] = b"hello"
        copy: bytes = bytes(shm.buf[:5])
        other = mpsysv.SharedMemory(shm.name)
        other.close()
        shm.close()
        shm.unlink()

        sl: "mpsysv.ShareableList[int]" = mpsysv.ShareableList([1, 2, 3])
        sl[0] = 5
        sl.shm.close()
        sl.shm.unlink()

        ctx = mpsysv.get_context("fork")
        q: "mpsysv.Queue[int]" = ctx.Queue()
        p = ctx.Process(target=produce, args=(q, 3))
        p.start()
        print([q.get() for _ in range(3)], data, copy)
        p.join()
        with ctx.Pool(2) as pool:
            print(pool.map(abs, [-1, -2]))
        with mpsysv.patched():
            print(multiprocessing.Queue())


    if __name__ == "__main__":
        main()
'''

WRONG_USE = '''
    import mpsysv

    q: "mpsysv.Queue[int]" = mpsysv.Queue()
    q.put("not an int")
    s: str = q.get()
'''


def _mypy(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@needs_mypy
def test_the_package_type_checks():
    run = _mypy("-p", "mpsysv")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "Success: no issues found" in run.stdout


@needs_mypy
def test_a_users_script_doing_what_the_readme_shows_type_checks_strictly(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    # As for an installed package: its own modules' errors are not the script's.
    run = _mypy("--strict", "--follow-imports=silent", str(script))
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]


@needs_mypy
def test_a_queue_of_ints_refuses_a_str_for_type_checkers(tmp_path):
    script = tmp_path / "wrong.py"
    script.write_text(textwrap.dedent(WRONG_USE))
    run = _mypy(str(script))
    assert run.returncode == 1
    assert 'Argument 1 to "put" of "_Base" has incompatible type "str"; expected "int"' \
        in run.stdout
    assert 'Incompatible types in assignment (expression has type "int", variable has ' \
           'type "str")' in run.stdout


def test_queue_types_are_subscriptable_at_run_time():
    import mpsysv

    for cls in (mpsysv.Queue, mpsysv.SimpleQueue, mpsysv.JoinableQueue, mpsysv.ShareableList):
        assert cls[int].__origin__ is cls


@needs_ruff
def test_the_package_passes_ruff():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "mpsysv"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
