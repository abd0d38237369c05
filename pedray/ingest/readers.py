"""Reads foreign corpus files (JSON, JSONL, LLaMA-Factory dataset_info, text, CSV, PediaBench xlsx) record by record."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from pedray.data.columns import make_record
from pedray.ingest.normalize import normalize_text
from pedray.ingest.records import RecordError, to_record

# (where, record or None, reason or None): one item per input record, valid or not.
Item = tuple[str, "dict[str, Any] | None", "str | None"]
# The same with the file it came from first, as `read_path` yields it.
FileItem = tuple[str, str, "dict[str, Any] | None", "str | None"]


class InputError(ValueError):
    """A file that cannot be read at all (missing, unreadable, wrong layout)."""


def _convert(obj: Any, where: str, source: str, id: str, task: str | None, **layout: Any) -> Item:
    try:
        return where, to_record(obj, source, id, task, **layout), None
    except RecordError as err:
        return where, None, str(err)


def read_jsonl(path: Path, task: str | None = None, **layout: Any) -> Iterator[Item]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield where, None, "undecodable bytes (not UTF-8)"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, None, f"bad JSON: {err.msg}"
                continue
            yield _convert(obj, where, path.name, f"{path.stem}-{number}", task, **layout)


def read_json(path: Path, task: str | None = None, **layout: Any) -> Iterator[Item]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                         "expected an array of records (use .jsonl for one record a line)") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of records, found {type(data).__name__}")
    for number, obj in enumerate(data, 1):
        yield _convert(obj, f"item {number}", path.name, f"{path.stem}-{number}", task, **layout)


def read_dataset_info(path: Path, task: str | None = None) -> Iterator[FileItem]:
    """LLaMA-Factory `dataset_info.json`: every entry with a local `file_name`, its columns and tags applied."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a valid dataset_info.json ({err})") from None
    for name, entry in info.items():
        if not isinstance(entry, dict) or "file_name" not in entry:
            continue  # hub or script datasets: nothing local to read
        columns = dict(entry.get("columns") or {})
        if "messages" in columns:
            columns["messages"] = columns.pop("messages")
        tags = dict(entry.get("tags") or {})
        file = path.parent / entry["file_name"]
        for source, where, record, reason in read_path(file, task, columns=columns, tags=tags):
            yield source, f"{name}: {where}", record, reason


def read_text(path: Path, task: str | None = None) -> Iterator[Item]:
    """Raw text: blank-line separated documents when most lines are followed by a blank one, else one a line."""
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        content = _decode(path.read_bytes(), path)
    lines = content.strip("\n").split("\n")
    blank = sum(1 for line in lines if not line.strip())
    blocks = content.split("\n\n") if blank >= 0.3 * max(len(lines) - blank, 1) else lines
    for number, block in enumerate(blocks, 1):
        text = normalize_text(block)
        if text:
            yield f"document {number}", make_record("text", "general", path.name, f"{path.stem}-{number}", text=text), None


def _decode(data: bytes, path: Path) -> str:
    """Decode with the detected encoding (UTF-8 and GB18030 are the common ones)."""
    from charset_normalizer import from_bytes

    for encoding in ("utf-8", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    best = from_bytes(data).best()
    if best is None:
        raise InputError(f"{path}: cannot detect the text encoding")
    return str(best)


def read_csv(path: Path, task: str | None = None) -> Iterator[Item]:
    text = _decode(path.read_bytes(), path)
    dialect = "excel-tab" if path.suffix == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if not reader.fieldnames:
        raise InputError(f"{path}: empty CSV (expected a header row)")
    for number, row in enumerate(reader, 2):
        obj = {k.strip(): v for k, v in row.items() if k}
        if "question" in obj or "questions" in obj:
            obj = {"instruction": obj.get("question", obj.get("questions")), "output": obj.get("answer", obj.get("answers"))}
        yield _convert(obj, f"row {number}", path.name, f"{path.stem}-{number}", task)


PEDIABENCH_COLUMNS = ("questions", "answers")


def pediabench_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {column: value}) of a PediaBench-layout xlsx sheet; the header row is checked first."""
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several unrelated types for a bad file
        raise InputError(f"{path}: cannot open as an xlsx workbook ({type(err).__name__}: {err})") from None
    rows = workbook.active.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
    if any(column not in header for column in PEDIABENCH_COLUMNS):
        raise InputError(f"{path}: expected PediaBench columns 'questions' and 'answers' (optional 'options', "
                         f"'explanations', 'Disease Groups'), found {header}")
    for number, values in enumerate(rows, 2):
        yield number, dict(zip(header, values))


def read_pediabench(path: Path, task: str | None = None) -> Iterator[Item]:
    """PediaBench-style xlsx: `questions`, `answers`, optional `options`, `explanations`, `Disease Groups`."""
    default_task = task or ("evidiag" if "case" in path.stem else "medkqa")
    for number, row in pediabench_rows(path):
        question, answer = row.get("questions"), row.get("answers")
        if question is None or answer is None or not str(answer).strip():
            yield f"row {number}", None, "empty answer" if question is not None else "missing field 'questions'"
            continue
        prompt, reply = str(question), str(answer)
        if row.get("options"):
            prompt += "\n" + str(row["options"])
            reply = f"答案：{reply}"
        elif reply.strip() in ("对", "错"):
            reply = f"答案：{reply.strip()}"
        if row.get("explanations"):
            reply += f"\n解析：{row['explanations']}"
        obj = {"instruction": prompt, "output": reply}
        where, record, reason = _convert(obj, f"row {number}", path.name, f"{path.stem}-{number}", default_task)
        if record is not None:
            record["group"] = str(row.get("Disease Groups") or "")
        yield where, record, reason


def read_path(path: str | Path, task: str | None = None, **layout: Any) -> Iterator[FileItem]:
    """(file, where, record, reason) for every record of a file; folders are read file by file in name order."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_info.json").is_file():
            yield from read_dataset_info(path / "dataset_info.json", task)
            return
        for child in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in READERS):
            yield from read_path(child, task, **layout)
        return
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.name == "dataset_info.json":
        yield from read_dataset_info(path, task)
        return
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path}: unsupported file type '{path.suffix}'; supported: {', '.join(sorted(READERS))}")
    items = reader(path, task, **layout) if path.suffix.lower() in (".json", ".jsonl") else reader(path, task)
    yield from ((str(path), where, record, reason) for where, record, reason in items)


READERS = {".jsonl": read_jsonl, ".json": read_json, ".txt": read_text, ".csv": read_csv, ".tsv": read_csv,
           ".xlsx": read_pediabench}
