"""Runs one stage as a Ray Train job and turns its result into a stage folder: model, manifest, curves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from pedray import storage
from pedray.cluster import LEAN_TRAIN_CALLBACKS, lean, own_tasks_hold_the_cpus, reap_dead_actors
from pedray.config.loader import to_dict
from pedray.config.schema import Recipe
from pedray.plots import saved_figure
from pedray.train.loop import EXPORT_DIR, STATE_FILE, local_checkpoints, train_loop
from pedray.train.reference import read_scored, score_reference
from pedray.train.stages import STAGE_SPECS
from pedray.workspace import corpus_dirs, stage_dataset

MANIFEST = "manifest.json"
RUN_KEYS = ("data", "model", "lora", "optim", "scaling", "stages")


def stage_fingerprint(recipe: Recipe, stage: str, upstream: str) -> str:
    """Identity of a stage run: the settings that shape its result, where it starts from, and the version
    of the stage's implementation (a Ray Train run under a reused name silently resumes its checkpoints)."""
    settings = {k: v for k, v in to_dict(recipe).items() if k in RUN_KEYS}
    settings["stages"] = settings["stages"][stage]
    settings["data"] = {k: v for k, v in settings["data"].items() if k != "replay_mb"}  # speed only
    settings["scaling"] = {k: v for k, v in settings["scaling"].items() if k != "share_worker"}  # the same
    identity = {"stage": stage, "settings": settings, "upstream": upstream}
    if STAGE_SPECS[stage].version != 1:  # version 1 hashes as before versions existed: old runs stay valid
        identity["version"] = STAGE_SPECS[stage].version
    blob = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_fingerprint(folders: list[Path]) -> str:
    """SHA-256 over the corpus files a stage reads (names and bytes)."""
    digest = hashlib.sha256()
    for folder in folders:
        for file in sorted(Path(folder).glob("*.jsonl")):
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def code_version() -> str:
    import pedray

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"pedray {pedray.__version__}" + (f" ({commit})" if commit else "")


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    """The stage folder's manifest (local or at a URI), or None when it has none."""
    return storage.read_json(storage.join(stage_dir, MANIFEST))


def complete_manifest(stage_dir: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The stage folder's manifest when the folder is complete and of this fingerprint (the same settings
    and upstream), else None."""
    manifest = read_manifest(stage_dir)
    if manifest and manifest.get("status") == "complete" and manifest.get("fingerprint") == fingerprint:
        return manifest
    return None


def _write_json(path: Path, obj: Any) -> None:
    storage.write_text(path, json.dumps(obj, ensure_ascii=False, indent=2))


def plot_history(history: list[dict[str, Any]], stage: str, out: Path) -> Path | None:
    """Loss (and, for dfpo, reward accuracy and margin) against step, as a PNG."""
    if not history:
        return None
    steps = [h["step"] for h in history]
    extras = [k for k in (f"{stage}/reward_accuracy", f"{stage}/reward_margin", f"{stage}/balance_loss")
              if k in history[0]]
    with saved_figure(out, nrows=1, ncols=1 + len(extras), figsize=(5 * (1 + len(extras)), 3.5),
                      squeeze=False) as (_, axes):
        for axis, key in zip(axes[0], [f"{stage}/loss", *extras]):
            axis.plot(steps, [h[key] for h in history], marker="o", markersize=3)
            axis.set_xlabel("step")
            axis.set_title(key)
            axis.grid(alpha=0.3)
    return out


def checkpoint_storage(recipe: Recipe) -> tuple[str, Any]:
    """(storage_path, pyarrow filesystem or None) for Ray Train's checkpoints.

    `recipe.storage` is a URI pyarrow understands (`s3://bucket/prefix`, `gs://...`; an S3-compatible
    server by query, e.g. `?endpoint_override=host:9000&scheme=http`), which every node reaches by
    itself; without it, `<output_dir>/ray` (on that storage when `output_dir` is a URI).
    """
    return storage.arrow(recipe.storage or storage.join(recipe.output_dir, "ray"))


def _trainer(recipe: Recipe, stage: str, upstream: Path, datasets: dict, run_name: str,
             callbacks: list | None = None):
    """One stage's Train run (`train_loop`), its data built here in the driver."""
    # held_out: the held-out rows themselves (a few dozen), not a dataset: a Ray Dataset would start a
    # split coordinator (a process) per stage and a streaming read at every evaluation.
    config = {"recipe": recipe, "stage": stage, "upstream": str(upstream), "held_out": datasets.get("eval")}
    train_datasets = {"train": datasets["train"]}
    if recipe.scaling.num_workers == 1:
        # One worker reads the stream itself (`stream.train_stream`): Ray Train would start a dataset
        # manager and a split coordinator, two processes per stage that import Ray Data and poll for
        # the whole stage, to split the stream into one part.
        config["train_data"], train_datasets = datasets["train"], {}
    return train_run(recipe, [stage], train_loop, config, run_name, train_datasets, callbacks)


def train_run(recipe: Recipe, stages: list[str], loop: Callable[[dict], None], config: dict[str, Any],
              run_name: str, datasets: dict | None = None, callbacks: list | None = None):
    """The TorchTrainer that runs `loop(config)` on the recipe's workers for `stages` (one, or several in
    turn: `pedray.train.group`), with pedray's run settings."""
    import ray.train
    from ray.data import DataContext
    from ray.train.torch import TorchTrainer

    scaling = recipe.scaling
    workers = ray.train.ScalingConfig(
        num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
        resources_per_worker=None if scaling.num_workers == 0 else {"CPU": scaling.cpus_per_worker,
                                                                    **({"GPU": 1} if scaling.use_gpu else {}),
                                                                    **scaling.resources})
    storage, filesystem = checkpoint_storage(recipe)
    run = ray.train.RunConfig(
        name=run_name, storage_path=storage, storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=max(recipe.stage(stage).max_failures for stage in stages)),
        # Each stage's final checkpoint ("finished": 1) outranks the intermediate ones, and Ray always keeps
        # the latest: every stage of a shared run keeps its final checkpoint, and one intermediate is kept.
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=len(stages) + 1, checkpoint_score_attribute="finished",
                                                     checkpoint_score_order="max"),
        callbacks=callbacks or None,
        # The console gets the stage's own progress lines; Train's INFO lines (every report, checkpoint and
        # worker-group step) stay in its log files under the Ray session's logs/train/.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        # Train patches `print` in its workers to log each line *and* echo it: every progress line, and
        # every library's print (DeepSpeed's op builds), reached the console twice.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    # PEDRAY_STATUS_DIR (driver side): workers write their pid and step there, for operators and tests.
    # data_context: the driver's Ray Data settings, for the stream a one-worker loop runs itself.
    # progress_reports: the metrics between checkpoints go to Ray Train only when a callback reads them (Tune's,
    # or one passed to run_stage). Nothing else does: Ray keeps a run's metrics only with a checkpoint, and
    # every window is in the stage's history anyway. Each report is a round trip to Train's synchronisation
    # actor and a hand-over to the controller, with the worker's compute threads waiting: the demo-sized
    # sft stage stepped 2.7% faster without them (median of three alternated runs, 40 steps, 2 AMX cores).
    # local_checkpoints: in local mode (no workers) Ray keeps a reported folder where it is, as the checkpoint.
    config = dict(config, status_dir=os.environ.get("PEDRAY_STATUS_DIR"), data_context=DataContext.get_current(),
                  progress_reports=bool(callbacks),
                  local_checkpoints=local_checkpoints(storage, run_name, filesystem is not None)
                  if scaling.num_workers == 0 else None)
    left_out = set(LEAN_TRAIN_CALLBACKS) if lean() else set()
    if not datasets:
        left_out.add("DatasetsCallback")  # it would start the manager without a dataset to manage
    trainer = TorchTrainer(loop, train_loop_config=config, scaling_config=workers, run_config=run,
                           datasets=datasets or {})
    if left_out:
        # Ray Train's helpers for shared clusters, left out on a private Ray (pedray.cluster.lean says why),
        # and the dataset split of a one-worker stage. tests/test_train.py checks that none of them
        # starts, should Ray rename what is wrapped here.
        defaults = trainer._create_default_callbacks
        trainer._create_default_callbacks = lambda: [
            callback for callback in defaults() if type(callback).__name__ not in left_out]
    return trainer


def stage_datasets(recipe: Recipe, stage: str, upstream: str | Path, stage_dir: str | Path, fingerprint: str,
                   score_here: bool | None = None) -> dict:
    """The stage's training stream ("train") and, when the corpus has a test split, its held-out rows
    ("eval": one batch of numpy columns).

    Reference scores (dfpo) are kept per stage fingerprint: another upstream model scores again;
    `score_here`: see `reference.score_reference`."""
    spec, settings = STAGE_SPECS[stage], recipe.stage(stage)
    datasets = {}
    for name, split in (("train", "train"), ("eval", "test")):
        if name == "eval" and settings.eval_rows == 0:
            continue
        try:
            dataset = stage_dataset(recipe, spec.data, upstream, split=split)
        except FileNotFoundError:
            if name == "train":
                raise
            continue  # no held-out split in this corpus
        if name == "eval":
            dataset = dataset.limit(settings.eval_rows)
        elif spec.needs_reference:
            # Score only the pairs the stage will consume: the loop cycles over exactly these.
            scaling = recipe.scaling
            dataset = dataset.limit(settings.max_steps * scaling.micro_batch_size * scaling.grad_accum
                                    * max(scaling.num_workers, 1))
        if spec.needs_reference:
            dataset = read_scored(score_reference(dataset, upstream, storage.join(stage_dir, f"reference-{split}-{fingerprint}"),
                                                  trust_remote_code=recipe.model.trust_remote_code, here=score_here))
        if name == "eval":
            # Computed once, here: the loop re-reads them at every evaluation, and a second live pipeline
            # would share (and on a small cluster starve) the CPUs the training stream needs.
            with own_tasks_hold_the_cpus():
                batches = dataset.iter_batches(batch_size=settings.eval_rows, batch_format="numpy")
                dataset = next(iter(batches), None)
            if dataset is None:  # a held-out split without rows
                continue
        datasets[name] = dataset
    return datasets


def run_stage(recipe: Recipe, stage: str, upstream: str | Path, stage_dir: str | Path,
              upstream_info: dict[str, Any], callbacks: list | None = None) -> dict:
    """Train `stage` from the `upstream` model (a folder or URI) in a Train run of its own; returns the
    manifest written to `stage_dir`.

    `stage_dir` may be a URI: the folder is then written locally and uploaded, and the manifest's
    paths are URIs. `callbacks`: Ray Train callbacks (e.g. Tune's report callback for a Tune trial).
    """
    if not storage.is_uri(stage_dir):
        stage_dir = Path(stage_dir).resolve()
    fingerprint = stage_fingerprint(recipe, stage, upstream_info.get("fingerprint", str(upstream)))
    started = time.time()
    reap_dead_actors()  # an earlier stage's actor process that hung on exit (pedray.cluster says why)
    datasets = stage_datasets(recipe, stage, upstream, stage_dir, fingerprint)
    result = _trainer(recipe, stage, upstream, datasets, f"{stage}-{fingerprint}", callbacks).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage} finished without a checkpoint; see the Ray Train logs under "
                           f"{checkpoint_storage(recipe)[0]}")
    with result.checkpoint.as_directory() as folder:
        return write_stage(recipe, stage, upstream, stage_dir, upstream_info, fingerprint, Path(folder),
                           result.checkpoint.path, started)


def write_stage(recipe: Recipe, stage: str, upstream: str | Path, stage_dir: str | Path, upstream_info: dict[str, Any],
                fingerprint: str, folder: Path, checkpoint: str, started: float) -> dict:
    """The stage folder from the stage's final checkpoint (`folder`, a local copy; persisted at
    `checkpoint`): the exported model, history, loss plot and, written last, the manifest (returned)."""
    for stale in (MANIFEST, "model"):  # nothing of an earlier run may pass for this one's
        storage.remove(storage.join(stage_dir, stale))
    with storage.writable(stage_dir) as local:
        state = json.loads((folder / STATE_FILE).read_text())
        shutil.copytree(folder / EXPORT_DIR, local / "model")
        history = state["history"]
        _write_json(local / "history.json", history)
        plot = plot_history(history, stage, local / "loss.png")
        final = history[-1] if history else {}
        first = history[0] if history else {}
        manifest = {
            "stage": stage, "status": "complete", "fingerprint": fingerprint,
            "upstream": upstream_info, "code_version": code_version(),
            "data_fingerprint": data_fingerprint(corpus_dirs(recipe)),
            "config": to_dict(recipe), "metrics": final,
            "first_loss": first.get(f"{stage}/loss"), "final_loss": final.get(f"{stage}/loss"),
            "steps": state["step"], "resumed_from_step": state.get("resumed_from"),
            "compiled_layers": state.get("compiled_layers", 0),
            "held_out_loss": state.get("eval", []),
            "paths": {"model": str(storage.join(stage_dir, "model")),
                      "history": str(storage.join(stage_dir, "history.json")),
                      "loss_plot": str(storage.join(stage_dir, "loss.png")) if plot else None,
                      "checkpoint": checkpoint,
                      "base_model": str(upstream) if STAGE_SPECS[stage].exports_adapter else None},
            "elapsed_s": round(time.time() - started, 1),
        }
    _write_json(storage.join(stage_dir, MANIFEST), manifest)  # last: a manifest means the whole folder is there
    return manifest
