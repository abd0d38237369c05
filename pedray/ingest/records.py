"""Maps one object of a foreign format (alpaca, sharegpt, preference, messages, text, any columns) to a record."""

from __future__ import annotations

import re
from typing import Any

from pedray.data.columns import make_record, record_problem
from pedray.ingest import layout as columns_by_meaning
from pedray.ingest.normalize import normalize_text

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
              "model": "assistant", "system": "system"}
# Turns of a tool-using conversation. The chat template has no tool turns, and dropping them would
# teach answers that relied on a tool result without it, so such conversations are rejected.
TOOL_ROLES = {"observation", "function_call", "function", "tool", "tool_call", "ipython"}
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
MEDIA_TOKEN = re.compile(r"<(image|video|audio)>")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class RecordError(ValueError):
    """A record that cannot be normalised; the message is the reason written to the rejects file."""


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' is not a string (found {type(value).__name__})")
    bad = _SURROGATE.search(value)
    if bad:
        raise RecordError(f"field '{field}' holds a lone surrogate ({ascii(bad.group())}): broken text")
    if "\x00" in value:
        raise RecordError(f"field '{field}' holds a NUL byte: broken text")
    media = MEDIA_TOKEN.search(value)
    if media:
        raise RecordError(f"multimodal record ({media.group()} in '{field}'): pedray trains text-only models")
    return normalize_text(value)


def _turns(items: Any, role_key: str, content_key: str, aliases: dict[str, str] | None = None) -> tuple[str, list]:
    """Conversation items -> (system, messages), checking roles."""
    if not isinstance(items, list) or not items:
        raise RecordError("missing field 'conversations'" if not items else "field 'conversations' is not a list")
    system, messages = "", []
    names = dict(ROLE_NAMES, **(aliases or {}))
    for item in items:
        if not isinstance(item, dict) or role_key not in item or content_key not in item:
            raise RecordError(f"conversation turn lacks '{role_key}' or '{content_key}'")
        name = str(item[role_key]).lower()
        role = names.get(name, "tool" if name in TOOL_ROLES else "unknown")
        if role == "tool":
            raise RecordError(f"tool-call conversation ('{item[role_key]}' turn): the chat template has no tool "
                              "turns, and without them the answers would be learned without the tool results")
        if role == "unknown":
            raise RecordError(f"unknown role '{item[role_key]}'")
        content = _text(item[content_key], content_key)
        if role == "system":
            system = content
        else:
            messages.append({"role": role, "content": content})
    return system, messages


def _alpaca_prompt(obj: dict, columns: dict[str, str]) -> tuple[str, list]:
    instruction = _text(obj.get(columns["prompt"]), columns["prompt"])
    extra = _text(obj.get(columns["query"]), columns["query"])
    if not instruction and not extra:
        raise RecordError(f"missing field '{columns['prompt']}'")
    messages = []
    history = obj.get(columns["history"]) or []
    if not isinstance(history, list):
        raise RecordError("field 'history' is not a list")
    for pair in history:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecordError("history entries must be [question, answer] pairs")
        messages += [{"role": "user", "content": _text(pair[0], "history")},
                     {"role": "assistant", "content": _text(pair[1], "history")}]
    messages.append({"role": "user", "content": "\n".join(p for p in (instruction, extra) if p)})
    return _text(obj.get(columns["system"]), columns["system"]), messages


def _answer(value: Any, field: str, tag: dict[str, str]) -> str:
    """A preference answer: a string, or (LLaMA-Factory sharegpt) one message object or a one-item list."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        content_key = tag["content_tag"] if tag["content_tag"] in value else "content"
        if content_key not in value:
            raise RecordError(f"field '{field}' is a message without '{tag['content_tag']}'")
        return _text(value[content_key], f"{field}.{content_key}")
    return _text(value, field)


def _with_answer_notes(answer: str, obj: dict) -> str:
    """Exam-style rows (options, explanation): the answer reads `答案：X`, then `解析：...`."""
    if obj.get("options") and answer:
        answer = f"答案：{answer}"
    elif answer in ("对", "错", "正确", "错误"):
        answer = f"答案：{answer}"
    if obj.get("explanation") and answer:
        answer += f"\n解析：{_text(obj['explanation'], 'explanation')}"
    return answer


ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "chosen": "chosen", "rejected": "rejected", "messages": "conversations"}
KNOWN_KEYS = ("instruction", "input", "conversations", "messages", "text")


def to_record(obj: Any, source: str, id: str, task: str | None = None,
              columns: dict[str, str] | None = None, tags: dict[str, str] | None = None,
              layout: dict[str, str] | None = None) -> dict[str, Any]:
    """Normalise one object; the layout is recognised from its fields (or given by `columns`/`tags`).

    `columns`/`tags` are LLaMA-Factory's (`dataset_info.json`); `layout` is an explicit role -> column
    mapping (`--columns`). An object with none of the known fields is read by what its keys mean.

    Raises:
        RecordError: with the reason the record is rejected.
    """
    if not isinstance(obj, dict):
        raise RecordError(f"record is not a JSON object (found {type(obj).__name__})")
    media = [k for k in MEDIA_KEYS if obj.get(k)]
    if media:
        raise RecordError(f"multimodal record ({media[0]}): pedray trains text-only models")
    if layout or (not columns and not any(k in obj for k in KNOWN_KEYS)):
        found = columns_by_meaning.resolve(list(obj), layout)
        if not columns_by_meaning.usable(found):
            raise RecordError("unrecognised layout: no instruction, conversations, messages or text field, and no "
                              f"question/answer columns by name (keys: {', '.join(map(str, list(obj)[:8]))}); "
                              "give them with --columns")
        obj = columns_by_meaning.canonical(obj, found)
    group = _text(obj.get("group"), "group") if "group" in obj else ""
    cols = dict(ALPACA_COLUMNS, **(columns or {}))
    tag = {"role_tag": "from", "content_tag": "value", **(tags or {})}
    if isinstance(obj.get(cols["messages"]), list) or isinstance(obj.get("messages"), list):
        key = cols["messages"] if isinstance(obj.get(cols["messages"]), list) else "messages"
        items = obj[key]
        explicit = tags and "role_tag" in tags
        detected = ("role", "content") if items and isinstance(items[0], dict) and "role" in items[0] else None
        role_key, content_key = (tag["role_tag"], tag["content_tag"]) if explicit or not detected else detected
        aliases = {tag[k].lower(): v for k, v in (("user_tag", "user"), ("assistant_tag", "assistant"),
                                                   ("system_tag", "system")) if k in tag}
        aliases.update({tag[k].lower(): "tool" for k in ("observation_tag", "function_tag") if k in tag})
        system, messages = _turns(items, role_key, content_key, aliases)
        system = system or _text(obj.get("system"), "system")
    elif cols["prompt"] in obj or cols["query"] in obj:
        system, messages = _alpaca_prompt(obj, cols)
        response = obj.get(cols["response"])
        if isinstance(response, list) and len(response) == 2 and cols["chosen"] not in obj:
            obj = dict(obj, **{cols["chosen"]: response[0], cols["rejected"]: response[1]})
        elif response is not None:
            answer = _with_answer_notes(_text(response, cols["response"]), obj)
            messages.append({"role": "assistant", "content": answer})
    elif "text" in obj:
        text = _text(obj["text"], "text")
        return _checked(make_record("text", "general", source, id, text=text, group=group))
    else:
        raise RecordError("unrecognised layout: no instruction, conversations, messages or text field")
    if cols["chosen"] in obj or cols["rejected"] in obj:
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        record = make_record("pref", task or "general", source, id, system=system, messages=messages, group=group,
                             chosen=_answer(obj.get(cols["chosen"]), "chosen", tag),
                             rejected=_answer(obj.get(cols["rejected"]), "rejected", tag))
        return _checked(record)
    user_turns = sum(1 for m in messages if m["role"] == "user")
    inferred = task or ("dialogue" if user_turns > 1 else "general")
    return _checked(make_record("sft", inferred, source, id, system=system, messages=messages, group=group))


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    problem = record_problem(record)
    if problem:
        raise RecordError(problem)
    return record
