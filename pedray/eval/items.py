"""What our knowledge base finds in an answer: the conditions it names, and wrong steps (a test or
treatment item that belongs to another condition).

Right condition % cannot see a right diagnosis followed by another condition's step ("必要时空气灌肠",
an intussusception test, among the tests for cow's milk allergy; "不需要抗生素" for a urinary tract
infection), and a treatment answer need not name its condition at all. On our own corpus every test,
treatment and home-care item is a knowledge-base entry, written into answers word for word, so:

- the *allowed* owners of an answer are the conditions (and care topics) whose items its reference
  contains, and the conditions its reference or question names;
- a *wrong step* is an item of the answer (a test, treatment or home-care entry of at least
  `MIN_ITEM_CHARS` characters, found longest first) none of whose owners is allowed: the item belongs
  only to other conditions.

`wrong_step` is None where the reference contains no item (nothing to judge by). References score 0 by
construction; the figure is the share of answers, over those judged, with at least one wrong step.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pedray.corpus.knowledge import load_knowledge

STEP_FIELDS = ("exams", "management", "home_care")
MIN_ITEM_CHARS = 4  # shorter entries ("血常规") are tests many conditions share: too generic to judge by


def _longest_first(phrases) -> re.Pattern:
    """One alternation of the phrases, longest first: a phrase is not also found as a shorter one inside it."""
    return re.compile("|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)))


@lru_cache(maxsize=1)
def _condition_pattern() -> tuple[re.Pattern, dict[str, str]]:
    """Every condition name in our knowledge base, and the id each names."""
    conditions, _ = load_knowledge()
    names = {c.name: c.id for c in conditions}
    return _longest_first(names), names


def conditions_named(text: str) -> set[str]:
    """Ids of the knowledge-base conditions a text names."""
    pattern, names = _condition_pattern()
    return {names[found.group()] for found in pattern.finditer(text)}


@lru_cache(maxsize=1)
def _items() -> tuple[re.Pattern, dict[str, frozenset[str]]]:
    """Every step item, and each item's owners."""
    conditions, topics = load_knowledge()
    owners: dict[str, set[str]] = {}
    for condition in conditions:
        for field in STEP_FIELDS:
            for item in getattr(condition, field):
                owners.setdefault(item, set()).add(condition.id)
    for topic in topics:
        for item in topic.points:
            owners.setdefault(item, set()).add(topic.id)
    kept = {item: frozenset(ids) for item, ids in owners.items() if len(item) >= MIN_ITEM_CHARS}
    return _longest_first(kept), kept


def step_items(text: str) -> list[str]:
    """The knowledge-base step items a text contains, in order (non-overlapping, longest first)."""
    pattern, _ = _items()
    return [found.group() for found in pattern.finditer(text)]


def wrong_steps(prediction: str, reference: str, question: str = "") -> list[str] | None:
    """The answer's items that belong only to conditions its reference and question do not point to;
    None when the reference has no item to judge by."""
    _, owners = _items()
    reference_items = step_items(reference)
    if not reference_items:
        return None
    allowed = set().union(*(owners[item] for item in reference_items))
    allowed |= conditions_named(reference) | conditions_named(question)
    return [item for item in step_items(prediction) if not owners[item] & allowed]
