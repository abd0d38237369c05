"""The one Ray Train worker loop every stage runs (`StageLoop`): load, prepare, resume, step, log,
evaluate, checkpoint, export. What differs between stages is the stage's `StageSpec`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from pedray.cluster import KnownNoise, compute_thread
from pedray.config.schema import Recipe
from pedray.model.build import load_model, load_tokenizer
from pedray.train import compiled
from pedray.train.engine import Engine, deepspeed_config, process_group, resolve_precision, zero3_loading
from pedray.train.stages import STAGE_SPECS, StageSpec, collate_packed, collate_pairs
from pedray.train.stream import Prefetch, micro_batches, share, train_stream

STATE_FILE = "state.json"
EXPORT_DIR = "export"
LOCAL_CHECKPOINT = "local_checkpoint_"  # + step: a local-mode run's (not Ray's "checkpoint_<time>" names)


@dataclass
class LoopState:
    """What a checkpoint keeps of the loop (its `state.json`) besides the model and optimizer."""

    step: int = 0
    """Optimizer steps taken."""
    consumed: int = 0
    """Micro-batches drawn from the stream (skipped on resume)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The metrics of every logged step."""
    eval: list[dict[str, Any]] = field(default_factory=list)
    """Held-out losses: {"step", "loss"} before the first step, at each checkpoint and at the end."""
    resumed_from: int | None = None
    """The step this run resumed from (None for a fresh start)."""
    done: bool = False
    """Written only into the final checkpoint: a run restored from it has nothing left to train."""
    stage: str = ""
    """The stage the checkpoint is of (a chain's run holds several: `pedray.train.group`)."""
    compiled_layers: int = 0
    """Decoder layers this run trained compiled (`scaling.compile`); 0: the model ran eagerly."""

    @classmethod
    def restore(cls, checkpoint, stage: str) -> tuple["LoopState", Path | None]:
        """The state of the latest checkpoint and a local copy of it; a fresh state and None without one,
        or when it is another stage's."""
        if checkpoint is None:
            return cls(stage=stage), None
        # its state alone first: another stage's checkpoint is not copied ("" for one saved before stages were kept)
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_FILE}") as handle:
            saved = json.loads(handle.read().decode())
        if saved.get("stage", "") not in ("", stage):
            return cls(stage=stage), None
        folder = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="pedray-restore-")))
        known = {name: saved[name] for name in cls.__dataclass_fields__ if name in saved}
        return cls(**dict(known, resumed_from=saved["step"], stage=stage)), folder


class _Window:
    """Metrics accumulated between two log lines, reduced over every rank."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.tokens = 0
        self.waited = 0.0  # seconds the training thread waited for the data stream's next micro-batch
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
        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in keys] + [self.waited, self.count, self.tokens, float(due)],
                              dtype=torch.float64)
        ranks = 1
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
            ranks = dist.get_world_size()
        count = max(values[-3].item(), 1.0)
        out = {k: values[i].item() / count for i, k in enumerate(keys)}
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out["tokens_per_s"] = values[-2].item() / elapsed
        # the share of the window the ranks spent waiting for data (0: the stream keeps up with training)
        out["data_wait"] = values[-4].item() / (elapsed * ranks)
        return out, values[-1].item() > 0


def _status(folder: str | None, rank: int, step: int) -> None:
    """Heartbeat for operators and tests: <status_dir>/rank<r>.json (pid, step and Ray node)."""
    if folder:
        path = Path(folder) / f"rank{rank}.json"
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        path.write_text(json.dumps({"rank": rank, "pid": os.getpid(), "step": step, "node": node}))


def _load_model(upstream: str, recipe: Recipe, ds_config: dict[str, Any]):
    with zero3_loading(ds_config):
        model = load_model(upstream, trust_remote_code=recipe.model.trust_remote_code,
                           attn_implementation=recipe.model.attn_implementation)
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    # Where the weights came from (a URI stays a URI, not this node's cached copy): adapters record it as their base.
    model.config._name_or_path = upstream
    return model


def _checkpoint(engine, state: LoopState, metrics: dict[str, float], rank: int, keep_in: Path | None,
                export: Callable[[Path], None] | None = None, saved: Callable[[Path], None] | None = None) -> None:
    """Every rank saves its DeepSpeed share into one folder; Ray merges the ranks' folders. `saved(folder)`
    runs on rank 0 once the checkpoint is persisted (`ray.train.get_checkpoint()` is then this one).

    Ray copies the folder to storage, so it is removed after the report. In local mode (no workers) Ray
    copies nothing and keeps the reported folder itself as the checkpoint: `keep_in` is then where it is
    written and stays (`local_checkpoints`), and the earlier ones there, which Ray no longer holds, go.
    """
    if keep_in is None:
        folder = Path(tempfile.mkdtemp(prefix="pedray-ckpt-"))
    else:
        folder = keep_in / f"{LOCAL_CHECKPOINT}{state.step:06d}"
        shutil.rmtree(folder, ignore_errors=True)  # an earlier, stopped run's at the same step
        folder.mkdir(parents=True)
    try:
        engine.save(folder)
        if rank == 0:
            (folder / STATE_FILE).write_text(json.dumps(asdict(state), ensure_ascii=False))
            if export is not None:
                export(folder / EXPORT_DIR)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        if saved is not None and rank == 0:
            saved(folder)
    finally:
        if keep_in is None:
            shutil.rmtree(folder, ignore_errors=True)
    if keep_in is not None:
        for earlier in keep_in.glob(f"{LOCAL_CHECKPOINT}*"):
            if earlier != folder:
                shutil.rmtree(earlier, ignore_errors=True)


def local_checkpoints(storage_path: str, run_name: str, remote: bool) -> str:
    """Where a local-mode run (no workers) keeps its checkpoints: the run's folder under Ray's storage path,
    where Ray writes a worker's (a stage's manifest then points into the output, and each run keeps one);
    for remote storage, which local mode does not upload to, a folder of this machine's temporary
    directory named after the run, so that a rerun of the stage replaces what the last one left.

    Before, every local-mode checkpoint stayed in its own temporary folder for good (361 MB each for the
    small model with its optimizer state; 144 of them had piled up on one development machine).
    """
    root = Path(tempfile.gettempdir()) / "pedray-local-checkpoints" if remote else Path(storage_path)
    return str(root / run_name)


def _evaluate(engine, batches: Iterator[dict[str, np.ndarray]], spec: StageSpec, recipe: Recipe, stage: str,
              collate) -> float:
    """Mean loss over this worker's micro-batches of the held-out rows, averaged over every rank."""
    engine.engine.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            loss, _ = spec.loss(engine.forward, collate(batch), recipe, stage)
            totals += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    engine.engine.train()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


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


def quiet_known_noise() -> None:
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
    logging.getLogger("DeepSpeed").addFilter(KnownNoise())
    # DeepSpeed's ZeRO calls a torch.distributed function torch has deprecated: theirs to change.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*is deprecated", category=FutureWarning)


class StageLoop:
    """One stage on one Ray Train worker. Built from the loop config (the Recipe object, the stage, the
    upstream model folder, the status folder, the held-out rows): loads the model and
    tokenizer, resumes from the latest checkpoint; `run()` steps to `max_steps`, logging, evaluating and
    checkpointing on their schedules, then `finish()` evaluates once more and checkpoints the export."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.recipe: Recipe = config["recipe"]
        self.stage, self.upstream = config["stage"], config["upstream"]
        self.spec = STAGE_SPECS[self.stage]
        self.settings, scaling = self.recipe.stage(self.stage), self.recipe.scaling
        self.status_dir = config.get("status_dir")
        # progress metrics to Ray Train between checkpoints, for a callback that reads them (runner.train_run)
        self.progress_reports: bool = config["progress_reports"]
        context = ray.train.get_context()
        self.rank, world = context.get_world_rank(), context.get_world_size()
        # local mode: where the loop keeps its checkpoints (runner.train_run; None: Ray copies them to storage)
        self.keep_in = Path(config["local_checkpoints"]) if config.get("local_checkpoints") else None
        torch.set_num_threads(scaling.threads_per_worker or max(1, int(scaling.cpus_per_worker)))
        torch.manual_seed(self.recipe.data.seed + self.rank)
        self.device = ray.train.torch.get_device() if scaling.use_gpu else torch.device("cpu")

        # a chain's run (`pedray.train.group`) says which checkpoint, if any, is this stage's to resume
        checkpoint = config["checkpoint"] if "checkpoint" in config else ray.train.get_checkpoint()
        self.state, restored = LoopState.restore(checkpoint, self.stage)
        self.saved: Callable[[Path], None] | None = config.get("saved")
        """Called with the final checkpoint's folder on rank 0 (a chain's run writes the stage folder)."""
        replay = self.recipe.data.replay_mb << 20 if world == 1 else 0  # a rank's split differs by epoch
        self.prefetch = Prefetch(micro_batches(train_stream(config), scaling.micro_batch_size,
                                           skip=self.state.consumed, replay_bytes=replay))
        self.batches = iter(self.prefetch)
        ds_config = deepspeed_config(scaling, self.recipe.optim, self.settings, world)
        model = self.spec.prepare(_load_model(self.upstream, self.recipe, ds_config), self.recipe)
        self.state.compiled_layers = 0  # this run's (a resumed run may decide otherwise than the first)
        if compiled.wanted(scaling, resolve_precision(scaling)):
            self.state.compiled_layers = compiled.compile_layers(model)
            self._say(f"{self.state.compiled_layers} decoder layers compiled (scaling.compile); the first steps "
                      "include the compilation")
        self.engine = Engine(model, ds_config)
        self.tokenizer = load_tokenizer(self.upstream, self.recipe.model.trust_remote_code)
        if restored is not None:
            self.engine.load(restored)
            shutil.rmtree(restored, ignore_errors=True)
            self._say(f"resumed from step {self.state.step}")
        self.held_out: dict[str, np.ndarray] | None = config.get("held_out")
        self.world = world
        self.metrics: dict[str, Any] = self.state.history[-1] if self.state.history else {}
        """The latest logged metrics (with the latest held-out loss once evaluated): what goes to Ray Train."""

    def _say(self, line: str) -> None:
        if self.rank == 0:
            print(f"[{self.stage}] {line}", flush=True)

    def collate(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
        """Tensors on the device, and the batch's real (non-padding) tokens."""
        if self.spec.pairs:
            return collate_pairs(batch, self.device, self.tokenizer.pad_token_id)
        return collate_packed(batch, self.device)

    def held_out_loss(self) -> float | None:
        """The held-out loss now (None without a held-out split), kept in the state and printed."""
        if self.held_out is None:
            return None
        batches = share(self.held_out, self.recipe.scaling.micro_batch_size, self.rank, self.world)
        loss = _evaluate(self.engine, batches, self.spec, self.recipe, self.stage, lambda batch: self.collate(batch)[0])
        self.state.eval.append({"step": self.state.step, "loss": loss})
        self._say(f"step {self.state.step}  held-out loss {loss:.4f}")
        return loss

    def evaluate(self) -> None:
        loss = self.held_out_loss()
        if loss is not None:
            self.metrics = dict(self.metrics, **{f"{self.stage}/eval_loss": loss})

    def run(self) -> None:
        if self.state.step == 0 and not self.state.eval:
            self.held_out_loss()  # the starting point of the held-out curve
        window = _Window()
        progress = _Progress(self.stage, self.state.step, self.settings.max_steps)
        reported = float("-inf")  # when metrics last went to Ray Train (the first progress report goes at once)
        self.engine.engine.train()
        while self.state.step < self.settings.max_steps:
            asked = time.perf_counter()
            batch = next(self.batches)
            window.waited += time.perf_counter() - asked
            tensors, tokens = self.collate(batch)
            loss, step_metrics = self.spec.loss(self.engine.forward, tensors, self.recipe, self.stage)
            stepped = self.engine.backward_and_step(loss)
            window.add(step_metrics, tokens)
            self.state.consumed += 1
            if not stepped:  # gradient accumulation: not an optimizer step yet
                continue
            self.state.step += 1
            step, last = self.state.step, self.state.step >= self.settings.max_steps
            _status(self.status_dir, self.rank, step)
            due = False
            if step % self.settings.log_every == 0 or last:
                due = self.log(window, progress, self.progress_reports
                               and time.monotonic() - reported >= self.settings.report_every_s)
                window = _Window()
            if step % self.settings.checkpoint_every == 0 and not last:
                self.evaluate()
                _checkpoint(self.engine, self.state, dict(self.metrics, finished=0), self.rank, self.keep_in)
                reported = time.monotonic()
            elif due and not last:  # the last step reports with the final checkpoint
                ray.train.report(self.metrics)
                reported = time.monotonic()
        self.finish()

    def log(self, window: _Window, progress: _Progress, report_due: bool) -> bool:
        """Reduce the window over the ranks into the history and the console; whether any rank says a
        progress report to Ray Train is due."""
        reduced, due = window.reduce(report_due)
        self.metrics = {f"{self.stage}/{key}": value for key, value in reduced.items()}
        # time: the window's end on the wall clock (profilers line the history up with other processes)
        self.metrics.update({f"{self.stage}/lr": self.engine.lr, "step": self.state.step, "time": time.time()})
        self.state.history.append(self.metrics)
        if self.rank == 0:
            progress.show(self.state.step, self.metrics[f"{self.stage}/loss"], self.engine.lr,
                          self.metrics[f"{self.stage}/tokens_per_s"])
        return due

    def finish(self) -> None:
        """The final held-out loss (unless restored from the final checkpoint), then the final checkpoint
        with the exported model."""
        if not self.state.done:
            self.evaluate()
        if self.spec.gather is not None:
            self.spec.gather(self.engine.module)
        full_state = self.engine.full_state_dict()
        # "done" is a reserved result key in Ray Tune (it ends the trial at once): the metric is "finished".
        _checkpoint(self.engine, replace(self.state, done=True), dict(self.metrics, finished=1), self.rank,
                    self.keep_in, export=lambda folder: self.export(full_state, folder), saved=self.saved)

    def close(self) -> None:
        """Stop the stage's data stream (its Ray Data execution) and drop the engine, for the next stage
        in the same process."""
        self.prefetch.close()  # closes the stream under `self.batches`, drawn from or not
        del self.engine

    def export(self, full_state: dict[str, torch.Tensor], folder: Path) -> None:
        self.spec.export(self.engine.module, full_state, folder)
        self.tokenizer.save_pretrained(folder)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config`: recipe (the Recipe object), stage, upstream (model folder),
    status_dir, held_out (the held-out rows as numpy columns, or None)."""
    compute_thread()  # before the first torch op: its OpenMP team inherits the policy
    with process_group(config["recipe"].scaling.use_gpu):
        quiet_known_noise()
        StageLoop(config).run()
