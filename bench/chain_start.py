"""The chain's fixed cost: its four stages in one shared Train run and worker (`scaling.share_worker`,
`pedray.train.group`) against a Train run per stage, side by side in one run (issue #20, item 4).

Each arm runs `jobs/train_all.py` as `make demo` does (a private Ray started by the job), with a few
steps per stage and the evaluation off, so that the time is the chain's start, stage changes and end
rather than its training. Arms alternate within each round, in a fresh output folder each. Per arm:
the job's wall time and each stage's time from its manifest (`elapsed_s`: for a stage of its own, from
the driver building its data to its manifest; in a shared run, from the end of the stage before). The
checks: the shared run is faster in every round, and every stage's held-out and training losses are
the same number in both arms (the same weights trained on the same rows).

    python bench/chain_start.py [--quick] [--rounds 2] [--config jobs/default.yaml] [key=value ...]

`--quick`: the tiny test recipe, cpt and sft only (two steps each, no held-out rows), one round: 112 s here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, cpu_kind, scratch  # noqa: E402  (first: this checkout's pedray, offline)

STEPS = ["stages.cpt.max_steps=10", "stages.sft.max_steps=10", "stages.dfpo.max_steps=5",
         "stages.mouse.max_steps=5", "stages.mouse.checkpoint_every=5", "stages.dfpo.checkpoint_every=5"]
QUICK = ["stages.cpt.max_steps=2", "stages.sft.max_steps=2", "stages.cpt.eval_rows=0", "stages.sft.eval_rows=0", "scaling.num_workers=1", "scaling.cpus_per_worker=1"]


def run_chain(config: str, out: Path, shared: bool, extra: list[str], stages: str | None) -> dict:
    """One job: wall seconds, exit status, and per stage its seconds and losses (from the manifests)."""
    command = [sys.executable, str(ROOT / "jobs" / "train_all.py"), "--config", config, "--output-dir", str(out),
               *(["--stages", stages] if stages else []), "eval.after_stages=false",
               f"scaling.share_worker={str(shared).lower()}", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    (out / "run.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    stage_rows = {}
    for manifest_file in sorted(out.glob("*/manifest.json")):
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        stage_rows[manifest["stage"]] = {"seconds": manifest["elapsed_s"], "final_loss": manifest["final_loss"],
                                         "held_out": [row["loss"] for row in manifest["held_out_loss"]]}
    return {"seconds": round(seconds, 1), "exit": done.returncode, "stages": stage_rows,
            "tail": "" if done.returncode == 0 else (done.stdout + done.stderr)[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny recipe, cpt and sft, one round (under two minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="default 2 (--quick: 1)")
    parser.add_argument("--config", default=None, help="recipe (default: jobs/default.yaml, --quick: jobs/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted recipe overrides")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    config = args.config or str(ROOT / "jobs" / ("tiny.yaml" if args.quick else "default.yaml"))
    extra = (QUICK if args.quick else STEPS) + list(args.overrides)
    stages = "cpt,sft" if args.quick else None
    base = scratch("chain-start-")
    runs: dict[str, list[dict]] = {"shared": [], "per_stage": []}
    for index in range(rounds):
        order = ("shared", "per_stage") if index % 2 == 0 else ("per_stage", "shared")  # neither always first
        for arm in order:
            run = run_chain(config, base / f"{arm}{index}", arm == "shared", extra, stages)
            runs[arm].append(run)
            print(f"round {index}: {arm:<9} {run['seconds']:6.1f} s  exit {run['exit']}  " + "  ".join(
                f"{stage} {row['seconds']}" for stage, row in run["stages"].items()), file=sys.stderr)
            if run["exit"]:
                print(run["tail"], file=sys.stderr)
    median = {arm: statistics.median(run["seconds"] for run in arm_runs) for arm, arm_runs in runs.items()}
    per_stage_median = {arm: {stage: statistics.median(run["stages"][stage]["seconds"] for run in arm_runs)
                              for stage in arm_runs[0]["stages"]} for arm, arm_runs in runs.items()}
    def losses(run: dict) -> dict:
        return {stage: (row["final_loss"], row["held_out"]) for stage, row in run["stages"].items()}

    same = all(losses(a) == losses(b) for a, b in zip(runs["shared"], runs["per_stage"]))
    faster = [b["seconds"] - a["seconds"] for a, b in zip(runs["shared"], runs["per_stage"])]
    results = {"config": config, "overrides": extra, "cpu": cpu_kind(), "rounds": rounds,
               "seconds_median": median, "stage_seconds_median": per_stage_median,
               "saved_s_per_round": [round(s, 1) for s in faster],
               "runs": {arm: [{k: v for k, v in run.items() if k != "tail"} for run in arm_runs]
                        for arm, arm_runs in runs.items()}}
    exits = [run["exit"] for arm_runs in runs.values() for run in arm_runs]
    checks = [
        {"name": "every job exits 0", "value": exits, "target": 0, "met": not any(exits)},
        {"name": "shared run faster than a run per stage, every round (s saved)", "value": results["saved_s_per_round"],
         "target": "> 0", "met": all(s > 0 for s in faster)},
        {"name": "same losses, stage by stage, in both arms", "value": same, "target": True,
         "met": same and all(run["stages"] for arm_runs in runs.values() for run in arm_runs)},
    ]
    print(json.dumps({"bench": "chain_start", "results": results, "checks": checks}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
