"""`evaluate`: answer every question with Ray Data, score, and write report.json/.md/.png and the answers."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pedray import storage
from pedray.config.schema import EvalConfig
from pedray.console import say
from pedray.cluster import private
from pedray.eval.compare import pairs_table, read_answers, stage_pairs
from pedray.eval.generate import generate_dataset, generate_local
from pedray.eval.report import bar_chart, markdown, stage_table
from pedray.eval.score import annotate, headline, samples, score_rows
from pedray.eval.sets import load_sets
from pedray.workspace import corpus_dirs

REPORT = "report.json"


def settings_key(model_dir: str | Path, items: list[dict[str, str]], cfg: EvalConfig, identity: str = "") -> str:
    """What a report depends on: the model (its identity when known), the questions and the generation settings."""
    payload = {"model": identity or str(model_dir if storage.is_uri(model_dir) else Path(model_dir).resolve()), "max_new_tokens": cfg.max_new_tokens,
               "rouge": cfg.rouge, "questions": hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_report(out_dir: str | Path, key: str | None = None) -> dict[str, Any] | None:
    """An earlier report in `out_dir` (only when made with the same settings key, if one is given)."""
    report = storage.read_json(storage.join(out_dir, REPORT))
    if report is None:
        return None
    return report if key is None or report.get("key") == key else None


def evaluate(model_dir: str | Path, items: list[dict[str, str]], cfg: EvalConfig, out_dir: str | Path,
             identity: str = "") -> dict[str, Any]:
    """Answer `items` (see `pedray.eval.sets`) with the model, score them and write the report files.

    Needs Ray initialised. Returns the report (also in `out_dir/report.json`; `out_dir` may be a URI).
    """
    if not items:
        raise ValueError("nothing to evaluate: no questions")
    with storage.writable(out_dir) as out:
        return _evaluate(model_dir, items, cfg, out, identity, out_dir)


def in_driver(cfg: EvalConfig) -> bool:
    """Whether answers are generated in this process (`eval.where`). On a private local Ray the driver
    has the machine's CPUs to itself between stages, and a Ray Data actor pool would start its
    processes, import torch and load the model for every evaluation: 5 of the 7-8 s that each of the
    demo's evaluations took in a pool."""
    if cfg.where != "auto":
        return cfg.where == "driver"
    return cfg.actors == 0 and private()


def _evaluate(model_dir, items, cfg: EvalConfig, out: Path, identity: str, location) -> dict[str, Any]:
    started = time.time()
    if in_driver(cfg):
        rows = generate_local(items, model_dir, cfg.max_new_tokens, cfg.batch_size)
    else:
        rows = generate_dataset(items, model_dir, cfg.max_new_tokens, cfg.batch_size, cfg.actors)
    seconds = time.time() - started
    rows = sorted((annotate(row) for row in rows), key=lambda row: row["id"])
    with (out / "answers.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    scores = score_rows(rows, cfg.rouge)
    report = {
        "model": str(model_dir), "key": settings_key(model_dir, items, cfg, identity),
        "settings": {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "limit": cfg.limit,
                     "rouge": cfg.rouge},
        "generation": {"answers": len(rows), "seconds": round(seconds, 2), "answers_per_s": len(rows) / seconds,
                       "new_tokens": int(sum(row["new_tokens"] for row in rows))},
        "scores": scores, "headline": headline(scores), "samples": samples(rows),
        "files": {name: str(storage.join(location, name)) for name in ("answers.jsonl", "report.md", "report.png")},
    }
    (out / REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    bar_chart({Path(storage.display(model_dir)).name: report["headline"]}, out / "report.png", f"evaluation of {storage.display(model_dir)}")
    return report


def recipe_items(recipe, sets: list[str] | None = None) -> list[dict[str, str]]:
    """The questions a recipe evaluates on: its held-out split (eval.heldout) and eval.sets plus `sets`."""
    dirs = corpus_dirs(recipe) if recipe.eval.heldout else None
    return load_sets(list(recipe.eval.sets) + list(sets or []), dirs, recipe.eval.limit)


class ChainEvaluation:
    """train_all's evaluation: the base model first (`eval.base`), then each stage's model as it completes, on the same
    questions; `finish` writes the comparison.

    Reports go to `<output>/<stage>/eval/` (the base model's to `<output>/eval/base/`); one whose model
    and settings have not changed is reused. `finish` writes `<output>/eval/stages.md`, `stages.json` and `stages.png`.
    """

    def __init__(self, recipe, base: str | Path) -> None:
        self.recipe, self.output = recipe, storage.as_location(recipe.output_dir)
        self.items = recipe_items(recipe)
        self.reports: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, str | Path] = {}
        self.pending: Future | None = None
        if recipe.eval.base:
            self.model("base", base, f"base:{base}", storage.join(self.output, "eval", "base"))

    def model(self, name: str, model_dir: str | Path, identity: str, out: str | Path) -> dict[str, Any]:
        report = read_report(out, settings_key(model_dir, self.items, self.recipe.eval, identity))
        if report is None:
            say(f"[eval] {name}: {len(self.items)} questions")
            report = evaluate(model_dir, self.items, self.recipe.eval, out, identity)
        self.reports[name], self.folders[name] = report, out
        return report

    def stage(self, stage: str, manifest: dict[str, Any]) -> None:
        """Evaluate `stage`'s model: in the background where answers are generated in the driver (`in_driver`),
        so that the next stage starts meanwhile. Its first seconds (Ray Train's controller and worker
        starting and importing torch, transformers and DeepSpeed) leave a core idle; the answers are
        greedy, the same either way. One evaluation runs at a time; `finish` waits for the last."""
        self.wait()
        args = (stage, storage.as_location(manifest["paths"]["model"]), manifest["fingerprint"],
                storage.join(self.output, stage, "eval"))
        if not in_driver(self.recipe.eval):
            self.model(*args)
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pedray-eval")
        self.pending = pool.submit(self.model, *args)
        pool.shutdown(wait=False)  # the thread ends with its one task

    def wait(self) -> None:
        """Wait for a background evaluation (its error, if any, is raised here)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def finish(self) -> str:
        """Writes and returns the comparison: the stages' headline numbers, then each stage against the one
        before it answer by answer (`pedray.eval.compare`), which says whether a difference is beyond noise."""
        self.wait()
        pairs = stage_pairs({name: read_answers(storage.join(folder, "answers.jsonl"))
                             for name, folder in self.folders.items()}, rouge=self.recipe.eval.rouge)
        lines = [stage_table(self.reports)]
        if pairs:
            lines += ["", "Each stage against the one before, answer by answer on the same questions "
                      "(a difference whose 95% interval holds zero is within noise):", "", *pairs_table(pairs)]
        table = "\n".join(lines)
        with storage.writable(storage.join(self.output, "eval")) as out:
            (out / "stages.md").write_text(table + "\n", encoding="utf-8")
            (out / "stages.json").write_text(json.dumps(
                {"headline": {name: r["headline"] for name, r in self.reports.items()}, "paired": pairs},
                ensure_ascii=False, indent=2), encoding="utf-8")
            bar_chart({name: r["headline"] for name, r in self.reports.items()}, out / "stages.png",
                      "what each stage bought (same questions)")
        return table
