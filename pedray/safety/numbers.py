"""Numbers in a parent's Chinese: the child's age, a temperature, a breathing rate and durations.

Digits and Chinese numerals both ("38度5", "三十八度五", "两个半月", "一岁半", "二十多天"). Ages are told
apart from durations by what stands around them: "宝宝两个月" is an age, "咳嗽两个月了" a duration.
"""

from __future__ import annotations

import re

NUM = r"(\d+(?:\.\d+)?|[零一二两三四五六七八九十百几]+)"
DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
          "几": 3}
DAYS_PER_MONTH = 30.4


def number(text: str) -> float | None:
    """A number written in digits or Chinese numerals ('38.5', '十一', '三十八', '一百二'); None if not one."""
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or any(ch not in DIGITS and ch not in "十百" for ch in text):
        return None
    total, current = 0, 0
    for ch in text:
        if ch == "百":
            total += (current or 1) * 100
            current = 0
        elif ch == "十":
            total += (current or 1) * 10
            current = 0
        else:
            current = current * 10 + DIGITS[ch] if current else DIGITS[ch]
    return float(total + current)


# What may stand before an age: the child, or a word that says "is N old"; after it: "大", "的宝宝", ...
_AGE_BEFORE = r"(?:^|[，。,；;！!？?\s]|宝宝|宝|宝贝|小家伙|孩子|小孩|儿子|女儿|闺女|娃|婴儿|女宝|男宝|孙子|孙女|" \
              r"今年|才|刚|满|不到|还不到|出生|生后|" \
              r"生下来|月龄|年龄|我家|家里|宝宝已经|孩子已经|宝宝现在|孩子现在)"
_AGE_AFTER = r"(?=大|的|出头|宝宝|婴儿|孩子|小孩|男|女|娃|[，,。；\s]|$|了，|了。|了$)"
_YEARS = re.compile(NUM + r"(?:个)?(半)?(?:周岁|岁)(半)?(?!以上|以下|以内|之前|前|左右|时)")
_MONTHS = re.compile(r"(?:" + _AGE_BEFORE + r")" + NUM + r"(?:多|来)?(?:个)(?:多)?(半)?月(?:零" + NUM + r"天)?" + _AGE_AFTER)
# "4月龄", "宝宝5月大": a month count without 个 is an age only with 龄 or 大 after it ("4月" alone is April)
_MONTHS_BARE = re.compile(NUM + r"(?:多)?(半)?月(?:龄|大)")
_WEEKS = re.compile(r"(?:(?:" + _AGE_BEFORE + r")" + NUM + r"(?:多|来)?(?:周|个星期|个礼拜)" + _AGE_AFTER + r")|(?:"
                    + NUM + r"(?:多|来)?(?:周|个星期)(?=大|的宝宝|的新生儿|的婴儿|的孩子))")
_DAYS = re.compile(r"(?:(?:出生|生后|生下来|产后|宝宝|孩子|娃|女儿|儿子|闺女|孙子|孙女|女宝|男宝|老二|老大|小孩|婴儿|"
                   r"新生儿|小宝|宝贝|小家伙|才|刚|满)(?:第)?" + NUM + r"(?:多|来)?天"
                   # "孩子三天前发烧", "孩子3天没大便": a time span, not an age
                   r"(?!前|以前|之前|以来|来|没|不|都|一直|里|内|后|左右))|(?:"
                   + NUM + r"(?:多|来)?天(?=大|的宝宝|的新生儿|的婴儿|的孩子|的女宝|的男宝))")
_HOURS = re.compile(r"(?:出生|生后|生下来)(?:才|不到)?" + NUM + r"(?:多|来)?个?小时")
_WORDS = (("不到24小时", 0.02), ("24小时内", 0.02), ("出生第一天", 0.02), ("出生当天", 0.02), ("生下来第一天", 0.02),
          ("出生不到一天", 0.02), ("生下来不到一天", 0.02), ("刚出生", 0.1), ("还没满月", 0.7), ("没满月", 0.7),
          ("未满月", 0.7), ("不到满月", 0.7), ("满月前的", 0.7),
          ("新生儿", 0.5), ("满月", 1.0), ("百天", 3.3))


def age_months(text: str) -> float | None:
    """The child's age in months as the text states it (None when it does not)."""
    for pattern, scale in ((_HOURS, 1 / 24 / DAYS_PER_MONTH), (_DAYS, 1 / DAYS_PER_MONTH),
                           (_WEEKS, 7 / DAYS_PER_MONTH)):
        found = pattern.search(text)
        if found:
            value = number(next(g for g in found.groups() if g))
            if value is not None:
                return value * scale
    found = _MONTHS.search(text)
    if found:
        value = number(found.group(1))
        extra_days = number(found.group(3)) if found.group(3) else 0.0
        if value is not None:
            return value + (0.5 if found.group(2) else 0.0) + (extra_days or 0.0) / DAYS_PER_MONTH
    found = _MONTHS_BARE.search(text)
    if found:
        value = number(found.group(1))
        if value is not None:
            return value + (0.5 if found.group(2) else 0.0)
    for found in _YEARS.finditer(text):
        value = number(found.group(1))
        if value is not None:
            return value * 12 + (6 if found.group(2) or found.group(3) else 0)
    for word, months in _WORDS:
        if word in text:
            return months
    return None


_TEMP_UNIT = re.compile(r"(\d{2}(?:\.\d)?|[三四]十[一二三四五六七八九]?)\s*(?:度|℃|°C?)([一二三四五六七八九\d])?")
_TEMP_BARE = re.compile(r"(?:体温|烧到|发烧|发热|低烧|高烧|量了|温度|腋温|肛温|耳温|额温|烧了)[^\d，。,]{0,3}(\d{2}\.\d|\d{2})(?![\d.]|\s*(?:度|℃|°))")


def temperatures(text: str) -> list[float]:
    """Body temperatures in °C the text gives (34 to 43; anything else is not a body temperature)."""
    values = []
    for found in _TEMP_UNIT.finditer(text):
        whole = number(found.group(1))
        if whole is None:
            continue
        tenth = found.group(2)
        if tenth and "." not in found.group(1):
            whole += (number(tenth) or 0) / 10
        values.append(whole)
    values += [float(found.group(1)) for found in _TEMP_BARE.finditer(text)]
    return [v for v in values if 34 <= v <= 43]


_RATE = re.compile(NUM + r"\s*(?:次|下)")
_RATE_BARE = re.compile(r"呼吸(?:频率)?(?:是|为|有)?\s*(\d{2,3})(?!\d|\s*(?:秒|分钟|小时))")
_NOT_BREATHING = re.compile(r"心率|心跳|脉搏|咳|吐|拉|抽|尿|便")


def breathing_rate(clause: str) -> float | None:
    """Breaths a minute a clause gives ("呼吸每分钟56次", "一分钟喘58下"), or None."""
    if not re.search(r"呼吸|喘|气", clause) or _NOT_BREATHING.search(clause):
        return None
    for pattern in (_RATE, _RATE_BARE):
        for found in pattern.finditer(clause):
            value = number(found.group(1))
            if value is not None and 5 <= value <= 150:
                return value
    return None


_HOURS_SPAN = re.compile(NUM + r"(?:多|来)?(?:个)?(?:多)?(?:小时|钟头)")
_SPAN_WORDS = (("一整天", 24), ("一天一夜", 24), ("一天", 24), ("一整晚", 10), ("一晚上", 10), ("一夜", 10),
               ("一上午", 6), ("一下午", 6), ("整个上午", 6), ("整个下午", 6), ("半天", 6))


def hours(text: str) -> float | None:
    """A duration in hours the text gives ("8个小时", "十个多小时", "一整天"), or None."""
    found = _HOURS_SPAN.search(text)
    if found:
        return number(found.group(1))
    for word, value in _SPAN_WORDS:
        if word in text:
            return float(value)
    return None


_WEEKDAY = "一二三四五六日天"
_WEEKDAY_SPAN = re.compile(rf"(?:周|星期|礼拜)([{_WEEKDAY}])[^。；;]{{0,8}}?(?:到|至|今天|现在)(?:是|已经|都)?[^，。,；]{{0,3}}?"
                           rf"(?:周|星期|礼拜)([{_WEEKDAY}])")  # "从周一到周四", "周五开始的，今天周一了"


def weekday_days(text: str) -> int | None:
    """Days counted from one weekday to another, both included ("从周一到今天周四" is 4), or None."""
    found = _WEEKDAY_SPAN.search(text)
    if not found:
        return None
    first, last = (min(_WEEKDAY.index(day), 6) for day in found.groups())  # 日 and 天 are both Sunday
    return (last - first) % 7 + 1


def fast_breathing_threshold(months: float | None) -> float:
    """Breaths a minute from which breathing is fast: WHO IMCI by age (under 2 months 60, 2-12 months 50,
    1-5 years 40), 30 from 5 years on; 40 when the age is not known (the lower threshold of the under-fives,
    so that an unknown age errs on escalating)."""
    if months is None:
        return 40
    if months < 2:
        return 60
    if months < 12:
        return 50
    if months < 60:
        return 40
    return 30
