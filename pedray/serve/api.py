"""The OpenAI chat-completions contract: request validation (every problem a 4xx with an OpenAI-style
error body) and response shapes (a whole completion, or SSE chunks)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pedray.serve.request import GenRequest
from pedray.vocab import ROLES, TASKS


class APIError(Exception):
    """An error the client caused (status 4xx) or must be told about, with OpenAI's error layout."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest(GenRequest):
    """A chat request as the client sent it: the sampling settings of a GenRequest (before the router
    renders and tokenizes the messages into `prompt_ids`), the messages, and how to answer."""

    messages: list[dict[str, str]] = field(default_factory=list)
    model: str = ""
    stream: bool = False


PENALTY_FIELDS = ("frequency_penalty", "presence_penalty", "repetition_penalty")


def _number(body: dict, name: str, default: float, low: float, high: float, integer: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}", param=name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def check_json_type(content_type: str | None) -> None:
    """A request body must be declared JSON (`curl -d` without a header sends a form type): 415 otherwise."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise APIError(415, f"Content-Type must be application/json, got {media or 'none'!r}",
                       code="unsupported_media_type")


def parse_chat(raw: bytes, max_tokens_limit: int, default_max_tokens: int = 256,
               penalties: dict[str, float] | None = None) -> ChatRequest:
    """A validated request from the raw body; raises APIError(400) naming the offending field.

    `penalties`: the server's defaults for the penalty fields a request leaves out."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise APIError(400, "request body is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise APIError(400, f"request body is not valid JSON ({err.msg} at position {err.pos})") from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    clean = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise APIError(400, f"{where}.role must be one of {list(ROLES)}, got {role!r}", param=f"{where}.role")
        if isinstance(content, list):  # OpenAI content parts: only text parts are accepted
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"{where}.content parts must be text parts", param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"{where}.content must be a string", param=f"{where}.content")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user" or not clean[-1]["content"].strip():
        raise APIError(400, "the last message must be a non-empty user message", param="messages")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a string or up to 4 non-empty strings", param="stop")
    task = body.get("task")
    if task is not None and task not in TASKS:
        raise APIError(400, f"'task' must be one of {list(TASKS)}", param="task")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, "'seed' must be an integer", param="seed")
    defaults = {name: getattr(ChatRequest, name) for name in PENALTY_FIELDS} | (penalties or {})
    return ChatRequest(
        messages=clean, model=str(body.get("model") or ""), stream=stream, stop=stop, task=task, seed=seed,
        max_tokens=_number(body, "max_tokens", default_max_tokens, 1, max_tokens_limit, integer=True),
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        frequency_penalty=_number(body, "frequency_penalty", defaults["frequency_penalty"], -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", defaults["presence_penalty"], -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", defaults["repetition_penalty"], 1e-3, 2.0))


def completion(model: str, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               pedray: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}, "pedray": pedray}


def chunk(id: str, model: str, delta: dict[str, str], finish_reason: str | None = None,
          pedray: dict[str, Any] | None = None) -> str:
    """One server-sent event of a streamed completion."""
    body = {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if pedray is not None:
        body["pedray"] = pedray
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
