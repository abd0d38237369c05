"""Starting a private local Ray (pedray.cluster), in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

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


SETTLE = """
import os, ray
from pedray.cluster import ensure_ray, settle_cpus
ensure_ray(num_cpus=2)

@ray.remote(num_cpus=1)
class Holder:
    def ready(self):
        return True

holder = Holder.remote()
ray.get(holder.ready.remote())
held = settle_cpus(timeout_s=1)   # a CPU is held: a private Ray waits, and says it gave up
ray.kill(holder)
free = settle_cpus(timeout_s=60)
print(held, free, ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU"), flush=True)
"""


def test_settle_waits_for_the_cpus_of_finished_work_on_a_private_ray_only():
    """A finished actor pool or Train run gives its CPUs back a moment after its last result; an evaluation
    waits for them (else it sizes its pool too small). On Ray's defaults (a shared cluster's behaviour) it
    does not wait."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PEDRAY_RAY_DEFAULTS")}
    done = subprocess.run([sys.executable, "-c", SETTLE], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True", "True"]
    done = subprocess.run([sys.executable, "-c", SETTLE], capture_output=True, text=True, timeout=180,
                          env={**env, "PEDRAY_RAY_DEFAULTS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["True", "True"]


def test_ray_datas_false_hang_warning_is_dropped_inside_our_own_write_only():
    """Ray 2.60's write re-executes its result while its own tasks give their CPUs back, and warns of a
    hang on 2 cores; inside our write that line is dropped, and the once-only warning stays armed for a
    real shortage later."""
    import logging

    from ray.util.debug import log_once

    from pedray.cluster import own_tasks_hold_the_cpus

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger, lines = logging.getLogger("ray.data.dataset"), Lines()
    logger.addHandler(lines)
    message = "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang"
    try:
        with own_tasks_hold_the_cpus():
            if log_once("cpu_warning"):  # what Ray Data's Dataset._execute does
                logger.warning(message)
            logger.warning("another warning")
        assert lines.lines == ["another warning"]
        if log_once("cpu_warning"):
            logger.warning(message)
        assert lines.lines == ["another warning", message]
    finally:
        logger.removeHandler(lines)



REAP = """
import atexit, os, time, psutil, ray
from pedray.cluster import ensure_ray, reap_dead_actors
ensure_ray(num_cpus=1)

@ray.remote(num_cpus=0)
class Hanger:
    def pid(self, hang):
        if hang:  # the process outlives its actor, as Ray's exit handler deadlock makes it do
            atexit.register(time.sleep, 3600)
        return os.getpid()

hung, ended, live = Hanger.remote(), Hanger.remote(), Hanger.remote()
pids = [ray.get(hung.pid.remote(True)), ray.get(ended.pid.remote(False)), ray.get(live.pid.remote(True))]
del hung, ended  # out of scope: Ray ends both actors; `live` stays
time.sleep(3)
running = lambda: [psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids]
print("before", running(), flush=True)
print("killed", reap_dead_actors() == [pids[0]])
time.sleep(0.5)
print("after", running())
"""


def test_an_actor_process_that_hangs_on_exit_is_killed_by_pid_and_a_live_one_is_not():
    """Ray 2.60's core worker can deadlock in its exit handler and leave an actor's process (400 MB) behind
    the session: reap_dead_actors kills the process of an actor the GCS has as dead, by PID, and leaves
    a live actor's process alone."""
    _hung_actor_reaped(REAP)


def _hung_actor_reaped(script: str) -> None:
    """Run a REAP script in its own process: the hung actor's process killed, the others as they were."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["before [True, False, True]", "killed True", "after [False, False, True]"], \
        done.stdout + done.stderr[-2000:]


def test_the_tests_shared_ray_reaps_a_hung_actor_only_when_asked():
    """A Ray started by plain `ray.init` (the tests' shared one) is not lean: reap_dead_actors leaves it
    alone unless called with private=True, as the ray_local fixture does before its shutdown."""
    script = REAP.replace("ensure_ray(num_cpus=1)",
                          'ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")')
    script = script.replace("reap_dead_actors() == [pids[0]]",
                            "reap_dead_actors() == [] and reap_dead_actors(private=True) == [pids[0]]")
    _hung_actor_reaped(script)


BATCH = """
import os, ray, psutil
from pedray.cluster import ensure_ray
for batch in (True, False):
    ensure_ray(num_cpus=1, batch=batch)
    task = ray.get(ray.remote(lambda: os.sched_getscheduler(0)).remote())
    servers = sorted({os.sched_getscheduler(p.pid) for p in psutil.Process().children(recursive=True)})
    print(batch, task, servers, os.sched_getscheduler(0), flush=True)
    ray.shutdown()
print(os.SCHED_BATCH, os.SCHED_OTHER)
"""


def test_a_private_rays_processes_run_under_sched_batch_and_the_driver_does_not():
    """Every process of a private Ray (GCS, raylet, agents, a task's worker) inherits SCHED_BATCH from the
    start, so that their wake-ups do not preempt the training threads; the driver's own thread is back
    under its policy after the start, and `batch=False` (serving) leaves Ray's processes alone."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", BATCH], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split("\n")
    batch, other = lines[2].split()
    assert lines[0] == f"True {batch} [{batch}] {other}", done.stdout
    assert lines[1] == f"False {other} [{other}] {other}", done.stdout


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies only")
def test_compute_thread_takes_a_batch_thread_and_the_threads_it_starts_back_to_the_default_policy():
    """A Train worker's training thread inherits SCHED_BATCH from a private Ray; `compute_thread` puts it
    (and the threads it starts afterwards, as its OpenMP team) back under SCHED_OTHER, and leaves a
    thread already there alone."""
    from pedray.cluster import compute_thread

    seen = {}

    def worker() -> None:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        seen["before"] = os.sched_getscheduler(0)
        compute_thread()
        seen["after"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.__setitem__("child", os.sched_getscheduler(0)))
        child.start()
        child.join()
        compute_thread()
        seen["again"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"before": os.SCHED_BATCH, "after": os.SCHED_OTHER, "child": os.SCHED_OTHER,
                    "again": os.SCHED_OTHER}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread was never touched
