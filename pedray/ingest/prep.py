"""`pedray prep`: normalise input files into records, a rejects file and a summary."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

from pedray.corpus.generate import split_of
from pedray.ingest import layout as by_meaning
from pedray.ingest.normalize import Deduplicator
from pedray.ingest.readers import Skipped, columns_of, read_path


class _Writers:
    """One open JSONL file per kind and split, opened on first use."""

    def __init__(self, out: Path) -> None:
        self.out, self.handles = out, {}

    def write(self, name: str, record: dict[str, Any]) -> None:
        if name not in self.handles:
            self.handles[name] = (self.out / name).open("w", encoding="utf-8")
        self.handles[name].write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def prep(inputs: Iterable[str | Path], out: str | Path, task: str | None = None, holdout: float = 0.0,
         seed: int = 0, near_duplicate_threshold: float = 0.9, layout: dict[str, str] | None = None) -> dict[str, Any]:
    """Read every input, keep valid unique records, reject the rest with file, place and reason.

    Writes `{kind}_{split}.jsonl`, `rejects.jsonl` and `summary.json` to `out`; returns the summary,
    whose `files` gives kept, rejected and the reasons per file, `skipped` the dataset_info entries
    passed over, and `empty_files` the inputs none of whose records was kept. A file that cannot be
    read at all raises `InputError` before anything of it is counted; a record never stops the run.
    `layout` maps roles to column names (`--columns`) for files whose columns are not recognised.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dedup = Deduplicator(threshold=near_duplicate_threshold)
    writers = _Writers(out)
    summary: dict[str, Any] = {"read": 0, "kept": 0, "rejected": 0, "rejected_by_reason": Counter(),
                               "kept_by_task": Counter(), "kept_by_source": Counter(), "kept_by_kind": Counter(),
                               "files": {}, "skipped": []}
    per_file: dict[str, dict[str, Any]] = defaultdict(lambda: {"kept": 0, "rejected": 0, "reasons": Counter()})

    def count(source: str, outcome: str, reason: str | None = None) -> None:
        per_file[source][outcome] += 1
        if reason:
            per_file[source]["reasons"][_reason_kind(reason)] += 1

    try:
        with (out / "rejects.jsonl").open("w", encoding="utf-8") as rejects:
            for given in inputs:
                if Path(given).is_file():
                    per_file[str(given)]  # listed even when it yields nothing at all
                for source, where, record, reason in read_path(given, task, layout=layout):
                    if isinstance(reason, Skipped):
                        summary["skipped"].append({"file": source, "entry": where, "reason": str(reason)})
                        continue
                    summary["read"] += 1
                    if record is not None:
                        reason = _keep(record, dedup, writers, seed, holdout)
                    if reason is not None:
                        rejects.write(_json_line({"file": str(source), "where": where, "reason": reason}))
                        summary["rejected"] += 1
                        summary["rejected_by_reason"][_reason_kind(reason)] += 1
                        count(str(source), "rejected", reason)
                        continue
                    summary["kept"] += 1
                    for key in ("task", "source", "kind"):
                        summary[f"kept_by_{key}"][record[key]] += 1
                    count(str(source), "kept")
    finally:
        writers.close()
    summary["files"] = {name: dict(c, reasons=dict(c["reasons"])) for name, c in per_file.items()}
    summary["empty_files"] = sorted(name for name, c in per_file.items() if c["kept"] == 0)
    summary = {k: dict(v) if isinstance(v, Counter) else v for k, v in summary.items()}
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary


def _keep(record: dict[str, Any], dedup: Deduplicator, writers: _Writers, seed: int, holdout: float) -> str | None:
    """Write a new record to its kind and split; the reason instead when it is a duplicate or cannot be written."""
    try:
        reason = dedup.check(record)
        if reason is None:
            split = "train" if record["kind"] == "text" else split_of(record["id"], seed, holdout)
            writers.write(f"{record['kind']}_{split}.jsonl", record)
        return reason
    except Exception as err:  # one record never stops the run
        return f"cannot write record ({type(err).__name__}: {err})"


def _json_line(obj: dict[str, Any]) -> str:
    """Readable JSON, escaped only where the text cannot be written as UTF-8 (a lone surrogate in a key)."""
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj)
    return line + "\n"


def _reason_kind(reason: str) -> str:
    """A reason without its per-record detail (`bad JSON: Expecting value` -> counted as itself; quoted keys cut)."""
    return reason.split(" (")[0] if len(reason) > 80 else reason


def inspect(path: str | Path, task: str | None = None, layout: dict[str, str] | None = None,
            rows: int = 3) -> dict[str, Any]:
    """What `prep` would make of a file: the columns it sees, the role each plays, the first records."""
    path = Path(path)
    columns = columns_of(path)
    items = list(islice(read_path(path, task, layout=layout), rows))
    return {"file": str(path), "columns": columns,
            "roles": by_meaning.describe(by_meaning.resolve(columns, layout)) if columns else "-",
            "first": [{"where": where, "reason": reason} if record is None else
                      {"where": where, "kind": record["kind"], "task": record["task"], "group": record["group"],
                       "messages": record["messages"], "text": record["text"][:200],
                       "chosen": record["chosen"][:200], "rejected": record["rejected"][:200]}
                      for _, where, record, reason in items]}
