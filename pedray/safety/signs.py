"""Triage of a conversation: which pediatric danger signs the parent's messages raise, and the notice
that goes first in the answer.

Two levels (`signs.yaml`'s `level`): `urgent` signs call for an ambulance or the emergency department now;
`soon` signs (a 4-month-old at 39 ℃, fever for three days, a limp, urine output falling) call for a
doctor today, not an emergency. The notice is the urgent one when any urgent sign is raised, else the
"see a doctor today" one.

The signs are data (`signs.yaml`); a mention counts only when it is live: not negated ("没有抽搐"), not
in the past ("两年前抽搐过一次"), not a general question ("热性惊厥会影响智力吗"). Numbers are read as
numbers with age-dependent thresholds (`numbers.py`). Only the user's turns are read (an assistant's
"如果出现抽搐请就医" raises nothing), all of them: an age given in the first turn applies to a
temperature given in the third.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from pedray.safety import numbers
from pedray.vocab import SOON_NOTICE, URGENT_NOTICE

SIGNS_FILE = Path(__file__).with_name("signs.yaml")
_LEXICON_ENTRY = re.compile(r"@([a-z_]+)")  # `@fever` in a pattern: the lexicon's entry `fever`
LEVELS = ("urgent", "soon")
GROUPS = ("fever_infant", "breathing", "neuro", "dehydration", "skin_circulation", "abdomen", "jaundice",
          "injury", "poisoning", "choking")

_CLAUSE_END = re.compile(r"[，,。！？!?\n；;：:]|但是|但|可是|不过|然而|却")
_SENTENCE_END = re.compile(r"[。！？!?\n；;]")
# A negation right before a mention, with the few words that may stand between ("没有出现抽搐",
# "也没吐", "没有呕吐和抽搐"); "是不是"/"有没有" ask, they do not deny.
_NEGATED = re.compile(r"(?:没有|没|无|未|不|否认|从未|从来没有?|并非)(?:有|出现|再|发生|见|任何|明显|也|都|过|什么|"
                      r"并|一点|太|怎么|再次|发现|会|曾)*(?:[^，。,；、]{1,6}[、和或及])*$")
_ASKING = re.compile(r"(?:是不是|有没有|会不会|是不|有没)$")
_PAST = re.compile(r"以前|之前|去年|前年|小时候|曾经|上次|上个月|上周|上星期|出生时|那时|当时|岁时|岁的时候|有过|得过|出现过|"
                   r"发生过|抽过|[搐厥]过|(?:\d+|[一二两三四五六七八九十几半]+)(?:个)?多?(?:年|月|周|星期|礼拜)(?:以)?前")
_RECENT = re.compile(r"刚才|刚刚|刚|现在|今天|今早|今晚|昨晚|昨天|正在|又|这次|突然|一直|还在|目前")
_CONDITIONAL = re.compile(r"如果|假如|万一|要是|假设")
# A question about an illness, not this child's state now ("热性惊厥会影响智力吗", "小儿惊厥的治疗原则"):
_GENERAL = re.compile(r"预防|会不会|会引起|会导致|会影响|是什么|什么是|有哪些|哪些|怎么判断|如何判断|怎样判断|什么原因|原因|"
                      r"有什么危险|有什么后果|多少天(?:能|会|才)(?:退|消|好)|会有什么|有多(?:危险|严重)|想(?:了解|知道)一下|区别|为什么|多少需要|遗传|"
                      r"(?:时|的时候)[^，。,]{0,10}吗|怎么教|如何教|教孩子|一般多久|一般几天|多久(?:能|会|才)?(?:退|消|好)|"
                      # a textbook's or an exam's words, which a parent telling what happens does not use
                      r"的治疗$|治疗原则|诊断要点|诊断标准|分型|分类|分度|分期|分级|临床表现|防治|措施|试述|简述|鉴别|"
                      r"如何评价|如何分析|院前|院内|救治|监护|监测|洗胃|抢救|有什么表现|表现为|主要表现|是指|系指|首选|"
                      r"依据|诊断的是|诊断为|最可能|应选用|特点[为是]|^对于|(?:怎么|如何|怎样)[^，。,]{0,3}判断")
# "What to do" is a question about an illness ("惊厥怎么处理", "溺水时如何进行急救") unless the clause names
# this child ("孩子抽搐怎么处理" is asked while it happens, as often as not):
_WHAT_TO_DO = re.compile(r"急救方法|怎么急救|如何急救|怎么处理|如何处理|怎样处理|怎么护理|应该先做什么|应该怎么做|"
                         r"家长(?:应该|要|该)|如何治疗|怎么治疗|怎样治疗|如何进行|如何控制|怎么控制")
_THIS_CHILD = re.compile(r"孩子|宝宝|娃|儿子|女儿|闺女|孙子|孙女|我家|小家伙")

FEVER = r"发烧|发热|高烧|低烧|烧到|体温高|发高烧"
VOMIT = r"呕吐|吐"
_NOT_YELLOW_THING = r"(?!色的?(?:鼻涕|痰|便|大便|疹|脓|痂|水))"  # a yellow rash, snot or stool is no jaundice
JAUNDICE = (r"黄疸|发黄|黄了|皮肤黄|脸黄|全身黄|很黄|变黄|"
            r"(?:脸|小脸|脸色|眼白|眼珠|巩膜|皮肤)[^，。,；没不无未]{0,4}黄" + _NOT_YELLOW_THING + "|"  # "脸和眼白有点黄"
            r"(?:身上|全身|身子)(?:还是|还|都|有点|有些|发)?黄" + _NOT_YELLOW_THING)
HEAD_TRAUMA = (r"(?:摔|磕|撞|跌|碰|砸|掉|坠)[^，。,；没不无未]{0,8}(?:头|脑袋|后脑|额头)|"
               # a fall from furniture: a small child lands on its head more often than not
               r"(?:从|在)[^，。,；]{0,4}(?:床|沙发|椅|桌|楼梯|台阶|滑梯|婴儿车|推车)[^，。,；]{0,4}(?:摔|掉|跌|滚)|"
               r"(?:头|脑袋|后脑勺?|额头)[^，。,；没不无未]{0,4}(?:被?撞|磕|摔|着地|碰)")
AFTER_HEAD_TRAUMA = (r"呕吐|吐|想睡|嗜睡|犯困|迷糊|叫不醒|昏|晕|意识|抽搐|精神不好|精神差|耳朵流血|鼻子流清水|"
                     r"不想说话|不说话|不认人|不太?理人|不爱理人|反应慢|反应差|站不稳|走路不稳|重影|一直睡|头(?:痛|疼)|"
                     r"走路[^，。,；]{0,3}(?:歪|晃|摇)|抽了|抽起来|(?:耳朵|耳|鼻子|鼻)[^，。,；]{0,3}(?:流|出|冒)[^，。,；]{0,2}(?:血|水)")
SEVERE_HEADACHE = (r"(?:头痛|头疼)[^，。,；]{0,4}(?:厉害|剧烈|受不了|炸|要命|不行)|剧烈头(?:痛|疼)|"
                   r"(?:头痛|头疼)得[^，。,；]{0,4}(?:哭|抱着头|捂着头|打滚)")
# a dry nappy is no urine; one "比平时干" (drier than usual) is less urine, the "today" sign urine_falling
NO_URINE = (r"(?:没有?|无|不)(?:尿|小便|排尿)|(?:尿|小便)[^，。,；]{0,3}(?:都|也)没有?(?!问题|事|异常)|"
            r"尿(?:不湿|布)(?![^，。,；]{0,4}比)[^，。,；]{0,6}干")
PALE_STOOL = r"(?:大便|便便|粪便)[^，。,；没不无未]{0,4}(?:发白|白色|灰白|陶土)"


@dataclass(frozen=True)
class Sign:
    """One danger sign the conversation raised: what it is, what in the text raised it, in which turn."""

    name: str
    group: str
    label: str
    reason: str
    advice: str
    turn: int
    level: str = "urgent"


@dataclass(frozen=True)
class Triage:
    """The signs of a conversation (empty: nothing to escalate) and the notice they call for."""

    signs: tuple[Sign, ...] = ()

    @property
    def urgent(self) -> bool:
        """Whether some sign calls for emergency care now."""
        return any(sign.level == "urgent" for sign in self.signs)

    @property
    def level(self) -> str:
        """'urgent', 'soon' (a doctor today) or '' (nothing raised)."""
        return "urgent" if self.urgent else "soon" if self.signs else ""

    @property
    def names(self) -> list[str]:
        return [sign.name for sign in self.signs]

    def notice(self) -> str:
        """The notice in plain Chinese (empty when nothing is raised): what to do now, which signs raised it
        and why, and the first thing to do for each."""
        if not self.signs:
            return ""
        found = "；".join(f"{sign.label}（{sign.reason}）" for sign in self.signs)
        advice = dict.fromkeys(sign.advice for sign in self.signs)  # one line each, in order, no repeats
        header, kind = (URGENT_NOTICE, "危险信号") if self.urgent else (SOON_NOTICE, "需要就医的情况")
        return "\n".join([header, f"{kind}：{found}。", *(f"- {line}" for line in advice)])

    def to_dict(self) -> dict[str, Any]:
        return {"urgent": self.urgent, "level": self.level, "signs": [asdict(sign) for sign in self.signs],
                "notice": self.notice()}


@dataclass
class Rule:
    """A sign as `signs.yaml` writes it, its patterns compiled."""

    name: str
    group: str
    label: str
    advice: str
    match: list[re.Pattern] = field(default_factory=list)
    with_: list[re.Pattern] = field(default_factory=list)
    unless: list[re.Pattern] = field(default_factory=list)
    check: str | None = None
    level: str = "urgent"


@lru_cache(maxsize=1)
def rules() -> tuple[Rule, ...]:
    """The signs of `signs.yaml`, checked: every sign has a known group and a way to be found."""
    signs = yaml.safe_load(SIGNS_FILE.read_text(encoding="utf-8"))
    lexicon = signs.pop("lexicon", None) or {}

    def expand(pattern: str) -> re.Pattern:
        def entry(found: re.Match) -> str:
            if found.group(1) not in lexicon:
                raise ValueError(f"{SIGNS_FILE}: pattern {pattern!r} names @{found.group(1)}, which the lexicon "
                                 f"does not define (it has {sorted(lexicon)})")
            return f"(?:{lexicon[found.group(1)]})"
        return re.compile(_LEXICON_ENTRY.sub(entry, pattern))

    loaded = []
    for name, spec in signs.items():
        unknown = set(spec) - {"group", "label", "advice", "match", "with", "unless", "check", "level"}
        if unknown or spec.get("group") not in GROUPS or not spec.get("label") or not spec.get("advice") \
                or spec.get("level", "urgent") not in LEVELS:
            raise ValueError(f"{SIGNS_FILE}: sign {name!r} needs group (one of {GROUPS}), label and advice, and a "
                             f"level of {LEVELS} if any; unknown keys {sorted(unknown)}")
        if not spec.get("match") and not spec.get("check"):
            raise ValueError(f"{SIGNS_FILE}: sign {name!r} has neither 'match' nor 'check'")
        if spec.get("check") and spec["check"] not in CHECKS:
            raise ValueError(f"{SIGNS_FILE}: sign {name!r}: no check named {spec['check']!r} (have {sorted(CHECKS)})")
        compile_all = lambda key: [expand(p) for p in spec.get(key) or []]  # noqa: E731
        loaded.append(Rule(name, spec["group"], spec["label"], spec["advice"], compile_all("match"),
                           compile_all("with"), compile_all("unless"), spec.get("check"), spec.get("level", "urgent")))
    return tuple(loaded)


def _span(text: str, start: int, end: int, boundary: re.Pattern) -> tuple[int, int]:
    """The stretch of text between the boundaries around [start, end)."""
    left = 0
    for found in boundary.finditer(text, 0, start):
        left = found.end()
    after = boundary.search(text, end)
    return left, after.start() if after else len(text)


def is_live(text: str, start: int, end: int) -> bool:
    """Whether the mention text[start:end] is affirmed, current and about this child."""
    left, right = _span(text, start, end, _CLAUSE_END)
    clause, before = text[left:right], text[left:start]
    if _NEGATED.search(before) and not _ASKING.search(before):
        return False
    recent = _RECENT.search(clause) is not None
    if _PAST.search(clause) and not recent:
        return False
    if _CONDITIONAL.search(clause):
        return False
    happened = text.startswith("了", end) or recent
    asking = _GENERAL.search(clause) or (_WHAT_TO_DO.search(clause) and not _THIS_CHILD.search(clause))
    return not (asking and not happened)


class Conversation:
    """The user's turns of a chat, with what holds across them (the child's age, temperatures)."""

    def __init__(self, turns: list[tuple[int, str]]) -> None:
        self.turns = turns
        ages = [age for _, text in turns if (age := numbers.age_months(text)) is not None]
        self.age = ages[-1] if ages else None  # the latest the parent said
        self.temperatures = [t for _, text in turns for t in numbers.temperatures(text)]

    def live(self, pattern: str | re.Pattern, turns: Iterable[tuple[int, str]] | None = None
             ) -> tuple[int, re.Match] | None:
        """The first live mention of a pattern in the given turns (all by default)."""
        for index, text in self.turns if turns is None else turns:
            for found in re.finditer(pattern, text):
                if is_live(text, found.start(), found.end()):
                    return index, found
        return None

    def has_fever(self) -> bool:
        if self.temperatures:
            return max(self.temperatures) >= 38.0
        return any(self.live(pattern) is not None for pattern in _fever_words())


@lru_cache(maxsize=1)
def _fever_words() -> tuple[re.Pattern, ...]:
    """FEVER and signs.yaml's lexicon entry `fever` (a parent's words for it: 发着烧, 额头烫, 滚烫, ...)."""
    lexicon = yaml.safe_load(SIGNS_FILE.read_text(encoding="utf-8")).get("lexicon") or {}
    return (re.compile(FEVER), *([re.compile(lexicon["fever"])] if "fever" in lexicon else []))


def _age_words(months: float | None) -> str:
    if months is None:
        return "年龄未说明"
    if months < 1:
        return f"出生{max(1, round(months * numbers.DAYS_PER_MONTH))}天"
    if months < 24:
        return f"{months:.1f}个月".replace(".0个", "个")
    return f"{months / 12:.1f}岁".replace(".0岁", "岁")


def _infant_fever(chat: Conversation) -> tuple[int, str] | None:
    if chat.age is None or chat.age >= 3 or not chat.has_fever():
        return None
    told = f"{max(chat.temperatures)}℃" if chat.temperatures else "家长说发烧"
    return chat.turns[-1][0], f"{_age_words(chat.age)}，{told}"


def _infant_high_fever(chat: Conversation) -> tuple[int, str] | None:
    """3 to 6 months old (a parent's "六个月" is up to the seventh month) and 39 ℃ or more: not the emergency
    of a younger baby's fever, a doctor today."""
    if chat.age is None or not 3 <= chat.age < 7 or not chat.temperatures or max(chat.temperatures) < 39.0:
        return None
    return chat.turns[-1][0], f"{_age_words(chat.age)}，{max(chat.temperatures)}℃"


def _fever_weekdays(chat: Conversation) -> tuple[int, str] | None:
    """Fever told as a span of weekdays ("从周一烧到今天周四"): three days or more, a doctor today."""
    if not chat.has_fever():
        return None
    for index, text in chat.turns:
        days = numbers.weekday_days(text)
        if days is not None and days >= 3:
            return index, f"发热约{days}天"
    return None


def _fast_breathing(chat: Conversation) -> tuple[int, str] | None:
    threshold = numbers.fast_breathing_threshold(chat.age)
    for index, text in chat.turns:
        for clause in _CLAUSE_END.split(text):
            rate = numbers.breathing_rate(clause)
            if rate is not None and rate >= threshold and is_live(clause, 0, len(clause)):
                return index, f"每分钟呼吸{rate:g}次，{_age_words(chat.age)}的孩子达到{threshold}次即为呼吸急促"
    return None


def _headache_vomiting(chat: Conversation) -> tuple[int, str] | None:
    headache = chat.live(SEVERE_HEADACHE)
    if headache and chat.live(VOMIT):
        return headache[0], f"“{headache[1].group()}”并呕吐"
    return None


def _no_urine(chat: Conversation) -> tuple[int, str] | None:
    limit = 6 if chat.age is None or chat.age < 12 else 8
    for index, text in chat.turns:
        for found in re.finditer(NO_URINE, text):
            if not is_live(text, found.start(), found.end()):
                continue
            left, right = _span(text, found.start(), found.end(), _SENTENCE_END)
            span = numbers.hours(text[left:right])
            if span is None or span >= limit:
                told = f"{span:g}小时" if span is not None else "家长说"
                return index, f"“{found.group()}”（{told}；超过{limit}小时没有尿需要就医）"
    return None


def _early_jaundice(chat: Conversation) -> tuple[int, str] | None:
    jaundice = chat.live(JAUNDICE)
    if jaundice and chat.age is not None and chat.age * numbers.DAYS_PER_MONTH <= 1.05:
        return jaundice[0], f"{_age_words(chat.age)}就出现“{jaundice[1].group()}”"
    return None


def _newborn_jaundice(chat: Conversation) -> tuple[int, str] | None:
    """Visible jaundice after the first day and within the first four weeks: bilirubin measured today."""
    jaundice = chat.live(JAUNDICE)
    if jaundice and chat.age is not None and 1.05 < chat.age * numbers.DAYS_PER_MONTH <= 28:
        return jaundice[0], f"{_age_words(chat.age)}，“{jaundice[1].group()}”"
    return None


def _pale_stool(chat: Conversation) -> tuple[int, str] | None:
    stool = chat.live(PALE_STOOL)
    if stool and ((chat.age is not None and chat.age < 12) or chat.live(JAUNDICE)):
        return stool[0], f"“{stool[1].group()}”"
    return None


def _head_injury(chat: Conversation) -> tuple[int, str] | None:
    trauma = chat.live(HEAD_TRAUMA)
    after = chat.live(AFTER_HEAD_TRAUMA) if trauma else None
    if trauma and after:
        return after[0], f"“{trauma[1].group()}”后“{after[1].group()}”"
    return None


CHECKS: dict[str, Callable[[Conversation], tuple[int, str] | None]] = {
    "infant_fever": _infant_fever, "infant_high_fever": _infant_high_fever, "fever_weekdays": _fever_weekdays,
    "fast_breathing": _fast_breathing, "headache_vomiting": _headache_vomiting, "no_urine": _no_urine,
    "early_jaundice": _early_jaundice, "newborn_jaundice": _newborn_jaundice, "pale_stool": _pale_stool,
    "head_injury": _head_injury}


def _find(rule: Rule, chat: Conversation) -> tuple[int, str] | None:
    excluded = {index for index, text in chat.turns if any(p.search(text) for p in rule.unless)}
    if rule.check:
        hit = CHECKS[rule.check](chat)
        if hit and hit[0] not in excluded:
            return hit
    for index, text in chat.turns:
        if index in excluded:
            continue
        for pattern in rule.match:
            hit = chat.live(pattern, [(index, text)])
            if hit and (not rule.with_ or any(chat.live(p) for p in rule.with_)):
                return index, f"“{hit[1].group()}”"
    return None


LEARNED = Sign("learned", "learned", "描述与已知的危险情况相近（自动识别，未对应到具体条目）", "",
               "无法确定是哪一种危险情况时，请尽快带孩子就医，或拨打120说明孩子的情况。", 0)
"""The sign the classifier behind the rules raises (`pedray.safety.learned`); reason and turn per chat."""


def triage(messages: list[dict[str, Any]], learned: bool = True) -> Triage:
    """The signs the user's turns of a chat raise, in the order of `signs.yaml` (only the urgent ones when
    there are any); when none is and `learned` is on, the classifier trained on the dev cases may still
    call the chat urgent (`LEARNED`)."""
    turns = [(i, m["content"]) for i, m in enumerate(messages)
             if m.get("role") == "user" and isinstance(m.get("content"), str)]
    chat = Conversation(turns)
    signs = []
    for rule in rules():
        hit = _find(rule, chat)
        if hit:
            signs.append(Sign(rule.name, rule.group, rule.label, hit[1], rule.advice, hit[0], rule.level))
    # The classifier judges only chats that no rule explains: where a `soon` sign is found the rules have read
    # what the parent describes (on 20 fresh "doctor today" phrasings it called 6 of them urgent otherwise).
    if not signs and learned and turns:
        from pedray.safety import learned as classifier

        if classifier.score(messages) >= classifier.THRESHOLD:
            quoted = "、".join(f"“{piece}”" for piece in classifier.reasons(messages)) or "整段描述"
            signs.append(replace(LEARNED, reason=quoted, turn=turns[-1][0]))
    if any(sign.level == "urgent" for sign in signs):  # one level per notice: "today" advice under an
        signs = [sign for sign in signs if sign.level == "urgent"]  # emergency header would confuse
    return Triage(tuple(signs))


def red_flags(text: str) -> list[str]:
    """Names of the signs one message raises, either level (empty when none)."""
    return triage([{"role": "user", "content": text}]).names
