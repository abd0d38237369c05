"""The Hugging Face engine: continuous batching with a KV cache.

Rows decode together, one token per step for all of them over one KV cache, each with its own
temperature, top-p, seed, stop strings and token budget. New requests join the running batch between
two steps (their prompts are prefilled together, left-padded, and their cache is padded on the left
and stacked onto the running one), and finished rows leave it at once, so a request never waits for
another one to finish (iteration-level scheduling, as vLLM and TGI do it).

- `HFEngine.generate(request)`: an async iterator of (text, finish reason) pieces, the interface the
  vLLM engine (`pedray.serve.vllm_engine`) has too.
- `HFEngine.submit(request, emit)` hands a request to the engine's scheduler thread; `emit(text,
  finish_reason)` is called from that thread for every piece of text, and once with the reason.
- `HFEngine.stream(requests)` runs a fixed batch in the caller's thread (tests and offline use).

Transformers' own continuous batching (`init_continuous_batching`) was tried first: it has no per-request
seed, and on this CPU it produced no token within three minutes for 16 requests to a 23M model.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from typing import AsyncIterator, Callable, Iterator

import torch
import torch.nn.functional as F

from pedray.serve.request import GenRequest


def penalize(logits: torch.Tensor, request: GenRequest, answer: list[int]) -> torch.Tensor:
    """Next-token logits with the request's penalties applied, as vLLM applies them: the repetition penalty
    over the prompt's and the answer's tokens (positive logits divided, negative multiplied), then the
    frequency penalty per occurrence and the presence penalty once for every token the answer has."""
    logits = logits.float().clone()
    if request.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(request.prompt_ids) | set(answer)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / request.repetition_penalty, values * request.repetition_penalty)
    if answer and (request.frequency_penalty or request.presence_penalty):
        tokens, counts = torch.unique(torch.tensor(answer, dtype=torch.long), return_counts=True)
        logits[tokens] -= request.frequency_penalty * counts.float() + request.presence_penalty
    return logits


class _Row:
    """One request's decoding state: its tokens, the text already sent, and whether it is done."""

    def __init__(self, request: GenRequest, tokenizer) -> None:
        self.request, self.tokenizer = request, tokenizer
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.cancelled = False
        self.token = 0  # the token picked last
        self.finish_reason = ""
        self.generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
        self.emit: Callable[[str, str | None], None] | None = None

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
    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        ordered, index = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < request.top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`x` with zeros before its entries along `dim` up to `width` of them."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    pads = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [missing, 0]
    return F.pad(x, pads)


@functools.cache
def _growing_layer():
    """A KV cache layer that writes each step in place into spare room (doubled when full), where
    transformers' DynamicLayer concatenates the whole cache every step (a quarter of a decoding step
    at 16 rows here). `keys`/`values` stay views of the filled part, as every reader expects."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.set(key_states, value_states)
                return self.keys, self.values
            length, extra = self.keys.shape[-2], key_states.shape[-2]
            if length + extra > self._room.shape[-2]:
                self._grow(2 * (length + extra))
            self._room[..., length:length + extra, :] = key_states
            self._room_v[..., length:length + extra, :] = value_states
            self.keys, self.values = self._room[..., :length + extra, :], self._room_v[..., :length + extra, :]
            return self.keys, self.values

        def _grow(self, size: int) -> None:
            length = self.keys.shape[-2]
            room = self.keys.new_zeros((*self.keys.shape[:-2], size, self.keys.shape[-1]))
            room_v = self.values.new_zeros((*self.values.shape[:-2], size, self.values.shape[-1]))
            room[..., :length, :], room_v[..., :length, :] = self.keys, self.values
            self._room, self._room_v = room, room_v
            self.keys, self.values = room[..., :length, :], room_v[..., :length, :]

        def set(self, keys, values) -> None:
            """Replace the contents (rows stacked or dropped, columns trimmed)."""
            self.keys, self.values = keys, values
            self._room, self._room_v = keys, values  # no spare room: the next update makes some

        def batch_select_indices(self, indices) -> None:
            self.set(self.keys[indices], self.values[indices])

    return GrowingLayer


def _new_cache():
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer()
    return cache


class _Batch:
    """The rows decoding together: their KV cache (left-padded), attention mask, next positions, task
    indices and the logits of their next token."""

    def __init__(self, engine: "HFEngine") -> None:
        self.engine = engine
        self.rows: list[_Row] = []
        self.cache = None
        self.mask = self.next_pos = self.logits = self.tasks = None

    def admit(self, rows: list[_Row]) -> None:
        """Prefill `rows` together and stack them under the running rows."""
        engine, prompts = self.engine, [row.request.prompt_ids for row in rows]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), engine.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: every row's next token is at the same column
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        tasks = engine.task_ids(rows)
        cache = _new_cache()
        logits = engine.forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache, tasks).logits[:, -1, :]
        if not self.rows:
            self.rows, self.cache, self.mask, self.logits, self.tasks = list(rows), cache, mask, logits, tasks
            self.next_pos = mask.sum(-1)
            return
        total = max(width, self.mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.set(torch.cat([_pad_left(old.keys, total, -2), _pad_left(new.keys, total, -2)]),
                    torch.cat([_pad_left(old.values, total, -2), _pad_left(new.values, total, -2)]))
        self.mask = torch.cat([_pad_left(self.mask, total, 1), _pad_left(mask, total, 1)])
        self.next_pos = torch.cat([self.next_pos, mask.sum(-1)])
        self.logits = torch.cat([self.logits, logits])
        self.tasks = None if tasks is None else torch.cat([self.tasks, tasks])
        self.rows += rows

    def sample(self) -> list[tuple[_Row, str]]:
        """Pick every row's next token; (row, new text) for each row."""
        greedy = self.logits.argmax(-1).tolist()
        out = []
        for i, row in enumerate(self.rows):
            request = row.request
            logits = penalize(self.logits[i], request, row.ids) if request.penalized else self.logits[i]
            if request.temperature <= 0:
                token = int(logits.argmax()) if request.penalized else greedy[i]
            else:
                token = _sample(logits, request, row.generator)
            out.append((row, row.push(token, self.engine.eos)))
            row.token = token
        return out

    def retire(self) -> None:
        """Drop finished and cancelled rows, and the cache columns no remaining row uses."""
        keep = [i for i, row in enumerate(self.rows) if not (row.done or row.cancelled)]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.next_pos = self.logits = self.tasks = None
            return
        index = torch.tensor(keep)
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        self.tasks = None if self.tasks is None else self.tasks[index]
        start = int(self.mask.any(0).int().argmax())  # the first column some remaining row attends to
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.set(layer.keys[index, :, start:], layer.values[index, :, start:])

    def step(self) -> None:
        """One decoding step for every row, with the tokens `sample` picked."""
        tokens = torch.tensor([[row.token] for row in self.rows])
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        out = self.engine.forward(tokens, self.mask, self.next_pos.unsqueeze(1), self.cache, self.tasks)
        self.logits, self.next_pos = out.logits[:, -1, :], self.next_pos + 1


class HFEngine:
    """A causal LM (plain folder or MoUSE adapter folder) behind `generate` (continuous batching on a
    scheduler thread) and `stream` (a fixed batch in the caller's thread)."""

    def __init__(self, model_dir: str, threads: int = 0, max_batch_size: int = 16) -> None:
        from pedray.eval.generate import load_for_eval  # the same loading as the evaluation (Ray Data and all)

        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer, self.by_task = load_for_eval(model_dir)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id
        self.max_batch_size = max_batch_size
        self.waiting: queue.Queue[_Row | None] = queue.Queue()  # None: close
        self.seconds = {"model": 0.0, "host": 0.0}  # in the model's forward; in sampling, text and hand-off
        self.batch_sizes: dict[int, int] = {}  # rows decoded together -> steps with that many
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def task_ids(self, rows: list[_Row]) -> torch.Tensor | None:
        if not self.by_task:
            return None
        return torch.tensor([self.model.tasks.index(row.request.task or "general") for row in rows])

    def forward(self, ids, mask, positions, cache, tasks):
        if tasks is not None:
            with self.model.routed(tasks):
                return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                  use_cache=True)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)

    @torch.inference_mode()
    def stream(self, requests: list[GenRequest]) -> Iterator[list[tuple[str, str | None] | None]]:
        """Decode a fixed batch. Per step, one item per request: (new text, finish reason or None) while
        it runs, then None once it has finished."""
        rows = [_Row(r, self.tokenizer) for r in requests]
        batch = _Batch(self)
        batch.admit(rows)
        while batch.rows:
            texts = {id(row): text for row, text in batch.sample()}
            yield [(texts[id(row)], row.finish_reason if row.done else None) if id(row) in texts else None
                   for row in rows]
            batch.retire()
            if batch.rows:
                batch.step()

    def submit(self, request: GenRequest, emit: Callable[[str, str | None], None]) -> _Row:
        """Queue a request for the scheduler thread (started on first use). `emit(text, reason)` is called
        from that thread; `reason` is not None exactly once, last. Set `.cancelled` on the returned row to
        drop it."""
        row = _Row(request, self.tokenizer)
        row.emit = emit
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pedray-engine", daemon=True)
                self._thread.start()
        self.waiting.put(row)
        return row

    async def generate(self, request: GenRequest) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish reason or None) pieces of one request, decoded in the
        running batch; pieces that pile up while the caller is busy come as one. A caller that goes away
        cancels the request."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        row = self.submit(request,
                          lambda text, reason: loop.call_soon_threadsafe(items.put_nowait, (text, reason)))
        reason = None
        try:
            while reason is None:
                text, reason = await items.get()
                while reason is None and not items.empty():
                    more, reason = items.get_nowait()
                    text += more
                if reason == "error":
                    raise RuntimeError(text)
                yield text, reason
        finally:
            row.cancelled = True  # no effect once it has finished; otherwise the engine drops it

    def close(self) -> None:
        """Stop the scheduler thread once the running batch has been dropped (its rows end with "error")."""
        if self._thread is not None:
            self.waiting.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def stats(self) -> dict:
        sizes, steps = self.batch_sizes, sum(self.batch_sizes.values())
        return {"engine": "hf", "steps": steps, "max_batch_size": max(sizes, default=0),
                "mean_batch_size": sum(k * v for k, v in sizes.items()) / steps if steps else 0.0,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    @torch.inference_mode()
    def _run(self) -> None:
        batch = _Batch(self)
        while True:
            joining = [] if batch.rows else [self.waiting.get()]  # idle: sleep until a request comes
            while len(batch.rows) + len(joining) < self.max_batch_size:
                try:
                    joining.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            if None in joining:  # close()
                for row in batch.rows + [row for row in joining if row is not None]:
                    row.done, row.finish_reason = True, "error"
                    row.emit("[engine closed]", "error")
                return
            joining = [row for row in joining if not row.cancelled]
            try:
                started = time.perf_counter()
                if joining:
                    batch.admit(joining)
                self.batch_sizes[len(batch.rows)] = self.batch_sizes.get(len(batch.rows), 0) + 1
                sampled = time.perf_counter()
                for row, text in batch.sample():
                    if text or row.done:
                        row.emit(text, row.finish_reason if row.done else None)
                batch.retire()
                stepped = time.perf_counter()
                if batch.rows:
                    batch.step()
                ended = time.perf_counter()
                self.seconds["model"] += sampled - started + ended - stepped
                self.seconds["host"] += stepped - sampled
            except Exception as err:  # a failed step fails its rows, never the engine
                for row in batch.rows + joining:
                    if not row.done:
                        row.done, row.finish_reason = True, "error"
                        row.emit(f"[engine error: {type(err).__name__}]", "error")
                batch = _Batch(self)
