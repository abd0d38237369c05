"""train_all: chains cpt -> sft -> dfpo -> mouse, skipping completed stages and resuming an interrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pedray import storage
from pedray.cluster import ensure_ray, logs_dir
from pedray.console import say
from pedray.config.schema import Recipe
from pedray.eval.run import ChainEvaluation
from pedray.markdown import table
from pedray.train.group import Planned, run_group, shares_a_worker
from pedray.train.runner import complete_manifest, read_manifest, run_stage, stage_fingerprint
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
    restore its latest checkpoint. Consecutive stages to train share one Train run where they can
    (`pedray.train.group`), else each has its own.
    """
    unknown = sorted(set(stages or []) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; allowed: {list(STAGES)}")
    manifests: dict[str, dict[str, Any]] = {}

    def done(planned: Planned, manifest: dict[str, Any]) -> None:
        say(f"[{planned.stage}] done: loss {manifest['first_loss']:.4f} -> {manifest['final_loss']:.4f} "
            f"in {manifest['elapsed_s']}s; model in {storage.display(manifest['paths']['model'])}")
        manifests[planned.stage] = manifest
        if after_stage:
            after_stage(planned.stage, manifest)

    def starting(planned: Planned) -> None:
        say(f"[{planned.stage}] starting from {planned.upstream_info['stage']} "
            f"({storage.display(planned.upstream)})")

    steps = plan(recipe, stages)
    shared = shares_a_worker(recipe)
    while steps:
        if isinstance(steps[0], tuple):  # complete already
            manifest, stage_dir = steps.pop(0)
            say(f"[{manifest['stage']}] complete already ({storage.display(stage_dir)}), skipping")
            manifests[manifest["stage"]] = manifest
            if after_stage:
                after_stage(manifest["stage"], manifest)
            continue
        group = [steps.pop(0)]
        while shared and steps and isinstance(steps[0], Planned):
            group.append(steps.pop(0))
        starting(group[0])
        if not shared:  # a group of one
            planned = group[0]
            done(planned, run_stage(recipe, planned.stage, planned.upstream, planned.stage_dir, planned.upstream_info))
            continue

        def then(planned: Planned, manifest: dict[str, Any], group: list[Planned] = group) -> None:
            done(planned, manifest)
            following = group.index(planned) + 1
            if following < len(group):
                starting(group[following])

        run_group(recipe, group, then)
    return manifests


def plan(recipe: Recipe, stages: list[str] | None = None) -> list[Planned | tuple[dict[str, Any], str | Path]]:
    """What `train_all` does, in order: for each stage, (its manifest, its folder) when it is complete
    already, else what to train (`Planned`). Decided before anything trains: a stage's
    fingerprint follows from the recipe and its upstream's fingerprint, not from trained weights."""
    base = base_model_dir(recipe)
    steps: list[Planned | tuple[dict[str, Any], str | Path]] = []
    pending: dict[str, Planned] = {}
    for stage in STAGES:
        if stages and stage not in stages:
            continue  # not asked for: a completed earlier run of it still hands its model on (upstream_for)
        if not recipe.stage(stage).enabled:
            say(f"[{stage}] disabled in the recipe")
            continue
        upstream, upstream_info = upstream_for(recipe, stage, base, pending)
        stage_dir = storage.join(recipe.output_dir, stage)
        if not storage.is_uri(stage_dir):
            stage_dir = Path(stage_dir).resolve()
        fingerprint = stage_fingerprint(recipe, stage, upstream_info["fingerprint"])
        manifest = complete_manifest(stage_dir, fingerprint)
        if manifest:
            steps.append((manifest, stage_dir))
        else:
            pending[stage] = Planned(stage, str(upstream), upstream_info, str(stage_dir), fingerprint)
            steps.append(pending[stage])
    return steps


def upstream_for(recipe: Recipe, stage: str, base: str | Path | None = None,
                 pending: dict[str, Planned] | None = None) -> tuple[str | Path, dict[str, Any]]:
    """The model `stage` starts from, and its identity (its fingerprint goes into the stage's): the export
    of the last enabled, completed stage before it that hands a model on (a stage that exports an adapter
    does not), else the base model (`base`, default `base_model_dir(recipe)`). A stage in `pending` counts
    as completed: it will be when `stage` starts. The chain, `pedray tune` and nothing else decide this."""
    if base is None:
        base = base_model_dir(recipe)
    upstream: str | Path = base
    info: dict[str, Any] = {"stage": "base", "path": str(base), "fingerprint": f"base:{base}"}
    for previous in STAGES[:STAGES.index(stage)]:
        if not recipe.stage(previous).enabled or STAGE_SPECS[previous].exports_adapter:
            continue
        if pending and previous in pending:
            upstream = storage.as_location(str(storage.join(pending[previous].stage_dir, "model")))
            info = {"stage": previous, "path": str(upstream), "fingerprint": pending[previous].fingerprint}
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
    say(summary_table(manifests))
    if evaluation:
        say(f"\nEvaluation on the same questions (x100; reports in {storage.display(recipe.output_dir)}/<stage>/eval/):")
        say(evaluation.finish())
    if logs_dir():
        say(f"\nRay's full logs (Train, Data, every worker's output): {logs_dir()}")
    return manifests
