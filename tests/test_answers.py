"""Objective answers read as a person reads them: a table of real-looking model outputs and their reading."""

import pytest

from pedray.eval.answers import extract_choices, extract_judgement

CHOICES = [
    # explicit statements
    ("答案：A", "A"), ("答案是B", "B"), ("答案为：C", "C"), ("正确答案应为D", "D"), ("正确答案是 A、C", "AC"),
    ("答案：c", "C"), ("答案：(B)", "B"), ("答案：【E】", "E"), ("答案：选项D", "D"), ("最终答案：BD", "BD"),
    ("选C。", "C"), ("选C", "C"), ("应该选B，因为……", "B"), ("本题选A", "A"), ("故选D。", "D"), ("所以选AB", "AB"),
    ("我选C", "C"), ("我认为是A", "A"), ("我的答案是E。", "E"), ("选择B", "B"),
    ("The answer is C.", "C"), ("Answer: B", "B"), ("the correct answer is a.", "A"),
    # a statement wins over letters in the explanation; runs stop at prose and line breaks
    ("答案：A\nB选项错误，因为……", "A"), ("答案：A\n解析：B、C均不符合。", "A"),
    ("答案：B。A选项说的是另一种病，C也不对。", "B"), ("A和B都不对，应该选C", "C"), ("A、B错误，故选D", "D"),
    ("解析：A项描述的是麻疹……所以选B", "B"), ("答案：ACE\n解析：……", "ACE"), ("答案：A和C", "AC"),
    ("答案：A,B,D", "ABD"), ("答案：A与D", "AD"),
    # runs that name the options, or letters said to be wrong
    ("答案：ABCDE中只有C正确", "C"), ("ABCD中只有B是对的", "B"), ("A和B都不对", None), ("A错误", None),
    ("C选项正确", "C"), ("只有D正确", "D"), ("A正确，C正确", "AC"), ("B不正确", None),
    # openings without a statement
    ("AC", "AC"), ("A、C", "AC"), ("(C) 因为", "C"), ("B. 因为患儿……", "B"), ("D", "D"), ("  A", "A"),
    ("（B）", "B"),
    # English words are words; prose is not a pick
    ("Apple", None), ("Because of the fever", None), ("答案不确定", None), ("", None), ("这道题我不会", None),
    ("根据症状判断为麻疹", None), ("a", None), ("Answer: a good question", None), ("ＡＢ", "AB"),
]

JUDGEMENTS = [
    ("正确", True), ("对", True), ("是", True), ("√", True), ("对的", True), ("是的", True), ("是正确的", True),
    ("答案：对", True), ("答案：正确。", True), ("这个说法正确", True), ("该说法是正确的，因为……", True),
    ("判断：正确", True), ("True", True), ("yes", True), ("Correct.", True), ("Normally yes", True),
    ("错误。", False), ("错", False), ("不正确", False), ("不对", False), ("不是", False), ("是错误的", False),
    ("是错的", False), ("否", False), ("×", False), ("答案：错", False), ("这个说法是错误的", False),
    ("该说法不正确。", False), ("False", False), ("no", False), ("Incorrect", False), ("错误，应为……", False),
    ("题干说法错误", False),
    ("根据指南，这种做法会延误治疗，所以这个说法是错误的。", False),
    ("患儿表现符合典型病程，因此说法正确。", True),
    ("对不起，我无法判断", None), ("抱歉，我不能确定", None), ("无法判断", None), ("也许吧", None), ("", None),
    ("不确定", None), ("nothing to add", None), ("这个问题要看情况", None),
]


@pytest.mark.parametrize("text, expected", CHOICES)
def test_choices(text, expected):
    assert extract_choices(text) == expected


@pytest.mark.parametrize("text, expected", JUDGEMENTS)
def test_judgements(text, expected):
    assert extract_judgement(text) == expected


def test_the_table_is_large():
    assert len(CHOICES) + len(JUDGEMENTS) >= 60
