"""Joining or starting Ray: the cluster a job runs on, or a private local Ray for a laptop run."""

from __future__ import annotations

import logging
import os
import warnings

# Ray Train's placement-group cleaner asks the state API every second whether the controller lives. A
# private local Ray runs without the dashboard that serves that API, so every query fails and logs a
# warning (hundreds a demo run). The cleaner only matters when a controller dies ungracefully on a Ray
# that outlives it; a private Ray ends with its driver, placement groups included.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_workers() -> None:
    """Runs first in every worker process of a private local Ray (Ray's worker_process_setup_hook): what
    is configured away here is known noise, each for the reason given; warnings that can be real stay."""
    logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)
    # Train logs every report, checkpoint and worker-group step at INFO: the stage's own progress lines
    # and the driver's summary say the same once.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
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


def ensure_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Connect to RAY_ADDRESS when set, else start a private local Ray on loopback only (never a stale
    cluster file).

    `dashboard`: also start the dashboard, whose state API Ray Train's placement-group cleaner needs
    when a Train run's owner is killed (as Tune does with a finished or stopped trial).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="ERROR")
    else:
        env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # weight-loading bars, one per worker and model load
        try:
            import torch

            if not torch.cuda.is_available():
                env["DS_ACCELERATOR"] = "cpu"  # said, so DeepSpeed does not warn that it fell back to the CPU
        except ImportError:
            pass
        loopback_only()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level="ERROR",
                 runtime_env={"worker_process_setup_hook": "pedray.cluster.quiet_workers", "env_vars": env})
        if not dashboard:
            quiet_workers()  # the driver's own Ray Data and Train loggers too
    ray.data.DataContext.get_current().enable_progress_bars = False
