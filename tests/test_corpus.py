"""The embedded knowledge base and the PedCorpus generator."""

import json
from collections import Counter

from pedray.corpus.generate import instructions, pretraining_text, preferences, write_corpus
from pedray.corpus.knowledge import LIST_FIELDS, load_knowledge
from pedray.data.columns import record_problem
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


def test_preference_pairs_prefer_the_warm_safe_answer():
    pairs = preferences(0, 200)
    assert all(record_problem(p) is None for p in pairs)
    for pair in pairs:
        assert "就医" in pair["chosen"]          # the chosen answer always escalates red flags
        assert len(pair["chosen"]) > 2 * len(pair["rejected"])


def test_write_corpus_holds_out_every_task(tmp_path):
    summary = write_corpus(tmp_path, seed=0, count=1000, holdout=0.1)
    files = summary["files"]
    assert set(files["sft_test.jsonl"]["tasks"]) == set(TASKS)
    assert files["sft_train.jsonl"]["records"] + files["sft_test.jsonl"]["records"] == 1000
    train = {json.loads(line)["id"] for line in open(tmp_path / "sft_train.jsonl", encoding="utf-8")}
    test = {json.loads(line)["id"] for line in open(tmp_path / "sft_test.jsonl", encoding="utf-8")}
    assert not train & test
    assert all(r["text"] for r in pretraining_text(0, variants=2))
