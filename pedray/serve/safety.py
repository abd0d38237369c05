"""Safety wrapping of every answer: the triage of the conversation (`pedray.safety`) puts its notice first
when a sign is raised (the urgent-care one, or "see a doctor today"); every answer ends with the disclaimer."""

from __future__ import annotations

from typing import Any

from pedray.safety.signs import Triage, red_flags, triage
from pedray.vocab import DISCLAIMER

__all__ = ["closing", "preface", "red_flags", "triage", "wrap"]


def preface(result: Triage) -> str:
    """What goes before the model's answer: the triage's notice when any sign is raised, of either level."""
    return result.notice() + "\n\n" if result.signs else ""


def closing() -> str:
    return "\n\n" + DISCLAIMER


def wrap(answer: str, result: Triage) -> str:
    """The whole answer as sent; the same text a streamed answer adds up to (nothing is stripped)."""
    return preface(result) + answer + closing()


def info(messages: list[dict[str, Any]]) -> tuple[Triage, dict[str, Any]]:
    """The triage of a chat, and what the API response carries of it (`red_flags`: the sign names;
    `triage`: urgent, level, each sign with its reason, advice and level, the notice)."""
    result = triage(messages)
    return result, {"red_flags": result.names, "triage": result.to_dict()}
