"""Reads corpus files (JSON, JSONL, LLaMA-Factory dataset_info, text, CSV/TSV, xlsx) record by record.

Every record becomes one item, valid or not; whatever a record raises becomes a reject with its place
and reason, never the end of the run. Only a file that cannot be read at all raises `InputError`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from pedray.data.columns import make_record
from pedray.ingest import layout as by_meaning
from pedray.ingest.normalize import normalize_text
from pedray.ingest.records import RecordError, to_record

# (where, record or None, reason or None): one item per input record, valid or not.
Item = tuple[str, "dict[str, Any] | None", "str | None"]
# The same with the file it came from first, as `read_path` yields it.
FileItem = tuple[str, str, "dict[str, Any] | None", "str | None"]
BOM = "\ufeff"


class InputError(ValueError):
    """A file that cannot be read at all (missing, unreadable, wrong layout)."""


class Skipped(str):
    """The reason an input entry was passed over (a hub dataset in dataset_info.json): not a record."""


def convert(obj: Any, where: str, source: str, id: str, task: str | None, **layout: Any) -> Item:
    """One object -> an item; any error becomes the reject reason."""
    try:
        return where, to_record(obj, source, id, task, **layout), None
    except RecordError as err:
        return where, None, str(err)
    except Exception as err:  # a record must never stop the run: whatever it raises is its reason
        return where, None, f"cannot read record ({type(err).__name__}: {err})"


def json_objects(path: Path) -> Iterator[tuple[int, str, Any, "str | None"]]:
    """(number, where, object, None) for every record of a JSON array or JSONL file, or a reason instead."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text") from None
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                             "expected an array of records (use .jsonl for one record a line)") from None
        except RecursionError:
            raise InputError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON array of records, found {type(data).__name__}")
        for number, obj in enumerate(data, 1):
            yield number, f"item {number}", obj, None
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"line {number}"
            try:
                line = raw.decode("utf-8").lstrip(BOM) if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, where, None, "undecodable bytes (not UTF-8)"
                continue
            if not line.strip():
                continue
            try:
                yield number, where, json.loads(line), None
            except json.JSONDecodeError as err:
                yield number, where, None, f"bad JSON: {err.msg}"
            except RecursionError:
                yield number, where, None, "bad JSON: nested too deeply"


def read_json(path: Path, task: str | None = None, **layout: Any) -> Iterator[Item]:
    """A JSON array or JSONL file, record by record."""
    for number, where, obj, reason in json_objects(path):
        if reason is not None:
            yield where, None, reason
        else:
            yield convert(obj, where, path.name, f"{path.stem}-{number}", task, **layout)


def read_text(path: Path, task: str | None = None, **_: Any) -> Iterator[Item]:
    """Raw text: blank-line separated documents when most lines are followed by a blank one, else one a line."""
    content = decode(path.read_bytes(), path)
    lines = content.strip("\n").split("\n")
    blank = sum(1 for line in lines if not line.strip())
    blocks = content.split("\n\n") if blank >= 0.3 * max(len(lines) - blank, 1) else lines
    for number, block in enumerate(blocks, 1):
        if "\x00" in block:
            yield f"document {number}", None, "NUL byte in the text: broken text"
            continue
        text = normalize_text(block)
        if text:
            yield f"document {number}", make_record("text", "general", path.name, f"{path.stem}-{number}", text=text), None


def decode(data: bytes, path: Path) -> str:
    """Decode with the detected encoding (UTF-8 and GB18030 are the common ones); a BOM is dropped."""
    from charset_normalizer import from_bytes

    for encoding in ("utf-8-sig", "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "gb18030"):
        try:
            return data.decode(encoding).lstrip(BOM)
        except UnicodeDecodeError:
            continue
    best = from_bytes(data).best()
    if best is None:
        raise InputError(f"{path}: cannot detect the text encoding")
    return str(best).lstrip(BOM)


def table_layout(path: Path, header: list[str], layout: dict[str, str] | None) -> dict[str, str]:
    """The columns' roles, or an InputError naming the columns when neither names nor `--columns` tell."""
    missing = [column for column in (layout or {}).values() if column not in header]
    if missing:
        raise InputError(f"{path}: --columns names {missing}, not among the columns {header}")
    found = by_meaning.resolve(header, layout)
    if not by_meaning.usable(found):
        raise InputError(f"{path}: cannot tell which column is the question and which the answer among {header}; "
                         "give them with --columns, e.g. --columns instruction=ask,output=answer")
    return found


def csv_table(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    """(header, the remaining rows) of a CSV or TSV file in its detected encoding."""
    text = decode(path.read_bytes(), path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one long consultation must not end the file
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    rows = csv.reader(io.StringIO(text, newline=""), dialect=dialect)
    header = [h.strip() for h in next(rows, [])]
    if not any(header):
        raise InputError(f"{path}: empty CSV (expected a header row)")
    return header, rows


def read_csv(path: Path, task: str | None = None, layout: dict[str, str] | None = None, **_: Any) -> Iterator[Item]:
    header, rows = csv_table(path)
    found = table_layout(path, header, layout)
    number = 1
    while True:
        number += 1
        try:
            values = next(rows)
        except StopIteration:
            return
        except csv.Error as err:
            yield f"row {number}", None, f"bad CSV row: {err}"
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            yield f"row {number}", None, f"{len(values)} fields for {len(header)} columns"
            continue
        yield convert(by_meaning.canonical(dict(zip(header, values)), found), f"row {number}", path.name,
                      f"{path.stem}-{number}", task)


PEDIABENCH_COLUMNS = ("questions", "answers")


def sheet(path: Path) -> tuple[list[str], Iterator[tuple[int, tuple]]]:
    """(header, (row number, values) of the rows below it) of the first sheet of an xlsx workbook."""
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several unrelated types for a bad file
        raise InputError(f"{path}: cannot open as an xlsx workbook ({type(err).__name__}: {err})") from None
    rows = workbook.active.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
    return header, enumerate(rows, 2)


def pediabench_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {column: value}) of a PediaBench-layout xlsx sheet; the header row is checked first."""
    header, rows = sheet(path)
    if any(column not in header for column in PEDIABENCH_COLUMNS):
        raise InputError(f"{path}: expected PediaBench columns 'questions' and 'answers' (optional 'options', "
                         f"'explanations', 'Disease Groups'), found {header}")
    for number, values in rows:
        yield number, dict(zip(header, values))


def read_xlsx(path: Path, task: str | None = None, layout: dict[str, str] | None = None, **_: Any) -> Iterator[Item]:
    """A spreadsheet, columns by meaning; PediaBench case sheets default to `evidiag`, its others to `medkqa`."""
    header, rows = sheet(path)
    found = table_layout(path, header, layout)
    if task is None and all(c in header for c in PEDIABENCH_COLUMNS):
        task = "evidiag" if "case" in path.stem else "medkqa"
    for number, values in rows:
        if all(v is None or str(v).strip() == "" for v in values):
            continue
        yield convert(by_meaning.canonical(dict(zip(header, values)), found), f"row {number}", path.name,
                      f"{path.stem}-{number}", task)


def columns_of(path: Path) -> list[str]:
    """The column names a file's records are read by: a table's header, the first JSON object's keys."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return csv_table(path)[0]
    if suffix == ".xlsx":
        return sheet(path)[0]
    if suffix in (".json", ".jsonl") and path.name != "dataset_info.json":
        first = next((obj for _, _, obj, reason in json_objects(path) if reason is None), None)
        return [str(key) for key in first] if isinstance(first, dict) else []
    return []


def read_path(path: str | Path, task: str | None = None, **layout: Any) -> Iterator[FileItem]:
    """(file, where, record, reason) for every record of a file; folders are read file by file in name order."""
    from pedray.ingest.llamafactory import read_dataset_info  # here: llamafactory builds on this module

    path = Path(path)
    if path.is_dir():
        if (path / "dataset_info.json").is_file():
            yield from read_dataset_info(path / "dataset_info.json", task)
            return
        for child in sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READERS):
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
    yield from ((str(path), where, record, reason) for where, record, reason in reader(path, task, **layout))


READERS = {".jsonl": read_json, ".json": read_json, ".txt": read_text, ".csv": read_csv, ".tsv": read_csv,
           ".xlsx": read_xlsx}
