"""Safety wrapping of every answer: the triage of the conversation (`pedray.safety`) puts an urgent-care
notice first when a danger sign is raised; every answer ends with the disclaimer."""

from __future__ import annotations

from typing import Any

from pedray.safety.signs import Triage, red_flags, triage
from pedray.vocab import DISCLAIMER

__all__ = ["closing", "preface", "red_flags", "triage", "wrap"]


def preface(result: Triage) -> str:
    """What goes before the model's answer: the urgent-care notice when any danger sign is raised."""
    return result.notice() + "\n\n" if result.urgent else ""


def closing() -> str:
    return "\n\n" + DISCLAIMER


def wrap(answer: str, result: Triage) -> str:
    """The whole answer as sent; the same text a streamed answer adds up to (nothing is stripped)."""
    return preface(result) + answer + closing()


def info(messages: list[dict[str, Any]]) -> tuple[Triage, dict[str, Any]]:
    """The triage of a chat, and what the API response carries of it (`red_flags`: the sign names;
    `triage`: urgent, each sign with its reason and advice, the notice)."""
    result = triage(messages)
    return result, {"red_flags": result.names, "triage": result.to_dict()}
