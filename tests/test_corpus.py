"""The embedded knowledge base and the PedCorpus generator."""

import json
import re
from collections import Counter

from pedray.corpus.generate import instructions, pretraining_text, preferences, write_corpus
from pedray.corpus.knowledge import LIST_FIELDS, load_knowledge
from pedray.data.columns import record_problem
from pedray.eval.degeneration import loops
from pedray.vocab import TASKS

REQUIRED = ["hfmd", "kawasaki", "febrile_seizure", "croup", "bronchiolitis", "rotavirus_enteritis", "roseola",
            "intussusception", "neonatal_jaundice", "iron_deficiency_anemia", "asthma", "otitis_media"]


def test_knowledge_base_covers_forty_conditions_with_every_field():
    conditions, topics = load_knowledge()
    assert len(conditions) >= 40 and len(topics) >= 10
    ids = {c.id for c in conditions}
    assert set(REQUIRED) <= ids
    for condition in conditions:
        assert condition.age_months[0] <= condition.age_months[1]
        for field in LIST_FIELDS:
            assert len(getattr(condition, field)) >= 2, (condition.id, field)


def test_generator_is_deterministic_by_seed():
    first, again, other = instructions(3, 300), instructions(3, 300), instructions(4, 300)
    assert first == again
    assert first != other


def test_instructions_are_many_varied_valid_and_cover_every_task():
    records = instructions(0, 5000)
    assert len(records) == 5000
    assert all(record_problem(r) is None for r in records)
    tasks = Counter(r["task"] for r in records)
    assert set(tasks) == set(TASKS) and min(tasks.values()) >= 500
    prompts = [r["messages"][0]["content"] for r in records]
    assert len(set(prompts)) > 0.6 * len(prompts)
    dialogues = [r for r in records if r["task"] == "dialogue"]
    assert all(len(r["messages"]) >= 4 for r in dialogues)
    # the assessment gives the warning signs whether or not the parent goes on to ask about care: a model
    # cannot tell the two cases apart when it answers
    assessments = [m["content"] for r in dialogues for m in r["messages"] if "以明确诊断" in m["content"]]
    assert assessments and all("请立即就医" in a for a in assessments)


def test_no_target_answer_loops_by_the_evaluation_rule():
    """The evaluation counts an answer as looping when a character 4-gram occurs three times; a corpus
    whose own answers did that (a long condition name said in the name, an exam and a step) taught the model
    to repeat, and the model's correct answers about those conditions were counted as loops."""
    for seed in (0, 1):
        answers = [m["content"] for r in instructions(seed, 3000) for m in r["messages"] if m["role"] == "assistant"]
        answers += [p["chosen"] for p in preferences(seed, 600)]
        looping = [a for a in answers if loops(a)]
        assert not looping, looping[:3]


def test_no_generated_text_says_a_word_twice_in_a_row():
    """"如果出现出现成簇水疱" reached 104 training answers: a warning sign written with its own 出现, put after
    the template's. No word of two to six characters may follow itself anywhere the generator writes."""
    doubled = re.compile(r"([\u4e00-\u9fff]{2,6})\1")
    for seed in (0, 1):
        texts = [m["content"] for r in instructions(seed, 3000) for m in r["messages"]]
        pairs = preferences(seed, 600)
        texts += [m["content"] for p in pairs for m in p["messages"]] + [p[k] for p in pairs for k in ("chosen", "rejected")]
        texts += [doc["text"] for doc in pretraining_text(seed)]
        found = sorted({m.group(0) for t in texts for m in doubled.finditer(t)})
        assert not found, found[:5]


def test_preference_pairs_differ_in_what_matters_not_in_length():
    """A length-only guess cannot tell chosen from rejected: the old pairs (one short phrase rejected
    against every long answer) taught DFPO to keep going, and the answers looped."""
    pairs = preferences(0, 600)
    assert all(record_problem(p) is None and p["chosen"] != p["rejected"] for p in pairs)
    assert {p["task"] for p in pairs} == set(TASKS)
    ratios = sorted(len(p["rejected"]) / len(p["chosen"]) for p in pairs)
    assert 0.9 <= sum(ratios) / len(ratios) <= 1.1
    assert 0.7 <= ratios[len(ratios) // 20] and ratios[-len(ratios) // 20] <= 1.4   # 90% of pairs within
    longer_is_chosen = sum((len(p["chosen"]) > len(p["rejected"])) + 0.5 * (len(p["chosen"]) == len(p["rejected"]))
                           for p in pairs) / len(pairs)
    assert 0.35 <= longer_is_chosen <= 0.65


def test_each_kind_of_rejected_answer_is_wrong_where_it_matters():
    import random

    from pedray.corpus.generate import BUILDERS, REJECTED_KINDS, UNSAFE_STEPS, _rejected
    from pedray.eval.degeneration import conditions_named

    rng = random.Random(5)
    conditions, _ = load_knowledge()
    seen = Counter()
    for _ in range(300):
        condition = rng.choice(conditions)
        task = rng.choice(["medkqa", "evidiag", "trerecom"])
        chosen = BUILDERS[task](rng, condition)[-1][1]
        kind, rejected = _rejected(rng, task, condition, chosen, conditions)
        seen[kind] += 1
        if kind == "wrong_condition":
            assert condition.id not in conditions_named(rejected)
        elif kind == "missed_red_flags":
            assert "请立即就医" not in rejected and ("也不用就医" in rejected or "在家观察即可" in rejected)
        elif kind == "repeated_item":  # one point said twice in place of another, in the same list
            gone, said = _only_change(chosen, rejected)
            assert gone != said and said in chosen and said in rejected.replace(said, "", 1)
            assert 0.6 <= len(rejected) / len(chosen) <= 1.4
        else:
            assert any(step in rejected for step in UNSAFE_STEPS)
    assert set(seen) == set(REJECTED_KINDS)
    assert min(seen.values()) >= 30  # unsafe steps need a care point in the answer (trerecom, some medkqa)


def _only_change(before: str, after: str) -> tuple[str, str]:
    """The one span of `before` that `after` replaces, and what replaces it."""
    start = next(i for i, (a, b) in enumerate(zip(before, after)) if a != b)
    end = next(i for i, (a, b) in enumerate(zip(before[::-1], after[::-1])) if a != b)
    return before[start:len(before) - end], after[start:len(after) - end]


def test_a_repeated_item_rejected_answer_repeats_a_point_of_the_same_list():
    import random

    from pedray.corpus.generate import _repeated_item

    chosen = ("您好，居家护理可以这样做：1. 隔离至出疹后五天\n2. 保持眼鼻口腔清洁\n3. 按时接种麻疹疫苗\n"
              "需要特别注意：如果出现呼吸急促、抽搐或意识改变，请立即就医。\n祝孩子早日康复。")
    made = {_repeated_item(random.Random(seed), chosen) for seed in range(40)}
    assert made == {
        chosen.replace("2. 保持眼鼻口腔清洁", "2. 隔离至出疹后五天"),
        chosen.replace("3. 按时接种麻疹疫苗", "3. 隔离至出疹后五天"),
        chosen.replace("3. 按时接种麻疹疫苗", "3. 保持眼鼻口腔清洁"),
    }  # a red flag and a care point are never said in place of each other; the flags' items are of unequal length
    assert _repeated_item(random.Random(0), "治疗上对症处理。在家多休息。") is None


def test_write_corpus_holds_out_every_task(tmp_path):
    summary = write_corpus(tmp_path, seed=0, count=1000, holdout=0.1)
    files = summary["files"]
    assert set(files["sft_test.jsonl"]["tasks"]) == set(TASKS)
    assert files["sft_train.jsonl"]["records"] + files["sft_test.jsonl"]["records"] == 1000
    train = {json.loads(line)["id"] for line in open(tmp_path / "sft_train.jsonl", encoding="utf-8")}
    test = {json.loads(line)["id"] for line in open(tmp_path / "sft_test.jsonl", encoding="utf-8")}
    assert not train & test
    assert all(r["text"] for r in pretraining_text(0, variants=2))


def test_colic_is_never_about_a_baby_in_its_first_days():
    """Infant colic begins in the second or third week of life: a corpus that asked about colic in a baby
    "出生第3天" (the knowledge base's age range started at 0 months) taught the model a wrong fact."""
    for seed in (0, 1):
        texts = [" ".join(m["content"] for m in r["messages"]) for r in instructions(seed, 3000)]
        colic = [t for t in texts if "肠绞痛" in t]
        assert len(colic) > 20
        assert not [t for t in colic if "出生第" in t]


def test_a_care_question_is_answered_with_its_own_points():
    """Each care question lists the points that answer it. The generator once answered with a random few of
    the topic's points, so "布洛芬和对乙酰氨基酚有什么区别？" got fever-medicine rules without the difference
    and "孩子每天要睡多久？" a bedtime routine without the hours, and the model learned to do the same."""
    from pedray.eval.items import _longest_first

    _, topics = load_knowledge()
    answers = {q: set(a) for topic in topics for q, a in zip(topic.questions, topic.answers)}
    # longest first: "三个月以下婴儿发热" (an emergency sign) is part of a longer fever-care point
    points = _longest_first(set().union(*answers.values()))
    assert len(answers) >= 30 and all(len(said) >= 2 for said in answers.values())
    asked = Counter()
    for seed in (0, 1):
        for record in instructions(seed, 3000):
            question, answer = record["messages"][-2]["content"], record["messages"][-1]["content"]
            if record["task"] == "general" and question in answers:
                asked[question] += 1
                assert set(points.findall(answer)) == answers[question], (question, answer)
        for pair in preferences(seed, 600):
            question = pair["messages"][-1]["content"]
            if pair["task"] == "general" and question in answers:  # a rejected answer answers something else
                assert set(points.findall(pair["rejected"])) != answers[question], (question, pair["rejected"])
    assert len(asked) == len(answers)
