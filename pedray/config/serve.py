"""The `serve` section of a recipe, by concern: the HTTP front, request defaults, expert replicas, vLLM.

A recipe written for the flat section of earlier versions (`serve.port`, `serve.min_replicas`, ...)
fails at load time with the key's new place (`MOVED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pedray.config.checks import check as _check


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    """Address the HTTP server binds to."""
    port: int = 8000
    """HTTP port."""
    api_key: str | None = None
    """When set, requests need `Authorization: Bearer <api_key>`."""
    model_name: str = "pedray"
    """The model id clients name (GET /v1/models)."""
    proxy_location: Literal["HeadOnly", "EveryNode"] = "HeadOnly"
    """Where Serve runs HTTP proxies: one address on the head, or every node (behind a load balancer)."""

    def __post_init__(self) -> None:
        _check(0 < self.port < 65536, "port must be in 1..65535")


@dataclass
class RequestConfig:
    """What a request gets when it does not say, and the bounds on what it may ask for."""

    max_tokens_limit: int = 1024
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = 256
    """max_tokens of a request that does not say."""
    frequency_penalty: float = 0.0
    """Default OpenAI `frequency_penalty` (-2..2) of a request that does not say: subtracted from a token's
    logit once per time the answer already has it. 0 leaves decoding untouched."""
    presence_penalty: float = 0.0
    """Default OpenAI `presence_penalty` (-2..2): subtracted once from every token the answer already has."""
    repetition_penalty: float = 1.0
    """Default `repetition_penalty` (vLLM's and transformers' extra field, > 0): logits of tokens in the
    prompt or the answer are divided by it when positive, multiplied when negative. 1 leaves decoding untouched."""
    stream_interval_s: float = 0.2
    """Streamed text is sent at most this often after the first piece (which goes at once). Each piece
    costs two Ray hops (expert -> router -> HTTP proxy): on 2 cores with 16 streams, 0.05 s spent
    13.8 CPU-s of router and proxy per 4,096 tokens, 0.25 s spent 4.9."""

    def __post_init__(self) -> None:
        _check(1 <= self.default_max_tokens <= self.max_tokens_limit,
               "default_max_tokens must be in [1, max_tokens_limit]")
        _check(-2 <= self.frequency_penalty <= 2 and -2 <= self.presence_penalty <= 2,
               "frequency_penalty and presence_penalty must be in [-2, 2]")
        _check(0 < self.repetition_penalty <= 2, "repetition_penalty must be in (0, 2]")


@dataclass
class ReplicaConfig:
    """Each expert deployment's replicas: their size, their batching, how many, and their health checks."""

    cpus: float = 1.0
    """CPUs reserved per expert replica (its torch threads: at least 1)."""
    max_batch_size: int = 16
    """Most requests an expert replica decodes together (continuous batching: more wait their turn)."""
    min: int = 1
    """Autoscaling floor of each expert deployment."""
    max: int = 1
    """Autoscaling ceiling of each expert deployment (above `min` turns autoscaling on)."""
    target_ongoing_requests: int = 4
    """Autoscaling target: in-flight requests per replica."""
    upscale_delay_s: float = 30.0
    """How long the load must stay above target before a replica is added (Serve's default)."""
    downscale_delay_s: float = 600.0
    """How long the load must stay below target before a replica is removed (Serve's default)."""
    window_s: float = 30.0
    """The period over which in-flight requests are averaged for those decisions (look_back_period_s)."""
    health_check_period_s: float = 2.0
    """How often Serve checks that each replica is alive. A SIGKILLed replica is noticed only at its next
    check (Serve's default period is 10 s: up to 10 s of a stalled stream before a new replica even
    starts; README "Serving: a replica that dies"). The check is an empty actor call."""

    def __post_init__(self) -> None:
        _check(self.max_batch_size >= 1, "max_batch_size must be positive")
        _check(0 <= self.min <= self.max and self.max >= 1, "need 0 <= min <= max, max >= 1")


@dataclass
class VLLMConfig:
    """The vLLM engine (`serve.engine: vllm`)."""

    python: str | None = None
    """Python of an environment with vLLM (`python -m pedray vllm-env` makes one); default: this one."""
    kv_cache_gib: int = 1
    """KV cache size per vLLM replica on a CPU (VLLM_CPU_KVCACHE_SPACE, GiB)."""
    stream_tokens: int = 4
    """vLLM sends a request's first token at once, then every this many tokens (its `stream_interval`):
    every piece costs the replica an SSE parse and two Ray hops."""

    def __post_init__(self) -> None:
        _check(self.stream_tokens >= 1, "stream_tokens must be at least 1")
        _check(self.kv_cache_gib >= 1, "kv_cache_gib must be a whole number of GiB, at least 1")


@dataclass
class ServeConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """Expert engine: the Hugging Face engine (continuous batching, any model), or vLLM for plain model
    folders (merged task experts, sft/dfpo models; a token-routed MoUSE adapter stays on hf)."""
    http: HttpConfig = field(default_factory=HttpConfig)
    requests: RequestConfig = field(default_factory=RequestConfig)
    replicas: ReplicaConfig = field(default_factory=ReplicaConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


# The flat keys of earlier versions and where each went.
MOVED = {
    **{key: f"http.{key}" for key in ("host", "port", "api_key", "model_name", "proxy_location")},
    **{key: f"requests.{key}" for key in ("max_tokens_limit", "default_max_tokens", "frequency_penalty",
                                          "presence_penalty", "repetition_penalty", "stream_interval_s")},
    **{key: f"replicas.{key}" for key in ("max_batch_size", "target_ongoing_requests", "upscale_delay_s",
                                          "downscale_delay_s", "health_check_period_s")},
    "expert_cpus": "replicas.cpus", "min_replicas": "replicas.min", "max_replicas": "replicas.max",
    "autoscale_window_s": "replicas.window_s", "vllm_python": "vllm.python",
    "vllm_kv_cache_gib": "vllm.kv_cache_gib", "vllm_stream_tokens": "vllm.stream_tokens",
}
