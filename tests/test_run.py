"""``python -m mpsysv run``: real programs, unmodified, on mpsysv queues and shared memory."""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROGRAMS = os.path.join(HERE, "programs")
TIMEOUT = 180


def run(*args, cwd=REPO):
    """``python -m mpsysv run ARGS`` on this checkout; (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "mpsysv", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr


def program(name):
    return os.path.join(PROGRAMS, name)


class DocumentationExamplesTest(unittest.TestCase):
    def check(self, name, *args, status=0):
        code, out, err = run(program(name), *args)
        self.assertEqual(code, status, f"{out}\n{err}")
        return out

    def test_producer_consumer_under_every_start_method(self):
        for method in ("fork", "spawn", "forkserver"):
            with self.subTest(method):
                out = self.check("producer_consumer.py", method)
                self.assertIn("queue type: mpsysv.queues", out)
                self.assertIn("results: 30 exit codes: [0, 0, 0, 0]", out)
                self.assertIn("products: " + str([i * 7 for i in range(20)]), out)

    def test_worker_pool_under_every_start_method(self):
        for method in ("fork", "spawn", "forkserver"):
            with self.subTest(method):
                out = self.check("worker_pool.py", method, "0")
                self.assertIn("queue type: mpsysv.queues", out)
                self.assertIn("map: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", out)
                self.assertIn("timeout: TimeoutError", out)
                self.assertIn("error: bad input 3", out)
                self.assertIn(f"large result: {5 << 20}", out)

    def test_shared_array_under_every_start_method(self):
        for method in ("fork", "spawn", "forkserver"):
            with self.subTest(method):
                out = self.check("shared_array.py", method)
                self.assertIn("segment type: mpsysv.shared", out)
                self.assertIn("scaled: [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]", out)
                self.assertIn("list type: mpsysv.shared", out)


class RunnerTest(unittest.TestCase):
    def test_argv_and_exit_status_are_the_program_s(self):
        code, out, err = run(program("worker_pool.py"), "fork", "7")
        self.assertEqual(code, 7, err)
        self.assertIn("argv: ['fork', '7']", out)

    def test_module_form_runs_like_python_m(self):
        code, out, err = run("-m", "tests.programs.executor", "3")
        self.assertEqual(code, 3, err)
        self.assertIn("queue type: mpsysv.queues", out)
        self.assertIn("112272535095293 is prime: True", out)

    def test_an_uncaught_exception_exits_1_with_the_program_s_traceback(self):
        code, out, err = run(program("failing.py"))
        self.assertEqual(code, 1)
        self.assertIn(f"argv0: {program('failing.py')}", out)
        self.assertIn('KeyError: \'from the program\'', err)
        self.assertIn("in explode", err)
        self.assertNotIn("_tools/runner.py", err)

    def test_main_module_stays_the_program(self):
        script = textwrap.dedent("""
            import atexit, os, pickle, sys
            def f():
                pass
            main = sys.modules["__main__"]
            atexit.register(lambda: print("atexit pickles:", len(pickle.dumps(f)) > 0,
                                          sys.modules["__main__"] is main))
            print("name:", __name__, "path0:", sys.path[0] == os.path.dirname(__file__))
        """)
        path = os.path.join(self.tmpdir(), "main_check.py")
        with open(path, "w") as f:
            f.write(script)
        code, out, err = run(path)
        self.assertEqual(code, 0, err)
        self.assertIn("name: __main__ path0: True", out)
        self.assertIn("atexit pickles: True True", out)

    def test_missing_targets_exit_2_with_a_message(self):
        code, _, err = run("no/such/script.py")
        self.assertEqual(code, 2)
        self.assertIn("can't open file", err)
        code, _, err = run("-m", "no_such_module_here")
        self.assertEqual(code, 2)
        self.assertIn("no_such_module_here", err)

    def tmpdir(self):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        return d.name
