"""Evaluation reports: Markdown tables per set, a bar chart, and the stage-by-stage comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pedray.eval.degeneration import JUDGED
from pedray.eval.metrics import METRICS
from pedray.markdown import table
from pedray.plots import saved_figure

_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "gleu": "GLEU",
          "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "distinct1": "Distinct-1",
          "distinct2": "Distinct-2"}


ROUGE_NAMES = {"paper": "the `rouge` package, as the paper's code computes it (comparable with its table)",
               "rouge-chinese": "rouge-chinese (sentences split at 。！？; not comparable with the paper's ROUGE-L)"}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines, scores with two decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else v for v in row] for row in rows]
    return table(header, cells).split("\n")


def _text_rows(entry: dict[str, Any]) -> list[list[Any]]:
    parts = {"all": entry["overall"], **entry.get("by_task", {})}
    return [[name] + [s[m] for m in METRICS] + [s["samples"], s["empty_predictions"]] for name, s in parts.items()]


DEGENERATION = [("rep2_char", "rep-2"), ("rep3_char", "rep-3"), ("rep4_char", "rep-4"), ("rep2_word", "rep-2 (words)"),
                ("rep3_word", "rep-3 (words)"), ("rep4_word", "rep-4 (words)")]


def _degeneration_rows(entry: dict[str, Any]) -> list[list[Any]]:
    parts = {"all": entry["overall"], **entry.get("by_task", {})}
    rows = []
    for name, scores in parts.items():
        d = scores["degeneration"]
        right = "-" if d["condition_correct"] is None else f"{100 * d['condition_correct']:.0f}% of {d['condition_questions']}"
        wrong = ["-" if d.get(key) is None else f"{100 * d[key]:.0f}% of {d[count]}" for key, count in JUDGED.items()]
        rows.append([name] + [f"{d[key]:.3f}" for key, _ in DEGENERATION]
                    + [f"{100 * d['looping']:.0f}%", f"{100 * d['repeated_item']:.0f}%",
                       f"{100 * d.get('same_answer', 0.0):.0f}%", f"{100 * d['truncated']:.0f}%",
                       f"{d['length_ratio']:.2f}", right, *wrong])
    return rows


def _samples(samples: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["", "## Sample answers", "",
             "The first two answers of each task and its most repetitive one, as the model wrote them."]
    for task, picked in samples.items():
        lines += ["", f"### {task}"]
        for sample in picked:
            marks = [m for m, on in (("LOOPING", sample["looping"]), ("TRUNCATED", sample["truncated"])) if on]
            quote = lambda text: "\n".join("> " + line for line in text.split("\n"))  # noqa: E731
            lines += ["", f"**{sample['id']}** (rep-4 {sample['rep4_char']:.3f}{', ' + ', '.join(marks) if marks else ''})",
                      "", "Question:", "", quote(sample["question"]), "", "Reference:", "", quote(sample["reference"]),
                      "", "Answer:", "", quote(sample["prediction"] or "(empty)")]
    return lines


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
             "Scores x100. Empty (or whitespace-only) predictions score zero on every text metric; unparseable "
             "objective answers count as wrong.",
             f"ROUGE: {ROUGE_NAMES[report['settings'].get('rouge', 'rouge-chinese')]}."]
    for name, entry in report["scores"].items():
        lines += ["", f"## {name}", ""]
        if entry["kind"] == "text":
            lines += _table(["part"] + [_NAMES[m] for m in METRICS] + ["samples", "empty"], _text_rows(entry))
            lines += ["", "Degeneration: rep-n = 1 - distinct n-grams / n-grams (characters, then jieba words); "
                      "looping = some character 4-gram 3+ times; item twice = a list item said twice; "
                      "same answer = word for word the answer to another question too; "
                      "truncated = no end of turn within the budget; "
                      "length = answer / reference characters; right condition = names the question's condition "
                      "and no other; wrong step = has a test or treatment item of a condition that neither the "
                      "question nor the reference points to; wrong flag = likewise a warning sign; wrong system = "
                      "puts a condition in another body system than its own; wrong age = states another "
                      "patient age than the reference (judged where the reference states one); no warning = "
                      "no urgent advice where the reference gives it (\"请立即就医\", \"急诊\").", ""]
            lines += _table(["part"] + [name for _, name in DEGENERATION]
                            + ["looping", "item twice", "same answer", "truncated", "length", "right condition"]
                            + [key.replace("_", " ") for key in JUDGED],
                            _degeneration_rows(entry))
        else:
            lines += _table(["part", "accuracy", "correct", "samples", "unparseable"], _objective_rows(entry))
    if report.get("samples"):
        lines += _samples(report["samples"])
    return "\n".join(lines) + "\n"


def bar_chart(groups: dict[str, dict[str, float]], out: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per series (a model or a stage)."""
    series = list(groups)
    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    width = 0.8 / max(len(series), 1)
    with saved_figure(out, dpi=110, figsize=(max(6.0, 1.2 * len(metrics) * max(len(series), 1) * 0.6), 4)) as (_, ax):
        for index, name in enumerate(series):
            xs = [i + index * width for i in range(len(metrics))]
            ax.bar(xs, [groups[name].get(m, 0.0) for m in metrics], width, label=name)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(metrics))])
        ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("score (x100)")
        ax.set_title(title)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return out


def stage_table(reports: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per evaluated stage, the headline numbers of the same sets as columns."""
    columns = list(dict.fromkeys(k for report in reports.values() for k in report["headline"]))
    rows = [[stage] + [report["headline"].get(c, "-") for c in columns] for stage, report in reports.items()]
    return "\n".join(_table(["stage"] + columns, rows))
