"""Consecutive stages of a chain in one Ray Train run: one worker process builds each stage's data, trains
it and writes its stage folder, stage after stage.

Each Train run starts a controller and a worker process, and the worker imports torch, Ray Train,
transformers and DeepSpeed before its first step, then exits at the end: about 15 s of every stage's
start and end on 2 cores (measured in README, "Ray's fixed cost"). A chain whose stages share the run
pays that once. This holds where the worker can do the driver's part of a stage, which is on a private
local Ray with one worker (`shares_a_worker`): the worker then runs on the driver's machine, with its
working directory, environment and disk. With several workers, Ray Train's split of each stage's
stream is made when the run starts, so each stage is a run of its own, as it is on a cluster, where
the worker may run on another node (`runner.run_stage`).

Resuming: the run is named after its last stage (`<stage>-<fingerprint>`, the name that stage's own run
would have), and every checkpoint says which stage it is of. A chain stopped during sft resumes sft from
its checkpoint, whether the rerun starts at cpt (cpt complete: skipped) or is `--stages sft`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pedray.cluster import compute_thread, private, reap_dead_actors
from pedray.config.schema import Recipe
from pedray.train.runner import complete_manifest


@dataclass(frozen=True)
class Planned:
    """A stage to train: where it starts from and where its folder goes."""

    stage: str
    upstream: str
    upstream_info: dict[str, Any]
    stage_dir: str
    fingerprint: str


def shares_a_worker(recipe: Recipe, callbacks: list | None = None) -> bool:
    """Whether a chain's consecutive stages run in one Train run (above): one worker on a private Ray,
    not a Tune trial (which reports one stage's results through its callbacks), and not turned off
    (`scaling.share_worker`)."""
    return recipe.scaling.share_worker and recipe.scaling.num_workers == 1 and not callbacks and private()


def run_group(recipe: Recipe, plan: list[Planned], done: Callable[[Planned, dict[str, Any]], None],
              poll_s: float = 0.5) -> dict[str, dict[str, Any]]:
    """Train `plan`'s stages in one Train run (`group_loop`); `done(planned, manifest)` is called in the
    driver as each stage's folder is complete (while the next one trains). Returns the manifests."""
    from pedray.train.runner import train_run

    reap_dead_actors()  # an earlier run's actor process that hung on exit (pedray.cluster says why)
    config = {"recipe": recipe, "plan": plan, "started": time.time()}
    last = plan[-1]
    trainer = train_run(recipe, [p.stage for p in plan], group_loop, config, f"{last.stage}-{last.fingerprint}")
    manifests: dict[str, dict[str, Any]] = {}
    finished = threading.Event()
    failed: list[BaseException] = []

    def watch() -> None:
        try:
            for planned in plan:
                while (manifest := complete_manifest(planned.stage_dir, planned.fingerprint)) is None:
                    if finished.is_set():
                        return
                    time.sleep(poll_s)
                manifests[planned.stage] = manifest
                done(planned, manifest)
        except BaseException as error:  # `done`'s (an evaluation's): raised in the driver's thread below
            failed.append(error)

    watcher = threading.Thread(target=watch, name="pedray-stages", daemon=True)
    watcher.start()
    try:
        trainer.fit()
    finally:
        finished.set()  # the watcher takes the folders complete by now, then stops
        watcher.join()
    if failed:
        raise failed[0]
    missing = [p.stage for p in plan if p.stage not in manifests]
    if missing:
        raise RuntimeError(f"stage(s) {missing} finished without a stage folder; see Ray's logs")
    return manifests


def group_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point of a chain's run: each planned stage not complete yet, in order, in this process."""
    import ray.train
    from ray.data import DataContext

    from pedray.train.engine import process_group
    from pedray.train.loop import StageLoop, quiet_known_noise
    from pedray.train.runner import stage_datasets, write_stage

    recipe: Recipe = config["recipe"]
    DataContext._set_current(config["data_context"])
    restored = ray.train.get_checkpoint()  # the run's latest: of the first stage left, or of one before it
    started = config["started"]
    compute_thread()  # before the first torch op: its OpenMP team inherits the policy
    with process_group(recipe.scaling.use_gpu):
        quiet_known_noise()
        for planned in config["plan"]:
            if complete_manifest(planned.stage_dir, planned.fingerprint) is not None:
                continue  # done before a restart of this run
            datasets = stage_datasets(recipe, planned.stage, planned.upstream, planned.stage_dir,
                                      planned.fingerprint, score_here=True)

            def saved(folder: Path, planned: Planned = planned, began: float = started) -> None:
                write_stage(recipe, planned.stage, planned.upstream, planned.stage_dir, planned.upstream_info,
                            planned.fingerprint, folder, ray.train.get_checkpoint().path, began)

            loop = StageLoop({"recipe": recipe, "stage": planned.stage, "upstream": planned.upstream,
                              "status_dir": config.get("status_dir"), "held_out": datasets.get("eval"),
                              "train_data": datasets["train"], "checkpoint": restored, "saved": saved,
                              "progress_reports": config["progress_reports"]})
            loop.run()
            loop.close()
            restored, started = None, time.time()  # every later stage starts fresh, and its clock now
