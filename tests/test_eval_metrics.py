"""The paper's text metrics on hand-worked examples, and objective-answer extraction."""

from __future__ import annotations

import math

import pytest

from pedray.eval.metrics import altered_files, corpus_scores, distinct, sample_scores, segment

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


def test_distinct_depends_on_the_prediction_alone_and_whitespace_is_empty():
    scores = sample_scores("孩子发烧要多喝水", "")
    assert scores["distinct1"] == 100.0 and scores["distinct2"] == 100.0 and scores["rougeL"] == 0.0
    blank = corpus_scores(["  \n\u3000 "], [REFERENCE])
    assert blank["empty_predictions"] == 1 and all(blank[m] == 0.0 for m in ("distinct1", "distinct2", "rougeL"))


def test_a_package_overwritten_by_another_is_noticed(tmp_path):
    """`rouge-chinese` ships a module named `rouge`; installed after `rouge`, it overwrites the paper's files
    (uv did so in CI). `altered_files` compares each module file with the distribution's RECORD."""
    import base64
    import hashlib
    from importlib.metadata import PathDistribution

    def record_hash(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    own = b"from rouge.rouge import Rouge\n"
    (tmp_path / "rouge").mkdir()
    (tmp_path / "rouge" / "__init__.py").write_bytes(own)
    info = tmp_path / "rouge-1.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rouge\nVersion: 1.0.1\n")
    (info / "RECORD").write_text(f"rouge/__init__.py,{record_hash(own)},{len(own)}\nrouge-1.0.1.dist-info/RECORD,,\n")
    dist = PathDistribution(info)
    assert altered_files(dist) == []
    (tmp_path / "rouge" / "__init__.py").write_bytes(b"from rouge_chinese.rouge import Rouge\n")
    assert altered_files(dist) == ["rouge/__init__.py"]


def test_rouge_implementation_is_chosen_and_named():
    """Three sentences in another order: rouge-chinese splits at 。 and takes a summary-level LCS over them
    (3 of 5 words: 60); `rouge` (the paper's) sees one sentence, whose LCS 发烧 。 咳嗽 。 is 6 of 8 tokens (75)."""
    prediction, reference = "发烧。咳嗽。多喝水", "多喝水。发烧。咳嗽"
    paper, chinese = corpus_scores([prediction], [reference]), corpus_scores([prediction], [reference], rouge="rouge-chinese")
    assert paper["rouge"] == "paper" and chinese["rouge"] == "rouge-chinese"
    assert paper["rouge1"] == pytest.approx(chinese["rouge1"])
    assert paper["rougeL"] == pytest.approx(75.0, abs=1e-4) and chinese["rougeL"] == pytest.approx(60.0, abs=1e-4)
    with pytest.raises(ValueError, match="unknown ROUGE"):
        corpus_scores([prediction], [reference], rouge="rouge-x")


def _real_pairs(shared_data):
    """Real answers as (prediction, reference): PediaBench answers against a neighbour's and a truncated one,
    an empty prediction, and 100 answers of a Chinese preference set, rejected against chosen (same question)."""
    import json

    from pedray.eval.sets import pediabench_items

    answers = [item["reference"] for item in pediabench_items(shared_data / "pediabench" / "essay_short_answer.xlsx",
                                                               limit=40)]
    predictions = [answers[i + 1] for i in range(15)] + [a[: len(a) // 2] for a in answers[15:29]] + [""]
    references = answers[:30]
    with open(shared_data / "medicalgpt" / "dpo_zh_500.jsonl", encoding="utf-8") as handle:
        for line in list(handle)[:100]:
            pair = json.loads(line)
            predictions.append(pair["rejected"])
            references.append(pair["chosen"])
    return predictions, references


@pytest.mark.shared_data
@pytest.mark.parametrize("implementation", ["paper", "rouge-chinese"])
def test_metrics_equal_the_reference_packages_on_real_answers(shared_data, implementation):
    """Our averages equal the reference packages' own batch scores (`rouge` for the paper's ROUGE, or
    rouge-chinese) and per-sample nltk calls on 130 real answer pairs. The one intended difference: the
    batch ROUGE call cannot take an empty prediction, so the reference practice drops it; we score it
    zero and count it."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.gleu_score import sentence_gleu

    if implementation == "paper":
        from rouge import Rouge
    else:
        from rouge_chinese import Rouge
    predictions, references = _real_pairs(shared_data)
    ours = corpus_scores(predictions, references, rouge=implementation)
    assert ours["samples"] == 130 and ours["empty_predictions"] == 1 and ours["rouge"] == implementation

    def words(text: str) -> list[str]:
        return [w for w in jieba.cut(text) if w.strip()]

    kept = [(words(p), words(r)) for p, r in zip(predictions, references) if p.strip()]
    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # the reference package recurses once per word on long answers
    try:
        rouge = Rouge().get_scores([" ".join(h) for h, _ in kept], [" ".join(r) for _, r in kept], avg=True)
    finally:
        sys.setrecursionlimit(limit)
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


@pytest.mark.shared_data
def test_the_two_rouge_packages_disagree_on_rouge_l_for_real_answers(shared_data):
    """Why the choice matters: on these pairs the paper's package scores ROUGE-L ~4 points above rouge-chinese
    (29.0 against 25.0); on the 203 pairs of the issue it scored 3.4 below. ROUGE-1 agrees."""
    predictions, references = _real_pairs(shared_data)
    paper = corpus_scores(predictions, references)
    chinese = corpus_scores(predictions, references, rouge="rouge-chinese")
    assert abs(chinese["rougeL"] - paper["rougeL"]) > 1.0, (paper["rougeL"], chinese["rougeL"])
    assert chinese["rouge1"] == pytest.approx(paper["rouge1"], abs=0.5)
