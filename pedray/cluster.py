"""Joining or starting Ray: the cluster a job runs on, or a private local Ray for a laptop run."""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

# Ray Data's logging layout with a console for warnings only (its INFO lines still go to ray-data.log).
RAY_DATA_LOGGING = str(Path(__file__).with_name("ray_data_logging.yaml"))
# With Ray's defaults (PEDRAY_RAY_DEFAULTS=1) the placement-group cleaner below warns every second.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"

# Ray Train helpers that a private local Ray has no use for (docs/ray-fixed-cost.md has what each
# costs): each Train run would otherwise start them again, polling all run long.
# PEDRAY_RAY_DEFAULTS=1 keeps Ray's defaults (the throughput bench compares the two).
# - the preemption watcher: an actor per run polling every 5 s for a cloud provider's notice that a spot
#   node is about to go; a laptop is not preempted (a value the user set wins);
# - the controller's 2-s poll of its workers, which a stage waits on as its workers start and again as
#   they finish: every 0.5 s instead, the demo's four stages each took 2.5 s less (one alternating run of
#   a 30-step chain: 20.9-22.4 s against 23.2-25.1 s a stage); a poll is one small actor call.
LEAN_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# - the controller's and workers' metrics (report and checkpoint timings), made for the Prometheus export
#   of a dashboard that a private Ray does not start;
# - the placement-group cleaner: a detached actor per run asking the state API every second whether the
#   controller lives, to free the run's reserved CPUs should it die on a Ray that outlives it. A private
#   Ray ends with its driver, reservations included (and has no state API: every question fails).
LEAN_TRAIN_CALLBACKS = ("ControllerMetricsCallback", "WorkerMetricsCallback", "PlacementGroupCleanerCallback")
# Ray core's own bookkeeping in every process (a dozen on a one-worker stage, each woken every second or
# so), for tools a private Ray without the dashboard does not run. On 2 cores, in an A/B of three sft
# stages each, both off took the other processes from 0.089 to 0.078 cores (docs/ray-fixed-cost.md):
# - metrics (Prometheus counters of tasks, objects, gRPC calls), exported to the dashboard agent (kept
#   for `pedray serve`, whose router counts requests per route as a Ray metric);
# - task events (each task's and actor's state changes), sent to the GCS every second for the state API,
#   `ray list`, the dashboard and `ray timeline`.
# - idle worker processes: Ray kills an idle one after 1 s once the node has more worker processes than
#   CPUs, and a Train run's actors alone (controller, worker, coordinators) are more than 2. Each stage
#   then started its Ray Data tasks in fresh processes that import pyarrow, tokenizers and torch again:
#   its held-out rows took 4-5 s instead of 0.2 s and its first batches waited too. Kept for a minute, the
#   data processes of one stage serve the next (30-step chain: 107.8 s against 133.9 s for four stages).
LEAN_SYSTEM_CONFIG = {"task_events_report_interval_ms": 0, "enable_metrics_collection": False,
                      "idle_worker_killing_time_threshold_ms": 60_000}
_lean = False  # whether the Ray this process started is private and runs without those helpers
_private = False  # whether this process started its Ray itself, on this machine only


def lean() -> bool:
    """Whether this process runs a private local Ray that pedray started without Ray Train's helpers
    for shared clusters (above). Never with the dashboard (`pedray tune`: Tune stops a trial by killing
    its controller, and the cleaner frees the trial's CPUs for the next one)."""
    import ray

    return _lean and ray.is_initialized()


def private() -> bool:
    """Whether this process runs a private local Ray that it started (no cluster): every CPU Ray has is
    this machine's, and free to the driver between stages."""
    import ray

    return _private and ray.is_initialized()


class KnownNoise(logging.Filter):
    """Drops log lines that report no problem, each for its reason:
    - Ray Data warns once per process that progress bars are off, and pedray turns them off (a bar per
      dataset and worker garbles the console; the training loop prints its own progress);
    - DeepSpeed's scheduler asks itself for a learning rate while it is being built and warns that it
      has not started (its first step sets the rate)."""

    FRAGMENTS = ("Progress bars disabled", "Progress bars for operators disabled",
                 "learning rate from scheduler before it has started")

    def __init__(self, fragments: tuple[str, ...] = FRAGMENTS) -> None:
        super().__init__()
        self.fragments, self.dropped = fragments, 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(fragment in message for fragment in self.fragments):
            self.dropped += 1
            return False
        return True


def map_without_restarts(dataset, fn, **kwargs):
    """`dataset.map_batches(fn, **kwargs)` on an actor pool whose actors are not restarted: a model that
    dies fails its job with its own error. Ray Data restarts a pool's actors by default, and Ray's core
    worker then says on the console (an E line) that a restart would fail should the constructor's
    arguments be gone from the object store. Ray 2.60 takes `max_restarts` only as an extra keyword,
    which it also calls deprecated (for 2.64; pyproject pins 2.60): that warning is silenced, here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(fn, max_restarts=0, **kwargs)


def reap_dead_actors(private: bool = False) -> list[int]:
    """On a lean private Ray (one Train run at a time): kill the processes of actors that Ray counts as dead
    but that are still running; returns their PIDs. pedray calls it before each stage and at exit;
    `private=True` also on a private Ray that pedray did not start itself (the tests' shared one, at its end).

    Ray 2.60's core worker can deadlock in its own exit handler (its event loop posts to itself while it
    shuts down): the actor is dead to Ray, its process lives on, 400 MB and a polling thread, and outlives
    the session as an orphan. Seen here for a TrainController in 4 of 11 short runs (1 of 5 with Ray's
    idle-worker default, 3 of 6 with LEAN_SYSTEM_CONFIG's). Only processes this
    driver's own Ray started (the raylet's children) are touched, by PID, and only for actors the GCS
    records as dead."""
    import psutil
    import ray
    from ray._private import state

    if not (lean() or private):
        return []
    try:
        raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
        ours = {proc.pid: proc for proc in raylet.children()}
        dead = {actor.get("Pid") for actor in state.actors().values() if actor.get("State") == "DEAD"}
    except (psutil.Error, AttributeError, KeyError, IndexError):  # nothing to look at: nothing to do
        return []
    killed = []
    for pid in sorted(dead & ours.keys()):
        try:
            ours[pid].kill()
            killed.append(pid)
        except psutil.Error:  # it exited meanwhile
            pass
    if killed:
        logging.getLogger("pedray").info("killed %s: their actors had ended, their processes had not", killed)
    return killed


def settle_cpus(timeout_s: float = 15.0) -> bool:
    """On a private local Ray, wait until every CPU is free again (at most `timeout_s`); whether they are.

    A Train run or an actor pool that has finished gives its CPUs back a moment after its last result.
    An evaluation sizes its pool by the CPUs free when it starts, and started in that moment it would take
    one replica instead of two. On a private Ray nothing else runs, so it waits for them. A shared
    cluster is left alone (others hold CPUs there)."""
    import time

    import ray

    if not lean():
        return True
    deadline = time.monotonic() + timeout_s
    while (free := ray.available_resources().get("CPU", 0.0)) < (total := ray.cluster_resources().get("CPU", 0.0)) - 1e-6:
        if time.monotonic() > deadline:
            # something of ours still holds CPUs it should have given back: worth a line, not a stop
            logging.getLogger("pedray").warning("%.2f of %.0f CPUs still held after %.0f s; going on", total - free,
                                                total, timeout_s)
            return False
        time.sleep(0.1)
    return True


@contextmanager
def own_tasks_hold_the_cpus():
    """Around a Ray Data execution of ours that no train worker shares the CPUs with (a `materialize()`,
    a write, which goes through one, and the held-out rows' single read): drop Ray Data's "no available
    CPUs ... will hang" warning.

    Ray 2.60's `materialize` runs the plan and at once executes its result again, checking for free CPUs
    while the first run's own tasks (the reference model's actor, the write or tokenising tasks) are still
    giving theirs back. On 2 cores it finds none and warns of a hang that cannot happen: nothing else
    holds them. The held-out read (`runner.stage_datasets`) runs right after the reference scores'
    write, with the same check, before any worker starts; it is wrapped for the same reason, whether or
    not its check ever comes too early (not measured). The warning is printed once per process, so the
    once-flag is reset afterwards: a real shortage later (train workers holding every CPU) is still said."""
    from ray.util.debug import reset_log_once

    logger = logging.getLogger("ray.data.dataset")
    own = KnownNoise(("does not have any available CPUs",))
    logger.addFilter(own)
    try:
        yield
    finally:
        logger.removeFilter(own)
        if own.dropped:
            reset_log_once("cpu_warning")


def quiet_workers() -> None:
    """Runs first in every worker process of a private local Ray (Ray's worker_process_setup_hook): what
    is configured away here is known noise, each for the reason given; warnings that can be real stay."""
    _quiet_loggers()
    # The cleaner finds "its" cluster through RAY_ADDRESS, else by scanning the host: with two Ray
    # instances on one machine (a second run, a test) the scan fails and its thread dies with a traceback.
    # Only in workers, which end with their Ray: in a driver it would outlive ray.shutdown() and send the
    # next ensure_ray() to a cluster that is gone.
    import ray

    try:
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception:  # not connected yet: the scan it falls back to is Ray's default
        pass


def _no_weight_loading_bars() -> None:
    """A private Ray's driver loads models too (the evaluation, dfpo's reference scores): no weight-loading
    bar per load, as in the workers (HF_HUB_DISABLE_PROGRESS_BARS, read where transformers is imported)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _quiet_loggers() -> None:
    logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)
    # (Ray Train's INFO lines are kept off the console by the stage's LoggingConfig, Ray Data's by
    # RAY_DATA_LOGGING_CONFIG: both still reach their log files.)
    # Ray Data warns about its own deprecated option, set by Ray Train's dataset manager, not by us.
    warnings.filterwarnings("ignore", message=".*exclude_resources.*")


def loopback_only() -> None:
    """Make a Ray started from this process listen on 127.0.0.1 only.

    Ray binds its servers (GCS, raylet, workers, agents) to the node's IP, which on Linux is the
    machine's network address: anyone on the network could reach a private laptop cluster, and a Ray
    cluster executes code. With `ENABLE_RAY_CLUSTER` off (Ray's own single-machine mode on macOS and
    Windows) the node IP is the loopback address. The environment variable reaches the processes Ray
    starts; the module constant covers a Ray imported before this call. Never for a cluster the user
    started: that one is theirs to configure (README: "Securing a cluster").
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def batch_scheduling(enabled: bool = True):
    """The calling thread under Linux's SCHED_BATCH while the block runs, so that the processes it starts
    (a private Ray's GCS, raylet, agents and, through the raylet, every worker) inherit it; the thread's
    own policy is put back after. Elsewhere, or where the policy cannot be set, nothing changes.

    Why: on a machine whose cores the training threads fill, each of Ray's processes wakes up many times a
    second (a core worker checks for signals every 10 ms, gloo's loop every 10 ms, gRPC pollers), and under
    the default policy a waking thread preempts a running one at once. The Train worker's two OpenMP
    threads were switched out ~1,000 times a second (read from /proc: 4,193 and 5,839 involuntary switches
    in 10 s, against 295 and 221 for the same loop without Ray), and each switch stalls the other thread at
    the next barrier. A SCHED_BATCH thread does not preempt at wake-up; it runs at the next scheduler tick
    or when a core is free, with the same share of the CPU as before (no nice level changes). Measured on 2
    AMX cores, bf16, 30-step sft stages alternated in one run: the stage at 1.18, 1.11 and 1.11 of our
    one-process loop against 1.00, 1.05 and 1.05 without (docs/ray-fixed-cost.md).
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if not enabled or policy is None:
        yield
        return
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # a policy this process may not leave (a real-time one set by its user): keep it
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, *before)


def compute_thread() -> None:
    """The calling thread back under the default policy (SCHED_OTHER) if it runs under SCHED_BATCH, as a
    private Ray's workers do (`batch_scheduling`); the threads it starts afterwards (its OpenMP team)
    inherit that. A thread under any other policy is left alone.

    Called by a Train worker's training thread before its first torch op: Ray's threads in the worker
    and Ray's other processes stay batch and never preempt at wake-up, while the compute threads compete
    on normal terms, as they do in the driver (local mode). Measured on 2 AMX cores, bf16, the bench's
    48-step sft stage alternated in one run: 4,115 / 4,063, 3,772 / 3,720 and 3,870 / 3,770 tok/s with
    and without (docs/ray-fixed-cost.md).
    """
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or os.sched_getscheduler(0) != batch:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:  # not ours to leave: keep it
        pass


def ensure_ray(num_cpus: int | None = None, dashboard: bool = False, metrics: bool = False,
               batch: bool = True) -> None:
    """Connect to RAY_ADDRESS when set, else start a private local Ray on loopback only (never a stale
    cluster file).

    `dashboard`: also start the dashboard, whose state API Ray Train's placement-group cleaner needs
    when a Train run's owner is killed (as Tune does with a finished or stopped trial).
    `metrics`: keep Ray's metrics on a private Ray (LEAN_SYSTEM_CONFIG turns them off).
    `batch`: a lean private Ray's processes run under SCHED_BATCH (`batch_scheduling` says why); false
    for serving, where a request's wake-up should not wait for a scheduler tick.
    """
    import ray

    global _lean, _private
    if ray.is_initialized():
        return
    _lean = _private = False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="ERROR")
    else:
        env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1",  # weight-loading bars, one per worker and model load
               "RAY_DATA_LOGGING_CONFIG": RAY_DATA_LOGGING}
        os.environ["RAY_DATA_LOGGING_CONFIG"] = RAY_DATA_LOGGING  # the driver's own Ray Data too
        try:
            import torch

            if not torch.cuda.is_available():
                # said, so DeepSpeed does not warn that it fell back to the CPU (the driver imports it too)
                env["DS_ACCELERATOR"] = os.environ.setdefault("DS_ACCELERATOR", "cpu")
        except ImportError:
            pass
        _lean = not dashboard and os.environ.get("PEDRAY_RAY_DEFAULTS", "0") == "0"
        system = None
        if _lean:
            env.update({key: os.environ.get(key, value) for key, value in LEAN_TRAIN_ENV.items()})
            system = dict(LEAN_SYSTEM_CONFIG, enable_metrics_collection=metrics)
        loopback_only()
        _private = True
        # PEDRAY_SCHED_BATCH=0 keeps Ray's processes under the default policy (for an A/B)
        with batch_scheduling(batch and _lean and os.environ.get("PEDRAY_SCHED_BATCH", "1") != "0"):
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     logging_level="ERROR", _system_config=system,
                     runtime_env={"worker_process_setup_hook": "pedray.cluster.quiet_workers", "env_vars": env})
        if not dashboard:
            _quiet_loggers()  # the driver's own Ray Data and Train loggers too
        if _lean:
            atexit.register(reap_dead_actors)  # before Ray's own exit handler, registered by ray.init
        _no_weight_loading_bars()
    if os.environ.get("RAY_DATA_LOGGING_CONFIG") == RAY_DATA_LOGGING:
        from ray.data._internal.logging import configure_logging

        configure_logging()  # Ray Data configured its logger when imported, perhaps before this call
    ray.data.DataContext.get_current().enable_progress_bars = False


def logs_dir() -> str | None:
    """Where this Ray session's full logs are (Train, Data, every worker's output), when known."""
    try:
        import ray

        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except Exception:  # not connected, or a Ray without that attribute: the caller says nothing
        return None
