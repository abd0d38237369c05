"""A driver on the simulated cluster of test_autoscale (its own process: the test process holds another Ray).

    python tests/cluster_driver.py MODEL_DIR PORT

Waits until the autoscaler has removed the idle worker nodes, then deploys the Serve app with expert
autoscaling on and sends load through HTTP while sampling the expert's running replicas. Each stream
sends at least REQUESTS_EACH requests and goes on until a second replica runs or LOAD_LIMIT_S has
passed: on a busy 2-core machine the upscale decision and the new replica's start can take longer than
a fixed load lasts. Then it waits for the replicas to come back down and prints one JSON line with what
it saw.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[1]
STREAMS, REQUESTS_EACH = 8, 12
LOAD_LIMIT_S = 240  # the load stops here even if no second replica ever runs
sys.path.insert(0, str(REPO))


def alive_workers() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"] and "node:__internal_head__" not in node["Resources"])


def wait(predicate, timeout: float) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout`."""
    started = time.time()
    while time.time() - started < timeout:
        if predicate():
            return round(time.time() - started, 1)
        time.sleep(0.5)
    return None


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def load(url: str, streams: int, requests_each: int, enough: threading.Event) -> tuple[int, int, int]:
    """`streams` threads, each sending streamed chat requests one after another: at least `requests_each`,
    and more until `enough` is set or LOAD_LIMIT_S has passed. Returns (sent, completed, failed)."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    sent, done, failed = [0], [0], [0]
    lock = threading.Lock()
    deadline = time.time() + LOAD_LIMIT_S

    def one_stream() -> None:
        mine = 0
        while mine < requests_each or not (enough.is_set() or time.time() > deadline):
            mine += 1
            with lock:
                sent[0] += 1
            try:
                text = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                    model="pedray", messages=[{"role": "user", "content": "孩子发热三天了，需要注意什么？"}],
                    max_tokens=96, temperature=0, stream=True) if chunk.choices)
                with lock:
                    done[0] += bool(text)
            except Exception:  # counted, reported, asserted on by the test
                with lock:
                    failed[0] += 1

    threads = [threading.Thread(target=one_stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent[0], done[0], failed[0]


def main() -> None:
    from ray import serve

    from pedray.config import load_recipe
    from pedray.serve.run import start

    model, port = sys.argv[1], int(sys.argv[2])
    ray.init(logging_level="ERROR")  # RAY_ADDRESS names the simulated cluster
    out = {"workers_at_start": alive_workers()}
    out["scale_down_s"] = wait(lambda: alive_workers() == 0, 90)
    out["workers_removed"] = sum(1 for node in ray.nodes()
                                 if not node["Alive"] and "node:__internal_head__" not in node["Resources"])
    recipe = load_recipe(REPO / "jobs" / "tiny.yaml", [
        f"serve.http.port={port}", "serve.replicas.min=1", "serve.replicas.max=2", "serve.replicas.target_ongoing_requests=1",
        "serve.replicas.upscale_delay_s=1", "serve.replicas.downscale_delay_s=3", "serve.replicas.window_s=3",
        "serve.replicas.cpus=0.5", "serve.replicas.max_batch_size=2"])
    url = start(model, recipe)
    samples: list[int] = []
    stop, scaled_up = threading.Event(), threading.Event()
    out["replicas_before"] = running_replicas("pedray", "expert-model")
    started = time.time()

    def sample() -> None:
        while not stop.is_set():
            samples.append(running_replicas("pedray", "expert-model"))
            if samples[-1] > 1 and not scaled_up.is_set():
                out["scale_up_s"] = round(time.time() - started, 1)
                scaled_up.set()
            time.sleep(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out["sent"], out["completed"], out["failed"] = load(url, STREAMS, REQUESTS_EACH, scaled_up)
    out["load_s"] = round(time.time() - started, 1)
    out["replicas_peak"] = max(samples)
    out["scale_in_s"] = wait(lambda: running_replicas("pedray", "expert-model") == 1, 90)
    stop.set()
    sampler.join()
    out["replicas_after"] = running_replicas("pedray", "expert-model")
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
