"""Ray Data pipelines: stream records from disk, tokenise, mask, mix and pack them for each stage."""

from __future__ import annotations

import hashlib
import signal
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pedray import storage
from pedray.config.schema import DataConfig
from pedray.data import packing, tokenize as tok
from pedray.vocab import TASKS


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    """One tokenizer per Ray worker process and path (tasks reuse their process). Imported here, under the
    held interrupt: the module itself stays light (no torch), so that a map worker unpickling the UDF
    imports nothing a cancel could cut in half."""
    with _interrupts_held():
        from pedray.model.build import load_tokenizer

        return load_tokenizer(path)


@contextmanager
def _interrupts_held():
    """Hold back a KeyboardInterrupt until the block is done, then raise it.

    When a dataset's iteration stops early (a stage's last step, a preview), Ray Data cancels the map
    tasks still running, and Ray cancels a running task by interrupting its worker's main thread. A worker
    interrupted while its first tokenizer load imports transformers (and accelerate) keeps half-imported
    modules: a submodule registered, its package not. Every later load in that process then fails with
    an ImportError, and Ray reuses the process for later tasks, stages and runs on the same cluster.
    """
    previous = signal.getsignal(signal.SIGINT)
    # Only the main thread receives signals (and Ray's interrupt), and only a Python handler raises
    # KeyboardInterrupt: with SIGINT ignored, at its default or handled outside Python there is none to hold.
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            previous(signal.SIGINT, None)


def corpus_files(dirs: list[str | Path], kind: str, split: str = "train") -> list[str]:
    """The `{kind}_{split}.jsonl` files of the prepared corpus folders (local or URIs; empty ones left out)."""
    files = [storage.join(d, f"{kind}_{split}.jsonl") for d in dirs]
    return [str(f) for f in files if storage.size(f) > 0]


def count_records(files: list[str]) -> int:
    """Record count from each folder's summary.json when it has one, else by reading the file."""
    total = 0
    for file in files:
        name = Path(storage.display(file)).name
        summary = storage.read_json(storage.sibling(file, "summary.json")) or {}
        info = summary.get("files", {}).get(name)
        counted = info.get("records") if isinstance(info, dict) else None
        if counted is None:
            counted = sum(1 for line in (storage.read_text(file) or "").splitlines() if line.strip())
        total += counted
    return total


def read_records(files: list[str], seed: int, shuffle: str = "global"):
    """A Ray Dataset of normalised records in a seeded order.

    shuffle="global": Ray Data's all-to-all random_shuffle. "stream": the files are read in a seeded
    order and nothing is exchanged (records are shuffled within each batch by the map functions).
    "none": file order as given.
    """
    import random

    import ray.data

    if not files:
        raise FileNotFoundError("no corpus files to read; run `python -m pedray prep` or the corpus generator")
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if shuffle == "stream":
        files = sorted(files)
        random.Random(seed).shuffle(files)
    # A URI: every node reads the corpus from the storage, none from the driver's disk.
    filesystem = storage.arrow(files[0])[1]
    paths = [storage.arrow(f)[0] for f in files]
    dataset = ray.data.read_json(paths, file_extensions=["jsonl"], filesystem=filesystem)  # arrow blocks
    return dataset.random_shuffle(seed=seed) if shuffle == "global" else dataset


def _keep(record_id: str, seed: int, probability: float) -> bool:
    digest = hashlib.sha256(f"hybrid:{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < probability


def _hybrid_sample(batch: pa.Table, seed: int, probability: float) -> pa.Table:
    """Every pretraining document of the batch and the seeded share of its instructions."""
    keep = [kind == "text" or _keep(record_id, seed, probability)
            for kind, record_id in zip(batch.column("kind").to_pylist(), batch.column("id").to_pylist())]
    return batch.filter(pa.array(keep, type=pa.bool_()))


def _rows(batch: pa.Table, cfg: DataConfig) -> list[dict[str, Any]]:
    """The batch's records; in stream mode shuffled by the batch's seed (the only mixing it gets)."""
    rows = batch.to_pylist()
    if cfg.shuffle == "stream":
        order = np.random.default_rng(_batch_seed(batch, cfg.seed)).permutation(len(rows))
        rows = [rows[i] for i in order]
    return rows


def _batch_seed(batch: pa.Table, seed: int) -> int:
    """A seed for one batch, from the run's seed and the batch's first record id (same on every run)."""
    first = batch.column("id")[0].as_py() if batch.num_rows else ""
    return int.from_bytes(hashlib.sha256(f"{seed}:{first}".encode()).digest()[:8], "big")


def _pack_or_pad(docs, cfg: DataConfig, pad_id: int, truncate: bool, seed: int,
                 tags: list[int] | None = None) -> dict[str, np.ndarray]:
    if cfg.pack:
        return packing.pack(docs, cfg.seq_len, pad_id, truncate=truncate, seed=seed, tags=tags)
    return packing.pad_rows(docs, cfg.seq_len, pad_id, tags=tags)


def _sft_batch(batch: pa.Table, tokenizer_path: str, cfg: DataConfig) -> dict[str, np.ndarray]:
    tokenizer = _tokenizer(tokenizer_path)
    rows = _rows(batch, cfg)
    docs = tok.encode_conversations(tokenizer, rows, cfg.seq_len)
    tags = [TASKS.index(r["task"]) for r in rows]  # per-token task labels: MoUSE task gating and routing stats
    return _pack_or_pad(docs, cfg, tokenizer.pad_token_id, truncate=True, seed=_batch_seed(batch, cfg.seed),
                        tags=tags)


def _cpt_batch(batch: pa.Table, tokenizer_path: str, cfg: DataConfig) -> dict[str, np.ndarray]:
    tokenizer = _tokenizer(tokenizer_path)
    docs = tok.encode_texts(tokenizer, [tok.record_text(r) for r in _rows(batch, cfg)])
    return _pack_or_pad(docs, cfg, tokenizer.pad_token_id, truncate=False, seed=_batch_seed(batch, cfg.seed))


def _pref_batch(batch: pa.Table, tokenizer_path: str, cfg: DataConfig) -> pa.Table:
    tokenizer = _tokenizer(tokenizer_path)
    columns = tok.encode_preferences(tokenizer, _rows(batch, cfg), cfg.seq_len, cfg.max_prompt_len)
    return pa.table({k: pa.array([v.tolist() for v in vs], type=pa.list_(pa.int32())) for k, vs in columns.items()})


def sft_dataset(dirs: list[str | Path], tokenizer_path: str, cfg: DataConfig, split: str = "train"):
    """Packed, prompt-masked conversations (multi-turn aware) for the sft and mouse stages."""
    records = read_records(corpus_files(dirs, "sft", split), cfg.seed, cfg.shuffle)
    return records.map_batches(_sft_batch, batch_size=cfg.batch_size, batch_format="pyarrow",
                               fn_kwargs={"tokenizer_path": tokenizer_path, "cfg": cfg})


def cpt_dataset(dirs: list[str | Path], tokenizer_path: str, cfg: DataConfig, split: str = "train"):
    """Hybrid instruction pre-training stream: documents plus flattened instructions, packed.

    `cfg.hybrid_ratio` flattened instructions are mixed in per pretraining document (sampled by a
    seeded hash of the record id, so the mixture is the same on every run and every worker).
    """
    text_files = corpus_files(dirs, "text", "train")
    instruction_files = corpus_files(dirs, "sft", split) if cfg.hybrid_ratio > 0 else []
    if not text_files and not instruction_files:
        raise FileNotFoundError(f"no pretraining text or instructions under {dirs}")
    wanted = cfg.hybrid_ratio * max(count_records(text_files), 1)
    probability = min(1.0, wanted / max(count_records(instruction_files), 1)) if instruction_files else 0.0
    seed = cfg.seed
    # One read over both kinds: the hybrid sample keeps every document and a seeded share of instructions.
    records = read_records(text_files + instruction_files, seed, "none" if cfg.shuffle == "global" else cfg.shuffle)
    mixed = records.select_columns(["id", "kind", "messages", "text"]).map_batches(
        _hybrid_sample, batch_format="pyarrow", fn_kwargs={"seed": seed, "probability": probability})
    if cfg.shuffle == "global":
        mixed = mixed.random_shuffle(seed=seed)
    return mixed.map_batches(_cpt_batch, batch_size=cfg.batch_size, batch_format="pyarrow",
                             fn_kwargs={"tokenizer_path": tokenizer_path, "cfg": cfg})


def pref_dataset(dirs: list[str | Path], tokenizer_path: str, cfg: DataConfig, split: str = "train"):
    """Tokenised preference pairs (prompt masked) for the dfpo stage; padded per batch by the collator."""
    records = read_records(corpus_files(dirs, "pref", split), cfg.seed, cfg.shuffle)
    return records.map_batches(_pref_batch, batch_size=cfg.batch_size, batch_format="pyarrow",
                               fn_kwargs={"tokenizer_path": tokenizer_path, "cfg": cfg})
