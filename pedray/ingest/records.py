"""Maps one object of a foreign format (alpaca, sharegpt, preference, messages, text) to a normalised record."""

from __future__ import annotations

from typing import Any

from pedray.data.columns import make_record, record_problem
from pedray.ingest.normalize import normalize_text

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
              "system": "system", "observation": None, "function_call": None}


class RecordError(ValueError):
    """A record that cannot be normalised; the message is the reason written to the rejects file."""


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' is not a string")
    return normalize_text(value)


def _turns(items: list, role_key: str, content_key: str, aliases: dict[str, str] | None = None) -> tuple[str, list]:
    """Conversation items -> (system, messages), checking roles."""
    if not isinstance(items, list) or not items:
        raise RecordError("missing field 'conversations'")
    system, messages = "", []
    names = dict(ROLE_NAMES, **(aliases or {}))
    for item in items:
        if not isinstance(item, dict) or role_key not in item or content_key not in item:
            raise RecordError(f"conversation turn lacks '{role_key}' or '{content_key}'")
        role = names.get(str(item[role_key]).lower(), "unknown")
        if role == "unknown":
            raise RecordError(f"unknown role '{item[role_key]}'")
        content = _text(item[content_key], content_key)
        if role == "system":
            system = content
        elif role is not None:
            messages.append({"role": role, "content": content})
    return system, messages


def _alpaca_prompt(obj: dict, columns: dict[str, str]) -> tuple[str, list]:
    instruction = _text(obj.get(columns["prompt"]), columns["prompt"])
    extra = _text(obj.get(columns["query"]), columns["query"])
    if not instruction and not extra:
        raise RecordError(f"missing field '{columns['prompt']}'")
    messages = []
    for pair in obj.get(columns["history"]) or []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecordError("history entries must be [question, answer] pairs")
        messages += [{"role": "user", "content": _text(pair[0], "history")},
                     {"role": "assistant", "content": _text(pair[1], "history")}]
    messages.append({"role": "user", "content": "\n".join(p for p in (instruction, extra) if p)})
    return _text(obj.get(columns["system"]), columns["system"]), messages


ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "chosen": "chosen", "rejected": "rejected", "messages": "conversations"}


def to_record(obj: Any, source: str, id: str, task: str | None = None,
              columns: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Normalise one object; the layout is recognised from its fields (or given by `columns`/`tags`).

    Raises:
        RecordError: with the reason the record is rejected.
    """
    if not isinstance(obj, dict):
        raise RecordError("record is not a JSON object")
    cols = dict(ALPACA_COLUMNS, **(columns or {}))
    tag = {"role_tag": "from", "content_tag": "value", **(tags or {})}
    fields: dict[str, Any]
    if isinstance(obj.get(cols["messages"]), list) or isinstance(obj.get("messages"), list):
        key = cols["messages"] if isinstance(obj.get(cols["messages"]), list) else "messages"
        items = obj[key]
        explicit = tags and "role_tag" in tags
        detected = ("role", "content") if items and isinstance(items[0], dict) and "role" in items[0] else None
        role_key, content_key = (tag["role_tag"], tag["content_tag"]) if explicit or not detected else detected
        aliases = {tag[k].lower(): v for k, v in (("user_tag", "user"), ("assistant_tag", "assistant")) if k in tag}
        system, messages = _turns(items, role_key, content_key, aliases)
        system = system or _text(obj.get("system"), "system")
    elif cols["prompt"] in obj or cols["query"] in obj:
        system, messages = _alpaca_prompt(obj, cols)
        response = obj.get(cols["response"])
        if isinstance(response, list) and len(response) == 2 and cols["chosen"] not in obj:
            obj = dict(obj, **{cols["chosen"]: response[0], cols["rejected"]: response[1]})
        elif response is not None:
            messages.append({"role": "assistant", "content": _text(response, cols["response"])})
    elif "text" in obj:
        text = _text(obj["text"], "text")
        return _checked(make_record("text", "general", source, id, text=text))
    else:
        raise RecordError("unrecognised layout: no instruction, conversations, messages or text field")
    if cols["chosen"] in obj or cols["rejected"] in obj:
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        record = make_record("pref", task or "general", source, id, system=system, messages=messages,
                             chosen=_text(obj.get(cols["chosen"]), "chosen"),
                             rejected=_text(obj.get(cols["rejected"]), "rejected"))
        return _checked(record)
    user_turns = sum(1 for m in messages if m["role"] == "user")
    inferred = task or ("dialogue" if user_turns > 1 else "general")
    return _checked(make_record("sft", inferred, source, id, system=system, messages=messages))


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    problem = record_problem(record)
    if problem:
        raise RecordError(problem)
    return record
