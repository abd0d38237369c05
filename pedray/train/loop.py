"""The one Ray Train worker loop every stage runs: load, prepare, resume, step, log, checkpoint, export."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pedray.config.loader import build
from pedray.config.schema import Recipe

STATE_FILE = "state.json"
EXPORT_DIR = "export"


def _batches(shard, size: int, skip: int) -> Iterator[dict[str, np.ndarray]]:
    """Micro-batches over as many epochs as needed, skipping the first `skip` (already trained on)."""
    seen = 0
    while True:
        empty = True
        for batch in shard.iter_batches(batch_size=size, batch_format="numpy"):
            empty = False
            seen += 1
            if seen > skip:
                yield batch
        if empty:
            raise ValueError("the stage's dataset is empty")


class _Window:
    """Metrics accumulated between two log lines, reduced over every rank."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, Any], tokens: int) -> None:
        for key, value in metrics.items():
            if key != "tokens":
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1
        self.tokens += tokens

    def reduce(self, due: bool = False) -> tuple[dict[str, float], bool]:
        """The window's mean metrics and tokens/s over every rank, and whether any rank says a progress
        report is `due` (every rank must make the same number of `ray.train.report` calls)."""
        import torch.distributed as dist

        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in keys] + [self.count, self.tokens, float(due)],
                              dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
        count = max(values[-3].item(), 1.0)
        out = {k: values[i].item() / count for i, k in enumerate(keys)}
        elapsed = time.perf_counter() - self.started
        out["tokens_per_s"] = values[-2].item() / max(elapsed, 1e-9)
        return out, values[-1].item() > 0


def _status(folder: str | None, rank: int, step: int) -> None:
    """Heartbeat for operators and tests: <status_dir>/rank<r>.json (pid, step and Ray node)."""
    if folder:
        import ray

        path = Path(folder) / f"rank{rank}.json"
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        path.write_text(json.dumps({"rank": rank, "pid": os.getpid(), "step": step, "node": node}))


def _load_model(config: dict[str, Any], recipe: Recipe, ds_config: dict[str, Any]):
    from pedray.model.build import load_model
    from pedray.train.engine import zero3_loading

    with zero3_loading(ds_config):
        model = load_model(config["upstream"], trust_remote_code=recipe.model.trust_remote_code,
                           attn_implementation=recipe.model.attn_implementation)
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    # Where the weights came from (a URI stays a URI, not this node's cached copy): adapters record it as their base.
    model.config._name_or_path = config["upstream"]
    return model


def _checkpoint(engine, state: dict[str, Any], metrics: dict[str, float], rank: int, local: bool,
                export=None) -> None:
    """Every rank saves its DeepSpeed share into one folder; Ray merges the ranks' folders.

    Ray copies the folder to storage, so it is removed after the report; in local mode (no workers)
    Ray keeps the folder itself as the checkpoint, so it stays.
    """
    import ray.train

    folder = Path(tempfile.mkdtemp(prefix="pedray-ckpt-"))
    try:
        engine.save(folder)
        if rank == 0:
            (folder / STATE_FILE).write_text(json.dumps(state, ensure_ascii=False))
            if export is not None:
                export(folder / EXPORT_DIR)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    finally:
        if not local:
            shutil.rmtree(folder, ignore_errors=True)


class _Prefetch:
    """Pulls the first micro-batch in a thread, so the data pipeline starts while the model loads."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        import threading

        self.batches, self.first, self.error = batches, None, None
        self.thread = threading.Thread(target=self._pull, daemon=True)
        self.thread.start()

    def _pull(self) -> None:
        try:
            self.first = next(self.batches)
        except BaseException as err:  # re-raised in the training thread
            self.error = err

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        yield self.first
        yield from self.batches


def _evaluate(engine, shard, spec, recipe: Recipe, stage: str, collate) -> float:
    """Mean loss over this worker's share of the held-out rows, averaged over every rank."""
    import torch.distributed as dist

    engine.engine.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=recipe.scaling.micro_batch_size, batch_format="numpy"):
            loss, _ = spec.loss(engine.forward, collate(batch), recipe, stage)
            totals += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    engine.engine.train()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


def _restore(checkpoint) -> tuple[dict[str, Any], Path | None]:
    """Training state and a local copy of the latest checkpoint (None when starting fresh)."""
    if checkpoint is None:
        return {"step": 0, "consumed": 0, "history": [], "resumed_from": None}, None
    folder = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="pedray-restore-")))
    state = json.loads((folder / STATE_FILE).read_text())
    state["resumed_from"] = state["step"]
    return state, folder


class _Progress:
    """The stage's progress on the console: a line at every tenth of the run and at the end, with step/total,
    loss, learning rate, tokens/s and the time left (rank 0 prints; the history keeps every log_every step)."""

    def __init__(self, stage: str, start: int, total: int) -> None:
        self.stage, self.start, self.total = stage, start, total
        self.began, self.shown = time.monotonic(), start * 10 // max(total, 1)

    def show(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        tenth = step * 10 // max(self.total, 1)
        if tenth <= self.shown and step < self.total:
            return
        self.shown = tenth
        elapsed = time.monotonic() - self.began
        left = elapsed / max(step - self.start, 1) * (self.total - step)
        print(f"[{self.stage}] {100 * step // max(self.total, 1):3d}%  step {step}/{self.total}  loss {loss:.4f}  "
              f"lr {lr:.2e}  tok/s {tokens_per_s:,.0f}  left {int(left) // 60}m{int(left) % 60:02d}s", flush=True)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config`: recipe (mapping), stage, upstream (model folder), status_dir."""
    from pedray.train.engine import process_group

    with process_group(bool(config["recipe"].get("scaling", {}).get("use_gpu", False))):
        _train(config)


def _quiet_known_noise() -> None:
    """What a worker would print that is not a problem, configured away here so that it holds on any
    cluster (each for the reason given); real warnings stay."""
    import importlib.util
    import logging
    import warnings

    # Ray Train's worker context logs every report at INFO through a logger named after its file path,
    # not `ray.train`, so the run's LoggingConfig does not reach it and the root logger prints it. The
    # reports are in the controller's log files.
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
    from pedray.cluster import KnownNoise

    logging.getLogger("DeepSpeed").addFilter(KnownNoise())
    # DeepSpeed's ZeRO calls a torch.distributed function torch has deprecated: theirs to change.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*is deprecated", category=FutureWarning)


def _train(config: dict[str, Any]) -> None:
    import ray.train

    from pedray.model.build import load_tokenizer
    from pedray.train.engine import Engine, deepspeed_config
    from pedray.train.stages import STAGE_SPECS, collate_packed, collate_pairs

    _quiet_known_noise()
    recipe: Recipe = build(Recipe, config["recipe"], "<train loop config>")
    stage, spec = config["stage"], STAGE_SPECS[config["stage"]]
    settings, scaling = recipe.stage(config["stage"]), recipe.scaling
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    local = scaling.num_workers == 0
    torch.set_num_threads(scaling.threads_per_worker or max(1, int(scaling.cpus_per_worker)))
    torch.manual_seed(recipe.data.seed + rank)
    device = ray.train.torch.get_device() if scaling.use_gpu else torch.device("cpu")

    state, restored = _restore(ray.train.get_checkpoint())
    batches = iter(_Prefetch(_batches(ray.train.get_dataset_shard("train"), scaling.micro_batch_size,
                                      skip=state["consumed"])))
    ds_config = deepspeed_config(scaling, recipe.optim, settings, world)
    engine = Engine(spec.prepare(_load_model(config, recipe, ds_config), recipe), ds_config)
    tokenizer = load_tokenizer(config["upstream"], recipe.model.trust_remote_code)
    if restored is not None:
        engine.load(restored)
        shutil.rmtree(restored, ignore_errors=True)
        if rank == 0:
            print(f"[{stage}] resumed from step {state['step']}", flush=True)

    def export(folder: Path) -> None:
        spec.export(engine.module, full_state, folder)
        tokenizer.save_pretrained(folder)

    def collate(batch):
        if spec.pairs:
            return collate_pairs(batch, device, tokenizer.pad_token_id)
        return collate_packed(batch, device)

    held_out = ray.train.get_dataset_shard("eval") if config.get("eval") else None

    def evaluate(metrics: dict[str, Any]) -> dict[str, Any]:
        if held_out is not None:
            metrics = dict(metrics, **{f"{stage}/eval_loss": _evaluate(engine, held_out, spec, recipe, stage,
                                                                      lambda b: collate(b)[0])})
            state["eval"].append({"step": state["step"], "loss": metrics[f"{stage}/eval_loss"]})
            if rank == 0:
                print(f"[{stage}] step {state['step']}  held-out loss {metrics[f'{stage}/eval_loss']:.4f}", flush=True)
        return metrics

    state.setdefault("eval", [])
    if state["step"] == 0 and not state["eval"]:
        evaluate({})
    window, metrics = _Window(), (state["history"][-1] if state["history"] else {})
    progress = _Progress(stage, state["step"], settings.max_steps)
    reported = float("-inf")  # when metrics last went to Ray Train (the first progress report goes at once)
    engine.engine.train()
    while state["step"] < settings.max_steps:
        tensors, tokens = collate(next(batches))
        loss, step_metrics = spec.loss(engine.forward, tensors, recipe, stage)
        stepped = engine.backward_and_step(loss)
        window.add(step_metrics, tokens)
        state["consumed"] += 1
        if not stepped:
            continue
        state["step"] += 1
        _status(config.get("status_dir"), rank, state["step"])
        step, last = state["step"], state["step"] >= settings.max_steps
        due = False
        if step % settings.log_every == 0 or last:
            reduced, due = window.reduce(time.monotonic() - reported >= settings.report_every_s)
            metrics = {f"{stage}/{k}": v for k, v in reduced.items()}
            metrics.update({f"{stage}/lr": engine.lr, "step": step})
            state["history"].append(metrics)
            window = _Window()
            if rank == 0:
                progress.show(step, metrics[f"{stage}/loss"], engine.lr, metrics[f"{stage}/tokens_per_s"])
        if (step % settings.checkpoint_every == 0) and not last:
            metrics = evaluate(metrics)
            _checkpoint(engine, state, metrics, rank, local)
            reported = time.monotonic()
        elif due and not last:  # the last step reports with the final checkpoint
            ray.train.report(metrics)
            reported = time.monotonic()

    if state["step"] >= settings.max_steps and not state.get("done"):
        metrics = evaluate(metrics)
    if spec.gather is not None:
        spec.gather(engine.module)
    full_state = engine.full_state_dict()
    # "done" is a reserved result key in Ray Tune (it ends the trial at once): the metric is "finished".
    _checkpoint(engine, dict(state, done=True), dict(metrics, finished=1), rank, local, export=export)
