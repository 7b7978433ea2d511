"""CPython's whole multiprocessing and concurrent.futures suites, on the stdlib and on mpsysv.

    python compat/cpython_suite.py --whole [--python PY ...] [--suite NAME ...]
                                   [--backend stdlib|mpsysv ...] [--lib-test X.Y=DIR ...]
                                   [--out DIR] [--reuse] [--json FILE]

For each interpreter (default: every Python >= 3.9 under ``~/.pyenv/versions``), each
suite (``fork``, ``spawn``, ``forkserver``: ``test_multiprocessing_<method>``;
``futures``: ``test_concurrent_futures``) and each backend, one regrtest run in one
process (``python -m test NAME --junit-xml ...``) inside ``unshare --ipc --mount``
with a fresh ``/dev/shm`` (an IPC namespace and POSIX shared memory of its own, so
nothing it makes outlives it or meets another program's objects). Each backend runs in
a venv of the interpreter (``--out``/venvs): the ``mpsysv`` one has ``compat/site``'s
``sitecustomize`` (calling ``mpsysv.patch()``) and a ``.pth`` naming this checkout in
its site-packages, so regrtest and every Python child it starts is patched, even one
started with ``-E`` or ``-I``; the ``stdlib`` venv has neither.

An interpreter whose ``Lib/test`` lacks a ``test_multiprocessing_<method>`` module (the
three are thin wrappers that call ``test._test_multiprocessing.install_tests_in_module_dict``)
gets one written into a temporary ``--testdir``, which installs every test type, as
the 3.12+ packages do together. A missing ``test_concurrent_futures`` is taken from
``--lib-test X.Y=DIR``, a ``Lib/test`` of that version obtained elsewhere (Debian's
``libpython3.11-testsuite``, ``git archive vX.Y.Z Lib/test`` of a CPython clone);
without one the suite is reported as not installed.

The result is a Markdown table (stdout): per interpreter and suite, the tests passed,
failed and, for mpsysv, the failures listed as deliberate in
``compat/differences.py`` (``CPYTHON_TESTS``). Exit status 1 when mpsysv fails a
test that is not deliberate and that the stdlib passes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
SITE = os.path.join(_HERE, "site")
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from compat.differences import CPYTHON_TESTS  # noqa: E402

SUITES = {
    "fork": "test_multiprocessing_fork",
    "spawn": "test_multiprocessing_spawn",
    "forkserver": "test_multiprocessing_forkserver",
    "futures": "test_concurrent_futures",
}
BACKENDS = ("stdlib", "mpsysv")
TIMEOUT = 1200  # regrtest's per-test-file limit (it dumps the stacks and exits)

# A missing test_multiprocessing_<method> is written as a package of the test types
# (3.11.7+ regrtest splits these names into their submodules) or, for an older
# install_tests_in_module_dict without ``only_type``, as one module.
_PACKAGE_INIT = '''\
# Written by mpsysv's compat/cpython_whole.py: this interpreter's Lib/test has no {name}.
import os
from test import support


def load_tests(*args):
    return support.load_package_tests(os.path.dirname(__file__), *args)
'''
_TYPE_MODULE = '''\
# Written by mpsysv's compat/cpython_whole.py.
from test import _test_multiprocessing

_test_multiprocessing.install_tests_in_module_dict(globals(), {method!r}, {arguments})
'''
_TYPES = {"test_processes": "only_type='processes'", "test_threads": "only_type='threads'",
          "test_manager": "only_type='manager'", "test_misc": "exclude_types=True"}


def write_suite(testdir: str, name: str, method: str, split: bool) -> None:
    if not split:
        with open(os.path.join(testdir, name + ".py"), "w") as f:
            f.write(_TYPE_MODULE.format(method=method, arguments="").replace(", )", ")"))
        return
    package = os.path.join(testdir, name)
    os.mkdir(package)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write(_PACKAGE_INIT.format(name=name))
    for module, arguments in _TYPES.items():
        with open(os.path.join(package, module + ".py"), "w") as f:
            f.write(_TYPE_MODULE.format(method=method, arguments=arguments))


def pyenv_pythons() -> list:
    found = []
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))):
        m = re.search(r"/3\.(\d+)\.\d+/bin/python3$", path)
        if m and int(m.group(1)) >= 9:
            found.append(path)
    return sorted(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[-3])])


def describe(python: str) -> dict:
    code = ("import os, sys\n"
            "try:\n import test; d = os.path.dirname(test.__file__)\n"
            "except ImportError:\n d = None\n"
            "print('%d.%d.%d' % sys.version_info[:3]); print(d)\n"
            "try:\n from test.libregrtest import findtests as f\n"
            " print('test_concurrent_futures' in f.SPLITTESTDIRS)\n"
            "except (ImportError, AttributeError):\n print(False)\n"
            "try:\n import inspect; from test import _test_multiprocessing as t\n"
            " print('only_type' in str(inspect.signature(t.install_tests_in_module_dict)))\n"
            "except ImportError:\n print(False)\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return {"version": out[0], "testdir": None if out[1] == "None" else out[1],
            "split": out[2] == "True", "only_type": out[3] == "True"}


def locate(info: dict, suite: str, lib_tests: dict):
    """Where this interpreter's *suite* comes from: (source, module file or None)."""
    name = SUITES[suite]
    dirs = [("installed", info["testdir"])]
    minor = ".".join(info["version"].split(".")[:2])
    if minor in lib_tests:
        dirs.append((lib_tests[minor], lib_tests[minor]))
    for source, d in dirs:
        if d is None:
            continue
        for candidate in (os.path.join(d, name + ".py"), os.path.join(d, name)):
            if os.path.exists(candidate):
                return source, candidate
    if (suite != "futures" and info["testdir"]
            and os.path.exists(os.path.join(info["testdir"], "_test_multiprocessing.py"))):
        return "written", None
    return None, None


def run_one(python, info, suite, backend, out_dir, lib_tests, reuse=False, match=(),
            label="", limit=None) -> dict:
    """One regrtest run; *match* restricts it to those ``Class.test_method`` names, and
    *limit* (seconds) kills it and everything it started when it takes longer."""
    name = SUITES[suite]
    stem = os.path.join(out_dir, info["version"], f"{name}-{backend}{label}")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    source, path = locate(info, suite, lib_tests)
    figures = {"python": info["version"], "suite": suite, "backend": backend,
               "source": source, "log": stem + ".log"}
    if source is None:
        figures["missing"] = f"{name} is not in {info['testdir']} (see --lib-test)"
        return figures
    if reuse and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            figures = json.load(f)
        figures.update(read_results(stem + ".xml", stem + ".log"))
        return figures
    cmd = [backend_python(python, info, backend, out_dir), "-m", "test"]
    names = [name]
    tmp = None
    if source != "installed":
        tmp = tempfile.mkdtemp(prefix="mpsysv-testdir-")
        if source == "written":
            write_suite(tmp, name, suite, info["only_type"])
            if info["only_type"]:
                # Named one by one: this regrtest looks for a split package's
                # submodules in its own Lib/test, not in --testdir.
                names = [f"{name}.{module}" for module in _TYPES]
        elif os.path.isdir(path) or not info["split"]:
            os.symlink(path, os.path.join(tmp, os.path.basename(path)))
        else:
            # This regrtest expects a package by that name: run the module by another.
            names = [name + "_module"]
            os.symlink(path, os.path.join(tmp, names[0] + ".py"))
        cmd += ["--testdir", tmp]
    cmd += names + ["-v", "--junit-xml", stem + ".xml", "--timeout", str(TIMEOUT)]
    for test in match:
        cmd += ["--match", "*." + test]
    cmd, figures["namespace"] = isolated(cmd)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if os.path.exists(stem + ".xml"):
        os.unlink(stem + ".xml")
    start = time.monotonic()
    try:
        with open(stem + ".log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=tmp or tempfile.gettempdir(), start_new_session=True)
            try:
                figures["exit"] = proc.wait(limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                figures["exit"] = f"killed after {limit}s"
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    figures["seconds"] = round(time.monotonic() - start, 1)
    figures.update(read_results(stem + ".xml", stem + ".log"))
    with open(stem + ".json", "w") as f:
        json.dump(figures, f, indent=1)
    return figures


def backend_python(python: str, info: dict, backend: str, out_dir: str) -> str:
    """A venv of *python* for *backend*; the mpsysv one has ``compat/site``'s
    ``sitecustomize`` and a ``.pth`` naming this repository in its site-packages, so
    every Python process started from it is patched, also children that the tests start
    with ``-E`` or ``-I`` (which ignore ``PYTHONPATH``); only ``-S`` escapes it."""
    venv = os.path.join(out_dir, "venvs", f"{info['version']}-{backend}")
    vpython = os.path.join(venv, "bin", "python")
    if not os.path.exists(vpython):
        subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True)
    if backend == "mpsysv":
        purelib = subprocess.run([vpython, "-c", "import sysconfig; print(sysconfig."
                                  "get_paths()['purelib'])"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        shutil.copy(os.path.join(SITE, "sitecustomize.py"), purelib)
        with open(os.path.join(purelib, "mpsysv-checkout.pth"), "w") as f:
            f.write(_REPO + "\n")
    return vpython


def default_signals() -> None:
    """Let the suites' processes get SIGINT and SIGQUIT: a shell's background job (``&``,
    ``nohup``) starts with them ignored, an ignored signal stays ignored across exec,
    and tests that send SIGINT expecting ``KeyboardInterrupt`` would fail."""
    for signum in (signal.SIGINT, signal.SIGQUIT):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                          else signal.SIG_DFL)


def isolated(cmd: list) -> tuple:
    """*cmd* in an IPC namespace and a ``/dev/shm`` of its own (root only), and a word
    for it: SysV objects and POSIX segments or semaphores that it leaves vanish with it."""
    if not (shutil.which("unshare") and os.geteuid() == 0):
        return cmd, "shared"
    mount = 'mount -t tmpfs -o mode=1777 mpsysv-shm /dev/shm && exec "$@"'
    return (["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c", mount,
             "sh"] + cmd, "private")


def rerun_failures(python, info, suite, backend, out_dir, figures, limit=None,
                   lib_tests=None) -> list:
    """The failed tests of *figures* that are not deliberate and fail a second run too."""
    retry = sorted({short_id(t) for t in figures["failed"]
                    if backend == "stdlib" or not _deliberate(figures, t)})
    if not retry:
        return []
    again = run_one(python, info, suite, backend, out_dir, lib_tests or {}, match=retry,
                    label="-rerun", limit=limit)
    ran = {short_id(t) for t in again["failed"]} | {
        short_id(t) for t in _all_ids(os.path.splitext(again["log"])[0] + ".xml")}
    return sorted(t for t in retry if t not in ran or t in {short_id(x) for x in again["failed"]})


def _all_ids(xml_path: str) -> list:
    if not os.path.exists(xml_path):
        return []
    return [case.get("name") for case in ET.parse(xml_path).getroot().iter("testcase")
            if case.get("name")]


# unittest's verbose report of a failure: "ERROR: test_x (module.Class)" up to 3.10,
# "ERROR: test_x (module.Class.test_x)" from 3.11, then " (subtest params)" if any.
_REPORTED = re.compile(r"^(?:FAIL|ERROR): (\w+) \(([\w.]+)\)(?: (\(.*\)))?$", re.M)


def read_results(xml_path: str, log_path: str) -> dict:
    """Counts and failing test ids from regrtest's JUnit file and its verbose log (the
    JUnit file records a test whose subtests failed as passed)."""
    with open(log_path, errors="replace") as f:
        log = f.read()
    results = re.findall(r"^(?:Tests )?[Rr]esult: (.+)$", log, re.M)
    figures = {"result": results[-1] if results else "no result (crashed or timed out)"}
    tests = skipped = 0
    failed, subtests = {}, {}
    if os.path.exists(xml_path):
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            tests += 1
            tags = {child.tag for child in case}
            if "skipped" in tags:
                skipped += 1
            elif tags & {"failure", "error"} and case.get("name"):
                failed[short_id(case.get("name"))] = case.get("name")
    for method, where, params in _REPORTED.findall(log):
        test_id = where if where.endswith("." + method) else f"{where}.{method}"
        failed.setdefault(short_id(test_id), test_id)
        subtests.setdefault(short_id(test_id), set()).add(params)
    figures.update(tests=tests, skipped=skipped,
                   passed=max(tests - skipped - len(failed), 0),
                   failed=sorted(failed.values()),
                   subtests={t: sorted(subtests.get(t, {""})) for t in failed})
    return figures


# Tests that fail on mpsysv because of how these runs patch it, not because of mpsysv:
# counted with the deliberate ones (the README lists them apart).
HARNESS = {
    "MiscTestCase.test_spawn_sys_executable_none_allows_import":
        "starts `python -I -c` and asserts `multiprocessing` is not imported yet; the "
        "venv's sitecustomize imports it at startup to patch it",
}


def deliberate(test_id: str, subtests=("",)):
    """The ``CPYTHON_TESTS`` key of a failing test (``Class.test``) whose failing
    *subtests* (their parameters as unittest prints them, "" for the test itself) are
    all listed there, or None. Keys are matched on ``Class.test``: module paths differ
    between versions and with ``--testdir``."""
    if test_id in HARNESS:
        return test_id
    for key in CPYTHON_TESTS:
        m = re.match(r"^(?:[\w.]*\.)?(\w+\.\w+)(?: (\(.*\)))?$", key)
        if m and m.group(1) == test_id:
            listed = {k.partition(" ")[2] for k in CPYTHON_TESTS if k.split(" ")[0]
                      .endswith("." + test_id) or k.split(" ")[0] == test_id}
            if "" in listed or set(subtests) <= listed:
                return key
    return None


def table(rows: list) -> tuple:
    """The Markdown table and the mpsysv failures that are neither deliberate nor the stdlib's."""
    by = {(r["python"], r["suite"], r["backend"]): r for r in rows}
    lines = ["| Python | suite | stdlib: passed / failed | mpsysv: passed / failed / "
             "deliberate | skipped | regrtest result (stdlib; mpsysv) | seconds (stdlib; mpsysv) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    unexplained = []
    seen = []
    for r in rows:
        key = (r["python"], r["suite"])
        if key in seen:
            continue
        seen.append(key)
        std, mp = by.get(key + ("stdlib",)), by.get(key + ("mpsysv",))
        cells = [r["python"], SUITES[r["suite"]]]
        if any(x and "missing" in x for x in (std, mp)):
            lines.append("| " + " | ".join(cells + ["not installed"] + [""] * 4) + " |")
            continue
        note = " (wrapper written)" if r["source"] == "written" else (
            "" if r["source"] == "installed" else " (from --lib-test)")
        cells[1] += note
        std_failed = set(_still(std)) if std else set()
        cells.append(f"{std['passed']} / {len(std_failed)}{_once(std)}" if std else "not run")
        if mp:
            dl = [t for t in mp["failed"] if _deliberate(mp, t)]
            other = _still(mp)
            cells.append(f"{mp['passed']} / {len(other)} / {len(dl)}{_once(mp)}")
            unexplained += [(r["python"], r["suite"], t) for t in other
                            if t not in std_failed]
        else:
            cells.append("not run")
        cells.append("; ".join(str(x["skipped"]) for x in (std, mp) if x))
        cells.append("; ".join(x["result"] for x in (std, mp) if x))
        cells.append("; ".join(str(x.get("seconds", "")) for x in (std, mp) if x))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), unexplained


def _deliberate(r: dict, test_id: str):
    short = short_id(test_id)
    return deliberate(short, r.get("subtests", {}).get(short, [""]))


def _still(r: dict) -> list:
    """``Class.test`` of the non-deliberate failures that failed their re-run too."""
    first = [short_id(t) for t in r["failed"]
             if r["backend"] == "stdlib" or not _deliberate(r, t)]
    return sorted(set(first) & set(r.get("again", first)))


def _once(r: dict) -> str:
    flaky = len({short_id(t) for t in r["failed"]} - set(_still(r))
                - {short_id(t) for t in r["failed"] if r["backend"] == "mpsysv"
                   and _deliberate(r, t)})
    return f" (+{flaky} passed when re-run)" if flaky else ""


def short_id(test_id: str) -> str:
    """``Class.test_method`` of a regrtest id (module paths differ with --testdir)."""
    return ".".join(test_id.split(".")[-2:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append",
                        help="interpreter to run (repeatable; default: pyenv's 3.9+)")
    parser.add_argument("--suite", action="append", choices=list(SUITES))
    parser.add_argument("--backend", action="append", choices=BACKENDS)
    parser.add_argument("--lib-test", action="append", default=[], metavar="X.Y=DIR",
                        help="a Lib/test directory of Python X.Y for suites it lacks")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(),
                                                      "mpsysv-cpython-whole"),
                        help="where the logs, JUnit files and figures go")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse figures of runs already in --out")
    parser.add_argument("--json", help="write every run's figures to this file")
    args = parser.parse_args(argv)
    default_signals()
    lib_tests = dict(item.split("=", 1) for item in args.lib_test)
    rows = []
    for python in args.python or pyenv_pythons():
        info = describe(python)
        for suite in args.suite or list(SUITES):
            for backend in args.backend or BACKENDS:
                r = run_one(python, info, suite, backend, args.out, lib_tests, args.reuse)
                if r.get("failed") and "again" not in r:
                    # A failure counts when the test fails a second, lone run too.
                    r["again"] = rerun_failures(python, info, suite, backend, args.out, r,
                                                lib_tests=lib_tests)
                    with open(os.path.splitext(r["log"])[0] + ".json", "w") as f:
                        json.dump(r, f, indent=1)
                rows.append(r)
                print(f"cpython-whole: {r['python']} {SUITES[suite]} {backend}: "
                      + (r["missing"] if "missing" in r else
                         f"{r['passed']} passed, {len(r['failed'])} failed, {r['skipped']} "
                         f"skipped, {r['result']}, {r.get('seconds')}s ({r['log']})"),
                      file=sys.stderr, flush=True)
    text, unexplained = table(rows)
    print(text)
    for python, suite, test_id in unexplained:
        print(f"  mpsysv only: {python} {SUITES[suite]}: {test_id}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
