"""Safety wrapping of every answer: red-flag symptoms put an urgent-care instruction first; every answer
ends with the disclaimer. The red-flag list is data (`red_flags.yaml`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pedray.vocab import DISCLAIMER, URGENT_NOTICE

RED_FLAGS_FILE = Path(__file__).with_name("red_flags.yaml")


@lru_cache(maxsize=1)
def red_flag_rules() -> dict[str, dict[str, list[str]]]:
    import yaml

    rules = yaml.safe_load(RED_FLAGS_FILE.read_text(encoding="utf-8"))
    for name, rule in rules.items():
        if not rule.get("any"):
            raise ValueError(f"{RED_FLAGS_FILE}: red flag {name!r} has no 'any' terms")
    return rules


def red_flags(text: str) -> list[str]:
    """Names of the red flags the text raises (empty when none)."""
    compact = "".join(text.split())
    return [name for name, rule in red_flag_rules().items()
            if any(term in compact for term in rule["any"])
            and (not rule.get("with") or any(term in compact for term in rule["with"]))]


def preface(flags: list[str]) -> str:
    """What goes before the model's answer: the urgent-care instruction when any red flag is raised."""
    return URGENT_NOTICE + "\n\n" if flags else ""


def closing() -> str:
    return "\n\n" + DISCLAIMER


def wrap(answer: str, flags: list[str]) -> str:
    """The whole answer as sent; the same text a streamed answer adds up to (nothing is stripped)."""
    return preface(flags) + answer + closing()
