"""The triage layer: numbers read as numbers, negation and the past, whole conversations, the notice,
the labelled set and its targets (pedray.safety)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pedray.safety import numbers, red_flags, triage
from pedray.safety.evaluate import evaluate, load_cases
from pedray.safety.signs import GROUPS, SIGNS_FILE, rules
from pedray.vocab import URGENT_NOTICE


def _chat(*turns: str) -> list[dict[str, str]]:
    """User turns with an assistant turn between each (which the triage must not read)."""
    messages = []
    for turn in turns:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "如果出现抽搐、呼吸困难请立即就医。"}]
    return messages[:-1]


@pytest.mark.parametrize("text, months", [
    ("11个月宝宝发烧38度", 11.0), ("宝宝1个月", 1.0), ("两个半月的宝宝", 2.5), ("一岁半的孩子", 18.0),
    ("宝宝10周大", 70 / 30.4), ("八十天的宝宝", 80 / 30.4), ("宝宝出生第5天", 5 / 30.4), ("宝宝出生12个小时", 0.5 / 30.4),
    ("宝宝一个月零十天", 1 + 10 / 30.4), ("我家宝宝才满月", 1.0), ("宝宝还没满月", 0.7), ("新生儿发烧", 0.5),
    ("孩子一岁时有过一次热性惊厥，现在三岁了", 36.0),  # "一岁时" is when, not how old
    ("咳嗽已经两个月了", None), ("孩子发烧两天了", None), ("3岁以下的孩子", None),
    ("孩子三天前发烧，现在已经退了", None), ("孩子3天没大便了", None),  # a span of days, not an age
    ("宝宝三天了，有点黄", 3 / 30.4), ("宝宝4月龄，腋温39.0", 4.0), ("宝宝5月大", 5.0), ("4月份开始咳嗽", None),
    ("满月前的宝宝皮肤发黄", 0.7),
])
def test_ages_are_numbers_and_not_durations(text, months):
    assert numbers.age_months(text) == (pytest.approx(months) if months is not None else None)


@pytest.mark.parametrize("text, values", [
    ("38.5℃", [38.5]), ("38度5", [38.5]), ("三十八度五", [38.5]), ("量了38度7", [38.7]), ("体温38.1，", [38.1]),
    ("烧到39", [39.0]), ("30度的天气", []), ("宝宝5个月", []),
])
def test_temperatures(text, values):
    assert numbers.temperatures(text) == values


@pytest.mark.parametrize("text, days", [
    ("从周一到今天周四", 4), ("星期五烧到星期天", 3), ("周六到周一", 3), ("周三到周三", 1), ("周一开始", None),
])
def test_weekday_spans(text, days):
    assert numbers.weekday_days(text) == days


@pytest.mark.parametrize("clause, rate", [
    ("数了一下呼吸每分钟56次", 56), ("一分钟呼吸58次", 58), ("呼吸频率52次/分", 52), ("心率每分钟110次", None),
    ("一分钟喘60下", 60), ("咳了三次", None),
])
def test_breathing_rates(clause, rate):
    assert numbers.breathing_rate(clause) == rate


@pytest.mark.parametrize("months, threshold", [(1, 60), (2, 50), (11.9, 50), (12, 40), (59, 40), (60, 30), (None, 40)])
def test_fast_breathing_thresholds_follow_who_imci(months, threshold):
    assert numbers.fast_breathing_threshold(months) == threshold


@pytest.mark.parametrize("text, flags", [
    # ages: "11个月" is not "1个月"; under 3 months any fever is urgent, at 3 months and over a mild one is not
    ("11个月宝宝发烧38度", []),
    ("宝宝1个月，发烧38度", ["infant_fever"]),
    ("宝宝两个月，体温37.2，是不是发烧了", []),          # a temperature given wins over the word
    ("宝宝3个半月，发烧37.9度", []),
    # breathing rates by age
    ("宝宝8个月，呼吸每分钟52次", ["fast_breathing"]),
    ("宝宝8个月，呼吸每分钟40次", []),
    ("孩子6岁，呼吸每分钟36次", ["fast_breathing"]),
    ("孩子5岁，呼吸每分钟25次，正常吗", []),
    # hours without urine, by age
    ("宝宝三个月，已经四个小时没尿了", []),
    ("宝宝三个月，已经八个小时没尿了", ["dehydration"]),
    # negation, the past, questions about an illness, look-alikes
    ("孩子发烧了，但是没有抽搐", []),
    ("孩子磕到头了，没有呕吐，精神很好", []),
    ("孩子两年前抽搐过一次，之后一直正常", []),
    ("以前得过肺炎，现在好了", []),
    ("热性惊厥会影响智力吗", []),
    ("如果孩子抽搐应该怎么处理", []),
    ("孩子腿抽筋了", []),
    ("孩子有抽动症，老是眨眼睛", []),
    ("孩子不停地抽搐", ["seizure"]),                    # "不停" does not negate
    ("孩子抽搐了会不会有后遗症", ["seizure"]),          # it happened; the question is about later
    ("宝宝吃了爸爸的降压药", ["swallowed_medicine"]),
    ("孩子吃了退烧药还是烧38.5", []),
])
def test_hard_cases(text, flags):
    assert red_flags(text) == flags


def test_the_whole_conversation_is_read_and_only_the_users_turns():
    assert triage(_chat("孩子3岁，咳嗽三天了", "晚上咳得更厉害，还有点喘")).names == ["breathing_difficulty"]
    fever = triage(_chat("宝宝两个月", "今天发烧了，38.3度"))    # the age in one turn, the temperature in the next
    assert fever.names == ["infant_fever"] and "38.3℃" in fever.signs[0].reason
    assert triage(_chat("孩子两岁", "有点咳嗽")).names == []     # the assistant's "抽搐、呼吸困难" raises nothing
    assert triage(_chat("宝宝五个月", "呼吸每分钟45次")).names == []
    assert triage(_chat("宝宝一个月", "呼吸每分钟45次")).names == []
    assert triage(_chat("宝宝20天", "呼吸每分钟65次")).names == ["fast_breathing"]


def test_the_notice_says_what_to_do_which_sign_and_why():
    result = triage(_chat("孩子误服了奶奶的安眠药，现在很想睡"))
    notice = result.notice()
    assert notice.startswith(URGENT_NOTICE) and "120" in notice and "急诊" in notice
    assert "误服药物" in notice and "“误服了奶奶的安眠药”" in notice and "不要自行催吐" in notice
    data = result.to_dict()
    assert data["urgent"] and data["notice"] == notice
    assert {"name", "group", "label", "reason", "advice", "turn"} <= set(data["signs"][0])
    json.dumps(data, ensure_ascii=False)
    assert triage(_chat("孩子有点咳嗽")).notice() == ""


@pytest.mark.parametrize("extra, error", [
    ("", "'oops' has neither 'match' nor 'check'"),
    ("  match: ['@nowhere']\n", "@nowhere, which the lexicon does not define"),   # `@name`: signs.yaml's lexicon
    ("  match: ['x']\n  level: later\n", "a level of \\('urgent', 'soon'\\)"),      # urgent or soon, nothing else
])
def test_every_sign_in_the_data_is_valid_and_a_broken_one_fails_to_load(tmp_path, monkeypatch, extra, error):
    assert {rule.group for rule in rules()} == set(GROUPS)
    broken = tmp_path / "signs.yaml"
    broken.write_text(SIGNS_FILE.read_text(encoding="utf-8") + "\noops:\n  group: neuro\n  label: x\n  advice: y\n"
                      + extra, encoding="utf-8")
    monkeypatch.setattr("pedray.safety.signs.SIGNS_FILE", broken)
    rules.cache_clear()
    try:
        with pytest.raises(ValueError, match=error):
            rules()
    finally:
        rules.cache_clear()


def test_the_labelled_set_is_large_enough_and_covers_every_group_in_both_parts():
    cases = load_cases("all")
    urgent = [c for c in cases if c["urgent"]]
    assert len(cases) >= 300 and len(urgent) >= 150 and len(cases) - len(urgent) >= 150
    for part in ("dev", "test"):
        groups = Counter(c["category"] for c in load_cases(part) if c["urgent"])
        assert set(groups) == set(GROUPS) and min(groups.values()) >= 3
    texts = [json.dumps(c["messages"], ensure_ascii=False) for c in cases]
    assert len(set(texts)) == len(texts)  # no case twice, so none is in both parts


def test_targets_are_met_on_the_held_out_test_part():
    report = evaluate("test")
    assert report["recall"] >= 0.98, report["misses"]
    assert report["false_alarm_rate"] <= 0.05, report["false_alarms"]


def test_triage_eval_command_prints_the_figures_and_every_miss(capsys):
    from pedray.cli import main

    assert main(["triage-eval", "--part", "dev"]) == 0
    out = capsys.readouterr().out
    assert "recall of urgent cases" in out and "false alarms on everyday questions" in out and "poisoning" in out
    assert main(["triage", "--json", "宝宝两个月", "今天发烧38.3度"]) == 0
    assert json.loads(capsys.readouterr().out)["signs"][0]["name"] == "infant_fever"
