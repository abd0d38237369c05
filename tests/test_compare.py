"""Paired comparison of two models' answers (pedray.eval.compare): golden values on answers whose
per-answer ROUGE-L is known exactly (an answer equal to its reference scores 100, an empty one 0)."""

from __future__ import annotations

import json

import pytest

from pedray.eval.compare import pairs_table, paired, read_answers, stage_pairs

REFERENCE = "发热时多喝水，精神差要及时就医。"
LOOP = "发热发热发热发热发热发热"


def rows(predictions: list[str], set_name: str = "heldout") -> list[dict]:
    return [{"id": f"q{i}", "set": set_name, "kind": "text", "prediction": p, "reference": REFERENCE,
             "degeneration": {"looping": p == LOOP}} for i, p in enumerate(predictions)]


def test_paired_difference_golden_values():
    before = rows([REFERENCE, REFERENCE, "", LOOP])
    after = rows([REFERENCE, REFERENCE, REFERENCE, ""])
    result = paired(before, after)
    # per answer: 0, 0, +100, 0 (the looping answer shares no word with the reference: ROUGE-L 0)
    assert result["answers"] == 4 and result["mean"] == pytest.approx(25.0)
    assert result["se"] == pytest.approx(25.0)  # stdev of (0, 0, 100, 0) is 50, over sqrt(4)
    assert result["ci95"] == pytest.approx([25.0 - 1.959964 * 25.0, 25.0 + 1.959964 * 25.0])
    assert (result["better"], result["worse"], result["same"]) == (1, 0, 3)
    assert (result["began_looping"], result["stopped_looping"]) == (0, 1)
    assert result["before"] == pytest.approx(50.0) and result["after"] == pytest.approx(75.0)
    assert result["reads_as"] == "within noise"  # the interval, -24 to +74, holds zero


def test_a_consistent_difference_reads_as_higher_or_lower():
    good, bad = rows([REFERENCE] * 40), rows([REFERENCE] * 30 + [""] * 10)
    assert paired(bad, good)["reads_as"] == "higher" and paired(good, bad)["reads_as"] == "lower"
    same = paired(good, good)
    assert same["mean"] == 0 and same["se"] == 0 and same["reads_as"] == "within noise"


def test_only_questions_both_answered_in_the_set_count():
    before = rows([REFERENCE, ""]) + rows([""], set_name="pediabench")
    after = rows([REFERENCE]) + rows([REFERENCE, REFERENCE], set_name="pediabench")
    assert paired(before, after) is None  # one common held-out question: no standard error
    assert paired(before + rows([REFERENCE, REFERENCE, ""])[2:], after + rows(["", "", REFERENCE])[2:])["answers"] == 2


def test_stage_pairs_and_table(tmp_path):
    answers = {"sft": rows([REFERENCE, "", ""]), "dfpo": rows([REFERENCE, REFERENCE, ""]),
               "mouse": rows([REFERENCE, REFERENCE, REFERENCE])}
    for name, part in answers.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    read = {name: read_answers(tmp_path / f"{name}.jsonl") for name in answers}
    assert read == answers and read_answers(tmp_path / "gone.jsonl") == []
    pairs = stage_pairs(read)
    assert list(pairs) == ["dfpo - sft", "mouse - dfpo"]
    assert pairs["dfpo - sft"]["mean"] == pytest.approx(100 / 3)
    lines = pairs_table(pairs)
    assert len(lines) == 4 and lines[2].startswith("| dfpo - sft | 3 | +33.33 ± 33.33 |")
    assert pairs_table({}) == []
