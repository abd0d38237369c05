"""Serving parts without Serve: red flags, the task classifier, request validation, the batched engine."""

from __future__ import annotations

import json

import pytest
import torch

from pedray.serve.api import APIError, parse_chat
from pedray.serve.safety import red_flags, triage, wrap
from pedray.vocab import DISCLAIMER, URGENT_NOTICE


@pytest.mark.parametrize("text, flags", [
    ("孩子发烧后突然抽搐，眼睛上翻", ["seizure"]),
    ("宝宝5个月，拉肚子两天，今天一直没有尿", ["dehydration"]),
    ("孩子七岁了，今天尿少，是不是喝水少", []),                 # a little less urine is not "no urine"
    ("刚出生十天的新生儿发烧38.5度", ["infant_fever"]),
    ("孩子喘不上气，嘴唇发紫", ["cyanosis", "breathing_difficulty"]),
    ("叫不醒，一直昏睡", ["hard_to_wake"]),
    ("孩子有点咳嗽，流鼻涕", []),
])
def test_red_flags_stay_the_public_entry_point(text, flags):
    assert red_flags(text) == flags


def test_every_answer_has_the_disclaimer_and_red_flags_put_the_notice_first():
    result = triage([{"role": "user", "content": "孩子抽搐了"}])
    urgent = wrap("多喝水。", result)
    assert urgent.startswith(URGENT_NOTICE) and result.notice() in urgent and urgent.endswith(DISCLAIMER)
    calm = wrap("多喝水。", triage([{"role": "user", "content": "孩子有点咳嗽"}]))
    assert calm.startswith("多喝水") and calm.endswith(DISCLAIMER)


def test_task_classifier_learns_the_corpus_task_labels(small_corpus, tmp_path):
    from pedray.serve.classify import TaskClassifier, corpus_examples

    classifier = TaskClassifier.fit(corpus_examples([small_corpus]))
    held_out = corpus_examples([small_corpus], "test")
    accuracy = sum(classifier.predict(text) == task for text, task in held_out) / len(held_out)
    assert len(held_out) >= 50 and accuracy >= 0.9
    classifier.save(tmp_path / "c.json")
    again = TaskClassifier.load(tmp_path / "c.json")
    assert all(again.scores(t) == pytest.approx(classifier.scores(t)) for t, _ in held_out[:5])


def _body(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "孩子发烧怎么办"}], **fields}).encode()


@pytest.mark.parametrize("raw, param", [
    (b"{not json", None), (b"\xff\xfe\x00", None), (b"[1, 2]", None),
    (json.dumps({"model": "x"}).encode(), "messages"), (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "doctor", "content": "x"}]}).encode(), "messages[0].role"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}).encode(),
     "messages"),
    (_body(max_tokens=10**9), "max_tokens"), (_body(max_tokens=0), "max_tokens"), (_body(max_tokens="5"), "max_tokens"),
    (_body(temperature=-1), "temperature"), (_body(top_p=0), "top_p"), (_body(stop=[1]), "stop"),
    (_body(task="surgery"), "task"), (_body(stream="yes"), "stream"),
])
def test_bad_requests_are_400_with_the_offending_field(raw, param):
    with pytest.raises(APIError) as caught:
        parse_chat(raw, max_tokens_limit=512)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_a_good_request_is_parsed_with_defaults():
    chat = parse_chat(_body(stop="。", task="evidiag", max_tokens=12), max_tokens_limit=512)
    assert chat.stop == ["。"] and chat.task == "evidiag" and chat.max_tokens == 12 and chat.temperature == 0.0
    parts = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "孩子"}]}]}).encode()
    assert parse_chat(parts, 512).messages[0]["content"] == "孩子"


def test_engine_batches_with_per_request_settings(tiny_model_dir):
    """Batched decoding gives every greedy row the answer it gets alone; stop strings, token budgets
    and seeds apply per row."""
    from pedray.serve.engine import GenRequest, HFEngine

    engine = HFEngine(str(tiny_model_dir), threads=1)
    prompts = [engine.encode([{"role": "user", "content": q}]) for q in ("孩子发烧", "宝宝咳嗽有痰怎么办", "腹泻")]

    def run(requests):
        texts, reasons = [""] * len(requests), [None] * len(requests)
        for step in engine.stream(requests):
            for i, item in enumerate(step):
                if item is not None:
                    texts[i] += item[0]
                    reasons[i] = item[1] or reasons[i]
        return texts, reasons

    alone = [run([GenRequest(p, max_tokens=12)])[0][0] for p in prompts]
    together, reasons = run([GenRequest(p, max_tokens=12) for p in prompts])
    assert together == alone and all(r in ("length", "stop") for r in reasons)
    short, reasons = run([GenRequest(prompts[0], max_tokens=3), GenRequest(prompts[1], max_tokens=12)])
    assert reasons[0] == "length" and short[1] == alone[1]
    sampled = [run([GenRequest(prompts[1], max_tokens=10, temperature=1.0, top_p=0.9, seed=7)])[0][0] for _ in range(2)]
    assert sampled[0] == sampled[1]
    if alone[1]:
        stop = alone[1][len(alone[1]) // 2]
        cut, reasons = run([GenRequest(prompts[1], max_tokens=12, stop=[stop])])
        assert cut[0] == alone[1][: alone[1].index(stop)] and reasons == ["stop"]


def test_engine_admits_requests_into_a_running_batch(tiny_model_dir):
    """Continuous batching: requests that come while others decode join them at the next step, finish
    without waiting for the others, answer (greedy) exactly as alone, and a cancelled one is dropped."""
    import threading

    from pedray.serve.engine import GenRequest, HFEngine

    engine = HFEngine(str(tiny_model_dir), threads=1, max_batch_size=4)
    prompts = [engine.encode([{"role": "user", "content": q}]) for q in ("孩子发烧", "宝宝咳嗽有痰怎么办", "腹泻", "皮疹")]
    alone = ["".join(item[0] for step in engine.stream([GenRequest(p, max_tokens=n)]) for item in step if item)
             for p, n in zip(prompts, (40, 12, 3, 40))]
    texts, reasons, done, order = [""] * 4, [None] * 4, [threading.Event() for _ in range(4)], []
    started = threading.Event()

    def emit(i):
        def on_item(text, reason):
            texts[i] += text
            started.set()
            if reason is not None:
                reasons[i] = reason
                order.append(i)
                done[i].set()
        return on_item

    rows = [engine.submit(GenRequest(prompts[0], max_tokens=40), emit(0))]
    assert started.wait(60)  # the first request is decoding alone; the others join it
    rows += [engine.submit(GenRequest(p, max_tokens=n), emit(i)) for i, (p, n) in
             enumerate(zip(prompts[1:], (12, 3, 40)), start=1)]
    rows[3].cancelled = True
    for i in (0, 1, 2):
        assert done[i].wait(120), i
    assert texts[:3] == alone[:3] and reasons[2] == "length"
    assert order.index(2) < order.index(0)  # the short late request did not wait for the long early one
    assert not done[3].is_set() and texts[3] == alone[3][: len(texts[3])]
    assert max(engine.batch_sizes) >= 2 and engine.batch_sizes.get(1, 0) >= 1
    thread = engine._thread
    closing = engine.submit(GenRequest(prompts[0], max_tokens=200), emit(3))
    engine.close()  # the Engine protocol's close: the scheduler thread ends, a request still decoding ends "error"
    assert not thread.is_alive() and engine._thread is None
    assert closing.done and closing.finish_reason == "error"
    engine.close()  # twice is fine


def test_rows_joining_a_batch_get_the_logits_they_get_alone(tiny_model_dir):
    """The exact check behind continuous batching: every step's next-token logits of a row that joined
    a running batch (its cache padded and stacked, positions its own) and then saw rows leave (columns
    trimmed) equal the logits of that row decoded alone. The random model's attention is sharpened so
    that a wrong key, mask or position changes them."""
    from pedray.serve.engine import GenRequest, HFEngine, _Batch, _Row

    engine = HFEngine(str(tiny_model_dir), threads=1)
    with torch.no_grad():
        for name, weight in engine.model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(8.0)
    prompts = [engine.encode([{"role": "user", "content": q}]) for q in ("孩子发烧三天了", "咳嗽", "腹泻怎么办呢", "皮疹")]
    budgets = (9, 12, 3, 6)

    def decode(batch, joins):
        """Step `batch`; at step k admit joins[k]; the logits each row saw, per step."""
        seen: dict[int, list[torch.Tensor]] = {}
        step = 0
        while batch.rows or any(k >= step for k in joins):
            if step in joins:
                batch.admit(joins[step])
            for i, row in enumerate(batch.rows):
                seen.setdefault(id(row), []).append(batch.logits[i].clone())
            batch.sample()
            batch.retire()
            if batch.rows:
                batch.step()
            step += 1
        return seen

    rows = [_Row(GenRequest(p, max_tokens=n), engine.tokenizer) for p, n in zip(prompts, budgets)]
    alone = [decode(_Batch(engine), {0: [_Row(GenRequest(p, max_tokens=n), engine.tokenizer)]})
             for p, n in zip(prompts, budgets)]
    together = decode(_Batch(engine), {0: rows[:1], 2: rows[1:3], 5: rows[3:]})
    for row, own in zip(rows, alone):
        (expected,) = own.values()
        got = together[id(row)]
        assert len(got) == len(expected) == row.request.max_tokens
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_penalties_golden_values_and_transformers_repetition_penalty():
    """logits [2, -1, 0.5, 3], prompt [0], answer [3, 3, 1]: repetition 2 over {0, 1, 3} gives
    [1, -2, 0.5, 1.5]; then frequency 0.5 per occurrence and presence 0.25: token 3 (twice) 1.5 - 1.25 = 0.25,
    token 1 (once) -2 - 0.75 = -2.75."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from pedray.serve.engine import GenRequest, penalize

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    request = GenRequest([0], frequency_penalty=0.5, presence_penalty=0.25, repetition_penalty=2.0)
    assert penalize(logits, request, [3, 3, 1]).tolist() == pytest.approx([1.0, -2.75, 0.5, 0.25])
    assert not GenRequest([0]).penalized and penalize(logits, GenRequest([0]), [3]).equal(logits)
    scores = torch.randn(1, 50)
    ids = torch.tensor([[4, 9, 9, 17, 30]])
    reference = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())[0]
    ours = penalize(scores[0], GenRequest([4, 9], repetition_penalty=1.3), [9, 17, 30])
    assert torch.allclose(ours, reference)


def test_penalties_change_greedy_answers_and_the_default_leaves_them_untouched(tiny_model_dir, small_corpus):
    """The engine's greedy answers with neutral penalties are the evaluation's own greedy answers; each
    penalty changes them."""
    from pedray.eval.generate import generate_local
    from pedray.eval.sets import heldout_items
    from pedray.serve.engine import GenRequest, HFEngine

    engine = HFEngine(str(tiny_model_dir), threads=1)
    items = heldout_items([small_corpus], limit=1)[:3]
    evaluated = {row["id"]: row["prediction"] for row in generate_local(items, tiny_model_dir, 24)}

    def answer(item, **penalties):
        prompt = engine.encode(json.loads(item["messages"]))
        pieces = [step[0][0] for step in engine.stream([GenRequest(prompt, max_tokens=24, task=item["task"], **penalties)])
                  if step[0]]
        return "".join(pieces)

    for item in items:
        plain = answer(item)
        assert plain.strip() == evaluated[item["id"]]
        assert answer(item, frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0) == plain
    changed = {name: any(answer(item, **{name: value}) != answer(item) for item in items)
               for name, value in (("frequency_penalty", 2.0), ("presence_penalty", 2.0), ("repetition_penalty", 2.0))}
    assert all(changed.values()), changed


def test_penalty_fields_are_validated_and_default_to_the_servers():
    chat = parse_chat(_body(), 64, 16, {"frequency_penalty": 0.3, "presence_penalty": 0.0, "repetition_penalty": 1.1})
    assert (chat.frequency_penalty, chat.presence_penalty, chat.repetition_penalty) == (0.3, 0.0, 1.1)
    chat = parse_chat(_body(frequency_penalty=-1, repetition_penalty=1.5), 64, 16)
    assert (chat.frequency_penalty, chat.presence_penalty, chat.repetition_penalty) == (-1, 0.0, 1.5)
    for field, value in (("frequency_penalty", 3), ("presence_penalty", "x"), ("repetition_penalty", 0)):
        with pytest.raises(APIError) as raised:
            parse_chat(_body(**{field: value}), 64, 16)
        assert raised.value.param == field
