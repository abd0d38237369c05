"""Two models' answers to the same questions, compared answer by answer (paired).

A stage comparison of one seed's 100 held-out questions moves by about a point of ROUGE-L when nothing
real changed (docs/model-quality.md: the per-answer differences between two stages have a standard
deviation of 6-15 points). `paired` says how large a difference is against that: the mean of the
per-answer differences, its standard error and a 95% interval (normal approximation, fine from some
thirty answers on), how many answers got better, worse or stayed the same, and how many began or
stopped looping. It `reads as` higher or lower only when the interval leaves out zero; otherwise
"within noise": a model that scores 0.6 below another with an interval of ±1.5 is not shown to be worse.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Iterable

from pedray import storage
from pedray.eval.metrics import sample_scores

Row = dict[str, Any]
Z95 = 1.959964


def per_answer(rows: Iterable[Row], metric: str = "rougeL", rouge: str = "paper",
               set_name: str = "heldout") -> dict[str, Row]:
    """id -> {score, looping} for the open answers of one set (`metric` from `sample_scores`, x100)."""
    out = {}
    for row in rows:
        if row.get("set") != set_name or row.get("kind", "text") != "text":
            continue
        looping = (row.get("degeneration") or {}).get("looping")
        score = sample_scores(row["prediction"], row["reference"], rouge)[metric]
        out[row["id"]] = {"score": score, "looping": looping}
    return out


def paired(before: Iterable[Row], after: Iterable[Row], metric: str = "rougeL", rouge: str = "paper",
           set_name: str = "heldout") -> dict[str, Any] | None:
    """`after` minus `before` on the questions both answered (rows as in `answers.jsonl`); None under two."""
    a = per_answer(before, metric, rouge, set_name)
    b = per_answer(after, metric, rouge, set_name)
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    diffs = [b[key]["score"] - a[key]["score"] for key in common]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    low, high = mean - Z95 * se, mean + Z95 * se
    return {"metric": metric, "set": set_name, "answers": len(common),
            "before": statistics.fmean(a[k]["score"] for k in common),
            "after": statistics.fmean(b[k]["score"] for k in common), "mean": mean, "se": se, "ci95": [low, high],
            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs), "same": sum(d == 0 for d in diffs),
            "began_looping": sum(bool(b[k]["looping"]) and not a[k]["looping"] for k in common),
            "stopped_looping": sum(bool(a[k]["looping"]) and not b[k]["looping"] for k in common),
            "reads_as": "higher" if low > 0 else "lower" if high < 0 else "within noise"}


def read_answers(location) -> list[Row]:
    """The rows of an `answers.jsonl` (a path or URI); none where the file is gone."""
    text = storage.read_text(location)
    return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def stage_pairs(answers: dict[str, list[Row]], metric: str = "rougeL",
                rouge: str = "paper") -> dict[str, dict[str, Any]]:
    """Each stage's answers against the stage's before it (the order of `answers`), on held-out `metric`."""
    names = list(answers)
    out = {}
    for before, after in zip(names, names[1:]):
        result = paired(answers[before], answers[after], metric, rouge)
        if result is not None:
            out[f"{after} - {before}"] = result
    return out


def pairs_table(pairs: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per comparison."""
    if not pairs:
        return []
    lines = ["| change | answers | held-out ROUGE-L, after - before (paired) | 95% interval | better / worse / same "
             "| began / stopped looping | reads as |", "|---|---|---|---|---|---|---|"]
    for name, p in pairs.items():
        lines.append(f"| {name} | {p['answers']} | {p['mean']:+.2f} ± {p['se']:.2f} | {p['ci95'][0]:+.2f} to "
                     f"{p['ci95'][1]:+.2f} | {p['better']} / {p['worse']} / {p['same']} | {p['began_looping']} / "
                     f"{p['stopped_looping']} | {p['reads_as']} |")
    return lines
