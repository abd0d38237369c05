"""The Ray Serve application: a router (FastAPI ingress, the OpenAI chat API) in front of expert
deployments, one per route.

Experts: a task-gated MoUSE adapter is merged into one plain model per task (no adapter cost at
serving time); a token-routed MoUSE adapter or a plain model is served whole by one expert that takes
every route. Each expert deployment has its own replicas and autoscaling.
"""

# No `from __future__ import annotations` here: FastAPI reads the route handlers' annotations at runtime
# (a string `Request` inside a Serve ingress class turns into a required query parameter).
import asyncio
import json
import os
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncGenerator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.metrics import Counter
from starlette.exceptions import HTTPException

from pedray import storage
from pedray.config.schema import ServeConfig
from pedray.serve import safety
from pedray.serve.api import PENALTY_FIELDS, APIError, check_json_type, chunk, completion, parse_chat
from pedray.serve.classify import TaskClassifier, corpus_examples
from pedray.serve.layout import expert_layout, vllm_python
from pedray.serve.request import Engine, GenRequest
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
        started = time.monotonic()
        bind_replica_to_node_ip()
        self.name, self.interval = name, stream_interval_s
        self.engine: Engine
        if vllm:  # imported where used: the router's process never needs an engine (torch, for hf)
            from pedray.serve.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(storage.local_copy(model_dir), vllm["python"], threads, max_batch_size,
                                     vllm["kv_cache_gib"], vllm["stream_tokens"])
        else:
            from pedray.serve.engine import HFEngine

            self.engine = HFEngine(model_dir, threads, max_batch_size)
        self.load_seconds = round(time.monotonic() - started, 3)  # what a replacement replica spends here

    async def generate(self, request: GenRequest) -> AsyncGenerator[tuple[str, str | None], None]:
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

    def __del__(self) -> None:
        """Serve calls this when it stops the replica gracefully: vLLM's processes go with it (Ray would
        SIGKILL the API server alone, orphaning the engine core that holds the KV cache)."""
        engine = getattr(self, "engine", None)  # absent when the constructor failed
        if engine is not None:
            engine.close()

    def whoami(self) -> dict[str, Any]:
        """This replica's expert name, process id and engine statistics (for operators, and tests)."""
        return {"expert": self.name, "pid": os.getpid(), "load_seconds": self.load_seconds, **self.engine.stats()}


app = FastAPI(title="pedray", docs_url=None, redoc_url=None, openapi_url=None)


RETRY_AFTER = {"Retry-After": "5"}  # seconds, with every 503 while the app starts or a replica is replaced


def _error(err: APIError) -> JSONResponse:
    headers = RETRY_AFTER if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


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


def _load_tokenizer(folder: str) -> tuple[Any, int]:
    """The router's tokenizer and the model's context length (transformers and torch come with it: imported
    on the router's loading thread, not at its start); the triage's classifier is trained here too, so
    that the first chat does not wait for scikit-learn's import and its fit (about a second)."""
    from pedray.model.build import check_model_dir, load_tokenizer
    from pedray.safety import learned

    config = json.loads((check_model_dir(folder) / "config.json").read_text())
    learned.model()
    return load_tokenizer(folder), int(config.get("max_position_embeddings", 2048))


@serve.deployment
@serve.ingress(app)
class Router:
    """The OpenAI-compatible front: validates, picks the route, forwards to that route's expert."""

    def __init__(self, experts: dict[str, Any], routes: dict[str, str], tokenizer_dir: str, classifier: Any,
                 cfg: ServeConfig) -> None:
        """Returns at once: Serve's proxy holds every request (/health too) until the ingress's constructor
        has returned, so the tokenizer (transformers' import, seconds on a busy machine while the experts
        load) is loaded on a thread, and until the app is ready the router answers 503 (`_check_started`)."""
        bind_replica_to_node_ip()
        self.experts = {name: handle.options(stream=True) for name, handle in experts.items()}
        self.expert_names = sorted(experts)
        self.routes, self.cfg = routes, cfg
        self.app_name = serve.get_replica_context().app_name
        self.loading = ThreadPoolExecutor(1, thread_name_prefix="pedray-tokenizer").submit(_load_tokenizer, tokenizer_dir)
        self.started = False  # the app has been ready once; from then on requests queue as Serve queues them
        self.classifier = classifier  # a TaskClassifier, shipped whole: the router may run on any node
        self.counts = {task: 0 for task in TASKS}
        self.retries = 0
        self.metric = Counter("pedray_route_requests", description="chat requests per route and expert",
                              tag_keys=("route", "expert"))

    def _auth(self, request: Request) -> None:
        """With `serve.http.api_key` set, every /v1 path needs it (known or not); /health and /ready stay open."""
        key = self.cfg.http.api_key
        if key and not secrets.compare_digest(request.headers.get("authorization", "").encode(),
                                              f"Bearer {key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)", kind="authentication_error",
                           code="invalid_api_key")

    @app.get("/health")
    def health(self) -> dict[str, str]:
        """Open without a key, so it says nothing but that the router answers."""
        return {"status": "ok"}

    def check_health(self) -> None:
        """Serve's periodic check: a tokenizer that failed to load fails the replica, which Serve replaces
        and reports (a constructor that raised would have done the same)."""
        if self.loading.done() and self.loading.exception() is not None:
            raise RuntimeError(f"the router's tokenizer did not load: {self.loading.exception()!r}")

    async def _is_ready(self) -> bool:
        """Whether the tokenizer is loaded and Serve counts the whole app (every expert's replicas) as
        running: one question to the controller, answered at once, never a wait on an expert."""
        if not self.loading.done():
            return False
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(self.app_name)
        return application is not None and application.status == "RUNNING"

    async def _check_started(self) -> None:
        """Until the app has been ready once, a chat request gets 503 and Retry-After at once, instead of
        waiting in a queue for experts that are still loading their models."""
        if not self.started:
            if not await self._is_ready():
                raise APIError(503, "pedray is starting: the models are still loading, retry in a few seconds",
                               kind="service_unavailable_error", code="starting")
            self.started = True

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        """Open without a key: whether the app is ready, and nothing more (the experts are on /v1/routes);
        answered at once ("starting" before the app has been ready, "not ready" while a replica is replaced)."""
        if await self._is_ready():
            self.started = True
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready" if self.started else "starting"}, status_code=503,
                            headers=RETRY_AFTER)

    @app.get("/v1/models")
    def models(self, request: Request) -> JSONResponse:
        self._auth(request)
        return JSONResponse({"object": "list", "data": [{"id": self.cfg.http.model_name, "object": "model",
                                                           "owned_by": "pedray"}]})

    @app.get("/v1/routes")
    def route_counts(self, request: Request) -> dict[str, Any]:
        """Requests per route seen by this router replica, and the expert each route goes to."""
        self._auth(request)
        return {"counts": self.counts, "routes": self.routes, "retries": self.retries, "experts": self.expert_names}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            self._auth(request)
            check_json_type(request.headers.get("content-type"))
            chat = parse_chat(await request.body(), self.cfg.requests.max_tokens_limit,
                              self.cfg.requests.default_max_tokens,
                              {name: getattr(self.cfg.requests, name) for name in PENALTY_FIELDS})
            await self._check_started()
            tokenizer, context = self.loading.result()
            prompt = tokenizer.apply_chat_template(chat.messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(prompt_ids) + chat.max_tokens > context:
                raise APIError(400, f"prompt of {len(prompt_ids)} tokens plus max_tokens {chat.max_tokens} exceeds "
                               f"the model's context of {context} tokens", code="context_length_exceeded",
                               param="messages")
        except APIError as err:
            return _error(err)
        route = chat.task or self.classifier.predict(chat.messages[-1]["content"])
        expert = self.routes[route]
        self.counts[route] += 1
        self.metric.inc(tags={"route": route, "expert": expert})
        urgent, flags = safety.info(chat.messages)  # the whole conversation, not only the last turn
        info = {"route": route, "expert": expert, **flags}
        headers = {"X-Pedray-Route": route, "X-Pedray-Expert": expert}
        seed = chat.seed
        if chat.temperature > 0 and seed is None:  # a retry must be able to repeat the same text
            seed = secrets.randbelow(2**31)
        pieces = self._pieces(expert, chat.generation(prompt_ids=prompt_ids, task=route, seed=seed))
        model = chat.model or self.cfg.http.model_name
        if chat.stream:
            return StreamingResponse(self._sse(pieces, model, info, safety.preface(urgent)),
                                     media_type="text/event-stream", headers=headers)
        answer, finish = [], "stop"
        async for delta, reason in pieces:
            answer.append(delta)
            finish = reason or finish
        text = safety.wrap("".join(answer), urgent)
        used = len(tokenizer("".join(answer), add_special_tokens=False)["input_ids"])
        return JSONResponse(completion(model, text, finish, len(prompt_ids), used, info), headers=headers)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    def other_v1(self, request: Request, rest: str) -> JSONResponse:
        """Any other /v1 path (or a known one with the wrong method): the key first, then 404 or 405."""
        self._auth(request)
        raise HTTPException(405 if rest in {"models", "routes", "chat/completions"} else 404)  # see _http_error

    async def _pieces(self, expert: str, job: GenRequest, attempts: int = 3) -> AsyncGenerator[tuple, None]:
        """The expert's (delta, finish reason) items. A replica that dies mid-request is replaced: the request
        runs again on another replica and the text already passed on is skipped (decoding is greedy or
        seeded, so it repeats itself)."""
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


def build_app(model_dir: str | Path, cfg: ServeConfig, corpus_dirs: list[Path], cache: Path):
    """The Serve application for a model folder: its experts, the task classifier, the router."""
    cache.mkdir(parents=True, exist_ok=True)
    layout = expert_layout(model_dir, cache)
    classifier = TaskClassifier.fit(corpus_examples(corpus_dirs))
    replicas = cfg.replicas
    scaling: dict[str, Any] = {"num_replicas": replicas.min or 1}
    if replicas.max > max(replicas.min, 1):
        scaling = {"autoscaling_config": {"min_replicas": replicas.min, "max_replicas": replicas.max,
                                          "target_ongoing_requests": replicas.target_ongoing_requests,
                                          "upscale_delay_s": replicas.upscale_delay_s,
                                          "downscale_delay_s": replicas.downscale_delay_s,
                                          "look_back_period_s": replicas.window_s}}
    threads = max(1, int(replicas.cpus))
    vllm = None
    if cfg.engine == "vllm" and layout.plain:  # an adapter served whole stays on the hf engine
        vllm = {"python": vllm_python(cfg), "kv_cache_gib": cfg.vllm.kv_cache_gib,
                "stream_tokens": cfg.vllm.stream_tokens}
    handles = {name: Expert.options(name=f"expert-{name}", ray_actor_options={"num_cpus": replicas.cpus},
                                    max_ongoing_requests=4 * replicas.max_batch_size,
                                    health_check_period_s=replicas.health_check_period_s, **scaling)
               .bind(path, name, replicas.max_batch_size, threads, cfg.requests.stream_interval_s, vllm)
               for name, path in layout.experts.items()}
    # Serve's default of 5 in-flight requests per replica would queue a busy router's streams in front
    # of experts that batch far more; the router only validates and relays.
    return Router.options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024,
                          health_check_period_s=replicas.health_check_period_s).bind(
        handles, layout.routes, layout.tokenizer, classifier, cfg)
