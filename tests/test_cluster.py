"""Starting a private local Ray (pedray.cluster), in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import os, ray
from pedray.cluster import ensure_ray
for round in range(2):
    ensure_ray(num_cpus=1)
    print(round, ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
    ray.shutdown()
print("RAY_ADDRESS" in os.environ)
"""


def test_a_driver_starts_a_private_ray_again_after_shutdown():
    """One process, two private Rays in a row (the throughput bench's rounds, a notebook): the second
    start made its own Ray, instead of waiting forever for the first one's address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "42", "1", "42", "False"]
