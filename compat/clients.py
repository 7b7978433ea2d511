"""Real clients' own test suites, on the stdlib and with mpsysv patched in.

    python compat/clients.py [--python PY] [--only NAME ...] [--work DIR]
                             [--mirror DIR] [--patch site|run] [--json FILE]

For each project of ``CLIENTS`` (PyPI projects that build on ``multiprocessing``
queues, Pool or ``shared_memory``): a throwaway venv under ``--work`` gets the
project's release from PyPI, ``pytest`` and the test requirements; the release's test
suite comes from its sdist when the sdist has one, otherwise from ``git archive`` of
the release tag of a local copy of its repository (``--mirror``, default
``/work/.mirror``, holding ``OWNER+NAME/repo`` as the search tool's
``fetch github:OWNER/NAME`` leaves it, or any bare clone at that path). Nothing of a
client is kept in this repository.

The suite then runs twice, each time inside ``unshare --ipc --mount`` with a fresh
``/dev/shm`` (System V and POSIX objects of its own, gone with it): on the stdlib, and with mpsysv patched in. ``--patch site`` (the default) puts
``compat/site`` (a ``sitecustomize`` calling ``mpsysv.patch()``) and the repository on
``PYTHONPATH``, so pytest and every process it starts, including plain
``subprocess`` children, run on mpsysv; ``--patch run`` runs
``python -m mpsysv run -m pytest`` instead (pytest and its multiprocessing children only).
The figures and every test whose outcome differs are printed as Markdown.
Exit status 1 when an outcome differs that ``CLIENT_DIFFERENCES`` in
``compat/differences.py`` does not explain.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from typing import NamedTuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
sys.path.insert(0, _HERE)
from cpython_whole import SITE, default_signals, isolated  # noqa: E402

from compat.differences import CLIENT_DIFFERENCES, KNOWN_BUGS  # noqa: E402
TIMEOUT = 900  # seconds for one run of one suite


class Client(NamedTuple):
    name: str
    version: str
    uses: str              # what of multiprocessing it builds on
    repo: str = ""         # OWNER/NAME, when the sdist has no tests
    tag: str = ""
    requirements: tuple = ()   # besides the release itself and pytest
    tests: tuple = ("tests",)  # pytest arguments, run in the suite's folder


CLIENTS = (
    Client("UltraDict", "0.0.6", "`SharedMemory` segments for a shared dict and its "
           "buffers; examples run as subprocesses", repo="ronny-rentner/UltraDict",
           tag="v0.0.6", requirements=("atomics", "psutil", "ultraimport"),
           # -s: its test_cleanup counts the process's open files from 0, as under its
           # own runner (`python -m unittest`); pytest's capture files would be 3 more
           tests=("-s", "tests/tests.py")),
    Client("shared-memory-dict", "0.7.2", "a dict pickled into one `SharedMemory` "
           "segment", repo="luizalabs/shared-memory-dict", tag="0.7.2",
           tests=("tests", "--ignore=tests/caches")),
    Client("aioprocessing", "2.0.1", "asyncio wrappers (executor threads) of `Queue`, "
           "`JoinableQueue`, `SimpleQueue`, `Pool`, `Manager`, locks",
           repo="dano/aioprocessing", tag="v2.0.1", tests=("tests",)),
    Client("multiprocessing-logging", "0.4.0", "a logging handler whose records "
           "travel through a `multiprocessing.Queue` to a thread of the parent",
           tests=("tests",)),
)


def prepare(client: Client, python: str, work: str, mirror: str) -> tuple:
    """The venv's interpreter and the folder holding the client's test suite."""
    venv = os.path.join(work, f"venv-{client.name}")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        subprocess.run([python, "-m", "venv", venv], check=True)
    vpython = os.path.join(venv, "bin", "python")
    subprocess.run([vpython, "-m", "pip", "install", "-q", f"{client.name}=={client.version}",
                    "pytest", *client.requirements], check=True)
    top = os.path.join(work, f"src-{client.name}")
    shutil.rmtree(top, ignore_errors=True)
    if client.repo:
        # In a folder named like the repository, as a clone is (UltraDict's checkout
        # root is itself a package, imported by that name).
        src = os.path.join(top, client.repo.split("/")[1])
        os.makedirs(src)
        git_dir = os.path.join(mirror, client.repo.replace("/", "+"), "repo")
        if not os.path.isdir(git_dir):
            raise SystemExit(f"clients: no copy of {client.repo} at {git_dir}; bring one with "
                             f"the search tool's `fetch github:{client.repo}` (or a bare "
                             f"clone there)")
        archive = subprocess.run(["git", "-C", git_dir, "archive", "--format=tar", client.tag],
                                 check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                tar.extractall(src)
        return vpython, src, f"git archive {client.tag}"
    download = os.path.join(work, "sdists")
    subprocess.run([vpython, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", download, f"{client.name}=={client.version}"], check=True)
    stem = client.name.replace("-", "_")
    (sdist,) = glob.glob(os.path.join(download, f"{stem}-{client.version}.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(top)
    return vpython, os.path.join(top, f"{stem}-{client.version}"), "sdist"


def run_suite(client: Client, vpython: str, src: str, backend: str, patch: str,
              work: str) -> dict:
    xml = os.path.join(work, f"{client.name}-{backend}.xml")
    log = os.path.join(work, f"{client.name}-{backend}.log")
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE]
    command = [vpython]
    if backend == "mpsysv":
        if patch == "site":
            paths = [SITE, _REPO] + paths
        else:
            paths = [_REPO] + paths
            command += ["-m", "mpsysv", "run"]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # What the suite's processes will get from multiprocessing.Queue() and SharedMemory.
    probe = ("import multiprocessing as m, multiprocessing.shared_memory as s\n"
             "print(type(m.Queue()).__module__, s.SharedMemory.__module__)")
    probe_file = os.path.join(work, "probe.py")
    with open(probe_file, "w") as f:
        f.write(probe)
    seen = subprocess.run(isolated(command + [probe_file])[0], env=env, cwd=src,
                          capture_output=True, text=True).stdout.split()
    command += ["-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={xml}",
                *client.tests]
    command, _ = isolated(command)
    if os.path.exists(xml):
        os.unlink(xml)
    # Output through a pipe, not the log file: a suite may count its open files.
    try:
        proc = subprocess.run(command, cwd=src, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=TIMEOUT)
        code, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        code, output = "timeout", exc.output or b""
    with open(log, "wb") as f:
        f.write(output)
    return {"backend": backend, "exit": code, "log": log, "objects": seen, **outcomes(xml)}


def outcomes(xml: str) -> dict:
    result = {"passed": [], "failed": [], "skipped": []}
    if not os.path.exists(xml):
        return result
    for case in ET.parse(xml).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}.{case.get('name')}"
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            result["failed"].append(test_id)
        elif "skipped" in tags:
            result["skipped"].append(test_id)
        else:
            result["passed"].append(test_id)
    return result


def counts(r: dict) -> str:
    text = f"{len(r['passed'])} passed / {len(r['failed'])} failed"
    if r["skipped"]:
        text += f" / {len(r['skipped'])} skipped"
    if r["exit"] == "timeout":
        text += f" (timed out after {TIMEOUT}s)"
    elif isinstance(r["exit"], int) and r["exit"] < 0:
        text += f" (then killed by signal {-r['exit']})"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--only", action="append", choices=[c.name for c in CLIENTS])
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "mpsysv-clients"))
    parser.add_argument("--mirror", default="/work/.mirror")
    parser.add_argument("--patch", choices=("site", "run"), default="site")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    default_signals()
    os.makedirs(args.work, exist_ok=True)
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    rows, differ = [], []
    for client in CLIENTS:
        if args.only and client.name not in args.only:
            continue
        vpython, src, origin = prepare(client, args.python, args.work, args.mirror)
        std = run_suite(client, vpython, src, "stdlib", args.patch, args.work)
        mp = run_suite(client, vpython, src, "mpsysv", args.patch, args.work)
        if any(not m.startswith("mpsysv") for m in mp["objects"]):
            raise SystemExit(f"clients: the patched run would not use mpsysv: {mp['objects']}")
        changed = sorted(set(std["failed"]) ^ set(mp["failed"]))
        if (std["exit"] != mp["exit"] and not (isinstance(std["exit"], int) and std["exit"] >= 0
                                               and isinstance(mp["exit"], int) and mp["exit"] >= 0)):
            changed.append("exit")  # a crash or a time-out on one side only
        rows.append({"client": client.name, "version": client.version, "tests": origin,
                     "python": version, "patch": args.patch, "stdlib": std, "mpsysv": mp,
                     "differ": changed})
        differ += [(client.name, t) for t in changed]
        print(f"clients: {client.name} {client.version}: stdlib {counts(std)}; mpsysv "
              f"{counts(mp)} ({std['log']}, {mp['log']})", file=sys.stderr, flush=True)
    print(f"Python {version}, mpsysv patched in through "
          f"{'compat/site/sitecustomize.py' if args.patch == 'site' else 'python -m mpsysv run'}"
          ", each run in `unshare --ipc --mount` with its own /dev/shm:\n")
    print("| project | version | test suite from | builds on | stdlib | mpsysv |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row, client in zip(rows, [c for c in CLIENTS if not args.only or c.name in args.only]):
        print(f"| {row['client']} | {row['version']} | {row['tests']} | {client.uses} | "
              f"{counts(row['stdlib'])} | {counts(row['mpsysv'])} |")
    unexplained = 0
    for name, test_id in differ:
        why = CLIENT_DIFFERENCES.get(name, {}).get(test_id)
        if why and why[0] in KNOWN_BUGS:
            unexplained += 1
            print(f"  outcome differs, known bug ({why[0]} in compat/differences.py): "
                  f"{name}: {test_id}: {why[1]}")
            continue
        if why:
            print(f"  outcome differs, deliberate ({why[0]} in compat/differences.py): "
                  f"{name}: {test_id}: {why[1]}")
        else:
            unexplained += 1
            print(f"  outcome differs: {name}: {test_id}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
