"""Crash recovery, side by side in one run: streamed answers in flight when an expert replica is SIGKILLed,

- on Serve's default health-check period (10 s), one expert replica;
- on pedray's default (`serve.replicas.health_check_period_s`, 2 s), one expert replica;
- on pedray's default with two expert replicas (`serve.replicas.min: 2`).

Per row: the stall a client sees (the longest gap between two pieces of a stream's text) and where it
goes: detection (the kill -> the controller's state no longer counts the replica as running),
replacement (-> a new replica running; its constructor, mostly the model load, is `load_seconds`), and
the retry (-> the client's next text: the router reruns the request and skips the text already sent).
Each stream's text is compared with the same request's uninterrupted answer. Three rounds per row (one
with --quick); a row reports its median round. Everything binds 127.0.0.1. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

from common import cpu_kind  # noqa: E402  (first: this checkout's pedray, offline; bench/ is the script's folder)

import httpx  # noqa: E402

from serve_load import deploy  # noqa: E402  (bench/ is this script's folder)

SERVE_DEFAULT_PERIOD = 10.0  # ray.serve's DEFAULT_HEALTH_CHECK_PERIOD_S


def stream(base: str, question: str, max_tokens: int, out: dict) -> None:
    """One streamed request; out gets the (time, text) of every piece and the status."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "stream": True,
            "task": "general"}
    pieces: list[tuple[float, str]] = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as response:
        out["status"] = response.status_code
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                if delta:
                    pieces.append((time.monotonic(), delta))
    out["pieces"] = pieces


def poll_states(app: str, deployment: str, stop: threading.Event, states: list) -> None:
    """(time, running replicas) as the controller sees them, every 50 ms."""
    from ray import serve

    while not stop.is_set():
        status = serve.status().applications[app].deployments[deployment]
        states.append((time.monotonic(), status.replica_states.get("RUNNING", 0)))
        time.sleep(0.05)


def one_row(model_dir: Path, port: int, replicas: int, period: float, max_tokens: int, kill_after_s: float) -> dict:
    from ray import serve

    expert_cpus = max(1.0, (os.cpu_count() or 2) - 1) / replicas
    base = deploy(model_dir, port, replicas=replicas, cpus=expert_cpus,
                  overrides=[f"serve.replicas.health_check_period_s={period}", "serve.requests.max_tokens_limit=2048"])
    handle = serve.get_deployment_handle("expert-model", app_name="bench")
    questions = [f"孩子第{i + 1}天发烧，精神还好，怎么护理？" for i in range(replicas)]
    uninterrupted = []
    for question in questions:
        reference: dict = {}
        stream(base, question, max_tokens, reference)
        uninterrupted.append("".join(text for _, text in reference["pieces"]))
    pids = sorted({handle.whoami.remote().result()["pid"] for _ in range(8 * replicas)})
    states: list = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_states, args=("bench", "expert-model", stop, states), daemon=True)
    poller.start()
    outs = [dict() for _ in questions]
    clients = [threading.Thread(target=stream, args=(base, q, max_tokens, out)) for q, out in zip(questions, outs)]
    for client in clients:
        client.start()
    time.sleep(kill_after_s)
    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    for client in clients:
        client.join()
    time.sleep(0.5)
    stop.set()
    poller.join()
    new_pids = {}
    for _ in range(8 * replicas):
        info = handle.whoami.remote().result()
        new_pids[info["pid"]] = info["load_seconds"]
    serve.delete("bench")

    detected = next((t for t, running in states if t > killed_at and running < replicas), None)
    replaced = next((t for t, running in states if detected and t > detected and running >= replicas), None)
    rows = []
    for out, reference in zip(outs, uninterrupted):
        times = [t for t, _ in out.get("pieces", [])]
        gaps = [(b - a, b) for a, b in zip(times, times[1:]) if b > killed_at]  # (gap, the piece that ended it)
        stall, resumed = max(gaps, default=(0.0, None))
        rows.append({"status": out.get("status"), "stall_s": round(stall, 2),
                     "text_unchanged": "".join(text for _, text in out.get("pieces", [])) == reference,
                     "finished_before_kill": bool(times) and times[-1] < killed_at,
                     "resumed_after_s": round(resumed - killed_at, 2) if resumed else None})
    replacement = [seconds for pid, seconds in new_pids.items() if pid not in pids]

    def since(a, b):
        return round(b - a, 2) if a is not None and b is not None else None

    victim = max(rows, key=lambda row: row["stall_s"])
    return {"replicas": replicas, "health_check_period_s": period, "streams": rows,
            "stall_s": victim["stall_s"],
            "breakdown_s": {"detection": since(killed_at, detected), "replacement": since(detected, replaced),
                            "new_replica_load_seconds": replacement[0] if replacement else None,
                            "retry_to_next_text": since(replaced, killed_at + (victim["resumed_after_s"] or 0))
                            if replicas == 1 else None}}


def median_row(rounds: list[dict]) -> dict:
    """The round with the median stall, and every round's stall and breakdown."""
    ordered = sorted(rounds, key=lambda row: row["stall_s"])
    return {**ordered[len(ordered) // 2], "rounds": [{"stall_s": r["stall_s"], **r["breakdown_s"]} for r in rounds],
            "all_streams": [stream for r in rounds for stream in r["streams"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the same three rows, one round each (else three)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded small model, untrained, "
                        "so that every answer runs to max_tokens)")
    args = parser.parse_args()
    max_tokens, rounds = (600, 1) if args.quick else (1000, 3)

    import ray
    from ray import serve

    from pedray.cluster import loopback_only
    from pedray.model.build import default_model_dir
    from pedray.net import free_port

    model_dir = Path(args.model) if args.model else default_model_dir("small")
    loopback_only()  # a private Ray listens on 127.0.0.1 only
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = {"serve_default_1_replica": (1, SERVE_DEFAULT_PERIOD), "pedray_1_replica": (1, 2.0),
                "pedray_2_replicas": (2, 2.0)}
    rows = {name: median_row([one_row(model_dir, port, replicas, period, max_tokens, 1.5) for _ in range(rounds)])
            for name, (replicas, period) in settings.items()}
    serve.shutdown()
    ray.shutdown()

    streams = [s for row in rows.values() for s in row["all_streams"]]
    serve_default, ours, two = (rows[k] for k in ("serve_default_1_replica", "pedray_1_replica", "pedray_2_replicas"))
    checks = [
        {"name": "every stream answered 200 with the uninterrupted answer's text",
         "value": sum(s["status"] == 200 and s["text_unchanged"] for s in streams), "target": f"== {len(streams)}",
         "met": all(s["status"] == 200 and s["text_unchanged"] for s in streams)},
        {"name": "the kill landed mid-answer", "value": sum(not s["finished_before_kill"] for s in streams),
         "target": f"== {len(streams)}", "met": not any(s["finished_before_kill"] for s in streams)},
        {"name": "detection within the 2 s period (+1 s)", "value": ours["breakdown_s"]["detection"], "target": "<= 3.0",
         "met": (ours["breakdown_s"]["detection"] or 99) <= 3.0},
        {"name": "one-replica stall, pedray vs Serve's default period", "value": [ours["stall_s"], serve_default["stall_s"]],
         "target": "pedray < Serve default", "met": ours["stall_s"] < serve_default["stall_s"]},
        {"name": "stall with two replicas vs one", "value": [two["stall_s"], ours["stall_s"]], "target": "two < one",
         "met": two["stall_s"] < ours["stall_s"]},
    ]
    results = {"model": str(model_dir), "max_tokens": max_tokens, "rounds": rounds, "cpu": cpu_kind(), "rows": rows}
    print(json.dumps({"bench": "serve_recovery", "results": results, "checks": checks}, ensure_ascii=False))


if __name__ == "__main__":
    main()
