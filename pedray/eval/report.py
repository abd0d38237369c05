"""Evaluation reports: Markdown tables per set, a bar chart, and the stage-by-stage comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pedray.eval.metrics import METRICS
from pedray.markdown import table

_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "gleu": "GLEU",
          "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "distinct1": "Distinct-1",
          "distinct2": "Distinct-2"}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines, scores with two decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else v for v in row] for row in rows]
    return table(header, cells).split("\n")


def _text_rows(entry: dict[str, Any]) -> list[list[Any]]:
    parts = {"all": entry["overall"], **entry.get("by_task", {})}
    return [[name] + [s[m] for m in METRICS] + [s["samples"], s["empty_predictions"]] for name, s in parts.items()]


def _objective_rows(entry: dict[str, Any]) -> list[list[Any]]:
    parts = {"all": entry["overall"], **{f"{k} answer" if k == "single" else f"{k} answers": v
                                        for k, v in entry.get("by_answers", {}).items()},
             **entry.get("by_group", {})}
    return [[name, s["accuracy"], s["correct"], s["samples"], s["unparseable"]] for name, s in parts.items()]


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown: generation facts, then one table per set."""
    gen = report["generation"]
    lines = [f"# Evaluation of {report['model']}", "",
             f"{gen['answers']} answers in {gen['seconds']:.1f} s ({gen['answers_per_s']:.2f} answers/s, "
             f"{gen['new_tokens']} new tokens), greedy, at most {report['settings']['max_new_tokens']} new tokens.",
             "Scores x100. Empty predictions score zero on every text metric; unparseable objective answers "
             "count as wrong."]
    for name, entry in report["scores"].items():
        lines += ["", f"## {name}", ""]
        if entry["kind"] == "text":
            lines += _table(["part"] + [_NAMES[m] for m in METRICS] + ["samples", "empty"], _text_rows(entry))
        else:
            lines += _table(["part", "accuracy", "correct", "samples", "unparseable"], _objective_rows(entry))
    return "\n".join(lines) + "\n"


def bar_chart(groups: dict[str, dict[str, float]], out: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per series (a model or a stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(groups)
    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) * max(len(series), 1) * 0.6), 4))
    for index, name in enumerate(series):
        xs = [i + index * width for i in range(len(metrics))]
        ax.bar(xs, [groups[name].get(m, 0.0) for m in metrics], width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("score (x100)")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def stage_table(reports: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per evaluated stage, the headline numbers of the same sets as columns."""
    columns = list(dict.fromkeys(k for report in reports.values() for k in report["headline"]))
    rows = [[stage] + [report["headline"].get(c, "-") for c in columns] for stage, report in reports.items()]
    return "\n".join(_table(["stage"] + columns, rows))
