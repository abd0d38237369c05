"""A small OpenAI-compatible chat server for the LLM-as-judge tests, started by the tests on 127.0.0.1.

The request's `model` picks how it judges, so one server covers every case the judge must handle:
  longer   prefers the longer answer (a judge with a real preference, no position bias)
  first    always names the answer shown first (pure position bias)
  flaky    the first reply to each prompt has no verdict, the second follows `longer`
  garbage  never gives a verdict
  error    answers HTTP 500
  tiny     the embedded tiny language model (--model-dir) writes the reply: a real LM endpoint
Run: python tests/judge_server.py [--model-dir DIR]; it prints its port on the first line.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN: set[str] = set()
LOCK = threading.Lock()
LM: dict = {}


def _answers(prompt: str) -> tuple[str, str]:
    match = re.search(r"\[回答A\]\n(.*)\n\n\[回答B\]\n(.*)\n\n请先", prompt, re.S)
    return (match.group(1), match.group(2)) if match else ("", "")


def _longer(prompt: str) -> str:
    a, b = _answers(prompt)
    verdict = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "平局"
    return f"两个回答各有侧重，综合来看较完整的一方更好。\n结论：{verdict}"


def reply(model: str, prompt: str) -> str | None:
    if model == "longer":
        return _longer(prompt)
    if model == "first":
        return "回答A更好。\n结论：A"
    if model == "flaky":
        with LOCK:
            first_time = prompt not in SEEN
            SEEN.add(prompt)
        return "两个回答都还可以，难以评判。" if first_time else _longer(prompt)
    if model == "garbage":
        return "这个问题很好，家长应多关注孩子的饮食。"
    if model == "tiny":
        with LOCK:
            generator = LM["generator"]
            rows = {"messages": [json.dumps([{"role": "user", "content": prompt}], ensure_ascii=False)],
                    "task": ["general"]}
            import numpy as np

            out = generator({k: np.array(v, dtype=object) for k, v in rows.items()})
        return str(out["prediction"][0])
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        model, prompt = request.get("model", ""), request["messages"][-1]["content"]
        content = reply(model, prompt)
        if content is None:
            self._send(500, {"error": {"message": f"judge {model!r} failed", "type": "server_error"}})
            return
        self._send(200, {"id": "judge-1", "object": "chat.completion", "created": int(time.time()), "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args()
    if args.model_dir:
        from pedray.eval.generate import Generator

        LM["generator"] = Generator(args.model_dir, max_new_tokens=24, threads=1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
