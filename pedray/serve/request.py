"""What a generation request is, and what an engine does with it: the one request type that goes from
the router through the Serve handle to either engine, and the interface both engines implement.

`GenRequest` carries the sampling settings (defaults stated here only). The OpenAI layer's `ChatRequest`
(`pedray.serve.api`) is a GenRequest before tokenization, with the chat's messages; the router turns it
into the GenRequest an expert receives (`ChatRequest.generation`). No torch here: the router imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator, Protocol


@dataclass
class GenRequest:
    prompt_ids: list[int] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    task: str | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def penalized(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0)

    def generation(self, **changes: Any) -> "GenRequest":
        """A plain GenRequest with these fields and `changes` (from a subclass: its extra fields dropped)."""
        return GenRequest(**{f.name: getattr(self, f.name) for f in fields(GenRequest)} | changes)


class Engine(Protocol):
    """An expert replica's model server: `HFEngine` (pedray.serve.engine) or `VLLMEngine`."""

    def generate(self, request: GenRequest) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish reason or None) pieces of one request; the reason is set on the last piece only."""
        ...

    def stats(self) -> dict[str, Any]:
        """What the engine reports to operators (GET whoami, tests): its kind and counters."""
        ...

    def close(self) -> None:
        """Stop what the engine started (threads, subprocesses); safe to call twice."""
        ...
