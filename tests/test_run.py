"""``python -m mpsysv run``: real programs, unmodified, on mpsysv queues and shared memory."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROGRAMS = os.path.join(HERE, "programs")
TIMEOUT = 180


def python(*args, cwd=REPO, env=None):
    """``python ARGS`` with this checkout importable; (exit status, stdout, stderr)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr


def run(*args, cwd=REPO, env=None):
    """``python -m mpsysv run ARGS`` on this checkout; (exit status, stdout, stderr)."""
    return python("-m", "mpsysv", "run", *args, cwd=cwd, env=env)


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


class LikePythonTest(unittest.TestCase):
    """``python -m mpsysv run X`` and ``python X``: what the program observes, its
    output, its traceback and its exit status are the same."""

    def setUp(self):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        self.dir = d.name
        shutil.copy(program("observe.py"), os.path.join(self.dir, "observe.py"))
        os.makedirs(os.path.join(self.dir, "app"))
        shutil.copy(program("observe.py"), os.path.join(self.dir, "app", "__main__.py"))
        with zipfile.ZipFile(os.path.join(self.dir, "app.zip"), "w") as z:
            z.write(program("observe.py"), "__main__.py")
        os.symlink(os.path.join(self.dir, "observe.py"), os.path.join(self.dir, "link.py"))

    def same(self, *args):
        expected = python(*args, cwd=self.dir)
        got = run(*args, cwd=self.dir)
        self.assertEqual(got, expected)
        return got

    def test_a_script_by_relative_absolute_and_symlinked_path(self):
        for target in ("observe.py", os.path.join(self.dir, "observe.py"), "link.py",
                       "./app/../observe.py"):
            with self.subTest(target):
                code, out, _ = self.same(target, "a", "--b")
                self.assertEqual(code, 0)
                self.assertIn(repr(os.path.join(self.dir, target)), out)  # __file__

    def test_a_module_a_package_a_directory_and_a_zip_file(self):
        os.makedirs(os.path.join(self.dir, "pkg"))
        open(os.path.join(self.dir, "pkg", "__init__.py"), "w").close()
        shutil.copy(program("observe.py"), os.path.join(self.dir, "pkg", "__main__.py"))
        for args in (["-m", "observe", "x"], ["-m", "pkg", "y"], ["app", "z"],
                     ["app.zip", "w"]):
            with self.subTest(args):
                self.assertEqual(self.same(*args)[0], 0)

    def test_a_command(self):
        code, out, _ = self.same("-c", "import sys; print(sys.argv, repr(sys.path[0]), "
                                 "__spec__, '__file__' in globals())", "a")
        self.assertEqual(out, "['-c', 'a'] '' None False\n")

    def test_exit_status_and_traceback(self):
        self.assertEqual(self.same("observe.py", "exit", "7")[0], 7)
        code, _, err = self.same("observe.py", "raise")
        self.assertEqual(code, 1)
        self.assertIn(f'File "{os.path.join(self.dir, "observe.py")}", line', err)

    def test_ctrl_c_and_a_syntax_error(self):
        code, out, err = self.same("observe.py", "interrupt")
        self.assertEqual(code, -2)  # python ends by SIGINT, after atexit
        self.assertIn("atexit ran", out)
        self.assertEqual(err.count('File "'), 1)  # the program's frame only
        with open(os.path.join(self.dir, "broken.py"), "w") as f:
            f.write("def (\n")
        code, _, err = self.same("broken.py")
        self.assertEqual(code, 1)
        self.assertIn("SyntaxError", err)

    def test_a_program_that_cannot_start_gets_python_s_message_and_status(self):
        for target in ("missing.py", "./app/../missing.py", "."):
            with self.subTest(target):
                status, _, err = python(target, cwd=self.dir)
                self.assertIn(status, (1, 2))
                message = err.strip().split(": ", 1)[1]  # after "PYTHON: "
                self.assertEqual(run(target, cwd=self.dir),
                                 (status, "", f"python -m mpsysv run: error: {message}\n"))

    def test_missing_script_module_or_command_is_named(self):
        for args, message in (((), "the SCRIPT to run is missing (or -m MODULE, -c COMMAND)"),
                              (("-m",), "-m: the MODULE to run is missing"),
                              (("-c",), "-c: the COMMAND to run is missing")):
            with self.subTest(args):
                code, _, err = run(*args)
                self.assertEqual(code, 2)
                self.assertIn(f"python -m mpsysv run: error: {message}", err)
                self.assertNotIn("ARGS", err.splitlines()[-1])


class PythonSubprocessesTest(unittest.TestCase):
    """A Python program started with ``subprocess`` by a program under ``run`` runs
    patched when it inherits the environment; ``--no-subprocesses`` and
    ``MPSYSV_NO_PATCH=1`` opt out; another ``sitecustomize`` still runs."""

    PARENT = textwrap.dedent("""
        import os, subprocess, sys
        from multiprocessing import shared_memory
        shm = shared_memory.SharedMemory(create=True, size=16)
        shm.buf[:5] = b"hello"
        child = ("import sys; from multiprocessing.shared_memory import SharedMemory; "
                 "s = SharedMemory(sys.argv[1]); print('child read', bytes(s.buf[:5]), "
                 "any('subprocess_site' in p for p in sys.path)); s.close()")
        env = dict(os.environ, MPSYSV_NO_PATCH="1") if sys.argv[1:] == ["opt-out"] else None
        try:
            code = subprocess.run([sys.executable, "-c", child, shm.name], env=env,
                                  cwd="/").returncode
            print("child exit", code)
        finally:
            shm.close()
            shm.unlink()
    """)

    def setUp(self):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        self.dir = d.name
        self.parent = os.path.join(self.dir, "parent.py")
        with open(self.parent, "w") as f:
            f.write(self.PARENT)

    def test_a_child_that_inherits_the_environment_is_patched(self):
        code, out, err = run(self.parent)
        self.assertEqual(code, 0, err)
        self.assertIn("child read b'hello' False", out)  # and sys.path is its own
        self.assertIn("child exit 0", out)

    def test_opting_out_leaves_children_on_the_stdlib(self):
        for args in (("--no-subprocesses", self.parent), (self.parent, "opt-out")):
            with self.subTest(args):
                code, out, err = run(*args)
                self.assertEqual(code, 0, err)
                self.assertIn("child exit 1", out)
                self.assertIn("FileNotFoundError", err)  # a POSIX name that does not exist

    def test_a_sitecustomize_of_the_environment_still_runs(self):
        other = os.path.join(self.dir, "other")
        os.makedirs(other)
        with open(os.path.join(other, "sitecustomize.py"), "w") as f:
            f.write("import sys; print('own sitecustomize', file=sys.stderr)\n")
        code, out, err = run(self.parent, env=dict(os.environ, PYTHONPATH=other))
        self.assertEqual(code, 0, err)
        self.assertIn("child read b'hello'", out)
        self.assertEqual(err.count("own sitecustomize"), 2)  # the program and its child

    def test_an_older_python_child_starts_quietly_and_unpatched(self):
        import glob

        olds = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.*/bin/python")) +
                      glob.glob(os.path.expanduser("~/.pyenv/versions/3.[5-8].*/bin/python3")))
        if not olds:
            self.skipTest("no Python older than 3.9 under ~/.pyenv/versions")
        script = os.path.join(self.dir, "older.py")
        with open(script, "w") as f:
            f.write("import subprocess, sys\n"
                    f"for py in {olds!r}:\n"
                    "    subprocess.run([py, '-c', 'import sys; print(sys.version_info[:2], "
                    "\"mpsysv\" in sys.modules)'], check=True)\n")
        code, out, err = run(script)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.count("False"), len(olds), out)
