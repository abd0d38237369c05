"""The Serve app for real on 127.0.0.1: the official `openai` client, streaming, routes, safety, bad input,
API keys, dynamic batching, and a task-gated MoUSE adapter served as merged per-task experts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from helpers import free_port, wait_for

from pedray.config import load_recipe
from pedray.vocab import DISCLAIMER, URGENT_NOTICE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ray_local, tiny_model_dir, small_corpus, tmp_path_factory):
    """Two apps on one Serve instance: the plain tiny model at / (two expert replicas), a task-gated MoUSE
    adapter (API key) at /mouse."""
    from ray import serve

    from pedray.config.schema import LoraConfig
    from pedray.model.build import load_model
    from pedray.model.mouse import attach_mouse
    from pedray.model.mouse_io import save_mouse
    from pedray.serve.app import build_app

    port = free_port()
    cache = tmp_path_factory.mktemp("serve-cache")
    common = [f"data.corpus_dir={small_corpus}", "serve.replicas.cpus=0.1", "serve.requests.max_tokens_limit=64",
              "serve.requests.default_max_tokens=16", f"serve.http.port={port}"]
    plain = load_recipe(None, common + ["serve.replicas.min=2", "serve.replicas.max=2"])
    keyed = load_recipe(None, common + ["serve.http.api_key=secret"])
    model = attach_mouse(load_model(tiny_model_dir), LoraConfig(rank=4, num_experts=2, gating="task"))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.adapter_state().values():
            parameter.normal_(std=0.2)
    adapter = save_mouse(model, tmp_path_factory.mktemp("adapter"), base_model=str(tiny_model_dir))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(tiny_model_dir, plain.serve, [small_corpus], cache), name="plain", route_prefix="/")
    serve.run(build_app(adapter, keyed.serve, [small_corpus], cache), name="mouse", route_prefix="/mouse")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _client(base: str, key: str = "none"):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


ASK = [{"role": "user", "content": "孩子发烧两天了，还流鼻涕，怎么办？"}]


def test_openai_client_non_streaming_and_streaming_give_the_same_answer(served):
    client = _client(served)
    raw = client.chat.completions.with_raw_response.create(model="pedray", messages=ASK, max_tokens=12)
    whole = raw.parse()
    content = whole.choices[0].message.content
    assert content.endswith(DISCLAIMER) and not content.startswith(URGENT_NOTICE)
    info = whole.model_extra["pedray"]
    assert raw.headers["x-pedray-route"] == info["route"] and raw.headers["x-pedray-expert"] == "model"
    assert whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 12
    assert whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="pedray", messages=ASK, max_tokens=12, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == content  # greedy: the stream adds up to the whole answer, disclaimer included
    assert len(chunks) >= 4 and chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert [m.id for m in client.models.list().data] == ["pedray"]


def test_red_flags_put_urgent_care_first_in_both_modes(served):
    client = _client(served)
    urgent = [{"role": "user", "content": "孩子高烧后抽搐了两分钟，现在很困"}]
    whole = client.chat.completions.create(model="pedray", messages=urgent, max_tokens=4)
    assert whole.choices[0].message.content.startswith(URGENT_NOTICE)
    extra = whole.model_extra["pedray"]
    assert extra["red_flags"] == ["seizure", "drowsy_after_seizure"]
    assert extra["triage"]["urgent"] and whole.choices[0].message.content.startswith(extra["triage"]["notice"])
    assert [s["reason"] for s in extra["triage"]["signs"]][0] == "“抽搐”"
    first = next(iter(client.chat.completions.create(model="pedray", messages=urgent, max_tokens=4, stream=True)))
    assert first.choices[0].delta.content.startswith(URGENT_NOTICE)
    later = [{"role": "user", "content": "孩子3岁，咳嗽三天了"}, {"role": "assistant", "content": "出现抽搐请就医。"},
             {"role": "user", "content": "晚上咳得更厉害，还有点喘"}]  # the sign is in the second turn
    first = next(iter(client.chat.completions.create(model="pedray", messages=later, max_tokens=4, stream=True)))
    assert first.model_extra["pedray"]["red_flags"] == ["breathing_difficulty"]
    assert first.choices[0].delta.content.startswith(URGENT_NOTICE)


def test_route_from_the_request_field_or_the_classifier_and_counted(served):
    client = _client(served)
    before = httpx.get(f"{served}/v1/routes").json()["counts"]
    chosen = client.chat.completions.create(model="pedray", messages=ASK, max_tokens=2, extra_body={"task": "evidiag"})
    assert chosen.model_extra["pedray"]["route"] == "evidiag"
    after = httpx.get(f"{served}/v1/routes").json()["counts"]
    assert after["evidiag"] == before["evidiag"] + 1


def test_bad_input_is_a_4xx_with_an_openai_error_body_never_a_5xx(served):
    url = f"{served}/v1/chat/completions"
    bad = [b"{oops", b"\xff\xfe\x00", json.dumps({"messages": []}).encode(),
           json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
           json.dumps({"messages": [{"role": "user", "content": {"a": 1}}]}).encode(),
           json.dumps({"messages": ASK, "max_tokens": 100000}).encode(),
           json.dumps({"messages": [{"role": "user", "content": "咳" * 5000}], "max_tokens": 8}).encode()]
    for body in bad:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
        assert response.status_code == 400, (body[:40], response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
    too_long = httpx.post(url, content=bad[-1], headers={"content-type": "application/json"}, timeout=60).json()
    assert too_long["error"]["code"] == "context_length_exceeded"
    deep = b'{"model":"pedray","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = httpx.post(url, content=deep, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]["message"]
    plain = httpx.post(url, content=json.dumps({"messages": ASK}).encode(), headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
    for response in (httpx.get(f"{served}/v1/nothing-here"), httpx.get(url), httpx.delete(f"{served}/health")):
        assert response.status_code in (404, 405) and "error" in response.json(), response.text
    assert httpx.get(f"{served}/health").json() == {"status": "ok"}
    assert httpx.get(f"{served}/ready", timeout=30).json() == {"status": "ready"}


def test_while_an_expert_cannot_start_the_router_answers_503_at_once(served, tiny_model_dir, small_corpus, tmp_path):
    """An expert replica that cannot start (it asks for more CPUs than there are: a replica waiting for
    its node, or still loading its model): /health answers, /ready says "starting", and a chat request
    gets 503 with Retry-After at once instead of waiting in Serve's queue for a replica."""
    from ray import serve

    from pedray.serve.app import build_app

    recipe = load_recipe(None, [f"data.corpus_dir={small_corpus}", "serve.replicas.cpus=64"])
    serve._run(build_app(tiny_model_dir, recipe.serve, [small_corpus], tmp_path), name="waiting",
               route_prefix="/waiting", _blocking=False)  # serve.run would wait for the expert forever
    base = f"{served}/waiting"
    try:
        wait_for(lambda: _status(f"{base}/health") == 200, 120, "the waiting app's router")
        ready = httpx.get(f"{base}/ready", timeout=30)
        assert ready.status_code == 503 and ready.json() == {"status": "starting"} and ready.headers["retry-after"]
        chat = httpx.post(f"{base}/v1/chat/completions", json={"messages": ASK, "max_tokens": 4}, timeout=30)
        assert chat.status_code == 503 and chat.headers["retry-after"], chat.text
        assert chat.json()["error"]["code"] == "starting"
        assert httpx.get(f"{served}/ready", timeout=30).json() == {"status": "ready"}  # other apps are theirs
    finally:
        serve.delete("waiting")


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def test_concurrent_requests_are_batched_and_answer_as_alone(served):
    client = _client(served)
    questions = [[{"role": "user", "content": q}] for q in ("孩子咳嗽", "宝宝腹泻三天", "发烧39度", "孩子不吃饭")]
    alone = [client.chat.completions.create(model="pedray", messages=m, max_tokens=10, extra_body={"task": "general"})
             .choices[0].message.content for m in questions]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda m: client.chat.completions.create(
            model="pedray", messages=m, max_tokens=10, extra_body={"task": "general"}).choices[0].message.content,
            questions))
    assert together == alone


def test_task_gated_mouse_is_served_as_merged_experts_behind_an_api_key(served):
    from openai import AuthenticationError

    base = f"{served}/mouse"
    with pytest.raises(AuthenticationError):
        _client(base, "wrong").chat.completions.create(model="pedray", messages=ASK, max_tokens=2)
    assert httpx.post(f"{base}/v1/chat/completions", json={"messages": ASK}).status_code == 401
    for path in ("/v1/routes", "/v1/models", "/v1/nothing-here"):  # every /v1 path, known or not
        response = httpx.get(f"{base}{path}")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}  # open, and says nothing else
    key = {"authorization": "Bearer secret"}
    client = _client(base, "secret")
    listed = httpx.get(f"{base}/v1/routes", headers=key).json()
    routes = listed["routes"]
    assert routes == {t: t for t in ("medkqa", "evidiag", "trerecom", "dialogue", "general")}
    answers = {}
    for task in ("medkqa", "dialogue"):
        reply = client.chat.completions.create(model="pedray", messages=ASK, max_tokens=8, extra_body={"task": task})
        assert reply.model_extra["pedray"]["expert"] == task
        answers[task] = reply.choices[0].message.content
    assert answers["medkqa"] != answers["dialogue"]  # different merged experts, different weights
    assert listed["experts"] == sorted(routes) and httpx.get(f"{base}/ready", timeout=30).json() == {"status": "ready"}


def test_llm_judge_runs_against_our_own_serve_app(served):
    """The judge of `pedray judge` through this app: the tiny model's replies carry no verdict, so the
    pair is asked again and then counted as unparseable, never guessed."""
    from pedray.eval.judge import compare

    pairs = [{"id": "q1", "question": "孩子发烧怎么办？", "answer_1": "多喝水，观察精神状态。", "answer_2": "多喝水。"}]
    result = compare(pairs, f"{served}/v1", "pedray", retries=1, max_tokens=16)
    judged = result["judged"][0]
    assert all(reply.endswith(DISCLAIMER) for reply in judged["replies"])  # answered by this app
    assert (judged["outcome"] == "unparseable") == (None in judged["verdicts"])
    assert result["pairs"] == 1 and result["win"] + result["tie"] + result["loss"] + result["unparseable"] == 1


@pytest.fixture(scope="module")
def ui_url(served):
    """ui/app.py in its own process on 127.0.0.1 against the Serve app; stopped by PID."""
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    ui = Path(__file__).resolve().parents[1] / "ui" / "app.py"
    process = subprocess.Popen([sys.executable, str(ui), "--api", f"{served}/v1", "--port", str(port),
                                "--max-tokens", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return process.poll() is not None

        wait_for(up, 120, "the Gradio app", interval=1)
        assert process.poll() is None, "the Gradio app exited"
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.kill()
        process.wait()


def test_gradio_chat_streams_through_the_app(ui_url):
    """Driven with gradio_client: the answer comes from the Serve app (disclaimer) and names its route
    and expert; a red-flag question starts with the urgent notice."""
    from gradio_client import Client

    client = Client(ui_url, verbose=False)
    answer, alert = client.predict(message="孩子发烧两天了怎么办？", api_name="/chat")
    assert DISCLAIMER in answer and "路由：" in answer and "专家：通用模型" in answer and alert == ""
    urgent, alert = client.predict(message="孩子抽搐了", api_name="/chat")
    assert URGENT_NOTICE not in urgent and DISCLAIMER in urgent  # the notice is the banner, not the answer
    assert 'role="alert"' in alert and URGENT_NOTICE in alert and "抽搐（惊厥）" in alert


def test_chat_page_renders_in_headless_chromium(ui_url, tmp_path):
    """Debian's chromium, headless: the rendered page shows the disclaimer and the example questions,
    and a screenshot is taken (kept in the test's tmp folder)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium; .ci/run installs it when root)")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900", "--virtual-time-budget=15000"]
    dom = subprocess.run(flags + ["--dump-dom", ui_url], capture_output=True, text=True, timeout=180).stdout
    assert "不能代替医生的面诊" in dom and "一岁宝宝拉肚子两天了" in dom
    shot = tmp_path / "chat.png"
    subprocess.run(flags + [f"--screenshot={shot}", ui_url], capture_output=True, timeout=180)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1200, 900)
    low, high = image.getextrema()
    assert high - low > 100  # a rendered page, not a blank frame


def test_a_killed_expert_replica_costs_no_failed_request(served):
    """One of the two expert replicas is SIGKILLed; the next requests all succeed with the answers they
    had before (the router retries on the surviving replica) and nothing returns a 5xx."""
    import os
    import signal

    from ray import serve

    client = _client(served)
    questions = [[{"role": "user", "content": f"孩子第{i}天咳嗽怎么办"}] for i in range(6)]
    before = [client.chat.completions.create(model="pedray", messages=m, max_tokens=6).choices[0].message.content
              for m in questions]
    handle = serve.get_deployment_handle("expert-model", app_name="plain")
    pids = {handle.whoami.remote().result()["pid"] for _ in range(12)}
    assert len(pids) == 2
    os.kill(sorted(pids)[0], signal.SIGKILL)
    after = []
    for message in questions:
        response = httpx.post(f"{served}/v1/chat/completions", json={"messages": message, "max_tokens": 6}, timeout=120)
        assert response.status_code == 200, response.text
        after.append(response.json()["choices"][0]["message"]["content"])
    assert after == before
