"""Ray Train checkpoints on S3-compatible storage: a real moto server on 127.0.0.1, a real stage, a resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, port_open, wait_for

from pedray.config import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto in server mode (an S3 API) on a free local port; stopped by PID."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pip install -e '.[dev]')")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port) or server.poll() is not None, 60, "the moto server")
        assert server.poll() is None, "moto server exited"
        yield f"127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_checkpoints_live_in_s3_and_a_rerun_resumes_from_there(ray_local, s3_endpoint, tmp_path, monkeypatch):
    import pyarrow.fs

    from pedray.train.chain import train_all

    for key, value in (("AWS_ACCESS_KEY_ID", "pedray"), ("AWS_SECRET_ACCESS_KEY", "pedray-secret")):
        monkeypatch.setenv(key, value)  # the driver's credentials; workers get them with the filesystem
    uri = f"s3://pedray-ckpt/runs?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    filesystem.create_dir("pedray-ckpt")
    recipe = load_recipe(REPO / "jobs" / "tiny.yaml", [
        f"output_dir={tmp_path / 'out'}", f"storage={uri}", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5",
        "stages.sft.max_steps=4", "stages.sft.checkpoint_every=2"])
    first = train_all(recipe, ["sft"])["sft"]
    assert first["steps"] == 4 and first["resumed_from_step"] is None
    stored = [info.path for info in filesystem.get_file_info(pyarrow.fs.FileSelector("pedray-ckpt/runs", recursive=True))]
    assert any("/checkpoint_" in path for path in stored), stored[:10]
    assert first["paths"]["checkpoint"].startswith("pedray-ckpt/runs/sft-")  # the checkpoint is in the bucket
    assert not (tmp_path / "out" / "ray").exists()  # nothing of Ray Train's on this machine's disk

    (tmp_path / "out" / "sft" / "manifest.json").unlink()  # as if the driver had died before finishing
    again = train_all(recipe, ["sft"])["sft"]
    assert again["resumed_from_step"] == 4 and again["steps"] == 4
    assert again["fingerprint"] == first["fingerprint"]
