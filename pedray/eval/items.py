"""What our knowledge base finds in an answer: the conditions it names, wrong steps (a test or
treatment item that belongs to another condition), wrong warning signs (another condition's red flag)
and a wrong body system ("细菌性脑膜炎属于消化系统疾病").

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

Warning signs are judged the same way on their own (`wrong_flags`): "脓疱疮出现哪些情况需要马上去医院？"
answered with the red flags of a peritonsillar abscess names the right kind of thing about the wrong
child, which neither ROUGE nor wrong step sees. A *wrong system* (`wrong_systems`) is a condition the
answer places in a body system ("X属于G", "X是儿科G中的常见病") other than its own, judged where the
reference places its condition. A *wrong age* (`wrong_ages`) is a patient age the answer states
("分析：患儿1岁半，…" for a 7-month-old) that is not the one its reference states: the case's age is in
the question, and an answer that gets it wrong has not read the case, whatever its ROUGE.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pedray.corpus.knowledge import load_knowledge

STEP_FIELDS = ("exams", "management", "home_care")
FLAG_FIELDS = ("red_flags",)
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


@lru_cache(maxsize=4)
def _items(fields: tuple[str, ...] = STEP_FIELDS) -> tuple[re.Pattern, dict[str, frozenset[str]]]:
    """Every item of these condition fields (and, for steps, of the care topics), and each item's owners."""
    conditions, topics = load_knowledge()
    owners: dict[str, set[str]] = {}
    for condition in conditions:
        for field in fields:
            for item in getattr(condition, field):
                owners.setdefault(item, set()).add(condition.id)
    if fields == STEP_FIELDS:
        for topic in topics:
            for item in topic.points:
                owners.setdefault(item, set()).add(topic.id)
    kept = {item: frozenset(ids) for item, ids in owners.items() if len(item) >= MIN_ITEM_CHARS}
    return _longest_first(kept), kept


def step_items(text: str, fields: tuple[str, ...] = STEP_FIELDS) -> list[str]:
    """The knowledge-base items of `fields` a text contains, in order (non-overlapping, longest first)."""
    pattern, _ = _items(fields)
    return [found.group() for found in pattern.finditer(text)]


def _wrong_items(fields: tuple[str, ...], prediction: str, reference: str, question: str) -> list[str] | None:
    """The answer's items of `fields` that belong only to conditions its reference and question do not
    point to (through the reference's steps and items of `fields`, and the conditions either names); None
    when the reference has no item of `fields` to judge by."""
    if not step_items(reference, fields):
        return None
    allowed: set[str] = set()
    for kind in {STEP_FIELDS, fields}:
        _, owners = _items(kind)
        allowed |= set().union(*(owners[item] for item in step_items(reference, kind)))
    allowed |= conditions_named(reference) | conditions_named(question)
    _, owners = _items(fields)
    return [item for item in step_items(prediction, fields) if not owners[item] & allowed]


def wrong_steps(prediction: str, reference: str, question: str = "") -> list[str] | None:
    """The answer's test, treatment and care items that belong only to conditions its reference and
    question do not point to; None when the reference has no such item to judge by."""
    return _wrong_items(STEP_FIELDS, prediction, reference, question)


def wrong_flags(prediction: str, reference: str, question: str = "") -> list[str] | None:
    """The answer's warning signs that belong only to other conditions; None when the reference names none."""
    return _wrong_items(FLAG_FIELDS, prediction, reference, question)


@lru_cache(maxsize=1)
def _system_pattern() -> tuple[re.Pattern, dict[str, str], dict[str, str]]:
    """"<condition>(alias)属于<group>" / "<condition>(alias)是儿科<group>": the corpus's two ways of placing one."""
    conditions, _ = load_knowledge()
    named, names = _condition_pattern()
    groups = {c.id: c.group for c in conditions}
    system = _longest_first(set(groups.values()))
    return re.compile(rf"({named.pattern})(?:（[^）]*）)?(?:属于|是儿科)({system.pattern})"), names, groups


def systems_stated(text: str) -> list[tuple[str, str]]:
    """(condition id, body system) for every place the text puts a condition in a system."""
    pattern, names, _ = _system_pattern()
    return [(names[m.group(1)], m.group(2)) for m in pattern.finditer(text)]


def wrong_systems(prediction: str, reference: str) -> list[tuple[str, str]] | None:
    """The answer's (condition, system) statements that put a condition in another system than its own;
    None when the reference places no condition (nothing to judge the answer's silence by)."""
    if not systems_stated(reference):
        return None
    _, _, groups = _system_pattern()
    return [(cid, group) for cid, group in systems_stated(prediction) if groups[cid] != group]


# "患儿7个月", "患儿2岁半", "患儿出生第3天": how an answer states the patient's age (the corpus's analyses
# do, `corpus.phrasing.format_age`); Arabic or Chinese numerals.
_AGE = re.compile(r"患儿(出生第[0-9一二三四五六七八九十两]+天|[0-9一二三四五六七八九十两]+(?:个月|岁半|岁|天|周))")


def ages_stated(text: str) -> list[str]:
    """The patient ages a text states ("患儿<age>"), in order."""
    return _AGE.findall(text)


def wrong_ages(prediction: str, reference: str) -> list[str] | None:
    """The patient ages the answer states that its reference does not; None when the reference states
    none (nothing to judge by). An answer that states no age is not counted wrong here."""
    right = set(ages_stated(reference))
    if not right:
        return None
    return [age for age in ages_stated(prediction) if age not in right]
