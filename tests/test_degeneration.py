"""Degeneration metrics with golden values worked by hand, and their place in the scores and the report."""

from __future__ import annotations

import json

import pytest

from pedray.eval.degeneration import (same_answer, answer_stats, condition_correct, conditions_named, expected_condition, loops,
                                      mean_stats, rep, repeats_item)
from pedray.eval.report import markdown
from pedray.eval.score import headline, samples, score_rows


def test_rep_n_golden_values():
    # "abcabc": bigrams ab bc ca ab bc -> 3 distinct of 5 -> 1 - 3/5 = 0.4
    assert rep(list("abcabc"), 2) == pytest.approx(0.4)
    # trigrams abc bca cab abc -> 3 distinct of 4 -> 0.25
    assert rep(list("abcabc"), 3) == pytest.approx(0.25)
    # no repeated n-gram, and texts too short to have one
    assert rep(list("abcdef"), 2) == 0.0 and rep(list("ab"), 3) == 0.0 and rep([], 2) == 0.0
    # "发热、发热、发热": 4-grams 发热、发 热、发热 、发热、 发热、发 热、发热 -> 3 distinct of 5 -> 0.4
    assert rep(list("发热、发热、发热"), 4) == pytest.approx(0.4)


def test_looping_means_some_character_4gram_three_times():
    assert loops("在家少量多次喂奶；少量多次喂奶；少量多次喂奶。")
    assert not loops("少量多次喂奶；少量多次喂奶。")             # twice is not a loop
    assert loops("发 热 、发热、 发热、发热")                     # whitespace does not hide it
    assert not loops("孩子发热两天，精神好，可以先在家观察。")


def test_an_item_said_twice_is_counted_apart_from_looping():
    twice = "出现以下情况时要立即就医：1. 阵发性哭闹 2. 体重不增 3. 体重不增"
    assert repeats_item(twice) and not loops(twice)
    assert repeats_item("建议检查：血常规、血常规。")
    assert not repeats_item("1. 发热 2. 咳嗽 3. 流涕")
    assert not repeats_item("1. 1. 发热")          # a repeated number is not an item


def test_condition_named_longest_first_and_expected_from_the_diagnosis_or_the_question():
    assert conditions_named("考虑肺炎支原体肺炎") == {"mycoplasma_pneumonia"}   # not also another pneumonia
    assert conditions_named("手足口病和疱疹性咽峡炎") == {"hfmd", "herpangina"}
    assert expected_condition("需要与感冒和腺样体肥大鉴别。\n初步诊断：过敏性鼻炎。") == "allergic_rhinitis"
    assert expected_condition("结合这些表现，要考虑猩红热的可能。") == "scarlet_fever"
    assert expected_condition("治疗方面：多喝水。", "医生说是水痘，怎么治疗？") == "varicella"
    assert expected_condition("手足口病或疱疹性咽峡炎") is None and expected_condition("多喝水。") is None
    # counted where the reference names the condition: the answer must name it and no other
    assert condition_correct("初步诊断：水痘。", "初步诊断：水痘。") is True
    assert condition_correct("多休息。", "初步诊断：水痘。") is False
    assert condition_correct("水痘或猩红热。", "初步诊断：水痘。") is False
    assert condition_correct("多休息。", "治疗方面：多喝水。", "医生说是水痘") is None   # an empty answer is not right
    # a comparison: both conditions the question names, and no third (read in a demo answer: 鹅口疮 for 功能性便秘)
    compare, reference = "功能性便秘和社区获得性肺炎有什么区别？", "功能性便秘：大便干硬。\n社区获得性肺炎：气促。"
    assert condition_correct("社区获得性肺炎：发热。\n功能性便秘：腹胀。", reference, compare) is True
    assert condition_correct("社区获得性肺炎：发热。\n鹅口疮：口腔白斑。", reference, compare) is False
    assert condition_correct("社区获得性肺炎：发热。", "多休息。", compare) is None  # the reference names neither


def test_answer_stats_golden_values():
    stats = answer_stats("水痘水痘水痘", "初步诊断：水痘。", stopped=False)
    # characters 水痘水痘水痘: bigrams 5, distinct 2 (水痘, 痘水) -> 0.6; 4-grams 3, distinct 2 -> 1/3
    assert stats["rep2_char"] == pytest.approx(0.6) and stats["rep4_char"] == pytest.approx(1 / 3)
    assert stats["truncated"] and not stats["looping"]            # 水痘水痘 occurs twice
    assert not stats["repeated_item"]                             # one item, no list
    assert stats["length_ratio"] == pytest.approx(6 / 8)
    assert stats["condition_correct"] is True
    wrong = answer_stats("考虑水痘或手足口病。", "初步诊断：水痘。", stopped=True)
    assert wrong["condition_correct"] is False and not wrong["truncated"]   # names another one too
    unknown = answer_stats("多喝水。", "多喝水，多休息。", stopped=True)
    assert unknown["condition_correct"] is None


def test_means_count_known_conditions_only():
    per = [answer_stats("初步诊断：水痘。", "初步诊断：水痘。", True), answer_stats("水痘", "猩红热。", False),
           answer_stats("多喝水", "多喝水", True), answer_stats("多喝水多喝水多喝水多喝水", "多喝水", True)]
    means = mean_stats(per)
    assert means["condition_correct"] == pytest.approx(0.5) and means["condition_questions"] == 2
    assert means["truncated"] == pytest.approx(0.25) and means["looping"] == pytest.approx(0.25)
    assert means["repeated_item"] == 0.0


def test_same_answer_counts_answers_given_to_other_questions_too():
    answers = ["多喝水。", "多喝水。 ", "观察呼吸。", "多喝水。", "补液。"]
    questions = ["发烧怎么办", "咳嗽怎么办", "气喘怎么办", "发烧怎么办", "腹泻怎么办"]
    # 多喝水 answers two different questions (3 answers); the repeat of one question alone would not count
    assert same_answer(answers, questions) == pytest.approx(3 / 5)
    assert same_answer(["a", "a"], ["q", "q"]) == 0.0 and same_answer([], []) == 0.0


def _row(index: int, task: str, prediction: str, reference: str, stopped: bool = True) -> dict:
    messages = [{"role": "user", "content": f"问题{index}"}]
    return {"id": f"heldout-{index}", "set": "heldout", "kind": "text", "task": task, "group": "",
            "messages": json.dumps(messages, ensure_ascii=False), "reference": reference, "prediction": prediction,
            "stopped": stopped, "new_tokens": 5}


def test_scores_headline_report_and_samples_show_degeneration():
    rows = [_row(1, "medkqa", "初步诊断：水痘。", "初步诊断：水痘。"),
            _row(2, "medkqa", "发热、发热、发热、发热、发热", "初步诊断：猩红热。", stopped=False),
            _row(3, "dialogue", "多喝水。", "多喝水，多休息。")]
    scores = score_rows(rows)
    overall = scores["heldout"]["overall"]["degeneration"]
    assert overall["looping"] == pytest.approx(1 / 3) and overall["truncated"] == pytest.approx(1 / 3)
    assert scores["heldout"]["by_task"]["medkqa"]["degeneration"]["condition_correct"] == pytest.approx(0.5)
    top = headline(scores)
    assert top["heldout looping %"] == pytest.approx(100 / 3) and top["heldout right condition %"] == pytest.approx(50)
    picked = samples(rows)
    assert [s["id"] for s in picked["medkqa"]] == ["heldout-1", "heldout-2"] and picked["medkqa"][1]["looping"]
    report = {"model": "m", "generation": {"answers": 3, "seconds": 1.0, "answers_per_s": 3.0, "new_tokens": 15},
              "settings": {"max_new_tokens": 8}, "scores": scores, "samples": picked}
    text = markdown(report)
    assert "looping" in text and "33%" in text and "## Sample answers" in text and "LOOPING, TRUNCATED" in text
    assert "> 发热、发热、发热、发热、发热" in text and "> 初步诊断：猩红热。" in text


def test_wrong_steps_are_items_of_conditions_the_reference_does_not_point_to():
    from pedray.eval.items import step_items, wrong_steps

    milk = "1. 母乳喂养的妈妈回避奶制品 2. 配方奶喂养改用深度水解或氨基酸配方 居家护理：阅读食品标签。"
    # the two slips read in the demo's answers: an intussusception test for milk allergy, and a gastroenteritis
    # line ("不需要抗生素") for a urinary tract infection
    assert wrong_steps(milk + "必要时空气灌肠。", milk) == ["必要时空气灌肠"]
    uti = "根据年龄和病情口服或静脉使用抗生素；疗程通常七到十四天；多喝水勤排尿。"
    assert wrong_steps("疗程通常七到十四天；不需要抗生素。", uti) == ["不需要抗生素"]
    # the reference's own items, an item another condition shares with it, and short generic entries pass
    assert wrong_steps(milk, milk) == [] and wrong_steps("按时复查；尿常规。", uti) == []
    # a condition the question names allows its items (a comparison question)
    assert wrong_steps("早期首选空气灌肠复位。", milk, question="牛奶蛋白过敏和肠套叠怎么区分？") == []
    # nothing to judge by: a reference without any step item
    assert wrong_steps("必要时空气灌肠。", "孩子多大了？") is None
    # longest first: the longer entry is one item, not also the shorter one inside it
    assert step_items("早期首选空气灌肠复位") == ["早期首选空气灌肠复位"]


def test_wrong_step_share_in_the_means_and_the_headline():
    milk = "母乳喂养的妈妈回避奶制品；阅读食品标签。"
    per = [answer_stats("必要时空气灌肠。", milk, True), answer_stats(milk, milk, True),
           answer_stats("多喝水。", "多喝水，多休息。", True)]
    assert [s["wrong_step"] for s in per] == [True, False, None]
    means = mean_stats(per)
    assert means["wrong_step"] == pytest.approx(0.5) and means["step_questions"] == 2
    top = headline(score_rows([_row(1, "trerecom", "必要时空气灌肠。", milk), _row(2, "trerecom", milk, milk)]))
    assert top["heldout wrong step %"] == pytest.approx(50)


def test_wrong_flags_are_warning_signs_of_another_condition():
    from pedray.eval.items import wrong_flags

    impetigo = "出现以下情况时要立即就医：1. 皮疹范围迅速扩大 2. 发热和精神差 3. 尿色变深或浮肿"
    # read in a demo answer: impetigo's warning signs answered with those of a suppurative tonsillitis
    answer = "出现以下情况时要立即就医：1. 张口困难或流口水 2. 一侧咽部明显隆起"
    assert wrong_flags(answer, impetigo, "脓疱疮出现哪些情况需要马上去医院？") == ["张口困难或流口水", "一侧咽部明显隆起"]
    assert wrong_flags(impetigo, impetigo) == []
    # a condition the question names allows its warning signs; no warning sign in the reference: not judged
    assert wrong_flags(answer, impetigo, "脓疱疮和急性化脓性扁桃体炎怎么区分？") == []
    assert wrong_flags(answer, "孩子多大了？") is None


def test_wrong_systems_place_a_condition_outside_its_own_body_system():
    from pedray.eval.items import systems_stated, wrong_systems

    reference = "细菌性脑膜炎属于神经系统疾病，常见表现有颈项强直。"
    # read in a demo answer: meningitis placed among digestive diseases
    assert wrong_systems("细菌性脑膜炎属于消化系统疾病，常见表现有呕吐。", reference) == [
        ("bacterial_meningitis", "消化系统疾病")]
    assert wrong_systems(reference, reference) == []
    # the textbook's form, with an alias between name and system, is read too
    assert systems_stated("肠套叠（又称某某）是儿科消化系统疾病中的常见病") == [("intussusception", "消化系统疾病")]
    assert wrong_systems("细菌性脑膜炎属于消化系统疾病。", "多喝水。") is None


def test_wrong_flag_and_system_shares_in_the_means_and_the_headline():
    reference = "细菌性脑膜炎属于神经系统疾病。如果出现意识障碍、抽搐，请立即就医。"
    wrong = "细菌性脑膜炎属于消化系统疾病。如果出现果酱样血便、抽搐，请立即就医。"
    per = [answer_stats(wrong, reference, True), answer_stats(reference, reference, True),
           answer_stats("多喝水。", "多喝水，多休息。", True)]
    assert [s["wrong_flag"] for s in per] == [True, False, None]
    assert [s["wrong_system"] for s in per] == [True, False, None]
    means = mean_stats(per)
    assert means["wrong_flag"] == pytest.approx(0.5) and means["flag_questions"] == 2
    assert means["wrong_system"] == pytest.approx(0.5) and means["system_questions"] == 2
    top = headline(score_rows([_row(1, "general", wrong, reference), _row(2, "general", reference, reference)]))
    assert top["heldout wrong flag %"] == pytest.approx(50) and top["heldout wrong system %"] == pytest.approx(50)


def test_wrong_ages_state_another_patient_age_than_the_case():
    from pedray.eval.items import ages_stated, wrong_ages

    reference = "您好，分析：患儿7个月，以夜惊烦躁为主要表现。多汗、枕秃。\n初步诊断：维生素D缺乏性佝偻病。"
    # read in demo answers: a 7-month-old analysed as "1岁半", a newborn on its third day as "3个月"
    assert wrong_ages("描述。分析：患儿1岁半，以夜惊烦躁为主要表现。", reference) == ["1岁半"]
    assert wrong_ages("分析：患儿3个月，以黄疸为主要表现。", "分析：患儿出生第3天，以黄疸从面部开始为主要表现。") == ["3个月"]
    assert wrong_ages(reference, reference) == []
    assert ages_stated("分析：患儿出生第3天，黄疸多在生后二到三天出现；患儿2岁半") == ["出生第3天", "2岁半"]
    # an illness's duration is not the patient's age; an answer stating none is not wrong; no age: not judged
    assert ages_stated("病程约一周自愈；三个月以下婴儿发热要就医") == []
    assert wrong_ages("分析：以夜惊烦躁为主要表现。", reference) == []
    assert wrong_ages("患儿1岁。", "多喝水。") is None
    per = [answer_stats("分析：患儿1岁，以夜惊为主。", reference, True), answer_stats(reference, reference, True),
           answer_stats("多喝水。", "多喝水，多休息。", True)]
    assert [s["wrong_age"] for s in per] == [True, False, None]
    means = mean_stats(per)
    assert means["wrong_age"] == pytest.approx(0.5) and means["age_questions"] == 2
    top = headline(score_rows([_row(1, "evidiag", "分析：患儿1岁，以夜惊为主。", reference),
                               _row(2, "evidiag", reference, reference)]))
    assert top["heldout wrong age %"] == pytest.approx(50)


def test_no_warning_counts_answers_without_the_urgent_advice_their_reference_gives():
    from pedray.eval.degeneration import no_warning

    reference = ("患儿5个月，要考虑肠套叠的可能。建议到医院做腹部超声以明确诊断。\n"
                 "需要特别注意：如果出现精神萎靡、腹胀呕吐加重，请立即就医。\n如果情况有变化，请及时带孩子就医。")
    # read in demo answers: an intussusception's assessment with no warning at all
    silent = "患儿5个月，要考虑肠套叠的可能。建议到医院做腹部超声以明确诊断。\n如果情况有变化，请及时带孩子就医。"
    assert no_warning(silent, reference) is True      # "see a doctor if it changes" is no warning
    assert no_warning(reference, reference) is False
    assert no_warning("出现抽搐请马上去医院急诊。", reference) is False  # other words for it count
    assert no_warning(silent, "多喝水，多休息。") is None  # the reference gives none: not judged
    per = [answer_stats(silent, reference, True), answer_stats(reference, reference, True),
           answer_stats(silent, "多喝水。", True)]
    means = mean_stats(per)
    assert means["no_warning"] == pytest.approx(0.5) and means["warning_questions"] == 2
    top = headline(score_rows([_row(1, "dialogue", silent, reference), _row(2, "dialogue", reference, reference)]))
    assert top["heldout no warning %"] == pytest.approx(50)
