"""LLM-as-judge: pairwise win/tie/loss of two models' answers through any OpenAI-compatible endpoint.

Each pair is judged twice, once in each order, on the paper's criteria (usefulness, correctness,
consistency, smoothness). Model 1 wins a question when the two verdicts together favour it, ties when
they cancel (which is how a judge's position bias cancels out). A reply without a verdict is asked
again up to `retries` times, then the question counts as unparseable: a verdict is never guessed.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pedray.eval.compare import read_answers

JUDGE_PROMPT = """你是一名儿科医学评审专家。下面是家长或医生提出的一个问题，以及两位助手的回答。
请从四个方面综合比较两个回答：
1. 有用性：是否切实回应了提问者的需要；
2. 正确性：医学内容是否准确、安全；
3. 一致性：内容前后是否自洽、是否切题；
4. 流畅性：语言是否通顺、自然。
不要因为回答的先后顺序或长短而偏向任何一方。

[问题]
{question}

[回答A]
{answer_a}

[回答B]
{answer_b}

请先用一两句话说明理由，最后单独一行写出结论，格式为“结论：A”、“结论：B”或“结论：平局”。"""

_VERDICT = re.compile(r"(?:结论|verdict)\s*[:：]\s*\**\s*(A|B|平局|平|tie)", re.IGNORECASE)


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "tie" from the judge's last `结论：` line, None when there is none."""
    found = _VERDICT.findall(reply or "")
    if not found:
        return None
    last = found[-1].upper()
    return last if last in ("A", "B") else "tie"


def judge_once(client, model: str, question: str, answer_a: str, answer_b: str, retries: int = 2,
               max_tokens: int = 512) -> tuple[str | None, list[str]]:
    """The verdict for one order of one pair and every raw reply it took (at most 1 + retries)."""
    from openai import APIError

    prompt = JUDGE_PROMPT.format(question=question, answer_a=answer_a or "（空）", answer_b=answer_b or "（空）")
    replies: list[str] = []
    for _ in range(1 + retries):
        try:
            response = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=max_tokens)
            reply = response.choices[0].message.content or ""
        except APIError as err:  # a server error is retried like a malformed reply
            reply = f"<error: {type(err).__name__}: {err}>"
        replies.append(reply)
        verdict = parse_verdict(reply)
        if verdict is not None:
            return verdict, replies
    return None, replies


def judge_pair(client, model: str, question: str, answer_1: str, answer_2: str, retries: int = 2,
               max_tokens: int = 512) -> dict[str, Any]:
    """Both orders of one pair; `outcome` for model 1: "win", "tie", "loss" or "unparseable"."""
    first, first_replies = judge_once(client, model, question, answer_1, answer_2, retries, max_tokens)
    second, second_replies = judge_once(client, model, question, answer_2, answer_1, retries, max_tokens)
    if first is None or second is None:
        outcome = "unparseable"
    else:
        score = {"A": 1, "tie": 0, "B": -1}[first] - {"A": 1, "tie": 0, "B": -1}[second]
        outcome = "win" if score > 0 else "loss" if score < 0 else "tie"
    return {"outcome": outcome, "verdicts": [first, second], "attempts": [len(first_replies), len(second_replies)],
            "replies": [first_replies[-1], second_replies[-1]]}


def compare(pairs: list[dict[str, str]], url: str, model: str, api_key: str = "none", retries: int = 2,
            concurrency: int = 4, timeout: float = 120.0, max_tokens: int = 512) -> dict[str, Any]:
    """Judge `pairs` ({id, question, answer_1, answer_2}) at `url`; counts, rates and every verdict."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=1)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        judged = list(pool.map(lambda p: {"id": p["id"], **judge_pair(client, model, p["question"], p["answer_1"],
                                                                      p["answer_2"], retries, max_tokens)}, pairs))
    counts = {key: sum(1 for j in judged if j["outcome"] == key) for key in ("win", "tie", "loss", "unparseable")}
    decided = len(judged) - counts["unparseable"]
    both = [j for j in judged if None not in j["verdicts"]]
    return {
        "judge": {"url": url, "model": model, "retries": retries, "max_tokens": max_tokens}, "pairs": len(judged), **counts,
        "win_rate": 100 * counts["win"] / decided if decided else 0.0,
        "tie_rate": 100 * counts["tie"] / decided if decided else 0.0,
        "loss_rate": 100 * counts["loss"] / decided if decided else 0.0,
        # the judge named the same answer in both orders (or tied both times): no position bias on that pair
        "consistent": sum(1 for j in both if {j["verdicts"][0], j["verdicts"][1]} in ({"A", "B"}, {"tie"})),
        "first_position_picked": sum(1 for j in both for v in j["verdicts"] if v == "A"),
        "judged": judged,
    }


def answer_pairs(answers_1: str | Path, answers_2: str | Path) -> list[dict[str, str]]:
    """Open-question pairs from two `answers.jsonl` files written by `pedray eval` on the same questions."""
    def read(path: str | Path) -> dict[str, dict[str, Any]]:
        path = Path(path)
        if path.is_dir():
            path = path / "answers.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no answers file (run `python -m pedray eval` first)")
        return {row["id"]: row for row in read_answers(path) if row.get("kind") == "text"}

    first, second = read(answers_1), read(answers_2)
    shared = sorted(set(first) & set(second))
    if not shared:
        raise ValueError(f"{answers_1} and {answers_2} share no open questions (evaluate both on the same sets)")
    return [{"id": key, "question": json.loads(first[key]["messages"])[-1]["content"],
             "answer_1": first[key]["prediction"], "answer_2": second[key]["prediction"]} for key in shared]
