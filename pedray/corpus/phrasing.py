"""Phrasing of the generated corpus: ages, question templates and answer composition, all seeded."""

from __future__ import annotations

import random

from pedray.corpus.knowledge import Condition

OPENERS = ["您好，", "别着急，", "理解您的担心，", "您好，感谢您的详细描述。", "", "家长您好，"]
CLOSERS = [
    "如果情况有变化，请及时带孩子就医。",
    "以上建议供参考，具体请以医生面诊为准。",
    "祝孩子早日康复。",
    "如有疑问，建议到儿科门诊进一步评估。",
]
CHILD = ["孩子", "宝宝", "我家孩子", "我儿子", "我女儿", "小孩"]
DURATIONS = ["半天", "一天", "两天", "三天", "四天", "五天", "一周", "十来天"]

ASPECT_QUESTIONS = {
    "symptoms": ["{name}有哪些典型症状？", "孩子得了{name}会有什么表现？", "怎么判断{child}是不是得了{name}？",
                 "{name}一般有什么症状？", "请介绍一下儿童{name}的临床表现。"],
    "red_flags": ["{name}出现哪些情况需要马上去医院？", "{child}得了{name}，哪些信号说明病情加重了？",
                  "{name}有哪些危险信号要警惕？"],
    "exams": ["怀疑{name}需要做哪些检查？", "{name}要查什么项目才能确诊？", "医生怀疑{child}是{name}，会安排哪些检查？"],
    "diagnosis": ["{name}是怎么诊断的？", "诊断{name}的要点有哪些？", "医生根据什么判断是{name}？"],
    "age": ["{name}多见于多大的孩子？", "哪个年龄段的孩子容易得{name}？"],
    "home_care": ["{child}得了{name}，在家应该怎么护理？", "{name}居家护理要注意什么？", "得了{name}在家能做些什么？"],
}
ASPECT_LEADS = {
    "symptoms": "{name}的常见表现有：", "red_flags": "出现以下情况时要立即就医：",
    "exams": "通常会安排这些检查：", "diagnosis": "诊断主要依据以下几点：", "home_care": "居家护理可以这样做：",
}
TREAT_QUESTIONS = [
    "{age}的{child}被诊断为{name}，应该怎么治疗？", "{name}怎么治疗？家里需要注意什么？",
    "{child}{age}，医生说是{name}，治疗方案一般是什么？", "请给一个{age}{name}患儿的治疗建议。",
    "得了{name}要吃什么药？怎么护理？",
]
CASE_ASKS = ["请分析可能的诊断。", "这可能是什么病？", "请结合病情给出初步诊断和依据。",
             "医生，这是怎么回事？", "需要考虑哪些疾病？"]


def format_age(months: int) -> str:
    """Chinese age words for an age in months (days for newborns)."""
    if months <= 0:
        return "出生第{}天".format(3 + months % 20)
    if months < 12:
        return f"{months}个月"
    years, rest = divmod(months, 12)
    if rest >= 6:
        return f"{years}岁半"
    return f"{years}岁"


def sample_age(rng: random.Random, condition: Condition) -> int:
    low, high = condition.age_months
    return rng.randint(low, high)


def pick(rng: random.Random, items: tuple[str, ...] | list[str], low: int, high: int | None = None) -> list[str]:
    """A random subset of `items` (at least `low`, at most `high`), in the knowledge base's order.

    The order is fixed on purpose: with items in random order the next item of a list is a coin toss
    among those not yet said, and a small model that loses track of what it said picks the same most
    likely item again ("发热、发热、发热"). In a fixed order each item follows from the one before.
    """
    high = min(len(items), high if high is not None else len(items))
    count = rng.randint(min(low, high), high)
    chosen = set(rng.sample(range(len(items)), count))
    return [item for index, item in enumerate(items) if index in chosen]


def shuffled(rng: random.Random, items: list[str]) -> list[str]:
    """Items in random order: for what a parent says, which has no order to learn."""
    return rng.sample(items, len(items))


def join(points: list[str]) -> str:
    return "；".join(points) + "。"


def numbered(points: list[str]) -> str:
    return "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))


def listing(rng: random.Random, points: list[str]) -> str:
    """Points as a sentence or a numbered list, chosen at random for variety."""
    return numbered(points) if rng.random() < 0.5 else join(points)


def warm(rng: random.Random, body: str, condition: Condition | None = None) -> str:
    """Wrap an answer body with a warm opening, a red-flag reminder and a closing line."""
    parts = [rng.choice(OPENERS) + body]
    if condition is not None:
        flags = pick(rng, condition.red_flags, 2, 3)
        parts.append("需要特别注意：如果出现" + "、".join(flags) + "，请立即就医。")
    parts.append(rng.choice(CLOSERS))
    return "\n".join(p for p in parts if p)


def case_description(rng: random.Random, condition: Condition) -> tuple[str, list[str], int]:
    """A parent's description of a case: age, sex, duration and a subset of symptoms."""
    months = sample_age(rng, condition)
    symptoms = shuffled(rng, pick(rng, condition.symptoms, 2, 4))
    sex = rng.choice(["男孩", "女孩", "男童", "女童", "宝宝"])
    duration = rng.choice(DURATIONS)
    style = rng.randrange(3)
    if style == 0:
        text = f"{format_age(months)}{sex}，{duration}前开始出现{'、'.join(symptoms)}。"
    elif style == 1:
        text = f"患儿，{sex}，{format_age(months)}。主诉：{symptoms[0]}{duration}。伴随症状：{'、'.join(symptoms[1:])}。"
    else:
        text = f"我家{sex}{format_age(months)}了，这{duration}{'，'.join(symptoms)}，有点担心。"
    return text, symptoms, months
