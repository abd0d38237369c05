"""train_all: chains cpt -> sft -> dfpo -> mouse, skipping completed stages and resuming an interrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pedray import storage
from pedray.cluster import ensure_ray, logs_dir
from pedray.config.schema import Recipe
from pedray.eval.run import ChainEvaluation
from pedray.markdown import table
from pedray.train.runner import read_manifest, run_stage, stage_fingerprint
from pedray.train.stages import STAGE_SPECS
from pedray.vocab import STAGES
from pedray.workspace import base_model_dir


def train_all(recipe: Recipe, stages: list[str] | None = None,
              after_stage: Callable[[str, dict[str, Any]], Any] | None = None) -> dict[str, dict[str, Any]]:
    """Run the enabled stages in order; each starts from the previous stage's exported model.

    With `stages`, only those run; a stage left out still hands its completed model on (so
    `--stages mouse` trains the experts over the dfpo model of an earlier run).

    A stage whose manifest says complete with the same fingerprint (settings and upstream) is
    skipped. `after_stage(stage, manifest)` is called once each stage is complete (run or skipped).
    An interrupted stage restarts under the same Ray Train run name, which makes Ray
    restore its latest checkpoint.
    """
    unknown = sorted(set(stages or []) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; allowed: {list(STAGES)}")
    base = base_model_dir(recipe)
    manifests: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        if stages and stage not in stages:
            continue  # not asked for: a completed earlier run of it still hands its model on (upstream_for)
        if not recipe.stage(stage).enabled:
            print(f"[{stage}] disabled in the recipe", flush=True)
            continue
        upstream, upstream_info = upstream_for(recipe, stage, base)
        stage_dir = storage.join(recipe.output_dir, stage)
        fingerprint = stage_fingerprint(recipe, stage, upstream_info["fingerprint"])
        manifest = read_manifest(stage_dir)
        if manifest and manifest.get("status") == "complete" and manifest.get("fingerprint") == fingerprint:
            print(f"[{stage}] complete already ({storage.display(stage_dir)}), skipping", flush=True)
        else:
            print(f"[{stage}] starting from {upstream_info['stage']} ({storage.display(upstream)})", flush=True)
            manifest = run_stage(recipe, stage, upstream, stage_dir, upstream_info)
            print(f"[{stage}] done: loss {manifest['first_loss']:.4f} -> {manifest['final_loss']:.4f} "
                  f"in {manifest['elapsed_s']}s; model in {storage.display(manifest['paths']['model'])}", flush=True)
        manifests[stage] = manifest
        if after_stage:
            after_stage(stage, manifest)
    return manifests


def upstream_for(recipe: Recipe, stage: str, base: str | Path | None = None) -> tuple[str | Path, dict[str, Any]]:
    """The model `stage` starts from, and its identity (its fingerprint goes into the stage's): the export
    of the last enabled, completed stage before it that hands a model on (a stage that exports an adapter
    does not), else the base model (`base`, default `base_model_dir(recipe)`). The chain, `pedray tune`
    and nothing else decide this."""
    if base is None:
        base = base_model_dir(recipe)
    upstream: str | Path = base
    info: dict[str, Any] = {"stage": "base", "path": str(base), "fingerprint": f"base:{base}"}
    for previous in STAGES[:STAGES.index(stage)]:
        if not recipe.stage(previous).enabled or STAGE_SPECS[previous].exports_adapter:
            continue
        manifest = read_manifest(storage.join(recipe.output_dir, previous))
        if manifest and manifest.get("status") == "complete":
            upstream = storage.as_location(manifest["paths"]["model"])
            info = {"stage": previous, "path": str(upstream), "fingerprint": manifest["fingerprint"]}
    return upstream, info


def summary_table(manifests: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: each stage's held-out loss before and after it, last training loss, steps, time."""
    rows = []
    for stage, manifest in manifests.items():
        held_out = manifest.get("held_out_loss") or []
        before = f"{held_out[0]['loss']:.4f}" if held_out else "-"
        after = f"{held_out[-1]['loss']:.4f}" if held_out else "-"
        rows.append([stage, before, after, f"{manifest['final_loss']:.4f}", manifest["steps"], manifest["elapsed_s"]])
    return table(["stage", "held-out loss before", "held-out loss after", "training loss (last)", "steps", "seconds"],
                 rows)


def run(recipe: Recipe, stages: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """What a user runs: join or start Ray, train the stages, print the comparison table."""
    ensure_ray()
    evaluation = None
    if recipe.eval.after_stages:
        evaluation = ChainEvaluation(recipe, base_model_dir(recipe))
    manifests = train_all(recipe, stages, after_stage=evaluation.stage if evaluation else None)
    if evaluation:
        evaluation.wait()  # the last stage's, in the background in the driver: its line before the tables
    print(summary_table(manifests), flush=True)
    if evaluation:
        print(f"\nEvaluation on the same questions (x100; reports in {storage.display(recipe.output_dir)}/<stage>/eval/):",
              flush=True)
        print(evaluation.finish(), flush=True)
    if logs_dir():
        print(f"\nRay's full logs (Train, Data, every worker's output): {logs_dir()}", flush=True)
    return manifests
