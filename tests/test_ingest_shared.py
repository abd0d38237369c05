"""Ingestion of the real-data kit in ../shared/data (skipped when absent)."""

import json

import pytest

from pedray.ingest.prep import prep
from pedray.ingest.readers import read_path

pytestmark = pytest.mark.shared_data


def test_real_corpora_normalise_without_losing_records(shared_data, tmp_path):
    inputs = [shared_data / "medicalgpt" / "medical_sft_1k.jsonl", shared_data / "medicalgpt" / "dpo_zh_500.jsonl",
              shared_data / "pediabench" / "essay_short_answer.xlsx", shared_data / "pediabench" / "case_analysis.xlsx"]
    summary = prep(inputs, tmp_path, near_duplicate_threshold=1.0)
    assert summary["kept_by_source"]["medical_sft_1k.jsonl"] == 1000
    assert summary["kept_by_source"]["dpo_zh_500.jsonl"] == 500
    assert summary["kept_by_source"]["essay_short_answer.xlsx"] == 1275
    assert summary["kept_by_task"]["evidiag"] == 55
    record = json.loads(open(tmp_path / "sft_train.jsonl", encoding="utf-8").readline())
    assert "\u3000" not in json.dumps(record, ensure_ascii=False)


def test_pediabench_multiple_choice_and_true_false(shared_data):
    items = list(read_path(shared_data / "pediabench" / "multiple_choice.xlsx"))
    kept = [r for _, _, r, reason in items if reason is None]
    assert len(kept) == 2839
    question = kept[0]["messages"][0]["content"]
    assert "A." in question and not question.startswith("\n")
    assert kept[0]["messages"][1]["content"].startswith("答案：")
    assert kept[0]["group"]
    tf = [r for _, _, r, reason in read_path(shared_data / "pediabench" / "true_or_false.xlsx") if reason is None]
    assert all(r["messages"][1]["content"][:4] in ("答案：对", "答案：错") for r in tf)


def test_textbook_one_paragraph_a_line(shared_data):
    docs = [r for _, _, r, _ in read_path(shared_data / "medicalgpt" / "fever_textbook.txt")]
    assert len(docs) > 900
