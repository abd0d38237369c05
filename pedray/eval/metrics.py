"""The paper's text metrics on jieba word segments, and objective-answer extraction and accuracy.

BLEU-1..4 (nltk sentence BLEU, smoothing method 3, cumulative weights), GLEU (nltk sentence GLEU),
ROUGE-1/2/L F1 (rouge-chinese) and Distinct-1/2, each x100 and averaged over samples. Unlike the
reference code, an empty prediction is not skipped: it scores zero on every metric and is counted.
"""

from __future__ import annotations

import re
from typing import Sequence

BLEU_WEIGHTS = {1: (1.0,), 2: (0.5, 0.5), 3: (1 / 3, 1 / 3, 1 / 3), 4: (0.25, 0.25, 0.25, 0.25)}
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "gleu", "rouge1", "rouge2", "rougeL", "distinct1", "distinct2")


def segment(text: str) -> list[str]:
    """Word-level jieba segmentation, whitespace dropped."""
    import jieba

    return [word for word in jieba.lcut(text.strip()) if word.strip()]


def distinct(tokens: Sequence[str], n: int) -> float:
    """Share of distinct n-grams among all n-grams of one text (0 when it has none)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_scores(prediction: str, reference: str) -> dict[str, float]:
    """Every metric for one prediction against one reference, x100 (all zero for an empty prediction)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.gleu_score import sentence_gleu
    from rouge_chinese import Rouge

    hypothesis, truth = segment(prediction), segment(reference)
    if not hypothesis or not truth:
        return dict.fromkeys(METRICS, 0.0)
    smoothing = SmoothingFunction().method3
    scores = {f"bleu{n}": 100 * sentence_bleu([truth], hypothesis, weights=w, smoothing_function=smoothing)
              for n, w in BLEU_WEIGHTS.items()}
    scores["gleu"] = 100 * sentence_gleu([truth], hypothesis)
    rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(truth))[0]
    scores.update(rouge1=100 * rouge["rouge-1"]["f"], rouge2=100 * rouge["rouge-2"]["f"],
                  rougeL=100 * rouge["rouge-l"]["f"])
    scores.update(distinct1=100 * distinct(hypothesis, 1), distinct2=100 * distinct(hypothesis, 2))
    return scores


def corpus_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Sample-averaged metrics plus `samples` and `empty_predictions` (counted, scored zero)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    totals = dict.fromkeys(METRICS, 0.0)
    for prediction, reference in zip(predictions, references):
        for key, value in sample_scores(prediction, reference).items():
            totals[key] += value
    count = max(len(predictions), 1)
    out = {key: value / count for key, value in totals.items()}
    out.update(samples=len(predictions), empty_predictions=sum(1 for p in predictions if not segment(p)))
    return out


_TRUE = ("正确", "对", "是", "√", "true", "yes")
_FALSE = ("错误", "不正确", "错", "否", "×", "false", "no")
_LEAD = re.compile(r"(?:正确)?答案\s*(?:是|为)?\s*[:：]?\s*")


def extract_choices(text: str, options: str = "ABCDEFG") -> str | None:
    """The option letters a free-text answer picks, sorted and joined ("AC"), or None if none is found.

    Looks after an `答案：` lead when there is one, else at the start of the answer: `A`, `AC`, `A、C`,
    `A,C`, `A和C`, `(B)`. Letters inside later prose are not guessed at.
    """
    lead = _LEAD.search(text)
    span = text[lead.end():] if lead else text.strip()
    match = re.match(rf"[\s(（【\[]*([{options}](?:\s*[、，,和及与/\s]?\s*[{options}])*)(?![A-Za-z])", span)
    if not match:
        return None
    return "".join(sorted(set(re.findall(f"[{options}]", match.group(1)))))


def extract_judgement(text: str) -> bool | None:
    """True/false from a free-text answer (`正确/错误`, `对/错`, ...), None if neither or both lead."""
    lead = _LEAD.search(text)
    span = (text[lead.end():] if lead else text.strip()).lower()
    for word in sorted(_TRUE + _FALSE, key=len, reverse=True):  # "不正确" before "正确", "错误" before "错"
        if span.startswith(word):
            return word in _TRUE
    return None
