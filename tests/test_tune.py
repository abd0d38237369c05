"""The Ray Tune sweep: grid and concurrency rules, bad spaces fail early, and a real two-trial ASHA run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pedray.config import ConfigError, load_recipe
from pedray.tune import concurrency, trial_overrides, tuned_overrides

REPO = Path(__file__).resolve().parents[1]


def test_grid_is_every_combination():
    recipe = load_recipe(None, ["tune.space={lora.num_experts: [1, 2, 3], lora.rank: [4, 8]}"])
    grid = trial_overrides(recipe)
    assert len(grid) == 6 and {"lora.num_experts": 3, "lora.rank": 4} in grid


def test_concurrency_leaves_a_cpu_for_each_trials_data():
    two_workers = load_recipe(None, ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5"])
    assert concurrency(two_workers, cpus=2) == 1        # 1 CPU of workers + 1 for Ray Data
    assert concurrency(two_workers, cpus=16) == 8
    assert concurrency(load_recipe(None, ["tune.max_concurrent=3"]), cpus=2) == 3


def test_bad_space_fails_before_any_trial(tmp_path):
    from pedray.tune import sweep

    recipe = load_recipe(None, [f"output_dir={tmp_path}", "tune.space={lora.num_expert: [1, 2]}"])
    with pytest.raises(ConfigError, match="num_expert"):
        sweep(recipe)
    recipe = load_recipe(None, [f"output_dir={tmp_path}", "tune.space={lora.num_experts: [0, 2]}"])
    with pytest.raises(ConfigError, match="num_experts"):
        sweep(recipe)


def test_tuned_file_applies_as_overrides(tmp_path):
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"lora.num_experts": 2, "stages.mouse.lr": 0.003}))
    recipe = load_recipe(REPO / "jobs" / "tiny.yaml", tuned_overrides(tmp_path / "best.yaml"))
    assert recipe.lora.num_experts == 2 and recipe.stage("mouse").lr == 0.003
    with pytest.raises(ConfigError, match="not found"):
        tuned_overrides(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_sweep_runs_real_mouse_trials_and_asha_stops_the_laggard(tmp_path):
    """Two real mouse stages through `python -m pedray tune` (its own Ray, 2 CPUs, one trial at a time):
    a learning rate of 1e-9 leaves the held-out loss where it starts, ASHA stops that trial at a rung
    before its last evaluation, and the best settings are written for train_all."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pedray", "tune", "--config", str(REPO / "jobs" / "tiny.yaml"),
               f"output_dir={out}", "tune.space={stages.mouse.lr: [0.01, 1.0e-9]}", "tune.eval_every=2",
               "stages.mouse.max_steps=6", "stages.mouse.eval_rows=8"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| trial |" in done.stdout
    results = json.loads((out / "tune" / "mouse" / "results.json").read_text())
    trials = {row["trial"]: row for row in results["trials"]}
    assert trials["lr=0.01"]["evaluations"] == 3 and not trials["lr=0.01"]["stopped_early"]
    assert trials["lr=1e-09"]["stopped_early"] and trials["lr=1e-09"]["evaluations"] < 3
    assert results["best"] == {"stages.mouse.lr": 0.01}
    assert yaml.safe_load((out / "tune" / "mouse" / "best.yaml").read_text()) == {"stages.mouse.lr": 0.01}
    assert (out / "tune" / "mouse" / "sweep.png").stat().st_size > 1000
    adapter = out / "tune" / "mouse" / "trials" / "lr=0.01" / "mouse" / "model"
    assert (adapter / "mouse_config.json").is_file()  # the winning trial's adapter is kept, ready to use
