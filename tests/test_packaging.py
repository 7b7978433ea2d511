"""The distribution a user downloads: the sdist carries its own test suite, and that suite
collects and passes when unpacked; the metadata names the license."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

needs_build = pytest.mark.skipif(importlib.util.find_spec("build") is None,
                                 reason="the 'build' package is not installed "
                                        "(pip install '.[test]' brings it)")


@pytest.fixture(scope="module")
def unpacked_sdist(tmp_path_factory):
    """The sdist built from this checkout (as `python -m build --sdist` does), unpacked."""
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (archive,) = out.glob("mpsysv-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out)
    (tree,) = [p for p in out.iterdir() if p.is_dir()]
    return tree


def _pytest_in(tree, *args, timeout):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for inherited in ("PYTEST_XDIST_WORKER", "MPSYSV_SLOW"):  # (no sdist inside the sdist)
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)


def test_license_is_declared_as_an_spdx_expression_with_its_file():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text and 'license-files = ["LICENSE"]' in text
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "CHANGELOG.md").is_file()


def test_readme_chart_is_tracked_by_git():
    readme = (ROOT / "README.md").read_text()
    assert "](bench/results/queues.png)" in readme
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): the file itself is checked below")
    tracked = subprocess.run(["git", "ls-files", "bench/results/queues.png"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert tracked.strip() == "bench/results/queues.png"


@needs_build
def test_sdist_carries_the_test_suite_license_and_chart(unpacked_sdist):
    for path in ("LICENSE", "CHANGELOG.md", "conftest.py", "tests/__init__.py",
                 "tests/helpers.py", "tests/programs/worker_pool.py", "compat/__init__.py",
                 "compat/support.py", "bench/results/queues.png", "mpsysv/py.typed"):
        assert (unpacked_sdist / path).is_file(), f"{path} is missing from the sdist"
    assert not list(unpacked_sdist.rglob("__pycache__"))


@needs_build
def test_unpacked_sdist_collects_every_test_and_runs_the_quick_ones(unpacked_sdist):
    collected = _pytest_in(unpacked_sdist, "--collect-only", timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "error" not in collected.stdout.splitlines()[-1]
    quick = _pytest_in(unpacked_sdist, "tests/test_smoke.py", "tests/test_wire.py",
                       "tests/test_packaging.py", "-k", "not sdist", timeout=300)
    assert quick.returncode == 0, quick.stdout[-3000:] + quick.stderr[-3000:]


@pytest.mark.slow
@needs_build
def test_unpacked_sdist_passes_its_whole_suite(unpacked_sdist):
    run = _pytest_in(unpacked_sdist, "-n", "2", timeout=1200)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
