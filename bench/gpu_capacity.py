"""GPU capacity: what one GPU does per second on a 7B/14B model shape, for the capacity table in the README.

Runs on any single CUDA GPU with torch + transformers only (no Ray, no DeepSpeed: it measures the
per-GPU compute a ZeRO-3 data-parallel stage is built on, not the cluster's communication). The
model is built from a config (`jobs/architectures/...`) with random weights, bf16, on the GPU:

- the bf16 matmul ceiling (8192^3) of this GPU, for model FLOPs utilisation;
- full-parameter forward+backward (sft/cpt) tokens/s, with and without gradient checkpointing;
- forward-only tokens/s (the frozen reference in dfpo, eval scoring);
- MoUSE (pedray's layer, universal + T experts) forward+backward over the frozen base;
- batched KV-cached greedy decoding tokens/s (evaluation, serving).

`python bench/gpu_capacity.py --arch jobs/architectures/qwen2.5-7b`. `--quick` runs the small
embedded shape on whatever device there is (a smoke test). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common  # noqa: E402,F401  (first: this checkout's pedray, offline; bench/ is the script's folder)

import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call, median of `steps` after `warmup`."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, 10, 3)
    return 2 * size ** 3 / seconds / 1e12


def build(arch: dict, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**arch)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def train_rate(model, batch: torch.Tensor, device, steps: int, warmup: int, checkpointing: bool) -> dict:
    """Forward+backward tokens/s of whatever parameters require grad; peak memory in GiB."""
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()

    def step():
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        for p in model.parameters():
            p.grad = None

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = timed(step, device, steps, warmup)
    except torch.OutOfMemoryError:
        for p in model.parameters():
            p.grad = None
        torch.cuda.empty_cache()
        return {"out_of_memory": True}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"tokens_per_s": batch.numel() / seconds, "seconds_per_step": seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="jobs/architectures/qwen2.5-7b", help="folder with config.json")
    parser.add_argument("--quick", action="store_true", help="the small embedded shape (smoke test)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--decode-batch", type=int, default=32)
    args = parser.parse_args()

    from pedray.config.schema import LoraConfig
    from pedray.model.build import MODEL_SIZES
    from pedray.model.mouse import attach_mouse

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.quick:
        arch = dict(model_type="llama", max_position_embeddings=4096, tie_word_embeddings=True, **MODEL_SIZES["small"])
        args.seq, args.micro_batch, args.steps, args.decode_batch = 256, 2, 2, 4
    else:
        arch = json.loads((Path(args.arch) / "config.json").read_text())
        arch.pop("architectures", None)
    warmup = 1 if args.quick else 2
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "arch": "small (embedded)" if args.quick else args.arch, "dtype": str(dtype),
                     "seq": args.seq, "micro_batch": args.micro_batch, "torch": torch.__version__}
    results["matmul_tflops"] = matmul_ceiling(device, dtype, 8192 if device.type == "cuda" else 1024)

    started = time.perf_counter()
    model = build(arch, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    results.update(parameters=params, build_s=round(time.perf_counter() - started, 1))
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (args.micro_batch, args.seq), device=device)

    for name, checkpointing in (("full_ckpt", True), ("full_no_ckpt", False)):
        row = train_rate(model, batch, device, args.steps, warmup, checkpointing)
        if "tokens_per_s" in row:  # 6N FLOPs per token (forward 2N + backward 4N), recomputation not counted
            row["mfu"] = 6 * params * row["tokens_per_s"] / (results["matmul_tflops"] * 1e12)
        results[name] = row

    model.eval()
    with torch.inference_mode():
        seconds = timed(lambda: model(input_ids=batch, use_cache=False).logits, device, args.steps, warmup)
    results["forward_only"] = {"tokens_per_s": batch.numel() / seconds}

    prompt = torch.randint(0, vocab, (args.decode_batch, 256), device=device)
    new = 64 if args.quick else 256
    with torch.inference_mode():
        def decode():
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
        seconds = timed(decode, device, 1, 1)
    results["decode"] = {"batch": args.decode_batch, "prompt": 256, "new_tokens": new,
                         "tokens_per_s": args.decode_batch * new / seconds, "seconds": seconds}

    mouse = attach_mouse(model, LoraConfig(rank=args.rank, alpha=2 * args.rank, num_experts=args.experts))
    mouse.to(device=device, dtype=dtype)
    trainable = sum(p.numel() for p in mouse.parameters() if p.requires_grad)
    row = train_rate(mouse.model, batch, device, args.steps, warmup, True)
    results["mouse_ckpt"] = {**row, "trainable_parameters": trainable}
    if device.type == "cuda":
        results["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30

    full = results["full_ckpt"]
    checks = [{"name": "full_ckpt_runs", "value": "tokens_per_s" in full, "target": True, "met": "tokens_per_s" in full},
              {"name": "full_ckpt_mfu", "value": round(full.get("mfu", 0.0), 3), "target": ">= 0.3 on a GPU",
               "met": device.type != "cuda" or full.get("mfu", 0.0) >= 0.3}]
    print(json.dumps({"bench": "gpu_capacity", "results": results, "checks": checks}))


if __name__ == "__main__":
    main()
