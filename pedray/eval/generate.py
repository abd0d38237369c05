"""Answer generation for evaluation: batched, KV-cached, greedy; in Ray Data actors or in one process.

`Generator` is the one implementation: a Ray Data actor class (`generate_dataset` runs a pool of them
over the questions) that also runs in-process (`generate_local`, with batch size 1 it is the plain
one-at-a-time loop the benchmark compares against). A MoUSE adapter folder is loaded over its
recorded base model and routed by each question's task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pedray import storage
from pedray.cluster import map_without_restarts, settle_cpus
from pedray.model.build import load_model, load_tokenizer
from pedray.model.mouse_io import is_adapter, load_mouse, read_config
from pedray.storage import local_copy


def load_for_eval(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, routes_by_task) for a plain HF model folder or a MoUSE adapter folder."""
    model_dir = local_copy(model_dir)
    if is_adapter(model_dir):
        base = read_config(model_dir).get("base_model")
        model = load_mouse(model_dir, dtype=dtype)
        return model, load_tokenizer(base), True
    return load_model(model_dir, dtype=dtype).eval(), load_tokenizer(model_dir), False


class Generator:
    """Greedy answers for a batch of questions (columns of `pedray.eval.sets` items) -> `prediction`.

    Prompts are rendered with the model's chat template, left-padded and cut from the left so that
    prompt + answer fit the model's context. Generation uses the KV cache and stops at EOS.
    """

    def __init__(self, model_dir: str, max_new_tokens: int = 128, threads: int = 0, dtype: str = "fp32"):
        if threads:
            torch.set_num_threads(threads)
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        self.model, self.tokenizer, self.by_task = load_for_eval(model_dir, torch_dtype)
        self.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        context = getattr(self.model.config, "max_position_embeddings", 2048)
        self.max_prompt = max(16, context - max_new_tokens)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        prompts = [self.tokenizer.apply_chat_template(json.loads(m), tokenize=False, add_generation_prompt=True)
                   for m in batch["messages"]]
        encoded = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = encoded["input_ids"][:, -self.max_prompt:], encoded["attention_mask"][:, -self.max_prompt:]
        options: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, do_sample=False, use_cache=True,
                                       pad_token_id=self.tokenizer.pad_token_id,
                                       eos_token_id=self.tokenizer.eos_token_id)
        if self.by_task:
            options["task"] = torch.tensor([self.model.tasks.index(t) for t in batch["task"]])
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **options)
        answers = out[:, ids.shape[1]:]
        eos = self.tokenizer.eos_token_id
        lengths = [int((row != eos).cumprod(0).sum()) for row in answers]  # tokens before the first EOS
        stopped = [bool((row == eos).any()) for row in answers]  # ended its turn within the budget
        texts = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        elapsed = time.perf_counter() - started
        return {**batch, "prediction": np.array([t.strip() for t in texts], dtype=object),
                "new_tokens": np.array(lengths, dtype=np.int64), "stopped": np.array(stopped, dtype=bool),
                "seconds": np.full(len(texts), elapsed / max(len(texts), 1))}


def _sorted(items: list[dict[str, str]]) -> list[dict[str, str]]:
    """Questions ordered by prompt length, so a batch pads little."""
    return sorted(items, key=lambda item: len(item["messages"]))


def generate_local(items: list[dict[str, str]], model_dir: str | Path, max_new_tokens: int,
                   batch_size: int = 1, threads: int = 0) -> list[dict[str, Any]]:
    """Answers in this process, `batch_size` questions at a time (1: the plain one-at-a-time loop)."""
    generator = Generator(str(model_dir), max_new_tokens, threads)
    ordered = _sorted(items) if batch_size > 1 else items
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        batch = {key: np.array([item[key] for item in chunk], dtype=object) for key in chunk[0]}
        out = generator(batch)
        rows.extend({key: _plain(out[key][i]) for key in out} for i in range(len(chunk)))
    return rows


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def actor_layout(actors: int = 0) -> tuple[int, int]:
    """(actors, CPUs each): by default one single-threaded replica per CPU Ray has free right now."""
    import ray

    free = int(ray.available_resources().get("CPU", 1))
    count = actors or max(1, free)
    return count, max(1, free // count)


def generate_dataset(items: list[dict[str, str]], model_dir: str | Path, max_new_tokens: int,
                     batch_size: int = 32, actors: int = 0) -> list[dict[str, Any]]:
    """Answers from a Ray Data actor pool of model replicas, `batch_size` questions a forward pass.

    Needs Ray initialised (`pedray.cluster.ensure_ray`). Questions are sorted by length first; results come back in
    any order, each with its `id`.
    """
    import ray.data

    settle_cpus()  # the CPUs of the stage before, back before the pool is sized by them
    count, cpus = actor_layout(actors)
    dataset = ray.data.from_items(_sorted(items), override_num_blocks=max(count, len(items) // batch_size or 1))
    answered = map_without_restarts(
        dataset, Generator, batch_size=batch_size, batch_format="numpy", num_cpus=cpus,
        compute=ray.data.ActorPoolStrategy(size=count),
        fn_constructor_kwargs={"model_dir": str(storage.as_location(model_dir) if storage.is_uri(model_dir)
                                                 else Path(model_dir).resolve()), "max_new_tokens": max_new_tokens,
                               "threads": cpus},
    )
    return [{key: _plain(value) for key, value in row.items()} for row in answered.take_all()]
