"""Pure tokenisation of normalised records: chat-template rendering, prompt masking, flattening, preferences."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pedray.data.columns import IGNORE_INDEX

Record = dict[str, Any]


def chat_messages(record: Record) -> list[dict[str, str]]:
    """The record's conversation with its system prompt first (when it has one)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return the character spans of every assistant answer.

    A span runs from the start of the answer to the end of its end-of-turn marker (the template's
    trailing newline excluded), so the model learns to stop. Works with any chat template whose
    rendering of a prefix is a prefix of the rendering of the whole conversation.
    """
    full = _render(tokenizer, messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:index], True))
        through = _render(tokenizer, messages[: index + 1], False)
        end = len(through.rstrip())
        if not full.startswith(through) or end <= start:
            raise ValueError("chat template is not prefix-stable; cannot mask prompts")
        spans.append((start, end))
    return full, spans


def encode_conversations(tokenizer, records: Sequence[Record], max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenise conversations with the chat template; labels are -100 outside assistant answers.

    Multi-turn aware: every assistant turn is learned, every user/system turn is masked.
    Sequences longer than `max_len` are truncated on the right.
    """
    rendered = [assistant_spans(tokenizer, chat_messages(r)) for r in records]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (_, spans), ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
        ids = np.asarray(ids[:max_len], dtype=np.int32)
        starts = np.asarray([o[0] for o in offsets[:max_len]], dtype=np.int64)
        learn = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            learn |= (starts >= start) & (starts < end)
        out.append((ids, np.where(learn, ids, IGNORE_INDEX).astype(np.int32)))
    return out


def flatten_instruction(record: Record) -> str:
    """Hybrid instruction pre-training: a conversation as plain text (no chat markers)."""
    lines = []
    for message in record["messages"]:
        lines.append(("问：" if message["role"] == "user" else "答：") + message["content"])
    return "\n".join(lines)


def record_text(record: Record) -> str:
    """Plain text of a record for continued pretraining (documents as is, instructions flattened)."""
    return record["text"] if record["kind"] == "text" else flatten_instruction(record)


def encode_texts(tokenizer, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenise documents for causal LM loss on every token, each ending with the EOS token."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for ids in encoded:
        ids = np.asarray(ids + [eos], dtype=np.int32)
        out.append((ids, ids.copy()))
    return out


def encode_preferences(tokenizer, records: Sequence[Record], max_len: int, max_prompt_len: int) -> dict[str, list]:
    """Tokenise preference pairs: prompt (left-truncated) + answer + EOS, prompt masked in the labels."""
    prompts = [_render(tokenizer, chat_messages(r), True) for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    columns: dict[str, list] = {k: [] for k in ("chosen_input_ids", "chosen_labels", "rejected_input_ids",
                                                "rejected_labels")}
    for side in ("chosen", "rejected"):
        answers = tokenizer([r[side] for r in records], add_special_tokens=False)["input_ids"]
        for prompt, answer in zip(prompt_ids, answers):
            prompt = prompt[-max_prompt_len:]
            answer = (answer + [eos])[: max(1, max_len - len(prompt))]
            columns[f"{side}_input_ids"].append(np.asarray(prompt + answer, dtype=np.int32))
            columns[f"{side}_labels"].append(np.asarray([IGNORE_INDEX] * len(prompt) + answer, dtype=np.int32))
    return columns
