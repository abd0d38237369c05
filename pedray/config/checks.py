"""The one check every config dataclass runs on construction (the loader turns its message into a ConfigError)."""

from __future__ import annotations


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
