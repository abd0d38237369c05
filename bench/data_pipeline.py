"""Tokenise+pack throughput: pedray's Ray Data pipeline against Hugging Face `datasets.map(batched=True)`.

Both sides read the same JSONL corpus, shuffle it by seed, tokenise with the same tokenizer and chat
template, mask prompts and pack to the same sequence length with the same packer; only the engine
differs. Ray gets the 2 CPUs of this machine; HF `datasets` is run with num_proc=1 and num_proc=2.
Time starts after Ray is up (its start-up is a one-off per job, reported separately).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common  # noqa: E402  (first: this checkout's pedray, offline; bench/ is the script's folder)


def ray_round(corpus: Path, model: Path, cfg) -> dict:
    from pedray.data.pipeline import sft_dataset

    start = time.perf_counter()
    tokens = rows = 0
    for batch in sft_dataset([corpus], str(model), cfg).iter_batches(batch_size=256, batch_format="numpy"):
        tokens += int(batch["tokens"].sum())
        rows += len(batch["input_ids"])
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "rows": rows}


def hf_round(corpus: Path, model: Path, cfg, num_proc: int) -> dict:
    import datasets

    from pedray.data.pipeline import _sft_batch  # the same tokenise+pack function Ray runs
    import pyarrow as pa

    datasets.disable_progress_bars()
    start = time.perf_counter()
    data = datasets.load_dataset("json", data_files=str(corpus / "sft_train.jsonl"), split="train",
                                 cache_dir=str(common.scratch("pedray-bench-hf-cache-")))
    data = data.shuffle(seed=cfg.seed)

    def tokenize_and_pack(batch: dict) -> dict:
        table = pa.Table.from_pydict(batch)
        out = _sft_batch(table, str(model), cfg)
        return {k: list(v) for k, v in out.items()}

    packed = data.map(tokenize_and_pack, batched=True, batch_size=cfg.batch_size, num_proc=num_proc,
                      remove_columns=data.column_names, load_from_cache_file=False)
    tokens = rows = 0
    for batch in packed.with_format("numpy").iter(batch_size=256):
        tokens += int(batch["tokens"].sum())
        rows += len(batch["input_ids"])
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="6,000 instructions, one round (under two minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instructions", type=int, default=30000)
    args = parser.parse_args()
    count, rounds = (6000, 1) if args.quick else (args.instructions, args.rounds)

    import ray

    from pedray.config import DataConfig
    from pedray.corpus.generate import write_corpus
    from pedray.model.build import init_model

    work = common.scratch("pedray-bench-data-")
    write_corpus(work / "corpus", seed=0, count=count, holdout=0.0)
    model = init_model("tiny", work / "model")
    cfg = DataConfig(seq_len=512, batch_size=512, instructions=count)
    started = time.perf_counter()
    from pedray.cluster import loopback_only

    loopback_only()  # a private Ray listens on 127.0.0.1 only
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start = time.perf_counter() - started
    ray_round(work / "corpus", model, cfg)  # warm-up: worker processes and tokenizer loads

    runs: dict[str, list[dict]] = {"ray_data": [], "hf_datasets_1proc": [], "hf_datasets_2proc": []}
    for _ in range(rounds):  # interleaved so drift on the machine hits every side alike
        runs["ray_data"].append(ray_round(work / "corpus", model, cfg))
        runs["hf_datasets_1proc"].append(hf_round(work / "corpus", model, cfg, 1))
        runs["hf_datasets_2proc"].append(hf_round(work / "corpus", model, cfg, 2))
    ray.shutdown()

    results = {"instructions": count, "seq_len": cfg.seq_len, "rounds": rounds, "ray_start_seconds": round(ray_start, 2)}
    for name, items in runs.items():
        seconds = statistics.median(r["seconds"] for r in items)
        results[name] = {"seconds": round(seconds, 3), "tokens_per_s": round(items[0]["tokens"] / seconds),
                         "records_per_s": round(count / seconds), "rows": items[0]["rows"],
                         "non_padding": round(items[0]["tokens"] / (items[0]["rows"] * cfg.seq_len), 4)}
    best_hf = max(results["hf_datasets_1proc"]["tokens_per_s"], results["hf_datasets_2proc"]["tokens_per_s"])
    speedup = results["ray_data"]["tokens_per_s"] / best_hf
    same_tokens = runs["ray_data"][0]["tokens"] == runs["hf_datasets_1proc"][0]["tokens"]
    checks = [
        {"name": "ray_data_vs_best_hf_datasets", "value": round(speedup, 3), "target": ">= 1.0", "met": speedup >= 1.0},
        {"name": "ray_non_padding_fraction", "value": results["ray_data"]["non_padding"], "target": ">= 0.95",
         "met": results["ray_data"]["non_padding"] >= 0.95},
        {"name": "same_tokens_both_engines", "value": same_tokens, "target": True, "met": same_tokens},
    ]
    print(json.dumps({"bench": "data_pipeline", "results": results, "checks": checks}, ensure_ascii=False))


if __name__ == "__main__":
    main()
