"""cluster.yaml passes Ray's own autoscaler schema check and installs this checkout of pedray."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_ray_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before launching; raises on any violation
    assert config["available_node_types"]["gpu_a100x8"]["min_workers"] == 0
    assert config["available_node_types"]["gpu_a100x8"]["resources"]["GPU"] == 8
    assert config["file_mounts"]["/home/ubuntu/pedray"] == "."
    assert any("pip install -q -e /home/ubuntu/pedray" in c for c in config["setup_commands"])
    assert any("torch==2.13.0" in c for c in config["setup_commands"])


def test_plan_reports_deepspeed_memory_for_the_7b_recipe():
    from pedray.train.plan import plan

    report = plan(str(REPO / "jobs" / "gpu-7b.yaml"), [], str(REPO / "jobs" / "architectures" / "qwen2.5-7b"), 8)
    assert 7.5e9 < report["parameters"] < 7.7e9
    assert report["nodes"] == 2 and report["zero_stage"] == 3
    assert "per GPU" in report["deepspeed_estimate"] and "offload_optimizer" in report["deepspeed_estimate"]
