"""`pedray prep`: normalise input files into records, a rejects file and a summary."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from pedray.corpus.generate import split_of
from pedray.ingest.normalize import Deduplicator
from pedray.ingest.readers import read_path


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
         seed: int = 0, near_duplicate_threshold: float = 0.9) -> dict[str, Any]:
    """Read every input, keep valid unique records, reject the rest with file, place and reason.

    Writes `{kind}_{split}.jsonl`, `rejects.jsonl` and `summary.json` to `out`; returns the summary.
    A file that cannot be read at all raises `InputError` before anything of it is counted.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dedup = Deduplicator(threshold=near_duplicate_threshold)
    writers = _Writers(out)
    summary: dict[str, Any] = {"read": 0, "kept": 0, "rejected": 0, "rejected_by_reason": Counter(),
                               "kept_by_task": Counter(), "kept_by_source": Counter(), "kept_by_kind": Counter(),
                               "files": {}}
    per_file: dict[str, Counter] = defaultdict(Counter)
    try:
        with (out / "rejects.jsonl").open("w", encoding="utf-8") as rejects:
            for given in inputs:
                for source, where, record, reason in read_path(given, task):
                    summary["read"] += 1
                    if record is not None:
                        reason = dedup.check(record)
                    if reason is not None:
                        rejects.write(json.dumps({"file": str(source), "where": where, "reason": reason},
                                                 ensure_ascii=False) + "\n")
                        summary["rejected"] += 1
                        summary["rejected_by_reason"][reason] += 1
                        per_file[str(source)]["rejected"] += 1
                        continue
                    split = "train" if record["kind"] == "text" else split_of(record["id"], seed, holdout)
                    writers.write(f"{record['kind']}_{split}.jsonl", record)
                    summary["kept"] += 1
                    for key in ("task", "source", "kind"):
                        summary[f"kept_by_{key}"][record[key]] += 1
                    per_file[str(source)]["kept"] += 1
    finally:
        writers.close()
    summary["files"] = {name: dict(counts) for name, counts in per_file.items()}
    summary = {k: dict(v) if isinstance(v, Counter) else v for k, v in summary.items()}
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary
