"""Training on real Ray Train + DeepSpeed: the four-stage chain, a worker killed mid-stage, a driver killed mid-run."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import wait_for
from pedray.config import load_recipe

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "jobs" / "tiny.yaml"


def _step_of(status_dir: Path, rank: int):
    path = status_dir / f"rank{rank}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _registered_checkpoints(run_root: Path, stage: str) -> int:
    """Checkpoints of a stage that Ray Train's controller has registered (the snapshots in storage): of
    its own run, or of a chain's run it shares (pedray.train.group)."""
    count = 0
    for snapshot in run_root.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, json.JSONDecodeError, KeyError):
            continue
        count += sum(f"{stage}/loss" in result["metrics"] for result in results)
    return count


def test_local_mode_chain_trains_every_stage_and_skips_when_rerun(ray_local, tmp_path, capsys):
    """All four stages in one process (num_workers=0): losses fall, artifacts reload, every stage and the
    base model are evaluated on the same questions, a rerun skips the training and the evaluation."""
    from transformers import AutoModelForCausalLM

    from pedray.model.mouse_io import load_mouse
    from pedray.train.chain import run

    recipe = load_recipe(TINY, [f"output_dir={tmp_path}", "scaling.num_workers=0"])
    manifests = run(recipe)
    assert list(manifests) == ["cpt", "sft", "dfpo", "mouse"]
    for stage, manifest in manifests.items():
        assert manifest["status"] == "complete" and manifest["steps"] == recipe.stage(stage).max_steps
        held_out = manifest["held_out_loss"]
        assert held_out[0]["step"] == 0 and held_out[-1]["step"] == manifest["steps"]
        assert held_out[-1]["loss"] < held_out[0]["loss"], stage  # every stage improves the held-out loss
        assert Path(manifest["paths"]["loss_plot"]).is_file()
        assert manifest["data_fingerprint"] and manifest["code_version"].startswith("pedray")
        waits = [row[f"{stage}/data_wait"] for row in json.loads(Path(manifest["paths"]["history"]).read_text())]
        assert waits and all(0.0 <= wait <= 1.0 for wait in waits), stage  # a share of each logged window
        # local mode keeps the stage's final checkpoint in its run's folder of the output, not in the temporary
        # directory for good, and only that one (every stage of the tiny recipe checkpoints halfway too)
        kept = Path(manifest["paths"]["checkpoint"])
        assert kept.parent.parent == (tmp_path / "ray").resolve() and (kept / "state.json").is_file(), stage
        assert [path.name for path in kept.parent.glob("local_checkpoint_*")] == [kept.name], stage
    assert manifests["sft"]["upstream"]["stage"] == "cpt" and manifests["mouse"]["upstream"]["stage"] == "dfpo"
    dfpo = manifests["dfpo"]["metrics"]
    assert {"dfpo/reward_accuracy", "dfpo/reward_margin", "dfpo/chosen_logps", "dfpo/rejected_logps"} <= set(dfpo)
    model = AutoModelForCausalLM.from_pretrained(manifests["dfpo"]["paths"]["model"])
    adapters = Path(manifests["mouse"]["paths"]["model"])
    mouse = load_mouse(adapters, model)  # the base recorded in the adapter is the dfpo model
    assert mouse.lora.num_experts == recipe.lora.num_experts
    assert (adapters / "routing.png").is_file()
    routing = json.loads((adapters / "routing.json").read_text())
    assert sum(routing["tokens"].values()) > 0 and len(routing["layers"]) == len(mouse.targets)

    printed = capsys.readouterr().out
    table = (tmp_path / "eval" / "stages.md").read_text()
    headline, paired = table.split("\n\n", 1)
    assert [line.split("|")[1].strip() for line in headline.splitlines()[2:]] == ["base", "cpt", "sft", "dfpo", "mouse"]
    assert "heldout ROUGE-L" in table and table in printed and (tmp_path / "eval" / "stages.png").is_file()
    # each stage against the one before, answer by answer (pedray.eval.compare), in the file and the console
    pairs = json.loads((tmp_path / "eval" / "stages.json").read_text())["paired"]
    assert list(pairs) == ["cpt - base", "sft - cpt", "dfpo - sft", "mouse - dfpo"]
    assert all(p["answers"] == 10 and f"| {name} | 10 |" in paired for name, p in pairs.items())
    for stage in manifests:
        report = json.loads((tmp_path / stage / "eval" / "report.json").read_text())
        assert report["scores"]["heldout"]["overall"]["samples"] == 10  # 2 held-out questions x 5 tasks
        assert report["model"] == manifests[stage]["paths"]["model"]

    again = run(recipe)
    printed = capsys.readouterr().out
    assert printed.count("complete already") == 4 and "[eval]" not in printed  # reports reused
    assert again["mouse"]["fingerprint"] == manifests["mouse"]["fingerprint"]


@pytest.mark.slow
def test_killed_worker_is_replaced_and_training_continues(ray_local, tmp_path, monkeypatch):
    """Two DeepSpeed workers (ZeRO-2); rank 1 is SIGKILLed after the step-4 checkpoint. Ray Train
    replaces the worker group, restores the checkpoint, and the stage reaches its step count."""
    from pedray.train.chain import train_all

    status = tmp_path / "status"
    status.mkdir()
    monkeypatch.setenv("PEDRAY_STATUS_DIR", str(status))
    recipe = load_recipe(TINY, [f"output_dir={tmp_path / 'out'}", "scaling.num_workers=2", "scaling.zero_stage=2",
                                "stages.sft.max_steps=14", "stages.sft.checkpoint_every=4"])
    outcome = {}

    def train():
        try:
            outcome.update(train_all(recipe, ["sft"]))
        except BaseException as error:  # said at once, not after the waits below time out
            outcome["error"] = error

    def ready(check):
        if "error" in outcome:
            raise AssertionError("the stage failed before the kill") from outcome["error"]
        return check()

    runner = threading.Thread(target=train, daemon=True)
    runner.start()
    # Ray's controller collects reports every 2 s: kill only once it has registered the checkpoint.
    wait_for(lambda: ready(lambda: _registered_checkpoints(tmp_path / "out" / "ray", "sft") >= 1), 300,
             "a registered checkpoint")
    victim = wait_for(lambda: ready(lambda: (s := _step_of(status, 1)) and s["step"] >= 5 and s), 300,
                      "rank 1 to pass step 5")
    os.kill(victim["pid"], signal.SIGKILL)
    runner.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    manifest = outcome["sft"]
    assert manifest["steps"] == 14
    assert manifest["resumed_from_step"] is not None and 4 <= manifest["resumed_from_step"] < 14
    assert _step_of(status, 1)["pid"] != victim["pid"]  # a new process finished the stage
    assert manifest["held_out_loss"][-1]["loss"] < manifest["held_out_loss"][0]["loss"]


@pytest.mark.slow
def test_rerun_after_driver_death_skips_done_stages_and_resumes(tmp_path):
    """train_all.py is SIGKILLed (with its whole process group) during sft; the rerun skips cpt and
    resumes sft from its last checkpoint. (sft has steps enough to be still training when the kill comes:
    in a chain's shared run, pedray.train.group, the worker writes the stage folder, and one that had
    finished its last step would write it during the kill.)"""
    status = tmp_path / "status"
    status.mkdir()
    command = [sys.executable, str(REPO / "jobs" / "train_all.py"), "--config", str(TINY), "--output-dir",
               str(tmp_path / "out"), "--stages", "cpt,sft", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5",
               "stages.sft.max_steps=60", "stages.sft.checkpoint_every=4", "eval.after_stages=false"]
    env = dict(os.environ, PEDRAY_STATUS_DIR=str(status))
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / "out" / "cpt" / "manifest.json").is_file(), 400, "cpt to complete")
        wait_for(lambda: _registered_checkpoints(tmp_path / "out" / "ray", "sft") >= 1, 400, "an sft checkpoint")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (tmp_path / "out" / "sft" / "manifest.json").exists()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[cpt] complete already" in second.stdout
    manifest = json.loads((tmp_path / "out" / "sft" / "manifest.json").read_text())
    assert manifest["steps"] == 60 and 4 <= manifest["resumed_from_step"] < 60
    # A console a person can follow: each progress line once, no Ray Train or Ray Data INFO lines
    console = second.stdout + second.stderr
    progress = [line.split(")")[-1].strip() for line in console.splitlines() if "[sft]" in line and "% " in line]
    assert progress and len(progress) == len(set(progress)) and "left" in progress[-1] and "60/60" in progress[-1]
    for noise in ("core_worker.cc", "Setting accelerator to CPU",
                  "Reporting training result", "Execution plan of Dataset", "Starting execution of Dataset",
                  "PlacementGroupCleaner", "Checkpoint successfully created", "Progress bars disabled",
                  "will hang"):  # Ray Data's no-free-CPU warning (racy before cluster.own_tasks_hold_the_cpus)
        assert noise not in console, noise
    assert "Ray's full logs" in second.stdout
    # A private Ray runs no helper meant for shared clusters (pedray.cluster.lean): no actor process for them
    logs = Path(second.stdout.split("Ray's full logs")[1].split(": ", 1)[1].split()[0])
    actors = {line.split(":actor_name:")[1].strip() for out in logs.glob("worker-*.out")
              for line in out.read_text(errors="replace").splitlines()[:5] if ":actor_name:" in line}
    assert "RayTrainWorker" in actors and "TrainController" in actors
    assert not actors & {"PlacementGroupCleaner", "PreemptionWatcher"}, actors
    # nor, for a one-worker stage, Ray Train's dataset split (the worker reads the stream itself)
    assert not actors & {"DatasetManager", "SplitCoordinator"}, actors


@pytest.mark.slow
def test_a_chain_shares_one_worker_process_and_trains_as_a_run_per_stage(ray_local, tmp_path, monkeypatch):
    """One worker on a private Ray: the chain's stages run one after another in one Train worker process
    (pedray.train.group), number for number as in a Train run per stage, and each stage keeps its final
    checkpoint in the shared run. A whole CPU for the worker, as in the demo: Ray Data sizes a small read by
    the CPUs of the placement group it runs in, and the per-stage runs read the held-out rows in the
    driver, outside any (a half-CPU worker reads them in other blocks, so other rows)."""
    from pedray.train import group
    from pedray.train.chain import train_all

    status = tmp_path / "status"
    status.mkdir()
    monkeypatch.setenv("PEDRAY_STATUS_DIR", str(status))
    runs = {}
    for shared in (True, False):
        monkeypatch.setattr(group, "private", lambda: shared)  # ray_local is this machine's Ray, started here
        recipe = load_recipe(TINY, [f"output_dir={tmp_path / str(shared)}", "scaling.num_workers=1",
                                    "scaling.cpus_per_worker=1", "stages.cpt.max_steps=4", "stages.sft.max_steps=4", "stages.dfpo.max_steps=2",
                                    "stages.mouse.max_steps=4", "stages.mouse.checkpoint_every=2"])
        pids = {}
        manifests = train_all(recipe, after_stage=lambda stage, _: pids.update({stage: _step_of(status, 0)["pid"]}))
        runs[shared] = manifests, pids
    (shared, shared_pids), (own, own_pids) = runs[True], runs[False]
    assert list(shared_pids) == list(own_pids) == ["cpt", "sft", "dfpo", "mouse"]
    assert len(set(shared_pids.values())) == 1 and len(set(own_pids.values())) == 4
    assert len(list((tmp_path / "True" / "ray").iterdir())) == 1  # one Train run
    for stage in shared:
        assert shared[stage]["fingerprint"] == own[stage]["fingerprint"]
        assert shared[stage]["held_out_loss"] == own[stage]["held_out_loss"], stage
        assert shared[stage]["final_loss"] == own[stage]["final_loss"], stage
        assert Path(shared[stage]["paths"]["checkpoint"], "state.json").is_file(), stage  # kept
        assert shared[stage]["upstream"] == {**own[stage]["upstream"], "path": own[stage]["upstream"]["path"].replace(
            str(tmp_path / "False"), str(tmp_path / "True"))}


def _report_recorder(path: Path):
    """A Ray Train callback (it runs in the controller) that appends each report's step to `path`."""
    import ray.train

    class Record(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as handle:
                handle.write(json.dumps({"step": metrics[0]["step"], "checkpoint": checkpoint is not None}) + "\n")

    return Record()


def test_progress_reports_go_to_ray_only_when_a_callback_reads_them(tmp_path):
    """Between checkpoints the loop reports progress to Ray Train only for a callback (Tune's, a user's):
    nothing else reads those metrics, and each report holds the worker's compute up."""
    from pedray.train.runner import train_run

    recipe = load_recipe(TINY, [f"output_dir={tmp_path}", "scaling.num_workers=1"])
    for callbacks, expected in ((None, False), ([], False), ([_report_recorder(tmp_path / "r.jsonl")], True)):
        trainer = train_run(recipe, ["sft"], lambda config: None, {}, "run", callbacks=callbacks)
        assert trainer.train_loop_config["progress_reports"] is expected


def test_progress_reports_are_spaced_so_they_never_hold_training_up(ray_local, tmp_path, small_corpus,
                                                                       tiny_model_dir):
    """Ray Train's controller takes one report per 2-s poll and `report` blocks until then: progress goes to
    Ray at most every `report_every_s` (the first at once), while every window stays in the history and
    checkpoints always report."""
    from pedray.train.runner import run_stage

    reports = tmp_path / "reports.jsonl"
    recipe = load_recipe(TINY, [f"output_dir={tmp_path / 'out'}", f"data.corpus_dir={small_corpus}",
                                "scaling.num_workers=1", "stages.sft.max_steps=10", "stages.sft.log_every=1",
                                "stages.sft.checkpoint_every=6", "stages.sft.report_every_s=3600",
                                "stages.sft.eval_rows=0"])
    manifest = run_stage(recipe, "sft", tiny_model_dir, tmp_path / "sft", {"stage": "base"},
                         callbacks=[_report_recorder(reports)])
    seen = [json.loads(line) for line in reports.read_text().splitlines()]
    assert seen == [{"step": 1, "checkpoint": False}, {"step": 6, "checkpoint": True},
                    {"step": 10, "checkpoint": True}]
    history = json.loads(Path(manifest["paths"]["history"]).read_text())
    assert [h["step"] for h in history] == list(range(1, 11))
