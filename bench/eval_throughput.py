"""Evaluation throughput: answers/s of `pedray eval`'s Ray Data batch generation (an actor pool of model
replicas, batched and KV-cached) side by side with a plain one-at-a-time `generate` loop in one process
(all CPU threads) on the same model and questions, greedy, the same answer length cap.

The Ray figure is end to end: actor start-up and model loading are included. Questions are PediaBench
open questions from ../shared/data when present, else the held-out split of the embedded corpus.
Greedy decoding makes both paths give the same answers; the bench checks that too.

The loop's time per answer does not depend on the other questions, so `--quick` times it on every 4th
question (its rate is the same, the run four times shorter) while Ray answers all of them; without
`--quick` both answer every question.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import common  # noqa: E402,F401  (first: this checkout's pedray, offline; bench/ is the script's folder)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pediabench" / "essay_short_answer.xlsx"


def questions(count: int) -> tuple[list[dict[str, str]], str]:
    from pedray.config import load_recipe
    from pedray.eval.sets import heldout_items, pediabench_items
    from pedray.workspace import corpus_dirs

    if SHARED.is_file():
        return pediabench_items(SHARED, limit=count), str(SHARED)
    dirs = corpus_dirs(load_recipe(None, []))
    return heldout_items(dirs)[:count], "embedded corpus held-out split"


def plain_loop(items: list[dict[str, str]], model_dir: Path, max_new_tokens: int) -> tuple[list[str], float]:
    """The baseline: one question at a time through transformers' generate (KV cache on), all threads."""
    import torch

    from pedray.model.build import load_model, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    started = time.perf_counter()
    answers = []
    for item in items:
        text = tokenizer.apply_chat_template(json.loads(item["messages"]), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer questions (under two minutes)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded small model)")
    parser.add_argument("--questions", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    count = args.questions or (192 if args.quick else 384)
    stride = 4 if args.quick else 1
    max_new_tokens = args.max_new_tokens or (48 if args.quick else 64)

    import ray

    from pedray.eval.generate import generate_dataset
    from pedray.model.build import default_model_dir

    model_dir = Path(args.model) if args.model else default_model_dir("small")
    items, source = questions(count)
    sample = items[::stride]
    loop_answers, loop_seconds = plain_loop(sample, model_dir, max_new_tokens)

    from pedray.cluster import loopback_only

    loopback_only()  # a private Ray listens on 127.0.0.1 only
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    rows = generate_dataset(items, model_dir, max_new_tokens, batch_size=args.batch_size)
    ray_seconds = time.perf_counter() - started
    ray.shutdown()

    by_id = {row["id"]: row["prediction"] for row in rows}
    same = sum(1 for item, answer in zip(sample, loop_answers) if by_id.get(item["id"]) == answer)
    loop_rate, ray_rate = len(sample) / loop_seconds, len(rows) / ray_seconds
    results = {
        "model": str(model_dir), "questions": len(items), "source": source, "max_new_tokens": max_new_tokens,
        "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "plain_loop": {"questions": len(sample), "every": stride, "seconds": round(loop_seconds, 2),
                       "answers_per_s": round(loop_rate, 3)},
        "ray_data_batched": {"seconds": round(ray_seconds, 2), "answers_per_s": round(ray_rate, 3),
                             "new_tokens": int(sum(row["new_tokens"] for row in rows))},
        "speedup": round(ray_rate / loop_rate, 2), "same_answers": same,
    }
    checks = [{"name": "ray_batched_vs_plain_loop_answers_per_s", "value": results["speedup"], "target": ">= 3.0",
               "met": results["speedup"] >= 3.0},
              {"name": "every_question_answered", "value": len(rows), "target": f"== {len(items)}",
               "met": len(rows) == len(items)},
              {"name": "greedy_answers_identical_to_the_loop", "value": same, "target": f">= {int(0.95 * len(sample))}",
               "met": same >= int(0.95 * len(sample))}]
    print(json.dumps({"bench": "eval_throughput", "results": results, "checks": checks}, ensure_ascii=False))


if __name__ == "__main__":
    main()
