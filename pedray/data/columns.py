"""The column contract: the normalised record schema and the tokenised columns every stage reads.

Normalised records (what `pedray prep` and the corpus generator write, one JSON object a line):

    id        str   stable identifier (source + position, or generator seed + counter)
    kind      str   "sft" (a conversation), "text" (pretraining text) or "pref" (a preference pair)
    task      str   one of TASKS (text records are "general")
    source    str   where the record came from (a file name, or "pedcorpus")
    group     str   disease group when known, else ""
    system    str   system prompt ("" for none)
    messages  list  [{"role": "user"|"assistant", "content": str}, ...]; sft ends with assistant,
                    pref ends with user (the prompt); text has []
    chosen    str   pref only: the preferred answer
    rejected  str   pref only: the dispreferred answer
    text      str   text only: the document

Tokenised rows, produced by `pedray.data.pipeline`:

    cpt/sft (packed):  input_ids, labels, position_ids   int32 [seq_len]
        labels are -100 where no loss is taken (prompts, padding); position_ids restart at 0 for
        each packed document, which makes transformers' SDPA/flash attention block-diagonal.
                       tokens  int32 (one per row): its real, non-padding tokens
    sft also:          task_ids  int8 [seq_len]: index into TASKS of each token's record, -1 on padding
                       (MoUSE task gating and routing statistics)
    dfpo:              chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels
                       int32 lists of varying length (padded per batch by the collator)
"""

from __future__ import annotations

from typing import Any

from pedray.vocab import TASKS

KINDS = ("sft", "text", "pref")
RECORD_FIELDS = ("id", "kind", "task", "source", "group", "system", "messages", "chosen", "rejected", "text")
PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "tokens")
PREF_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
IGNORE_INDEX = -100


def make_record(kind: str, task: str, source: str, id: str, **fields: Any) -> dict[str, Any]:
    """A complete record with every field present (empty where it does not apply)."""
    record: dict[str, Any] = {
        "id": id, "kind": kind, "task": task, "source": source, "group": "", "system": "",
        "messages": [], "chosen": "", "rejected": "", "text": "",
    }
    unknown = set(fields) - set(RECORD_FIELDS)
    if unknown:
        raise KeyError(f"unknown record fields {sorted(unknown)}")
    record.update(fields)
    return record


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a record breaks the contract, or None when it is valid."""
    if record.get("kind") not in KINDS:
        return f"kind must be one of {KINDS}"
    if record.get("task") not in TASKS:
        return f"task must be one of {TASKS}"
    messages = record.get("messages") or []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return "unknown role"
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            return "empty answer" if message["role"] == "assistant" else "empty message"
    roles = [m["role"] for m in messages]
    alternating = all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
    kind = record["kind"]
    if kind == "text":
        return None if str(record.get("text", "")).strip() else "empty text"
    if not messages:
        return "no messages"
    if not alternating:
        return "wrong role order"
    if kind == "sft" and roles[-1] != "assistant":
        return "empty answer"
    if kind == "pref":
        if roles[-1] != "user":
            return "wrong role order"
        if not str(record.get("chosen", "")).strip() or not str(record.get("rejected", "")).strip():
            return "empty answer"
        if record["chosen"].strip() == record["rejected"].strip():
            return "chosen equals rejected"
    return None
