"""Ray Tune sweeps over recipe keys (by default the number of MoUSE experts), each trial a real stage run.

Every trial is a function that builds the stage's TorchTrainer (Ray Train V2) with Tune's report
callback, so each held-out evaluation reaches ASHA, which stops the trials that trail. The space's
keys are the recipe's dotted override names, so the best trial is written back as overrides
(`best.yaml`) that `jobs/train_all.py --tuned` applies.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import yaml

from pedray import storage
from pedray.config.loader import ConfigError, load_recipe, merge, parse_overrides, to_dict
from pedray.config.schema import Recipe
from pedray.markdown import table
from pedray.plots import saved_figure
from pedray.train.chain import upstream_for
from pedray.train.runner import run_stage

BEST_FILE = "best.yaml"
DATA_CPUS = 1.0  # left free for each trial's Ray Data pipeline


def trial_overrides(recipe: Recipe) -> list[dict[str, Any]]:
    """Every combination of the grid, as {dotted key: value}."""
    keys = list(recipe.tune.space)
    return [dict(zip(keys, values)) for values in itertools.product(*(recipe.tune.space[k] for k in keys))]


def trial_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items())


def trial_recipe(base: dict[str, Any], overrides: dict[str, Any], stage: str, eval_every: int,
                 out: str | Path) -> Recipe:
    """The recipe of one trial: the grid point, held-out evaluation every `eval_every` steps (each one a
    report ASHA sees), and its own output folder. Raises ConfigError naming a bad key or value."""
    extra = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    extra += [f"stages.{stage}.log_every={eval_every}", f"stages.{stage}.checkpoint_every={eval_every}",
              f"output_dir={out}"]
    if not base["scaling"]["num_workers"]:
        # Local mode runs the loop inside the Tune trial, where Ray Train's context is unavailable: one worker.
        extra.append("scaling.num_workers=1")
    return load_recipe(None, merge(base, parse_overrides(extra)))


def concurrency(recipe: Recipe, cpus: float) -> int:
    """Trials that fit at once: each needs its workers' CPUs plus one whole CPU for its Ray Data pipeline.

    Ray Data splits what Train has not reserved between running pipelines in whole CPUs; a pipeline
    whose share rounds down to zero waits forever, with no error.
    """
    if recipe.tune.max_concurrent:
        return recipe.tune.max_concurrent
    scaling = recipe.scaling
    per_trial = max(scaling.num_workers, 1) * scaling.cpus_per_worker + DATA_CPUS
    return max(1, math.floor(cpus / per_trial))


def _run_trial(config: dict[str, Any]) -> None:
    """One Tune trial: a full stage run whose held-out evaluations are reported to Tune."""
    import ray
    from ray.tune.integration.ray_train import TuneReportCallback

    ray.data.DataContext.get_current().enable_progress_bars = False
    setup = config["setup"]
    overrides = {key: value for key, value in config.items() if key != "setup"}
    out = storage.join(setup["root"], "trials", trial_name(overrides))
    recipe = trial_recipe(setup["recipe"], overrides, setup["stage"], setup["eval_every"], out)
    run_stage(recipe, setup["stage"], storage.as_location(setup["upstream"]), storage.join(out, setup["stage"]),
              {"stage": "tune", "fingerprint": setup["upstream"]}, callbacks=[TuneReportCallback()])


def sweep(recipe: Recipe, upstream: str | Path | None = None) -> dict[str, Any]:
    """Run the grid in `recipe.tune` with ASHA on the stage's held-out loss; write results, plot and best.yaml."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    settings, stage = recipe.tune, recipe.tune.stage
    metric = f"{stage}/eval_loss"
    if recipe.stage(stage).eval_rows == 0:
        raise ValueError(f"tune ranks trials by held-out loss: stages.{stage}.eval_rows must be > 0")
    root = _absolute(storage.join(recipe.output_dir, "tune", stage))
    base = to_dict(recipe)
    grid = trial_overrides(recipe)
    for overrides in grid:  # every grid point must make a valid recipe before anything starts
        trial_recipe(base, overrides, stage, settings.eval_every, root)
    upstream = _absolute(upstream or upstream_for(recipe, stage)[0])
    setup = {"recipe": base, "stage": stage, "eval_every": settings.eval_every, "root": str(root),
             "upstream": str(upstream)}
    space = {key: tune.grid_search(values) for key, values in settings.space.items()}
    steps = recipe.stage(stage).max_steps
    # max_t one past the last evaluation: at max_t ASHA stops a trial, which would kill a finished trial
    # between its final report and the export of its adapter.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=math.ceil(steps / settings.eval_every) + 1,
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
    trials = concurrency(recipe, ray.cluster_resources().get("CPU", 1.0))
    print(f"[tune] {len(grid)} trials of {stage} from {storage.display(upstream)}, {trials} at a time, ASHA on {metric}",
          flush=True)
    ray_path, filesystem = storage.arrow(storage.join(root, "ray"))
    tuner = tune.Tuner(
        # The trial function only drives its Train run: no CPU (even 0.01 would leave less than the whole
        # CPU Ray Data's tasks need beside the workers), a token of memory since Tune wants a non-empty bundle.
        tune.with_resources(_run_trial, {"cpu": 0, "memory": 2**20}),
        param_space={"setup": setup, **space},
        tune_config=tune.TuneConfig(metric=metric, mode="min", scheduler=scheduler, max_concurrent_trials=trials,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(name="sweep", storage_path=ray_path, storage_filesystem=filesystem, verbose=0))
    grid_result = tuner.fit()
    return report(grid_result, settings.space, metric, root, trials)


def _absolute(location: str | Path) -> str | Path:
    return location if storage.is_uri(location) else Path(location).resolve()


def report(grid_result, space: dict[str, list], metric: str, root: str | Path, concurrent: int) -> dict[str, Any]:
    """Results table (Markdown), results.json, a held-out loss plot and the best trial's overrides."""
    rows = []
    for result in grid_result:
        history = result.metrics_dataframe
        curve = ([] if history is None or metric not in history
                 else [(int(s), float(v)) for s, v in zip(history["step"], history[metric]) if v == v])
        overrides = {key: result.config[key] for key in space}
        rows.append({"trial": trial_name(overrides), "overrides": overrides, "curve": curve,
                     "final_loss": curve[-1][1] if curve else None, "best_loss": min((v for _, v in curve), default=None),
                     "evaluations": len(curve), "error": str(result.error) if result.error else None})
    finished = [row for row in rows if row["best_loss"] is not None]
    if not finished:
        raise RuntimeError(f"no trial reported a held-out loss; see {storage.display(storage.join(root, 'ray'))}")
    deepest = max(row["evaluations"] for row in finished)
    for row in rows:
        row["stopped_early"] = row["error"] is None and 0 < row["evaluations"] < deepest
    best = min((row for row in finished if row["evaluations"] == deepest), key=lambda row: row["final_loss"])
    summary = {"metric": metric, "concurrent_trials": concurrent, "trials": rows, "best": best["overrides"],
               "best_loss": best["final_loss"], "best_file": str(storage.join(root, BEST_FILE))}
    with storage.writable(root) as out:
        (out / BEST_FILE).write_text(yaml.safe_dump(best["overrides"], allow_unicode=True))
        (out / "results.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
        _plot(rows, metric, out / "sweep.png")
    summary["table"] = results_table(rows, metric)
    summary["plot"] = str(storage.join(root, "sweep.png"))
    return summary


def results_table(rows: list[dict[str, Any]], metric: str) -> str:
    cells = []
    for row in sorted(rows, key=lambda r: (r["final_loss"] is None, r["final_loss"] or 0.0)):
        outcome = "error" if row["error"] else ("stopped by ASHA" if row["stopped_early"] else "completed")
        last = f"{row['final_loss']:.4f}" if row["final_loss"] is not None else "-"
        best = f"{row['best_loss']:.4f}" if row["best_loss"] is not None else "-"
        cells.append([row["trial"], last, best, row["evaluations"], outcome])
    return table(["trial", f"{metric} (last)", "best", "evaluations", "outcome"], cells)


def _plot(rows: list[dict[str, Any]], metric: str, out: Path) -> Path:
    with saved_figure(out, figsize=(6, 4)) as (_, axis):
        for row in rows:
            if row["curve"]:
                axis.plot(*zip(*row["curve"]), marker="o", markersize=3, label=row["trial"])
        axis.set_xlabel("step")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return out


def tuned_overrides(path: str | Path) -> list[str]:
    """The dotted overrides in a best.yaml written by `sweep` (for train_all --tuned)."""
    text = storage.read_text(path)
    if text is None:
        raise ConfigError(f"tuned settings not found: {path} (written by `python -m pedray tune` as {BEST_FILE})")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted recipe keys to values")
    return [f"{key}={json.dumps(value)}" for key, value in data.items()]
