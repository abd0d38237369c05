"""Evaluation questions: the held-out split of our corpus per task, and PediaBench-layout files.

Every question is one flat dict (what the Ray Data generation stage receives):

    id         str   unique within the evaluation ("<set>-<row>")
    set        str   "heldout" or the file's stem (e.g. "multiple_choice")
    kind       str   "text" (scored with the text metrics), "choice" or "judgement" (scored by accuracy)
    task       str   one of TASKS (routes a MoUSE model; groups the report)
    group      str   disease group when known, else ""
    messages   str   JSON of the chat messages up to the answer (system prompt first)
    reference  str   the reference answer; for choice the sorted letters ("ABD"), for judgement 对/错
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

from pedray.data.pipeline import corpus_files
from pedray.data.tokenize import chat_messages
from pedray.ingest.normalize import normalize_text
from pedray.ingest.readers import InputError, pediabench_rows
from pedray.vocab import DEFAULT_SYSTEM, TASKS

KINDS = ("text", "choice", "judgement")
EXPECTED = ("a PediaBench-layout file (.xlsx, .csv or .jsonl) with columns 'questions' and 'answers' "
            "(optional 'options', 'explanations', 'Disease Groups')")
CHOICE_PROMPT = "{question}\n{options}\n请选出正确答案，只写选项字母（多选题写出全部正确选项），格式为“答案：X”。"
JUDGEMENT_PROMPT = "判断下面的说法是否正确，请以“答案：正确”或“答案：错误”开头回答。\n{question}"
_TRUE, _FALSE = ("对", "正确", "√"), ("错", "错误", "×")


def _item(set_name: str, row: Any, kind: str, task: str, group: str, messages: list[dict[str, str]],
          reference: str) -> dict[str, str]:
    return {"id": f"{set_name}-{row}", "set": set_name, "kind": kind, "task": task, "group": group,
            "messages": json.dumps(messages, ensure_ascii=False), "reference": reference}


def heldout_items(corpus_dirs: list[str | Path], limit: int = 0) -> list[dict[str, str]]:
    """Questions from the corpus' held-out split (`sft_test.jsonl`), the first `limit` of each task.

    The prompt is the conversation up to its last answer; that answer is the reference.
    """
    taken = dict.fromkeys(TASKS, 0)
    items = []
    for file in corpus_files(list(corpus_dirs), "sft", "test"):
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                task = record["task"]
                if limit and taken[task] >= limit:
                    continue
                messages = chat_messages(record)
                taken[task] += 1
                items.append(_item("heldout", record["id"], "text", task, record.get("group", ""),
                                   messages[:-1], messages[-1]["content"]))
    return items


def _table_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, columns) of an xlsx, csv or jsonl file in PediaBench layout."""
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected {EXPECTED}")
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        yield from pediabench_rows(path)
        return
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
        rows: Iterator[tuple[int, dict[str, Any]]] = enumerate(reader, 2)
        header = reader.fieldnames or []
    elif suffix == ".jsonl":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            parsed = [json.loads(line) for line in lines]
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not JSON lines ({err.msg}); expected {EXPECTED}") from None
        header = sorted(set().union(*(p.keys() for p in parsed if isinstance(p, dict)))) if parsed else []
        rows = enumerate(parsed, 1)
    else:
        raise InputError(f"{path}: unsupported file type '{path.suffix}'; expected {EXPECTED}")
    if not {"questions", "answers"} <= {str(h).strip() for h in header}:
        raise InputError(f"{path}: columns {list(header)}; expected {EXPECTED}")
    yield from rows


def _choice_letters(text: str) -> str:
    return "".join(sorted(set(re.findall("[A-G]", text.upper()))))


def pediabench_items(path: str | Path, limit: int = 0) -> list[dict[str, str]]:
    """Questions of one PediaBench-layout file; the kind of each row follows its columns.

    A row with `options` is multiple choice (reference: the sorted answer letters); an answer of
    对/错 (正确/错误) makes a true/false row; anything else is an open question scored on text.
    Case files (`case` in the name) route as evidiag, the rest as medkqa, unless a row names its `task`
    (jobs/eval/parent_questions.jsonl: a parent's care question goes to the `general` expert, as the chat's
    router sends it).
    """
    path = Path(path)
    set_name = path.stem
    default_task = "evidiag" if "case" in set_name.lower() else "medkqa"
    items, skipped = [], 0
    for number, row in _table_rows(path):
        task = str(row.get("task") or default_task).strip()
        if task not in TASKS:
            raise InputError(f"{path}: row {number}: task '{task}' is not one of {list(TASKS)}")
        question = normalize_text(str(row.get("questions") or ""))
        answer = normalize_text(str(row.get("answers") or ""))
        if not question or not answer:
            skipped += 1
            continue
        group = normalize_text(str(row.get("Disease Groups") or ""))
        options = normalize_text(str(row.get("options") or ""))
        if options:
            kind, reference = "choice", _choice_letters(answer)
            prompt = CHOICE_PROMPT.format(question=question, options=options)
            if not reference:
                skipped += 1
                continue
        elif answer in _TRUE + _FALSE:
            kind, reference = "judgement", "对" if answer in _TRUE else "错"
            prompt = JUDGEMENT_PROMPT.format(question=question)
        else:
            kind, reference, prompt = "text", answer, question
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": prompt}]
        items.append(_item(set_name, number, kind, task, group, messages, reference))
        if limit and len(items) >= limit:
            break
    if not items:
        raise InputError(f"{path}: no usable questions ({skipped} rows without a question or answer); "
                         f"expected {EXPECTED}")
    return items


def load_sets(sets: list[str | Path], corpus_dirs: list[str | Path] | None = None,
              limit: int = 0) -> list[dict[str, str]]:
    """Every question to evaluate: the held-out split (when corpus folders are given) and each file.

    A folder in `sets` stands for its xlsx/csv/jsonl files. Errors name the file and the expected layout.
    """
    items = heldout_items(corpus_dirs, limit) if corpus_dirs else []
    if corpus_dirs and not items:
        raise InputError(f"no held-out questions under {[str(d) for d in corpus_dirs]} (sft_test.jsonl is "
                         "missing or empty: build the corpus with a holdout > 0)")
    for entry in sets:
        entry = Path(entry)
        files = sorted(p for p in entry.iterdir() if p.suffix.lower() in (".xlsx", ".csv", ".jsonl")) \
            if entry.is_dir() else [entry]
        if entry.is_dir() and not files:
            raise InputError(f"{entry}: folder holds no .xlsx, .csv or .jsonl file; expected {EXPECTED}")
        for file in files:
            items.extend(pediabench_items(file, limit))
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise InputError("two evaluation sets share a name; rename one of the files")
    return items
