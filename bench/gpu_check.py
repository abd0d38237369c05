"""GPU check: one short sft stage through Ray Train + DeepSpeed with bf16 on CUDA; prints tokens/s.

For when a GPU machine is at hand: `python bench/gpu_check.py [--size small] [--steps 30]`. It builds
the embedded default model and corpus, runs the real stage (one worker per visible GPU), and ends
with one JSON line like every bench here.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import common  # noqa: E402  (first: this checkout's pedray, offline; bench/ is the script's folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 steps")
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()

    import ray
    import torch

    from pedray.config import load_recipe
    from pedray.corpus.generate import write_corpus
    from pedray.model.build import default_model_dir
    from pedray.train.runner import run_stage

    gpus = torch.cuda.device_count()
    if gpus == 0:
        print(json.dumps({"bench": "gpu_check", "results": {"gpus": 0}, "checks": [
            {"name": "cuda_available", "value": False, "target": True, "met": False}]}))
        return
    steps = 10 if args.quick else args.steps
    work = common.scratch("pedray-gpu-check-")
    write_corpus(work / "corpus", seed=0, count=3000, holdout=0.02)
    model_dir = default_model_dir(args.size)
    from pedray.cluster import loopback_only

    loopback_only()  # a private Ray listens on 127.0.0.1 only
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    recipe = load_recipe(None, [
        f"output_dir={work / 'run'}", f"data.corpus_dir={work / 'corpus'}", f"model.path={model_dir}",
        "data.seq_len=1024", "data.max_prompt_len=512", f"scaling.num_workers={gpus}", "scaling.use_gpu=true",
        "scaling.cpus_per_worker=1", "scaling.precision=bf16", f"scaling.zero_stage={args.zero_stage}",
        "scaling.micro_batch_size=16", f"stages.sft.max_steps={steps}", "stages.sft.log_every=2",
        f"stages.sft.checkpoint_every={steps * 10}"])
    manifest = run_stage(recipe, "sft", model_dir, work / "run" / "sft", {"stage": "base", "fingerprint": "gpu"})
    ray.shutdown()
    history = json.loads(Path(manifest["paths"]["history"]).read_text())
    steady = [h["sft/tokens_per_s"] for h in history[1:-1]] or [h["sft/tokens_per_s"] for h in history]
    results = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "model": args.size, "steps": steps,
               "tokens_per_s": round(statistics.mean(steady), 1),
               "held_out_loss": [round(e["loss"], 4) for e in manifest["held_out_loss"]]}
    fell = manifest["held_out_loss"][-1]["loss"] < manifest["held_out_loss"][0]["loss"]
    print(json.dumps({"bench": "gpu_check", "results": results, "checks": [
        {"name": "held_out_loss_fell", "value": fell, "target": True, "met": fell}]}))


if __name__ == "__main__":
    main()
