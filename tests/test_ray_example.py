"""``examples/ray_pool.py``: the README's Ray section as a program, run when Ray is installed."""

import importlib.util
import os
import subprocess
import sys
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "ray_pool.py")


@unittest.skipIf(importlib.util.find_spec("ray") is None,
                 "ray is not installed in this interpreter: pip install '.[ray]' to run "
                 "examples/ray_pool.py on a local Ray")
class RayExampleTest(unittest.TestCase):
    def test_same_workload_gives_same_results_on_mpsysv_and_on_ray(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run([sys.executable, EXAMPLE, "--items", "500"], env=env,
                              capture_output=True, text=True, timeout=600)
        self.assertEqual(proc.returncode, 0, f"{proc.stdout}\n{proc.stderr[-5000:]}")
        # Ray's own messages (a "(raylet) ..." line when the pool's actors end) may
        # come between the example's lines.
        lines = [line for line in proc.stdout.splitlines()
                 if line.startswith(("mpsysv: ", "ray: ", "same results"))]
        self.assertEqual(len(lines), 3, proc.stdout)
        self.assertTrue(lines[0].startswith("mpsysv: map of 500 items"), proc.stdout)
        self.assertIn("(mpsysv.queues.Queue) 500 items", lines[0])
        self.assertTrue(lines[1].startswith("ray: map of 500 items"), proc.stdout)
        self.assertIn("(ray.util.queue.Queue, Ray ", lines[1])
        self.assertEqual(lines[2], "same results on every backend")


class RayExampleWithoutRayTest(unittest.TestCase):
    def test_mpsysv_half_runs_without_ray(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run([sys.executable, EXAMPLE, "--items", "200", "--only", "mpsysv"],
                              env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, f"{proc.stdout}\n{proc.stderr[-5000:]}")
        self.assertRegex(proc.stdout, r"^mpsysv: map of 200 items, checksum \w+; queue "
                                      r"\(mpsysv.queues.Queue\) 200 items, checksum \w+; "
                                      r"consistent")
