"""CPython's own queue, shared memory and Pool tests on mpsysv, for each Python found.

Each interpreter runs ``compat/cpython_suite.py`` in a subprocess with a time limit:
this one always, and every other supported CPython under ``~/.pyenv/versions`` (or
``$MPSYSV_PYTHONS``, a ``os.pathsep``-separated list of interpreters) when present.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest

from . import cpython_whole

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython_suite.py")
LIMIT = 600  # seconds for one interpreter's whole run


def _interpreters():
    found = {sys.version.split()[0]: sys.executable}
    listed = os.environ.get("MPSYSV_PYTHONS")
    candidates = (listed.split(os.pathsep) if listed else
                  sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))))
    for path in candidates:
        if os.path.realpath(path) == os.path.realpath(sys.executable):
            continue  # this interpreter (a venv's python links to its base)
        m = re.search(r"/(3\.(\d+)\.\d+)/bin/python3$", path)
        version = m.group(1) if m else path
        if m and int(m.group(2)) < 9:
            continue  # below requires-python
        if os.access(path, os.X_OK):
            found.setdefault(version, path)
    return sorted(found.items())


@pytest.mark.parametrize("version,python", _interpreters(), ids=[v for v, _ in _interpreters()])
def test_cpython_suite_passes_on_mpsysv(version, python):
    cpython_whole.default_signals()  # SIGINT tests need it, even from a background job
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "figures.json")
        proc = subprocess.Popen([python, RUNNER, "--json", out], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the runner and every process it started
            stdout, stderr = proc.communicate()
            pytest.fail(f"CPython suite on {version} did not finish in {LIMIT}s:\n"
                        f"{stderr[-5000:]}")
        if not os.path.exists(out):
            pytest.fail(f"runner crashed on {version} (exit {proc.returncode}):\n"
                        f"{stdout}\n{stderr[-5000:]}")
        with open(out) as f:
            figures = json.load(f)
    print(stdout)
    if "run" not in figures:
        pytest.skip(f"{version}: {figures['skipped']}")
    assert proc.returncode == 0, f"{stdout}\n{stderr[-8000:]}"


# -- the whole suites ---------------------------------------------------------------------
# CPython's whole test_multiprocessing_{fork,spawn,forkserver} and test_concurrent_futures
# with mpsysv patched in, for this interpreter and the newest other one: opt-in ``slow``
# tests (MPSYSV_SLOW=1), about 11 minutes on two cores, and not in the default run: there
# one of them once took its pytest worker down with it (a signal from CPython's suite
# reaching the worker's process group is the suspect), so the default run keeps the
# selection above. ``python compat/cpython_suite.py --whole`` runs everything on every
# interpreter and on the stdlib too.


WHOLE_LIMIT = 900  # seconds for one suite's run


def _whole_interpreters():
    found = dict(_interpreters())
    mine = sys.version.split()[0]
    others = [v for v in found if v != mine]
    newest = max(others, key=lambda v: [int(x) for x in v.split(".")], default=None)
    return [(v, found[v]) for v in (mine, newest) if v]


@pytest.mark.slow
@pytest.mark.parametrize("version,python,suite", [
    (v, p, s) for v, p in _whole_interpreters() for s in cpython_whole.SUITES],
    ids=[f"{v}-{s}" for v, _ in _whole_interpreters() for s in cpython_whole.SUITES])
def test_whole_cpython_suite_fails_only_where_a_difference_is_deliberate(version, python,
                                                                         suite):
    info = cpython_whole.describe(python)
    cpython_whole.default_signals()
    with tempfile.TemporaryDirectory() as out:
        figures = cpython_whole.run_one(python, info, suite, "mpsysv", out, {},
                                        limit=WHOLE_LIMIT)
        if "missing" in figures:
            pytest.skip(f"{version}: {figures['missing']}")
        with open(figures["log"], errors="replace") as f:
            tail = f.read()[-6000:]
        assert figures["tests"], f"no test ran ({figures['result']}):\n{tail}"
        # A test that fails once and passes when run again alone is timing on a loaded
        # machine, not mpsysv: only a second failure counts.
        failing = cpython_whole.rerun_failures(python, info, suite, "mpsysv", out, figures,
                                               limit=WHOLE_LIMIT)
    assert not failing, (f"{version} {cpython_whole.SUITES[suite]}: {figures['passed']} "
                         f"passed; failing on mpsysv: {failing}\n{tail}")
