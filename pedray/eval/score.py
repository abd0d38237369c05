"""Scores answered questions into a report: text metrics per set and task, accuracy per set and group."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

from pedray.eval.degeneration import JUDGED, answer_stats, mean_stats, same_answer
from pedray.eval.answers import extract_choices, extract_judgement
from pedray.eval.metrics import corpus_scores

Row = dict[str, Any]


def _grouped(rows: Iterable[Row], key: str) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row[key] or "-"].append(row)
    return dict(sorted(groups.items()))


def judge_objective(row: Row) -> tuple[bool, bool]:
    """(parsed, correct) of one choice or true/false answer; an unparseable answer is never correct."""
    if row["kind"] == "choice":
        picked = extract_choices(row["prediction"])
        return picked is not None, picked == row["reference"]
    verdict = extract_judgement(row["prediction"])
    return verdict is not None, verdict is not None and verdict == (row["reference"] == "对")


def accuracy(rows: list[Row]) -> dict[str, Any]:
    """Accuracy x100 over every question (unparseable answers count as wrong), with the counts."""
    judged = [judge_objective(row) for row in rows]
    correct = sum(1 for _, ok in judged if ok)
    return {"accuracy": 100 * correct / max(len(rows), 1), "correct": correct, "samples": len(rows),
            "unparseable": sum(1 for parsed, _ in judged if not parsed)}


def annotate(row: Row) -> Row:
    """Adds an open answer's degeneration figures (`degeneration`) to its row, once."""
    if row["kind"] == "text" and "degeneration" not in row:
        question = " ".join(m["content"] for m in json.loads(row["messages"]) if m["role"] == "user")
        stopped = row.get("stopped", True)  # rows from before `stopped` was recorded: assume it ended its turn
        row["degeneration"] = answer_stats(row["prediction"], row["reference"], bool(stopped), question)
    return row


def _text(rows: list[Row], rouge: str = "paper") -> dict[str, Any]:
    scores = corpus_scores([r["prediction"] for r in rows], [r["reference"] for r in rows], rouge)
    scores["degeneration"] = mean_stats([annotate(r)["degeneration"] for r in rows])
    scores["degeneration"]["same_answer"] = same_answer([r["prediction"] for r in rows], [r["messages"] for r in rows])
    return scores


def score_set(rows: list[Row], rouge: str = "paper") -> dict[str, Any]:
    """One set's scores: `overall`, and `by_task` (text) or `by_group` and `by_answers` (objective).
    `rouge` names the ROUGE implementation (`pedray.eval.metrics`)."""
    kinds = {row["kind"] for row in rows}
    if kinds == {"text"}:
        out = {"kind": "text", "overall": _text(rows, rouge)}
        by_task = _grouped(rows, "task")
        if len(by_task) > 1:
            out["by_task"] = {task: _text(part, rouge) for task, part in by_task.items()}
        return out
    if "text" in kinds:
        raise ValueError(f"a set mixes open and objective questions ({sorted(kinds)}); split the file")
    out = {"kind": "objective", "overall": accuracy(rows),
           "by_group": {group: accuracy(part) for group, part in _grouped(rows, "group").items()}}
    choice = [row for row in rows if row["kind"] == "choice"]
    if choice:
        out["by_answers"] = {label: accuracy(part) for label, part in
                             (("single", [r for r in choice if len(r["reference"]) == 1]),
                              ("multiple", [r for r in choice if len(r["reference"]) > 1])) if part}
    return out


def score_rows(rows: list[Row], rouge: str = "paper") -> dict[str, dict[str, Any]]:
    """Every set's scores, by set name."""
    return {name: score_set(part, rouge) for name, part in _grouped(rows, "set").items()}


def headline(scores: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The few numbers a stage comparison shows: BLEU-4 and ROUGE-L of text sets, accuracy of the others."""
    out: dict[str, float] = {}
    for name, entry in scores.items():
        overall = entry["overall"]
        if entry["kind"] == "text":
            out[f"{name} BLEU-4"] = overall["bleu4"]
            out[f"{name} ROUGE-L"] = overall["rougeL"]
            degeneration = overall["degeneration"]
            out[f"{name} looping %"] = 100 * degeneration["looping"]
            out[f"{name} item twice %"] = 100 * degeneration["repeated_item"]
            out[f"{name} same answer %"] = 100 * degeneration.get("same_answer", 0.0)
            out[f"{name} rep-4 x100"] = 100 * degeneration["rep4_char"]
            if degeneration["condition_correct"] is not None:
                out[f"{name} right condition %"] = 100 * degeneration["condition_correct"]
            for key in JUDGED:
                if degeneration.get(key) is not None:
                    out[f"{name} {key.replace('_', ' ')} %"] = 100 * degeneration[key]
        else:
            out[f"{name} accuracy"] = overall["accuracy"]
    return out


def samples(rows: list[Row], per_task: int = 2) -> dict[str, list[dict[str, Any]]]:
    """A few open answers per task for a person to read: the first `per_task` by id and the most
    repetitive one, each with its question, reference and degeneration figures."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task, part in _grouped([annotate(r) for r in rows if r["kind"] == "text"], "task").items():
        part = sorted(part, key=lambda r: r["id"])
        chosen = part[:per_task]
        worst = max(part, key=lambda r: r["degeneration"]["rep4_char"])
        if worst not in chosen:
            chosen.append(worst)
        out[task] = [{"id": r["id"], "question": json.loads(r["messages"])[-1]["content"], "reference": r["reference"],
                      "prediction": r["prediction"], "looping": r["degeneration"]["looping"],
                      "rep4_char": round(r["degeneration"]["rep4_char"], 3),
                      "truncated": r["degeneration"]["truncated"]} for r in chosen]
    return out
