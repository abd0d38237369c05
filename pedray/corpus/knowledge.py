"""Loads and validates the embedded pediatric knowledge base (YAML files in `knowledge/`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

LIST_FIELDS = ("symptoms", "red_flags", "exams", "diagnosis", "management", "home_care")


@dataclass(frozen=True)
class Condition:
    """One childhood condition, stated in short self-contained points."""

    id: str
    name: str
    aliases: tuple[str, ...]
    group: str
    age_months: tuple[int, int]
    symptoms: tuple[str, ...]
    red_flags: tuple[str, ...]
    exams: tuple[str, ...]
    diagnosis: tuple[str, ...]
    management: tuple[str, ...]
    home_care: tuple[str, ...]


@dataclass(frozen=True)
class CareTopic:
    """A general child-care topic: its questions, each with the points that answer it."""

    id: str
    questions: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...]

    @property
    def points(self) -> tuple[str, ...]:
        """Every point of the topic, in the order first said."""
        return tuple(dict.fromkeys(point for answer in self.answers for point in answer))


def _files() -> list:
    folder = resources.files("pedray.corpus") / "knowledge"
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


def _condition(raw: dict, source: str) -> Condition:
    missing = [k for k in ("id", "name", "group", "age_months", *LIST_FIELDS) if not raw.get(k)]
    if missing:
        raise ValueError(f"{source}: condition {raw.get('id', '?')} lacks {missing}")
    low, high = raw["age_months"]
    if not 0 <= low <= high <= 216:
        raise ValueError(f"{source}: condition {raw['id']} has a bad age range {raw['age_months']}")
    # the answers say "如果出现X、Y" and "出现以下情况时要立即就医：" before the warning signs: a sign that
    # begins with 出现 came out as "如果出现出现…" in 104 of 5,693 training answers, and one that says it
    # inside ("出生24小时内出现黄疸") as "如果出现出生24小时内出现黄疸"
    doubled = [flag for flag in raw["red_flags"] if "出现" in str(flag)]
    if doubled:
        raise ValueError(f"{source}: condition {raw['id']}: warning signs that say 出现 (the answers say it before them): {doubled}")
    return Condition(
        id=raw["id"], name=raw["name"], aliases=tuple(raw.get("aliases") or ()), group=raw["group"],
        age_months=(int(low), int(high)), **{k: tuple(str(x) for x in raw[k]) for k in LIST_FIELDS},
    )


def _topic(raw: dict, source: str) -> CareTopic:
    questions = raw.get("questions")
    if not isinstance(questions, dict) or not questions:
        raise ValueError(f"{source}: topic {raw.get('id', '?')} needs questions, each with the points of its answer")
    thin = [q for q, points in questions.items() if not points or len(points) < 2]
    if thin:
        raise ValueError(f"{source}: topic {raw['id']}: questions answered by fewer than two points: {thin}")
    return CareTopic(raw["id"], tuple(questions), tuple(tuple(str(p) for p in points) for points in questions.values()))


@lru_cache(maxsize=1)
def load_knowledge() -> tuple[tuple[Condition, ...], tuple[CareTopic, ...]]:
    """All conditions and care topics, validated: unique ids, every field filled."""
    conditions: list[Condition] = []
    topics: list[CareTopic] = []
    for file in _files():
        entries = yaml.safe_load(file.read_text(encoding="utf-8")) or []
        for raw in entries:
            if "questions" in raw:
                topics.append(_topic(raw, file.name))
            else:
                conditions.append(_condition(raw, file.name))
    ids = [c.id for c in conditions] + [t.id for t in topics]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"knowledge base ids used twice: {duplicated}")
    return tuple(conditions), tuple(topics)
