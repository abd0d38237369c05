"""A second net behind the rules: a character n-gram classifier of "urgent", trained on the dev cases.

The rules (`signs.yaml`) read what they were written for, and a parent has more ways to say a danger
sign than any list: on phrasings written after the rules, they caught 56-83% of the urgent ones
(README "Safety"). This classifier (scikit-learn: TF-IDF of character 1-2-grams, a logistic regression)
learns from the labelled dev part what an urgent message looks like, so "吃奶一点力气都没有" or
"大便像番茄酱" is flagged although no rule names them. It only adds: a chat the rules call urgent stays
urgent; one they pass is urgent when the classifier's probability reaches `THRESHOLD`, if the chat is a
parent's about their child (`PARENT_WORDS`).

It trains on `cases_dev.yaml` only (the test part stays held out), in well under a second, the first
time a chat is triaged; nothing is stored or downloaded. Its settings were chosen by 5-fold
cross-validation on the dev part (character 1-2-grams over 1-3 and 1-4: recall 65% against 56% and 60%
at 1% false alarms; C 4 over 16 and 64); `THRESHOLD` is where 2% of the dev part's everyday questions
are flagged in that cross-validation (`calibrate`), where it catches about two thirds of the urgent ones
on its own.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

NGRAMS = (1, 2)
C = 4.0
THRESHOLD = 0.73
"""Probability from which a chat the rules passed is urgent (2% false alarms in cross-validation on dev)."""


def chat_text(messages: list[dict[str, Any]]) -> str:
    """The user's turns of a chat as one text, as the classifier reads it."""
    return "。".join(m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str))


def build(cases: list[dict[str, Any]]):
    """The fitted pipeline (TF-IDF of character n-grams + logistic regression) for labelled cases."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = [chat_text(case["messages"]) for case in cases]
    labels = [bool(case["urgent"]) for case in cases]
    model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, sublinear_tf=True),
                          LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))
    return model.fit(texts, labels)


@lru_cache(maxsize=1)
def model():
    """The classifier trained on the dev part (once per process)."""
    from pedray.safety.evaluate import load_cases

    return build(load_cases("dev"))


# How a parent names the child. The classifier learned from parents' messages and reads only those: a
# textbook's or an exam's sentence ("新生儿缺氧时表现为呼吸暂停") names no child of the writer's, and on
# PediaBench's 4,381 questions and statements the classifier alone flagged 79 (exam items full of danger
# words), none with one of these words; of the labelled urgent chats, 12 of 656 have none, and the rules
# catch all twelve.
PARENT_WORDS = re.compile(r"孩子|宝宝|宝贝|娃|儿子|女儿|闺女|小孩|孙子|孙女|我家|小家伙|小宝|男宝|女宝|崽|小朋友")


def score(messages: list[dict[str, Any]]) -> float:
    """Probability that the chat is urgent; 0 for a chat that is not a parent's about their child (no user
    text, or none of `PARENT_WORDS`)."""
    text = chat_text(messages)
    return float(model().predict_proba([text])[0, 1]) if PARENT_WORDS.search(text) else 0.0


_CLAUSE = re.compile(r"[，,。！？!?；;：:\n]+")


def reasons(messages: list[dict[str, Any]], top: int = 2) -> list[str]:
    """The clauses of the chat that pushed its score up most, as the parent wrote them (what the notice
    quotes): each clause weighed by the classifier's weights of the character n-grams in it."""
    vectorizer, classifier = model().named_steps.values()
    text = chat_text(messages)
    row = vectorizer.transform([text])
    names = vectorizer.get_feature_names_out()
    weight = {names[j]: value * classifier.coef_[0, j] for j, value in zip(row.indices, row.data)}
    clauses = [c for c in dict.fromkeys(_CLAUSE.split(text)) if c.strip()]
    pull = {c: sum(weight.get(c[i:i + n], 0.0) for n in range(NGRAMS[0], NGRAMS[1] + 1)
                   for i in range(len(c) - n + 1)) for c in clauses}
    ranked = sorted((c for c in clauses if pull[c] > 0), key=lambda c: -pull[c])[:top]
    return [c for c in clauses if c in ranked]  # in the parent's order


def calibrate(cases: list[dict[str, Any]], false_alarms: float = 0.02, folds: int = 5,
              repeats: int = 5) -> dict[str, float]:
    """How `THRESHOLD` was chosen, to rerun when the dev part grows: in a stratified `folds`-fold
    cross-validation on `cases`, the score from which `false_alarms` of the everyday cases are flagged, and
    the recall of urgent cases there; each the mean over `repeats` shufflings (one shuffling's threshold
    moves by +-0.02, as it rests on the few highest-scoring everyday questions)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([bool(case["urgent"]) for case in cases])
    thresholds, recalls, rates = [], [], []
    for seed in range(repeats):
        scores = np.zeros(len(cases))
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(cases)), labels)
        for train, held in split:
            fitted = build([cases[i] for i in train])
            scores[held] = fitted.predict_proba([chat_text(cases[i]["messages"]) for i in held])[:, 1]
        everyday = np.sort(scores[~labels])[::-1]
        thresholds.append(float(everyday[int(false_alarms * len(everyday))]) + 1e-6)
        recalls.append(float((scores[labels] >= thresholds[-1]).mean()))
        rates.append(float((scores[~labels] >= thresholds[-1]).mean()))
    return {"threshold": float(np.mean(thresholds)), "recall": float(np.mean(recalls)),
            "false_alarm_rate": float(np.mean(rates))}
