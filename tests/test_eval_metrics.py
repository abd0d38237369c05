"""The paper's text metrics on hand-worked examples, and objective-answer extraction."""

from __future__ import annotations

import math

import pytest

from pedray.eval.metrics import corpus_scores, distinct, extract_choices, extract_judgement, sample_scores, segment

REFERENCE = "孩子发烧要多喝水"   # jieba: 孩子 / 发烧 / 要 / 多喝水 (4 words)


def test_segmentation_is_word_level():
    assert segment(REFERENCE) == ["孩子", "发烧", "要", "多喝水"]


def test_identical_answer_scores_100_everywhere():
    scores = sample_scores(REFERENCE, REFERENCE)
    assert all(value == pytest.approx(100.0, abs=1e-4) for value in scores.values()), scores


def test_short_answer_golden_values():
    """Hypothesis 多喝水 (1 word, in the reference). Brevity penalty exp(1 - 4/1) = e^-3.
    BLEU-n: p1 = 1, higher orders have no n-grams and method 3 gives 1/2, 1/4, 1/8, so
    BLEU-2 = e^-3 (1 * 1/2)^(1/2), BLEU-4 = e^-3 (1/64)^(1/4). GLEU = min(P = 1/1, R = 1/10) = 0.1
    (the reference has 4 + 3 + 2 + 1 n-grams). ROUGE-1 F = 2 * 1 * 1/4 / (1 + 1/4) = 0.4; no bigram."""
    scores = sample_scores("多喝水", REFERENCE)
    penalty = math.exp(-3) * 100
    assert scores["bleu1"] == pytest.approx(penalty)
    assert scores["bleu2"] == pytest.approx(penalty * math.sqrt(0.5))
    assert scores["bleu4"] == pytest.approx(penalty * (1 / 64) ** 0.25)
    assert scores["gleu"] == pytest.approx(10.0)
    assert scores["rouge1"] == pytest.approx(40.0, abs=1e-4) and scores["rougeL"] == pytest.approx(40.0, abs=1e-4)
    assert scores["rouge2"] == 0.0
    assert scores["distinct1"] == 100.0 and scores["distinct2"] == 0.0


def test_empty_predictions_count_as_zero_not_skipped():
    """Sample 2 (孩子 发烧: P = 1, BP = e^-1, ROUGE-1 F = 2/3, ROUGE-2 F = 2 * 1 * 1/3 / (4/3) = 1/2) is
    averaged with an empty prediction scored zero."""
    scores = corpus_scores(["", "孩子发烧"], [REFERENCE, REFERENCE])
    assert scores["samples"] == 2 and scores["empty_predictions"] == 1
    assert scores["bleu1"] == pytest.approx(100 * math.exp(-1) / 2)
    assert scores["rouge1"] == pytest.approx(100 * (2 / 3) / 2, abs=1e-4)
    assert scores["rouge2"] == pytest.approx(25.0, abs=1e-4)
    assert scores["gleu"] == pytest.approx(15.0)   # min(3/3, 3/10) = 0.3, halved
    with pytest.raises(ValueError, match="predictions"):
        corpus_scores(["a"], [])


def test_distinct_counts_unique_ngrams():
    assert distinct(["a", "b", "a", "b"], 1) == 0.5
    assert distinct(["a", "b", "a", "b"], 2) == pytest.approx(2 / 3)
    assert distinct(["a"], 2) == 0.0


@pytest.mark.parametrize("text, expected", [
    ("答案：A", "A"), ("AC", "AC"), ("A、C", "AC"), ("答案是 B和D。因为……", "BD"), ("(C) 因为", "C"),
    ("正确答案为：C,A", "AC"), ("我认为是A", None), ("Apple", None), ("", None),
])
def test_choice_extraction(text, expected):
    assert extract_choices(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("正确", True), ("错误。", False), ("答案：对", True), ("不正确", False), ("错", False), ("也许吧", None),
])
def test_judgement_extraction(text, expected):
    assert extract_judgement(text) == expected


@pytest.mark.shared_data
def test_metrics_equal_the_reference_libraries_batch_apis_on_real_answers(shared_data):
    """On real PediaBench answers (a related answer, a truncated answer and an empty one as predictions),
    our averages equal rouge-chinese's own `avg=True` scores and per-sample nltk calls. The one intended
    difference: rouge-chinese's batch mode cannot take an empty prediction, so the reference practice
    drops it; we score it zero and count it."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.gleu_score import sentence_gleu
    from rouge_chinese import Rouge

    from pedray.eval.sets import pediabench_items

    answers = [item["reference"] for item in pediabench_items(shared_data / "pediabench" / "essay_short_answer.xlsx",
                                                               limit=40)]
    references = answers[:30]
    predictions = [answers[i + 1] for i in range(15)] + [a[: len(a) // 2] for a in answers[15:29]] + [""]
    ours = corpus_scores(predictions, references)
    assert ours["samples"] == 30 and ours["empty_predictions"] == 1

    def words(text: str) -> list[str]:
        return [w for w in jieba.cut(text) if w.strip()]

    kept = [(words(p), words(r)) for p, r in zip(predictions, references) if p]
    rouge = Rouge().get_scores([" ".join(h) for h, _ in kept], [" ".join(r) for _, r in kept], avg=True)
    share = len(kept) / len(predictions)  # the empty prediction adds a zero to our average
    assert ours["rouge1"] == pytest.approx(100 * rouge["rouge-1"]["f"] * share, rel=1e-9)
    assert ours["rouge2"] == pytest.approx(100 * rouge["rouge-2"]["f"] * share, rel=1e-9)
    assert ours["rougeL"] == pytest.approx(100 * rouge["rouge-l"]["f"] * share, rel=1e-9)
    smooth = SmoothingFunction().method3
    bleu4 = sum(sentence_bleu([r], h, smoothing_function=smooth) for h, r in kept) / len(predictions)
    bleu2 = sum(sentence_bleu([r], h, weights=(0.5, 0.5), smoothing_function=smooth) for h, r in kept) / len(predictions)
    gleu = sum(sentence_gleu([r], h) for h, r in kept) / len(predictions)
    assert ours["bleu4"] == pytest.approx(100 * bleu4, rel=1e-9) and ours["bleu2"] == pytest.approx(100 * bleu2, rel=1e-9)
    assert ours["gleu"] == pytest.approx(100 * gleu, rel=1e-9)
    distinct2 = sum(len(set(zip(h, h[1:]))) / max(len(h) - 1, 1) for h, _ in kept) / len(predictions)
    assert ours["distinct2"] == pytest.approx(100 * distinct2, rel=1e-9)
    assert 0 < ours["bleu4"] < ours["bleu1"] < 100  # real, partially matching answers
