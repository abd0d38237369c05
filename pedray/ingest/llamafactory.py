"""LLaMA-Factory's `dataset_info.json`, read the way LLaMA-Factory reads it (its data/README documents the keys).

Per entry: `file_name` (a file or folder beside the json), `formatting` (alpaca or sharegpt),
`ranking` (preference data), `columns` and `tags`. What pedray does with each kind:

- sft (alpaca or sharegpt) and preference data (`ranking: true`; `chosen`/`rejected` as strings or, in
  sharegpt, as one message object each): read as such;
- pretraining text (alpaca with a `prompt` column and no `response`, e.g. `{"prompt": "text"}`): text records;
- KTO (`kto_tag`): a desirable answer is an sft example; an undesirable one becomes the rejected side of a
  preference pair when a desirable answer to the same prompt exists, else it is rejected with the reason.
  It never becomes a training target;
- multimodal records (an images/videos/audios column that is not empty) and tool-using conversations
  (function/observation turns, a tools column): rejected with the reason (pedray trains a text chat model);
- hub, script or cloud entries (no local file): listed as skipped in the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from pedray.ingest.readers import FileItem, InputError, Skipped, convert, json_objects, read_path

SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
MEDIA_COLUMNS = ("images", "videos", "audios")


def read_dataset_info(path: Path, task: str | None = None) -> Iterator[FileItem]:
    """Every entry's records, its columns and tags applied; entries without a local file are Skipped."""
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a valid dataset_info.json ({err})") from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected an object of dataset entries, found {type(info).__name__}")
    for name, entry in info.items():
        if not isinstance(entry, dict):
            yield str(path), name, None, Skipped(f"entry is not an object ({type(entry).__name__})")
            continue
        if "file_name" not in entry:
            remote = [f"{key}={entry[key]}" for key in REMOTE_KEYS if key in entry]
            yield str(path), name, None, Skipped(f"no local file ({', '.join(remote) or 'no file_name'}): "
                                                 "pedray reads local files only; download it and add it as a file")
            continue
        file = path.parent / entry["file_name"]
        if not file.exists():
            yield str(path), name, None, Skipped(f"file_name {entry['file_name']!r} not found beside {path.name}")
            continue
        for source, where, record, reason in _entry_items(file, entry, task):
            yield source, f"{name}: {where}", record, reason


def _layout(entry: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(columns, tags) as pedray's record reader takes them."""
    columns = {k: v for k, v in (entry.get("columns") or {}).items() if isinstance(v, str)}
    tags = dict(entry.get("tags") or {})
    if entry.get("formatting") == "sharegpt":
        tags = {**SHAREGPT_TAGS, **tags}
        columns.setdefault("messages", "conversations")
    return columns, tags


def _entry_items(file: Path, entry: dict[str, Any], task: str | None) -> Iterator[FileItem]:
    columns, tags = _layout(entry)
    unused = {k: columns.pop(k) for k in (*MEDIA_COLUMNS, "tools", "kto_tag") if k in columns}
    pretraining = entry.get("formatting", "alpaca") == "alpaca" and "prompt" in columns and "response" not in columns \
        and not entry.get("ranking") and "kto_tag" not in unused
    files = sorted(p for p in file.iterdir() if p.suffix.lower() in (".json", ".jsonl")) if file.is_dir() else [file]
    for one in files:
        if one.suffix.lower() not in (".json", ".jsonl"):
            yield from read_path(one, task, columns=columns, tags=tags)  # csv and text files: as pedray reads them
            continue
        objects = _checked_objects(one, unused)
        if pretraining:  # LLaMA-Factory's pretraining layout: the prompt column is the document
            for number, where, obj, reason in objects:
                text = obj.get(columns["prompt"]) if isinstance(obj, dict) else obj
                yield str(one), *(convert({"text": text}, where, one.name, f"{one.stem}-{number}", task)
                                  if reason is None else (where, None, reason))
            continue
        if "kto_tag" in unused:
            yield from ((str(one), *item) for item in _kto(one, objects, unused["kto_tag"], task, columns, tags))
            continue
        for number, where, obj, reason in objects:
            if reason is not None:
                yield str(one), where, None, reason
            else:
                yield str(one), *convert(obj, where, one.name, f"{one.stem}-{number}", task, columns=columns, tags=tags)


def _checked_objects(path: Path, unused: dict[str, str]) -> Iterator[tuple[int, str, Any, str | None]]:
    """The file's objects; one with media or tool definitions carries the reason it is rejected instead."""
    for number, where, obj, reason in json_objects(path):
        if reason is None and isinstance(obj, dict):
            media = [k for k in MEDIA_COLUMNS if k in unused and obj.get(unused[k])]
            if media:
                obj, reason = None, f"multimodal record ({media[0]} column '{unused[media[0]]}'): pedray trains text-only models"
            elif "tools" in unused and obj.get(unused["tools"]):
                obj, reason = None, (f"tool definitions (tools column '{unused['tools']}'): the chat template has no "
                                     "tools, and the answers would be learned without them")
        yield number, where, obj, reason


def _kto(path: Path, objects: Iterator, tag: str, task: str | None, columns: dict[str, str],
         tags: dict[str, str]) -> Iterator[tuple[str, Any, str | None]]:
    """KTO records: desirable answers as sft, undesirable ones only as the rejected side of a pair.

    The undesirable answers wait until the file is read (a desirable answer to the same prompt may come later).
    """
    desirable: dict[str, str] = {}
    waiting: list[tuple[str, str, dict[str, Any]]] = []
    for number, where, obj, reason in objects:
        if reason is not None:
            yield where, None, reason
            continue
        label = obj.get(tag) if isinstance(obj, dict) else None
        where, record, reason = convert(obj, where, path.name, f"{path.stem}-{number}", task, columns=columns, tags=tags)
        if record is None:
            yield where, None, reason
        elif not isinstance(label, bool):
            yield where, None, f"KTO label '{tag}' must be true or false (found {label!r})"
        elif label:
            desirable.setdefault(_prompt_key(record), record["messages"][-1]["content"])
            yield where, record, None
        else:
            waiting.append((_prompt_key(record), where, record))
    for key, where, record in waiting:
        if key not in desirable:
            yield where, None, ("KTO answer labelled undesirable, and no desirable answer to the same prompt: "
                                "it must not become a training target")
            continue
        pair = dict(record, kind="pref", messages=record["messages"][:-1], chosen=desirable[key],
                    rejected=record["messages"][-1]["content"])
        if pair["chosen"] == pair["rejected"]:
            yield where, None, "KTO answer labelled undesirable is the same as the desirable one"
        else:
            yield where, pair, None


def _prompt_key(record: dict[str, Any]) -> str:
    return json.dumps([record["system"], record["messages"][:-1]], ensure_ascii=False)
