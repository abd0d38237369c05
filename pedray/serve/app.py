"""The Ray Serve application: a router (FastAPI ingress, the OpenAI chat API) in front of expert
deployments, one per route.

Experts: a task-gated MoUSE adapter is merged into one plain model per task (no adapter cost at
serving time); a token-routed MoUSE adapter or a plain model is served whole by one expert that takes
every route. Each expert deployment has its own replicas and autoscaling.
"""

# No `from __future__ import annotations` here: FastAPI reads the route handlers' annotations at runtime
# (a string `Request` inside a Serve ingress class turns into a required query parameter).
import asyncio
import hashlib
import json
import secrets
import uuid
from pathlib import Path
from typing import Any, AsyncGenerator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from pedray import storage
from pedray.config.schema import ServeConfig
from pedray.serve import safety
from pedray.serve.api import PENALTY_FIELDS, APIError, check_json_type, chunk, completion, parse_chat
from pedray.vocab import TASKS


def bind_replica_to_node_ip() -> None:
    """Serve starts every replica's inter-deployment gRPC server on [::], every interface (hard-coded in
    ray.serve._private.replica, which binds it after the deployment's constructor returns). Ray core binds
    its own servers to the node IP; so do we for Serve's: 127.0.0.1 on a private local Ray, the node's
    address on a cluster. Called first in every deployment's constructor; a Ray without that function
    is left as it is (the listening test in tests/test_serve_cli.py notices)."""
    import ray
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "pedray_bound", False):
        return
    ip = ray.util.get_node_ip_address()
    host = f"[{ip}]" if ":" in ip else ip

    def bound(server, address: str):
        return original(server, address.replace("[::]", host, 1))

    bound.pedray_bound = True
    replica.add_port_to_grpc_server = bound


@serve.deployment
class Expert:
    """One model behind an engine that batches continuously: the Hugging Face engine, or vLLM for a
    plain model folder (`serve.engine: vllm`)."""

    def __init__(self, model_dir: str, name: str, max_batch_size: int, threads: int,
                 stream_interval_s: float = 0.2, vllm: dict[str, Any] | None = None) -> None:
        bind_replica_to_node_ip()
        self.name, self.interval = name, stream_interval_s
        if vllm:
            from pedray.serve.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(storage.local_copy(model_dir), vllm["python"], threads, max_batch_size,
                                     vllm["kv_cache_gib"], vllm["stream_tokens"])
        else:
            from pedray.serve.engine import HFEngine

            self.engine = HFEngine(model_dir, threads, max_batch_size)

    async def generate(self, request: dict[str, Any]) -> AsyncGenerator[tuple[str, str | None], None]:
        """(text delta, finish reason or None) items for one request.

        The first text goes out at once; after that, text is sent at most every `stream_interval_s`:
        each item costs a hop through Ray to the router and another to the HTTP proxy, which on a small
        machine costs more than a decoding step.
        """
        loop = asyncio.get_running_loop()
        pending, last, first = "", 0.0, True
        async for text, reason in self.engine.generate(request):
            pending += text
            now = loop.time()
            if reason is not None or (pending and (first or now - last >= self.interval)):
                yield pending, reason
                pending, last, first = "", now, False
        if pending:
            yield pending, None

    def ready(self) -> str:
        return self.name

    def __del__(self) -> None:
        """Serve calls this when it stops the replica gracefully: vLLM's processes go with it (Ray would
        SIGKILL the API server alone, orphaning the engine core that holds the KV cache)."""
        close = getattr(getattr(self, "engine", None), "close", None)
        if close is not None:
            close()

    def whoami(self) -> dict[str, Any]:
        """This replica's expert name, process id and engine statistics (for operators, and tests)."""
        import os

        return {"expert": self.name, "pid": os.getpid(), **self.engine.stats()}


app = FastAPI(title="pedray", docs_url=None, redoc_url=None, openapi_url=None)


def _error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths (404) and wrong methods (405) answer in OpenAI's error layout too."""
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    detail = {404: f"no such path: {request.method} {request.url.path}",
              405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return _error(APIError(exc.status_code, detail, kind=kind))


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return _error(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(APIError(400, f"invalid request: {exc.errors()[:1]}"))


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """What we did not foresee is still JSON (and a 500: it is ours to fix, not the client's)."""
    return _error(APIError(500, f"internal error ({type(exc).__name__})", kind="server_error"))


@serve.deployment
@serve.ingress(app)
class Router:
    """The OpenAI-compatible front: validates, picks the route, forwards to that route's expert."""

    def __init__(self, experts: dict[str, Any], routes: dict[str, str], tokenizer_dir: str, classifier: Any,
                 cfg: dict[str, Any]) -> None:
        from pedray.model.build import check_model_dir, load_tokenizer

        bind_replica_to_node_ip()
        self.experts = {name: handle.options(stream=True) for name, handle in experts.items()}
        self.ready_handles = experts
        self.routes, self.cfg = routes, ServeConfig(**cfg)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.context = int(json.loads((check_model_dir(tokenizer_dir) / "config.json").read_text())
                           .get("max_position_embeddings", 2048))
        self.classifier = classifier  # a TaskClassifier, shipped whole: the router may run on any node
        self.counts = {task: 0 for task in TASKS}
        self.retries = 0
        from ray.serve.metrics import Counter

        self.metric = Counter("pedray_route_requests", description="chat requests per route and expert",
                              tag_keys=("route", "expert"))

    def _auth(self, request: Request) -> None:
        """With `serve.api_key` set, every /v1 path needs it (known or not); /health and /ready stay open."""
        key = self.cfg.api_key
        if key and not secrets.compare_digest(request.headers.get("authorization", "").encode(),
                                              f"Bearer {key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)", kind="authentication_error",
                           code="invalid_api_key")

    @app.get("/health")
    def health(self) -> dict[str, str]:
        """Open without a key, so it says nothing but that the router answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        """Open without a key: whether every expert answers, and nothing more (the experts are on /v1/routes)."""
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self.ready_handles.values())), 10)
        except Exception:  # an expert that cannot answer makes the app not ready
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/models")
    def models(self, request: Request) -> JSONResponse:
        self._auth(request)
        return JSONResponse({"object": "list", "data": [{"id": self.cfg.model_name, "object": "model",
                                                           "owned_by": "pedray"}]})

    @app.get("/v1/routes")
    def route_counts(self, request: Request) -> dict[str, Any]:
        """Requests per route seen by this router replica, and the expert each route goes to."""
        self._auth(request)
        return {"counts": self.counts, "routes": self.routes, "retries": self.retries,
                "experts": sorted(self.ready_handles)}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            self._auth(request)
            check_json_type(request.headers.get("content-type"))
            chat = parse_chat(await request.body(), self.cfg.max_tokens_limit, self.cfg.default_max_tokens,
                              {name: getattr(self.cfg, name) for name in PENALTY_FIELDS})
            prompt = self.tokenizer.apply_chat_template(chat.messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(prompt_ids) + chat.max_tokens > self.context:
                raise APIError(400, f"prompt of {len(prompt_ids)} tokens plus max_tokens {chat.max_tokens} exceeds "
                               f"the model's context of {self.context} tokens", code="context_length_exceeded",
                               param="messages")
        except APIError as err:
            return JSONResponse(err.body(), status_code=err.status)
        route = chat.task or self.classifier.predict(chat.messages[-1]["content"])
        expert = self.routes[route]
        self.counts[route] += 1
        self.metric.inc(tags={"route": route, "expert": expert})
        urgent, flags = safety.info(chat.messages)  # the whole conversation, not only the last turn
        info = {"route": route, "expert": expert, **flags}
        headers = {"X-Pedray-Route": route, "X-Pedray-Expert": expert}
        job = {"prompt_ids": prompt_ids, "max_tokens": chat.max_tokens, "temperature": chat.temperature,
               "top_p": chat.top_p, "stop": chat.stop, "task": route, "seed": chat.seed,
               **{name: getattr(chat, name) for name in PENALTY_FIELDS}}
        if job["temperature"] > 0 and job["seed"] is None:  # a retry must be able to repeat the same text
            job["seed"] = secrets.randbelow(2**31)
        pieces = self._pieces(expert, job)
        model = chat.model or self.cfg.model_name
        if chat.stream:
            return StreamingResponse(self._sse(pieces, model, info, safety.preface(urgent)),
                                     media_type="text/event-stream", headers=headers)
        answer, finish = [], "stop"
        async for delta, reason in pieces:
            answer.append(delta)
            finish = reason or finish
        text = safety.wrap("".join(answer), urgent)
        used = len(self.tokenizer("".join(answer), add_special_tokens=False)["input_ids"])
        return JSONResponse(completion(model, text, finish, len(prompt_ids), used, info), headers=headers)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    def other_v1(self, request: Request, rest: str) -> JSONResponse:
        """Any other /v1 path (or a known one with the wrong method): the key first, then 404 or 405."""
        self._auth(request)
        raise HTTPException(405 if rest in {"models", "routes", "chat/completions"} else 404)  # see _http_error

    async def _pieces(self, expert: str, job: dict[str, Any], attempts: int = 3) -> AsyncGenerator[tuple, None]:
        """The expert's (delta, finish reason) items. A replica that dies mid-request is replaced: the request
        runs again on another replica and the text already passed on is skipped (decoding is greedy or
        seeded, so it repeats itself)."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        passed = ""
        for attempt in range(attempts):
            produced = ""
            try:
                async for delta, reason in self.experts[expert].generate.remote(job):
                    produced += delta
                    new = produced[len(passed):] if len(produced) > len(passed) else ""
                    passed = max(passed, produced, key=len)
                    if new or reason:
                        yield new, reason
                return
            except (RayActorError, ActorUnavailableError):
                if attempt == attempts - 1:
                    raise
                self.retries += 1

    async def _sse(self, pieces, model: str, info: dict[str, Any], preface: str) -> AsyncGenerator[str, None]:
        id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        yield chunk(id, model, {"role": "assistant", "content": preface}, pedray=info)
        finish = "stop"
        async for delta, reason in pieces:
            finish = reason or finish
            if delta:
                yield chunk(id, model, {"content": delta})
        yield chunk(id, model, {"content": safety.closing()})
        yield chunk(id, model, {}, finish_reason=finish)
        yield "data: [DONE]\n\n"


# The expert that serves a token-gated MoUSE adapter whole (its routing cannot be merged into plain
# weights, so no vLLM): every route goes to it.
WHOLE_ADAPTER = "mouse"


def expert_layout(model_dir: str | Path, cache: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """(expert name -> model folder, route -> expert name, tokenizer folder) for a model folder.

    A task-gated MoUSE adapter is merged once per task into `cache` (keyed by the adapter's bytes); for
    an adapter at a URI the merged models are uploaded beside it, so that replicas on any node read them.
    """
    from pedray.model.mouse_io import ADAPTER_FILE, is_adapter, load_mouse, merge_tasks, read_config
    location, model_dir = str(model_dir), storage.local_copy(model_dir)  # replicas are handed the location itself
    if not is_adapter(model_dir):
        return {"model": location}, dict.fromkeys(TASKS, "model"), location
    config = read_config(model_dir)
    base = str(config["base_model"])
    if config["lora"].get("gating") != "task":
        return {WHOLE_ADAPTER: location}, dict.fromkeys(TASKS, WHOLE_ADAPTER), base
    digest = hashlib.sha256((model_dir / ADAPTER_FILE).read_bytes()).hexdigest()[:12]
    folder = cache / f"merged-{digest}"
    if not all((folder / task / "config.json").is_file() for task in config["tasks"]):
        from pedray.model.build import load_tokenizer

        merge_tasks(load_mouse(model_dir), folder, load_tokenizer(base))
    place: str | Path = folder
    if storage.is_uri(location):
        place = storage.publish(folder, str(storage.sibling(location, f"merged-{digest}")))
    experts = {task: str(storage.join(place, task)) for task in config["tasks"]}
    return experts, {task: task for task in TASKS if task in experts}, base


def vllm_python(cfg: ServeConfig) -> str:
    """The python that runs `vllm serve`: `serve.vllm_python`, else this one if it has vLLM."""
    import importlib.util
    import sys

    if cfg.vllm_python:
        if not Path(cfg.vllm_python).is_file():
            raise FileNotFoundError(f"serve.vllm_python: no such file {cfg.vllm_python}")
        return cfg.vllm_python
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise FileNotFoundError("serve.engine=vllm needs vLLM: `python -m pedray vllm-env` makes an environment for "
                            "it on a CPU machine and prints its python; pass it as serve.vllm_python=PATH")


def build_app(model_dir: str | Path, cfg: ServeConfig, corpus_dirs: list[Path], cache: Path):
    """The Serve application for a model folder: its experts, the task classifier, the router."""
    from pedray.serve.classify import TaskClassifier, corpus_examples

    cache.mkdir(parents=True, exist_ok=True)
    experts, routes, tokenizer_dir = expert_layout(model_dir, cache)
    classifier = TaskClassifier.fit(corpus_examples(corpus_dirs))
    scaling: dict[str, Any] = {"num_replicas": cfg.min_replicas or 1}
    if cfg.max_replicas > max(cfg.min_replicas, 1):
        scaling = {"autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                          "target_ongoing_requests": cfg.target_ongoing_requests,
                                          "upscale_delay_s": cfg.upscale_delay_s,
                                          "downscale_delay_s": cfg.downscale_delay_s,
                                          "look_back_period_s": cfg.autoscale_window_s}}
    threads = max(1, int(cfg.expert_cpus))
    vllm = None
    if cfg.engine == "vllm":
        vllm = {"python": vllm_python(cfg), "kv_cache_gib": cfg.vllm_kv_cache_gib,
                "stream_tokens": cfg.vllm_stream_tokens}
    handles = {name: Expert.options(name=f"expert-{name}", ray_actor_options={"num_cpus": cfg.expert_cpus},
                                    max_ongoing_requests=4 * cfg.max_batch_size, **scaling)
               .bind(path, name, cfg.max_batch_size, threads, cfg.stream_interval_s,
                     None if name == WHOLE_ADAPTER else vllm)  # vLLM serves plain models only
               for name, path in experts.items()}
    import dataclasses

    # Serve's default of 5 in-flight requests per replica would queue a busy router's streams in front
    # of experts that batch far more; the router only validates and relays.
    return Router.options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024).bind(
        handles, routes, tokenizer_dir, classifier, dataclasses.asdict(cfg))
