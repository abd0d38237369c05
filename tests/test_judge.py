"""LLM-as-judge through the real OpenAI client against a real HTTP endpoint the test starts on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pedray.eval.judge import answer_pairs, compare, parse_verdict

HERE = Path(__file__).resolve().parent

PAIRS = [
    {"id": "q1", "question": "孩子发烧怎么办？", "answer_1": "多喝水，观察精神状态，持续高热应就医。", "answer_2": "多喝水。"},
    {"id": "q2", "question": "孩子咳嗽怎么办？", "answer_1": "休息。", "answer_2": "注意休息，多喝水，咳嗽加重或气促请就医。"},
    {"id": "q3", "question": "孩子腹泻怎么办？", "answer_1": "补液。", "answer_2": "补液。"},
]


@pytest.fixture(scope="module")
def judge_url(tiny_model_dir):
    """The judge server in its own process; stopped by PID at the end."""
    server = subprocess.Popen([sys.executable, str(HERE / "judge_server.py"), "--model-dir", str(tiny_model_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("reply, verdict", [
    ("理由……\n结论：A", "A"), ("结论：B", "B"), ("结论：平局", "tie"), ("结论:  **A**", "A"),
    ("先写结论：A，再改为\n结论：B", "B"), ("Verdict: tie", "tie"), ("两个都好", None), ("", None),
])
def test_verdict_parsing(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_a_judge_with_a_preference_gives_wins_losses_and_ties(judge_url):
    result = compare(PAIRS, judge_url, "longer")
    outcomes = {j["id"]: j["outcome"] for j in result["judged"]}
    assert outcomes == {"q1": "win", "q2": "loss", "q3": "tie"}
    assert (result["win"], result["loss"], result["tie"], result["unparseable"]) == (1, 1, 1, 0)
    assert result["win_rate"] == pytest.approx(100 / 3) and result["consistent"] == 3


def test_judging_both_orders_cancels_position_bias(judge_url):
    """A judge that always picks the first answer shown ends every pair in a tie, never a win."""
    result = compare(PAIRS, judge_url, "first")
    assert result["tie"] == 3 and result["win"] == result["loss"] == 0
    assert result["consistent"] == 0 and result["first_position_picked"] == 6


def test_malformed_replies_are_retried_then_counted_never_guessed(judge_url):
    flaky = compare(PAIRS[:2], judge_url, "flaky", retries=1)
    assert [j["outcome"] for j in flaky["judged"]] == ["win", "loss"]
    assert all(j["attempts"] == [2, 2] for j in flaky["judged"])
    for model in ("garbage", "error"):
        result = compare(PAIRS[:2], judge_url, model, retries=2)
        assert result["unparseable"] == 2 and result["win"] == result["tie"] == result["loss"] == 0
        assert all(j["attempts"] == [3, 3] for j in result["judged"]) and result["win_rate"] == 0.0


def test_a_real_language_model_as_judge_is_parsed_or_counted(judge_url):
    """The embedded tiny LM writes the replies: whatever it says is either a verdict or unparseable."""
    result = compare(PAIRS[:1], judge_url, "tiny", retries=1)
    judged = result["judged"][0]
    assert judged["outcome"] in ("win", "tie", "loss", "unparseable")
    for reply, verdict, attempts in zip(judged["replies"], judged["verdicts"], judged["attempts"]):
        assert parse_verdict(reply) == verdict
        assert attempts == (2 if verdict is None else attempts)  # no verdict: asked again, then given up
    assert (judged["outcome"] == "unparseable") == (None in judged["verdicts"])


def test_judge_cli_pairs_two_eval_answer_files(judge_url, tmp_path):
    def answers(name: str, texts: list[str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"id": f"heldout-{i}", "kind": "text", "messages": json.dumps([{"role": "user", "content": f"问题{i}"}]),
                 "prediction": text} for i, text in enumerate(texts)]
        rows.append({"id": "mc-1", "kind": "choice", "messages": "[]", "prediction": "A"})  # objective: not judged
        (folder / "answers.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
        return folder

    first = answers("sft", ["很长的一段回答，说明了原因和处理", "短"])
    second = answers("base", ["短", "很长的一段回答，说明了原因和处理"])
    assert [p["id"] for p in answer_pairs(first, second)] == ["heldout-0", "heldout-1"]
    out = tmp_path / "judge.json"
    done = subprocess.run([sys.executable, "-m", "pedray", "judge", str(first), str(second), "--url", judge_url,
                           "--model", "longer", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 2 | 1 | 0 | 1 | 0 | 50.0% | 2 |" in done.stdout
    assert json.loads(out.read_text())["pairs"] == 2
    with pytest.raises(FileNotFoundError, match="no answers file"):
        answer_pairs(tmp_path / "nowhere", second)
