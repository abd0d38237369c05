"""Autoscaling on Ray's simulated multi-node cluster (the fake_multinode provider), started and stopped here.

The head offers no `pedray_worker` resource, so a stage whose workers ask for it makes the autoscaler
add worker nodes; they are removed after the idle timeout. The stage is submitted with `ray job submit`,
as users do. Then a Serve expert deployment scales its replicas up under a bounded load and back down.

`ray.cluster_utils.AutoscalingCluster` runs `ray stop --force`, which would kill every Ray process on
the host, so the head is started here with `ray start --head --block` in its own process group and
stopped by that group alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, port_open, wait_for

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the fake provider's head node id


def _config(gcs: str) -> dict:
    """Autoscaler config for the fake provider: a 2-CPU head and up to two 1-CPU worker nodes."""
    return {
        "cluster_name": "pedray-fake", "max_workers": 2, "idle_timeout_minutes": 0.1, "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "auth": {"ssh_user": "ray"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "worker": {"resources": {"CPU": 1, "pedray_worker": 1}, "node_config": {},
                       "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    """A fake multi-node Ray head with the autoscaler; yields (GCS address, dashboard URL, environment)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="prfake", dir="/tmp"))  # Ray's socket paths must stay short
    port, dashboard = free_port(), free_port()
    gcs = f"127.0.0.1:{port}"
    (folder / "autoscaling.json").write_text(json.dumps(_config(gcs)))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS=gcs,
               # Serve's replicas and handles report load every 10 s by default; the test's load lasts less.
               RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S="0.5",
               RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S="0.5")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         f"--autoscaling-config={folder / 'autoscaling.json'}", f"--temp-dir={folder}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
         "--disable-usage-stats"],
        env={k: v for k, v in env.items() if k != "RAY_ADDRESS"}, start_new_session=True,
        stdout=(folder / "head.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(dashboard) or head.poll() is not None, 120, "the fake cluster's head")
        assert head.poll() is None, (folder / "head.log").read_text()[-2000:]
        yield gcs, f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # our process group only: the head, its daemons and fake nodes
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        left = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
        for pid in left:  # anything still naming our temp dir was started by this fixture
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_stage_adds_worker_nodes_which_go_away_and_serve_scales_replicas(fake_cluster, tmp_path):
    gcs, dashboard, env = fake_cluster
    out, status = tmp_path / "out", tmp_path / "status"
    status.mkdir()

    def submit() -> subprocess.CompletedProcess:
        # No --working-dir: the simulated nodes share one disk, and one node's clean-up of the unpacked
        # package would delete the other nodes' copy under their running workers. pedray is installed.
        return subprocess.run(
            [RAY, "job", "submit", "--address", dashboard,
             "--runtime-env-json", json.dumps({"env_vars": {"PEDRAY_STATUS_DIR": str(status)}}), "--",
             sys.executable, str(REPO / "jobs" / "train_all.py"), "--config", str(REPO / "jobs" / "tiny.yaml"),
             "--stages", "sft", "--output-dir", str(out),
             "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", 'scaling.resources={"pedray_worker": 1}',
             "stages.sft.max_steps=4", "stages.sft.checkpoint_every=4", "eval.after_stages=false"],
            env=env, capture_output=True, text=True, timeout=600)

    submitted = submit()
    # The dashboard answers before its head node's job agent has registered; Ray then refuses the
    # submission (no job made) and says to try again later. Beside other work on 2 cores the agent took
    # over a minute once (a fresh CI run while an evaluation ran): wait for it up to four minutes.
    deadline = time.monotonic() + 240
    while submitted.returncode != 0 and time.monotonic() < deadline:
        if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
            break
        time.sleep(5)
        submitted = submit()
    assert submitted.returncode == 0 and "succeeded" in submitted.stdout, submitted.stdout[-3000:] + submitted.stderr[-999:]
    manifest = json.loads((out / "sft" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 4
    nodes = {json.loads(path.read_text())["node"] for path in status.glob("rank*.json")}
    # Each worker asked for the resource only worker nodes have: two nodes the autoscaler added.
    assert len(nodes) == 2 and HEAD_ID not in nodes, nodes

    port = free_port()
    driver = subprocess.run([sys.executable, str(REPO / "tests" / "cluster_driver.py"), manifest["paths"]["model"],
                             str(port)], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-3000:]
    seen = json.loads(driver.stdout.strip().splitlines()[-1])
    # The idle worker nodes were removed (idle timeout 6 s): none is left alive, and at least the two the
    # stage ran on are dead (on a loaded machine the autoscaler may have replaced a slow-starting node).
    assert seen["scale_down_s"] is not None and seen["workers_removed"] >= 2, seen
    # Every request answered; at least STREAMS x REQUESTS_EACH of the driver, more while the upscale was pending.
    assert seen["failed"] == 0 and seen["completed"] == seen["sent"] >= 8 * 12, seen
    assert seen["replicas_before"] == 1 and seen["replicas_peak"] == 2, seen  # scaled up under load
    assert seen["scale_in_s"] is not None and seen["replicas_after"] == 1, seen  # and back down after it
