"""Reading an objective answer (option letters, true/false) out of free text, the way a person reads it.

Choices: an explicit answer statement (答案：/答案是/正确答案应为/选/本题选/故选/我选/the answer is) wins
over letters mentioned in an explanation; a letter run stops at prose and at a line break ("答案：A\\nB选项
错误" is A); a run that names the options rather than picking them ("ABCDE中只有C正确") is not an answer,
and letters said to be wrong ("A和B都不对") are not picked. Without a statement, a run that opens the answer
("AC", "(B) 因为") or letters said to be right ("只有C正确") are read. Lowercase letters count only after a
statement ("答案：c"); English words are matched as words ("Apple" is not A).

Judgements: 对/正确/是/√/true/yes against 错/错误/不对/不是/不正确/否/×/false/no, longer phrases first
("是错误的" is false, "不对" is false), after an optional lead (答案：, 判断：, 这个说法); an apology or a
refusal (对不起, 无法判断) is no answer. A verdict stated later ("……所以这个说法是错误的") is read when the
opening says none.

What cannot be read stays None, which scoring counts as unparseable and wrong.
"""

from __future__ import annotations

import re
import unicodedata

_SEP = r"[ \t]*(?:[、，,/&+]|和|及|与|以及)?[ \t]*"
_STATEMENT = re.compile(
    r"(?:(?:正确|最佳|最终|标准|参考)?答案(?:应该|应当|应)?(?:是|为|选)?|"
    r"(?:应该|应当|应|故|所以|因此|因而|本题|此题|我|只能|可以)?选(?:择)?(?:的)?(?:是|为)?|"
    r"我(?:认为|觉得|的答案)(?:是|为)?|"
    r"\b(?:the\s+)?(?:correct\s+|final\s+|right\s+)?(?:answer|option|choice)\s*(?:is|:|would\s+be|should\s+be)?)"
    r"[ \t]*[:：]?[ \t]*(?:选项|option[ \t]+)?[ \t]*[(（【\[]?[ \t]*", re.IGNORECASE)
# After a run: it names the options (中/里/几个/都/均 ...), or says they are wrong.
_NOT_A_PICK = re.compile(r"[ \t]*(?:选项|项)?[ \t]*(?:中|里|之中|当中|几个|这几|都|均|全)")
_WRONG = re.compile(r"[ \t]*(?:选项|项)?[ \t]*(?:是|说法)?(?:错误|错的|错|不对|不正确|不是|有误|不符)")
_RIGHT = re.compile(r"[ \t]*(?:选项|项)?[ \t]*(?:是|说法)?(?:正确|对的|对|符合题意)(?!吗)")


def _run(text: str, start: int, options: str, lowercase: bool) -> tuple[str, int] | None:
    """The option letters of a run that starts at `start`, and where it ends; None if none starts there."""
    letters = options + (options.lower() if lowercase else "")
    match = re.compile(rf"[{letters}](?:{_SEP}[{letters}])*").match(text, start)
    if not match:
        return None
    end = match.end()
    if end < len(text) and (text[end].isascii() and text[end].isalpha()):
        return None  # part of a word: "Apple", "Because"
    if start > 0 and text[start - 1].isascii() and text[start - 1].isalpha():
        return None
    picked = re.findall(f"[{letters}]", match.group())
    if any(c.islower() for c in picked) and re.match(r"[ \t]+[A-Za-z]", text[end:]):
        return None  # "answer is a good ..." is English, not option a
    return "".join(sorted({c.upper() for c in picked})), end


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "")


def extract_choices(text: str, options: str = "ABCDEFG") -> str | None:
    """The option letters a free-text answer picks, sorted and joined ("AC"), or None if it cannot be read."""
    text = _normalise(text)
    for statement in _STATEMENT.finditer(text):
        found = _run(text, statement.end(), options, lowercase=True)
        if found and not _NOT_A_PICK.match(text, found[1]) and not _WRONG.match(text, found[1]):
            return found[0]
    opening = re.match(r"[ \t\n]*[(（【\[]?[ \t]*", text)
    found = _run(text, opening.end(), options, lowercase=False)
    if found and not any(p.match(text, found[1]) for p in (_NOT_A_PICK, _WRONG, _RIGHT)):
        return found[0]
    right = set()
    for match in re.finditer(f"[{options}]", text):
        found = _run(text, match.start(), options, lowercase=False)
        if found and _RIGHT.match(text, found[1]) and not re.search(r"(?:不|非)[ \t]*$", text[:match.start()]):
            right.update(found[0])
    return "".join(sorted(right)) or None


_NO_ANSWER = ("对不起", "抱歉", "无法判断", "无法确定", "不能确定", "不确定", "不好说", "很难说", "不知道", "不清楚",
              "sorry", "i cannot", "i can't", "cannot determine")
_FALSE = ("是错误的", "是错的", "是不对的", "是不正确的", "说法错误", "说法不正确", "不正确", "不对", "不是", "错误",
          "有误", "错", "否", "×", "✗", "incorrect", "false", "wrong", "no")
_TRUE = ("是正确的", "是对的", "说法正确", "正确", "对的", "对", "是的", "是", "√", "✓", "correct", "true", "right", "yes")
_JUDGE_LEAD = re.compile(r"^[ \t\n]*(?:(?:(?:正确)?答案|判断|结论|回答)[ \t]*(?:是|为)?[ \t]*[:：]?)?[ \t]*"
                         r"(?:(?:这个|这种|该|此|题干|题目中?的?|上述)(?:说法|表述|陈述|观点|命题)?|这句话)?[ \t]*")
_LATER = re.compile(r"(?:说法|表述|陈述|题干|命题|这句话|所以|因此|故)[^。！？\n]{0,6}?"
                    r"(是错误的|是错的|是不对的|不正确|错误|是正确的|是对的|正确)")


def _verdict(span: str) -> bool | None:
    low = span.lower()
    for phrase in _NO_ANSWER:
        if low.startswith(phrase):
            return None
    for phrase in sorted(_FALSE + _TRUE, key=len, reverse=True):
        if low.startswith(phrase):
            if phrase.isascii() and phrase.isalpha() and len(low) > len(phrase) and low[len(phrase)].isalpha():
                continue  # "nothing", "yesterday": not the word
            return phrase in _TRUE
    return None


def extract_judgement(text: str) -> bool | None:
    """True/false from a free-text answer, or None when it states neither (or is no answer at all)."""
    text = _normalise(text).strip()
    if any(text.lower().startswith(p) for p in _NO_ANSWER) or re.search("无法判断|无法确定|不能判断", text[:12]):
        return None
    lead = _JUDGE_LEAD.match(text)
    verdict = _verdict(text[lead.end():] if lead else text)
    if verdict is not None:
        return verdict
    later = _LATER.search(text)
    if later:
        return later.group(1) in _TRUE
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    yes, no = words & {"yes", "true", "correct"}, words & {"no", "false", "incorrect", "wrong"}
    if bool(yes) != bool(no):
        return bool(yes)
    return None
