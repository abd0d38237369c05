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
def test_checkpoints_live_in_s3_and_a_rerun_resumes_from_there(ray_local, s3_endpoint, tmp_path):
    import pyarrow.fs

    from pedray.train.chain import train_all

    query, filesystem = _bucket(s3_endpoint, "pedray-ckpt")
    uri = f"s3://pedray-ckpt/runs{query}"
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


def _bucket(s3_endpoint: str, name: str) -> tuple[str, object]:
    import pyarrow.fs

    query = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{name}{query}&allow_bucket_creation=true")
    filesystem.create_dir(name)
    return query, filesystem


@pytest.mark.slow
def test_a_whole_run_lives_in_s3_and_no_worker_reads_the_drivers_disk(ray_local, s3_endpoint, tmp_path):
    """output_dir on S3: corpus, base model, stage folders, reference scores, reports and checkpoints are in
    the bucket; every model a worker loads is a URI it copies itself; a rerun reads the manifests back."""
    import pyarrow.fs

    from pedray import storage
    from pedray.config.schema import EvalConfig
    from pedray.eval.run import evaluate, read_report
    from pedray.eval.sets import heldout_items
    from pedray.serve.layout import expert_layout
    from pedray.serve.run import default_model
    from pedray.train.chain import train_all
    from pedray.workspace import corpus_dirs

    query, filesystem = _bucket(s3_endpoint, "pedray-run")
    output = f"s3://pedray-run/tiny{query}"
    recipe = load_recipe(REPO / "jobs" / "tiny.yaml", [
        f"output_dir={output}", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "stages.cpt.enabled=false",
        "stages.sft.max_steps=4", "stages.dfpo.max_steps=2", "stages.mouse.max_steps=4", "lora.gating=task"])
    manifests = train_all(recipe)
    assert list(manifests) == ["sft", "dfpo", "mouse"]
    keys = {info.path for info in filesystem.get_file_info(pyarrow.fs.FileSelector("pedray-run/tiny", recursive=True))}
    for stage in manifests:
        for name in ("manifest.json", "history.json", "loss.png"):
            assert f"pedray-run/tiny/{stage}/{name}" in keys
        assert manifests[stage]["paths"]["model"] == storage.join(output, stage, "model")
        assert manifests[stage]["paths"]["checkpoint"].startswith(f"pedray-run/tiny/ray/{stage}-")
        assert manifests[stage]["upstream"]["path"].startswith("s3://pedray-run/tiny/")  # never a local folder
    assert "pedray-run/tiny/sft/model/model.safetensors" in keys
    assert any(key.startswith("pedray-run/tiny/base/default-tiny-seed0-") for key in keys)
    assert any(key.startswith("pedray-run/tiny/corpus/pedcorpus-") and key.endswith("sft_train.jsonl") for key in keys)
    assert any(key.startswith("pedray-run/tiny/dfpo/reference-train-") and key.endswith(".parquet") for key in keys)
    adapter = manifests["mouse"]["paths"]["model"]
    assert storage.read_json(storage.join(adapter, "mouse_config.json"))["base_model"].startswith("s3://")

    # The rerun decides from the manifests in the bucket: nothing trains again.
    again = train_all(recipe)
    assert {stage: m["elapsed_s"] for stage, m in again.items()} == {s: m["elapsed_s"] for s, m in manifests.items()}

    # Evaluation and serving take the adapter's URI; the report is written to the bucket.
    assert default_model(recipe) == adapter
    out = storage.join(output, "mouse", "eval")
    items = heldout_items(corpus_dirs(recipe), limit=1)[:2]
    report = evaluate(adapter, items, EvalConfig(max_new_tokens=4, batch_size=2, actors=1), out)
    assert read_report(out)["key"] == report["key"]
    assert storage.read_text(storage.join(out, "answers.jsonl")).count("\n") == 2

    # Serving merges the task-gated adapter once per task and puts the merged models beside it in the bucket.
    layout = expert_layout(adapter, tmp_path / "serve-cache")
    experts, routes, tokenizer = layout.experts, layout.routes, layout.tokenizer
    assert set(routes.values()) == set(experts) and tokenizer.startswith("s3://pedray-run/tiny/")
    for location in experts.values():
        assert location.startswith("s3://pedray-run/tiny/mouse/merged-")
        assert storage.read_json(storage.join(location, "config.json"))["model_type"] == "llama"
