"""The triage's lexicon, the signs added from phrasings written after the rules, and the classifier
behind the rules (pedray.safety.learned)."""

from __future__ import annotations

import pytest

from pedray.safety import learned, red_flags, triage
from pedray.safety.evaluate import evaluate, load_cases, render
from pedray.safety.signs import rules


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("text, flags", [
    ("男孩突然说蛋蛋很疼", ["testicular_pain"]),
    ("孩子吃了芒果以后喉咙发紧，声音哑了", ["allergic_reaction"]),
    ("孩子摔了一跤嘴唇肿了", []),                                   # a swollen lip without an allergy's context
    ("孩子高烧不退第六天了，眼睛红，嘴唇干裂", ["kawasaki_signs"]),
    ("孩子发烧第六天了，精神好", ["fever_three_days"]),             # a long fever alone: a doctor today, not 120
    ("孩子吞了一个硬币，说胸口疼", ["swallowed_object"]),
    ("小孩吞了一根大头针", ["swallowed_object"]),                   # sharp: no symptom needed
    ("宝宝手伸进了热水壶，手掌都起泡了", ["hot_liquid_burn"]),
    ("孩子疝气鼓出来一个包，推不回去", ["incarcerated_hernia"]),
    ("孩子说看东西有重影", ["double_vision"]),
    ("宝宝吃奶一点力气都没有", ["unable_to_feed"]),
    ("孩子吐出来的东西里面有血", ["vomiting_blood"]),
    ("孩子流鼻血，吐出来的口水里有血", []),                          # blood from the nose, swallowed
    ("孩子鼻子出血，按了二十分钟还在流", ["bleeding"]),
    ("孩子流了好多血，现在已经止住了", []),
    ("孩子现在在抽，怎么办", ["seizure"]),
    ("孩子哭完了一抽一抽地吸气，正常吗", []),                        # catching the breath after crying
    ("孩子打嗝一抽一抽的停不下来", []),
    ("小孩吃了磁铁会有什么危险", []),                                # a question about magnets, not a swallowed one
    ("小孩一个多月，发热了，体温38度2", ["infant_fever"]),           # "一个多月" is an age
    ("宝宝出生十来天，耳温38.1", ["infant_fever"]),
    ("孩子发烧的时候手脚有点凉，吃了药后就暖和了，精神很好", []),
])
def test_signs_from_phrasings_written_after_the_rules(text, flags):
    assert triage(_user(text), learned=False).names == flags


def test_the_lexicon_stands_for_its_words():
    """`@ate` in signs.yaml is expanded to its words (an unknown entry fails to load: tests/test_safety.py)."""
    poison = next(rule for rule in rules() if rule.name == "household_poison")
    assert any("啃" in p.pattern for p in poison.with_)
    assert red_flags("宝宝啃了一块洗衣凝珠") == ["household_poison"]


# Written for this test, in none of the labelled parts: no rule names what these say.
BEYOND_THE_RULES = ["宝宝一直哭闹，腿缩着，脸色发白，一阵一阵的", "孩子脖子后面疼，一低头就哭，还发烧",
                    "孩子脸色蜡黄，嘴唇没有血色，走几步就要歇"]


@pytest.mark.parametrize("text", BEYOND_THE_RULES)
def test_the_classifier_flags_what_no_rule_names_and_says_why(text):
    assert triage(_user(text), learned=False).names == []
    result = triage(_user(text))
    assert result.names == ["learned"] and learned.score(_user(text)) >= learned.THRESHOLD
    sign = result.signs[0]
    assert sign.reason.count("“") >= 1 and sign.label in result.notice() and "120" in result.notice()


def test_the_classifier_adds_to_the_rules_and_never_replaces_them():
    assert triage(_user("宝宝吃了爸爸的降压药")).names == ["swallowed_medicine"]   # a rule's sign, not "learned"
    for text in ("孩子有点咳嗽", "宝宝五个月，可以吃米粉吗", "孩子不爱吃青菜怎么办"):
        assert learned.score(_user(text)) < learned.THRESHOLD and triage(_user(text)).names == []
    assert learned.score([{"role": "assistant", "content": "孩子抽搐、呼吸困难请立即就医。"}]) == 0.0


def test_the_threshold_is_the_dev_parts_cross_validated_two_per_cent():
    """THRESHOLD is where 2% of the dev part's everyday questions are flagged in cross-validation; when the
    dev part grows and this moves, recalibrate (the docstring of pedray.safety.learned says how)."""
    found = learned.calibrate(load_cases("dev"))
    assert found["threshold"] == pytest.approx(learned.THRESHOLD, abs=0.03)
    assert found["false_alarm_rate"] <= 0.03 and found["recall"] >= 0.5


def test_the_report_shows_the_rules_alone_beside_the_whole_layer():
    report = evaluate("test")
    alone = report["rules_only"]
    assert alone["recall"] <= report["recall"] and alone["false_alarm_rate"] <= report["false_alarm_rate"]
    assert "the rules alone" in render(report)


def test_a_textbook_sentence_is_not_a_parents_chat_for_the_classifier():
    """The classifier learned from parents' messages; a sentence that names no child of the writer's is
    out of its reach (`PARENT_WORDS`), however many danger words it holds."""
    textbook = [{"role": "user", "content": "新生儿重度窒息时常见呼吸暂停、惊厥与意识障碍，须立即复苏"}]
    assert learned.score(textbook) == 0.0
    assert learned.score([{"role": "user", "content": "我家宝宝" + textbook[0]["content"][3:]}]) > 0.0


def test_pediabench_knowledge_questions_raise_no_urgent_notice(shared_data):
    """Real input: 1,275 pediatric knowledge questions and 212 true-or-false statements (PediaBench). A
    question about an illness is not a child in danger: none of the questions raises a notice, and the
    classifier adds no flag to either file (the statements the rules flag are case vignettes of a sick child:
    "8个月男孩，吐泻3d伴高热，…来诊时已4h无尿")."""
    import openpyxl

    def items(name: str) -> list[str]:
        sheet = openpyxl.load_workbook(shared_data / "pediabench" / f"{name}.xlsx", read_only=True).active
        rows = list(sheet.iter_rows(values_only=True))
        column = rows[0].index("questions")
        return [str(row[column]).strip() for row in rows[1:] if row[column]]

    questions, statements = items("essay_short_answer"), items("true_or_false")
    assert len(questions) == 1275 and len(statements) == 212
    assert [q for q in questions if triage(_user(q)).level] == []  # neither level, urgent nor "doctor today"
    flagged = [s for s in statements if triage(_user(s)).urgent]
    assert flagged == [s for s in statements if triage(_user(s), learned=False).urgent] and len(flagged) <= 10
