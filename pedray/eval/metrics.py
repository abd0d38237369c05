"""The paper's text metrics on jieba word segments (objective-answer reading is in `pedray.eval.answers`).

BLEU-1..4 (nltk sentence BLEU, smoothing method 3, cumulative weights), GLEU (nltk sentence GLEU),
ROUGE-1/2/L F1 and Distinct-1/2, each x100 and averaged over samples.

ROUGE comes from the `rouge` package by default, as the paper's code computes it (`eval.rouge: paper`);
`rouge-chinese` is selectable (`eval.rouge: rouge-chinese`). They differ in ROUGE-L: rouge-chinese splits
sentences at 。！？ and takes a summary-level LCS over them, which scores Chinese answers ~3 points higher
on real data, so only `paper` can be set beside the paper's table. Every report says which was used.

Unlike the reference code, an empty prediction (nothing but whitespace counts as empty) is not
skipped: it scores zero on every metric and is counted. Distinct depends on the prediction alone, so it
is scored even when the reference is empty.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

BLEU_WEIGHTS = {1: (1.0,), 2: (0.5, 0.5), 3: (1 / 3, 1 / 3, 1 / 3), 4: (0.25, 0.25, 0.25, 0.25)}
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "gleu", "rouge1", "rouge2", "rougeL", "distinct1", "distinct2")
ROUGE_IMPLEMENTATIONS = ("paper", "rouge-chinese")


def segment(text: str) -> list[str]:
    """Word-level jieba segmentation, whitespace dropped."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # not its dictionary-loading lines, in every process that segments

    return [word for word in jieba.lcut(text.strip()) if word.strip()]


def distinct(tokens: Sequence[str], n: int) -> float:
    """Share of distinct n-grams among all n-grams of one text (0 when it has none)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@contextmanager
def _deep_recursion(limit: int = 20000) -> Iterator[None]:
    """The `rouge` package rebuilds the LCS recursively, one frame per word: long answers need room."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def altered_files(distribution) -> list[str]:
    """The files of an installed distribution under its own module folder whose content is not what its
    RECORD says (sha256), e.g. overwritten by another package that ships a module of the same name."""
    import base64
    import hashlib

    changed = []
    for entry in distribution.files or ():
        if entry.hash is None or entry.hash.mode != "sha256" or entry.suffix != ".py":
            continue
        path = entry.locate()
        data = path.read_bytes() if path.is_file() else b""
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if digest != entry.hash.value:
            changed.append(str(entry))
    return changed


@functools.cache
def _paper_rouge():
    """The `rouge` package's Rouge, after checking that its files are its own: `rouge-chinese` ships a module
    named `rouge` as well (a copy of its own code), and whichever of the two an installer writes last
    wins. pip happened to write `rouge` last, uv wrote `rouge-chinese` last: "paper" ROUGE-L then came
    out as rouge-chinese's, silently (60 against 75 on the test's three sentences)."""
    from importlib.metadata import distribution

    changed = [f for f in altered_files(distribution("rouge")) if f.startswith("rouge/")]
    if changed:
        raise RuntimeError(f"the installed `rouge` package was overwritten by another one ({', '.join(changed)}; "
                           "`rouge-chinese` ships a module of the same name): reinstall it last with "
                           "`pip install --force-reinstall --no-deps rouge==1.0.1` (`make setup` does)")
    from rouge import Rouge

    return Rouge


def rouge_f(hypothesis: list[str], truth: list[str], implementation: str = "paper") -> dict[str, float]:
    """ROUGE-1/2/L F1 (0..1) of two segmented texts with the chosen package."""
    if implementation == "paper":
        Rouge = _paper_rouge()
    elif implementation == "rouge-chinese":
        from rouge_chinese import Rouge
    else:
        raise ValueError(f"unknown ROUGE implementation {implementation!r}; choose one of {ROUGE_IMPLEMENTATIONS}")
    with _deep_recursion():
        scores = Rouge().get_scores(" ".join(hypothesis), " ".join(truth))[0]
    return {"rouge1": scores["rouge-1"]["f"], "rouge2": scores["rouge-2"]["f"], "rougeL": scores["rouge-l"]["f"]}


def sample_scores(prediction: str, reference: str, rouge: str = "paper") -> dict[str, float]:
    """Every metric for one prediction against one reference, x100 (all zero for an empty prediction;
    only Distinct, which needs no reference, for an empty reference)."""
    return dict(_sample_scores(prediction, reference, rouge))


@functools.lru_cache(maxsize=4096)
def _sample_scores(prediction: str, reference: str, rouge: str) -> dict[str, float]:
    # Cached: a report scores every answer once for its set and again for its task (1.5 s of the demo's
    # 2-3 s per stage went to scoring before); callers get a copy.
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, truth = segment(prediction), segment(reference)
    scores = dict.fromkeys(METRICS, 0.0)
    scores.update(distinct1=100 * distinct(hypothesis, 1), distinct2=100 * distinct(hypothesis, 2))
    if not hypothesis or not truth:
        return scores
    smoothing = SmoothingFunction().method3
    scores.update({f"bleu{n}": 100 * sentence_bleu([truth], hypothesis, weights=w, smoothing_function=smoothing)
                   for n, w in BLEU_WEIGHTS.items()})
    scores["gleu"] = 100 * sentence_gleu([truth], hypothesis)
    scores.update({key: 100 * value for key, value in rouge_f(hypothesis, truth, rouge).items()})
    return scores


def corpus_scores(predictions: Sequence[str], references: Sequence[str], rouge: str = "paper") -> dict[str, float]:
    """Sample-averaged metrics plus `samples`, `empty_predictions` (counted, scored zero) and `rouge`
    (the implementation used)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    totals = dict.fromkeys(METRICS, 0.0)
    for prediction, reference in zip(predictions, references):
        for key, value in sample_scores(prediction, reference, rouge).items():
            totals[key] += value
    count = max(len(predictions), 1)
    out: dict = {key: value / count for key, value in totals.items()}
    out.update(samples=len(predictions), empty_predictions=sum(1 for p in predictions if not segment(p)), rouge=rouge)
    return out
