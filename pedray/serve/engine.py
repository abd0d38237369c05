"""The Hugging Face engine: streaming, dynamically batched generation with a KV cache.

`HFEngine.stream(requests)` runs one batch of requests together: a left-padded prefill, then one
decode step for all rows at a time over the shared KV cache, each row with its own temperature,
top-p, stop strings and token budget. It yields, per step, one item per row: (new text, finish reason
or None) while the row runs, then None once it has finished. Serve's `@serve.batch` feeds it whatever requests arrived together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    task: str | None = None
    seed: int | None = None


class _Row:
    """One request's decoding state: its tokens, the text already sent, and whether it is done."""

    def __init__(self, request: GenRequest, tokenizer) -> None:
        self.request, self.tokenizer = request, tokenizer
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.finish_reason = ""

    def push(self, token: int, eos: int) -> str:
        """Add a token; return the text that can be sent now ("" while a character is incomplete)."""
        if token == eos:
            self.done, self.finish_reason = True, "stop"
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.request.stop:
            cut = text.find(stop)
            if cut != -1:
                self.done, self.finish_reason = True, "stop"
                text = text[:cut]
                break
        if not self.done and len(self.ids) >= self.request.max_tokens:
            self.done, self.finish_reason = True, "length"
        if text.endswith("\ufffd") and not self.done:
            return ""  # half a multi-byte character: wait for the rest
        if not self.done and self.request.stop:  # hold back a tail that may be the start of a stop string
            hold = max((len(s) - 1 for s in self.request.stop), default=0)
            ready = text[: max(len(self.sent), len(text) - hold)]
        else:
            ready = text
        if len(ready) <= len(self.sent):
            return ""
        delta, self.sent = ready[len(self.sent):], ready
        return delta


def _sample(logits: torch.Tensor, request: GenRequest, generator: torch.Generator | None) -> int:
    if request.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        ordered, index = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < request.top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class HFEngine:
    """A causal LM (plain folder or MoUSE adapter folder) behind `stream`."""

    def __init__(self, model_dir: str, threads: int = 0) -> None:
        from pedray.eval.generate import load_for_eval

        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer, self.by_task = load_for_eval(model_dir)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _forward(self, ids, mask, positions, cache, tasks):
        if self.by_task and tasks is not None:
            with self.model.routed(tasks):
                return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                  use_cache=True)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)

    @torch.inference_mode()
    def stream(self, requests: list[GenRequest]) -> Iterator[list[tuple[str, str | None] | None]]:
        from transformers import DynamicCache

        rows = [_Row(r, self.tokenizer) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every row's next token is at the same column
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        tasks = None
        if self.by_task:
            tasks = torch.tensor([self.model.tasks.index(r.task or "general") for r in requests])
        generators = [torch.Generator().manual_seed(r.seed) if r.seed is not None else None for r in requests]
        cache = DynamicCache()
        out = self._forward(ids, mask, positions, cache, tasks)
        steps = max(r.max_tokens for r in requests)
        for _ in range(steps):
            logits = out.logits[:, -1, :]
            tokens, deltas = [], []
            for i, row in enumerate(rows):
                if row.done:
                    tokens.append(self.pad)
                    deltas.append(None)
                    continue
                token = _sample(logits[i], row.request, generators[i])
                tokens.append(token)
                delta = row.push(token, self.eos)
                deltas.append((delta, row.finish_reason if row.done else None))
            yield deltas
            if all(row.done for row in rows):
                return
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            out = self._forward(torch.tensor(tokens).unsqueeze(1), mask, positions, cache, tasks)
