"""What text metrics do not see: answers that loop, run out of budget, are far too long or short, or
name the wrong condition.

rep-n = 1 - distinct n-grams / all n-grams of one answer (0 for an answer with no n-gram), on characters
(whitespace dropped) and on jieba words. An answer *loops* when some character 4-gram occurs 3 or more
times in it; it *repeats an item* when a list item (what stands between 、；：。, line breaks or numbers) is
said twice, a milder failure that looping does not count. Shares and rep-n are fractions (0..1); `length_ratio` is answer characters over reference
characters. On our own corpus the condition behind a question is known: `condition_correct` is the share
of answers that name that condition and no other (both conditions of a comparison, and no third), over
the questions whose reference names it, and
`wrong_step` the share with a test or treatment item of another condition (`pedray.eval.items`), over
the questions whose reference has such items; `wrong_flag` likewise for warning signs, and
`wrong_system` the share that puts a condition in another body system than its own, over the questions
whose reference places one; `wrong_age` the share that states another patient age than the reference
does ("患儿1岁半" for a 7-month-old), over the questions whose reference states one; `no_warning` the share
that gives no urgent advice at all ("请立即就医", "急诊", ...), over the questions whose reference gives
it: an answer that leaves out the warning signs is wrong for a parent however well it scores.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

from pedray.eval.items import conditions_named, wrong_ages, wrong_flags, wrong_steps, wrong_systems
from pedray.eval.metrics import distinct, segment

REP_NS = (2, 3, 4)
JUDGED = {"wrong_step": "step_questions", "wrong_flag": "flag_questions", "wrong_system": "system_questions",
          "wrong_age": "age_questions", "no_warning": "warning_questions"}
"""Shares judged only where the reference allows it, and the key of how many answers were judged."""
LOOP_N, LOOP_TIMES = 4, 3


def characters(text: str) -> list[str]:
    return [ch for ch in text if not ch.isspace()]


def rep(units: Sequence[str], n: int) -> float:
    """1 - distinct n-grams / all n-grams (0 when the text has no n-gram): 1 - the paper's Distinct-n."""
    return 1 - distinct(units, n) if len(units) >= n else 0.0


def loops(text: str, n: int = LOOP_N, times: int = LOOP_TIMES) -> bool:
    """Whether some character n-gram occurs `times` or more times in the text."""
    units = characters(text)
    counts = Counter(tuple(units[i:i + n]) for i in range(len(units) - n + 1))
    return bool(counts) and max(counts.values()) >= times


_ITEM_BOUNDARY = re.compile(r"[、；;：:。\n]|\d+\.\s*")


def repeats_item(text: str) -> bool:
    """Whether some list item of two or more characters occurs twice ("1. 体重不增 2. 体重不增")."""
    items = Counter(part.strip(" 。，,") for part in _ITEM_BOUNDARY.split(text))
    return any(count >= 2 and len(item) >= 2 for item, count in items.items())


_DIAGNOSIS = re.compile(r"初步诊断：([^。\n]+)|要考虑(.+?)的可能")


def expected_condition(reference: str, question: str = "") -> str | None:
    """The condition behind a question: the diagnosis its reference states ("初步诊断：X", "要考虑X的可能"),
    else the one condition the question names, else the one its reference names; None when not one."""
    stated = _DIAGNOSIS.search(reference)
    if stated:
        named = conditions_named(stated.group(1) or stated.group(2))
        if len(named) == 1:
            return next(iter(named))
    for text in (question, reference):
        named = conditions_named(text)
        if named:
            return next(iter(named)) if len(named) == 1 else None
    return None


def condition_correct(prediction: str, reference: str, question: str = "") -> bool | None:
    """Whether an answer names the question's condition and no other condition; None where the reference
    does not name it (a treatment answer need not repeat the diagnosis the parent gave, and an empty
    answer must not count as right). A question that names several conditions ("手足口病和疱疹性咽峡炎有什么
    区别？") whose reference names them all is answered right when the answer names exactly those: a
    comparison that swaps one for a third condition names the wrong one."""
    expected = expected_condition(reference, question)
    if expected is None:
        asked = conditions_named(question)
        if len(asked) > 1 and asked <= conditions_named(reference):
            return conditions_named(prediction) == asked
        return None
    if expected not in conditions_named(reference):
        return None
    return conditions_named(prediction) == {expected}


# Urgent advice: "go to a doctor now", not "see a doctor if it changes" (PedCorpus closes answers with
# "如果情况有变化，请及时带孩子就医", which is no warning).
_URGENT = re.compile(r"立即就医|马上就医|立刻就医|立即就诊|马上就诊|急诊|拨打120|马上去医院|立即去医院|立刻去医院")


def no_warning(prediction: str, reference: str) -> bool | None:
    """Whether the answer gives no urgent advice where its reference does; None where the reference gives none."""
    if not _URGENT.search(reference):
        return None
    return not _URGENT.search(prediction)


def answer_stats(prediction: str, reference: str, stopped: bool, question: str = "") -> dict[str, Any]:
    """Degeneration figures of one answer. `stopped`: the model ended its turn within the token budget;
    `question`: the user's turns (they may name the condition the reference does not repeat)."""
    chars, words = characters(prediction), segment(prediction)
    stats: dict[str, Any] = {f"rep{n}_char": rep(chars, n) for n in REP_NS}
    stats.update({f"rep{n}_word": rep(words, n) for n in REP_NS})
    stats["looping"] = loops(prediction)
    stats["repeated_item"] = repeats_item(prediction)
    stats["truncated"] = not stopped
    stats["length_ratio"] = len(chars) / max(len(characters(reference)), 1)
    stats["condition_correct"] = condition_correct(prediction, reference, question)
    for key, wrong in (("wrong_step", wrong_steps(prediction, reference, question)),
                       ("wrong_flag", wrong_flags(prediction, reference, question)),
                       ("wrong_system", wrong_systems(prediction, reference)),
                       ("wrong_age", wrong_ages(prediction, reference)),
                       ("no_warning", no_warning(prediction, reference))):
        stats[key] = None if wrong is None else bool(wrong)
    return stats


def same_answer(predictions: list[str], questions: list[str]) -> float:
    """Share of answers given, word for word, to another question as well: a model that ignores the
    question writes the same answer to many of them (an empty answer counts too)."""
    asked: dict[str, set[str]] = {}
    for prediction, question in zip(predictions, questions):
        asked.setdefault(prediction.strip(), set()).add(question)
    shared = sum(1 for prediction in predictions if len(asked[prediction.strip()]) > 1)
    return shared / max(len(predictions), 1)


def mean_stats(per_answer: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages over answers: rep-n, looping/repeated-item/truncated shares, length ratio; condition correctness over the
    answers whose condition is known (`condition_questions` says how many)."""
    count = max(len(per_answer), 1)
    out = {key: sum(float(s[key]) for s in per_answer) / count
           for key in [f"rep{n}_{u}" for u in ("char", "word") for n in REP_NS] + ["looping", "repeated_item",
                                                                                 "truncated", "length_ratio"]}
    known = [s["condition_correct"] for s in per_answer if s["condition_correct"] is not None]
    out["condition_correct"] = sum(known) / len(known) if known else None
    out["condition_questions"] = len(known)
    for key, count_key in JUDGED.items():
        judged = [s[key] for s in per_answer if s.get(key) is not None]
        out[key] = sum(judged) / len(judged) if judged else None
        out[count_key] = len(judged)
    return out
