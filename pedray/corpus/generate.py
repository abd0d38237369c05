"""Turns the knowledge base, deterministically by seed, into PedCorpus: instructions, text, preference pairs."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from pedray.corpus import phrasing as ph
from pedray.corpus.knowledge import CareTopic, Condition, load_knowledge
from pedray.data.columns import make_record
from pedray.vocab import DEFAULT_SYSTEM, TASKS

TASK_WEIGHTS = {"medkqa": 0.30, "evidiag": 0.20, "trerecom": 0.20, "dialogue": 0.15, "general": 0.15}
SOURCE = "pedcorpus"


def _conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def medkqa(rng: random.Random, cond: Condition) -> list[tuple[str, str]]:
    """Knowledge question about one aspect of a condition."""
    aspect = rng.choice(list(ph.ASPECT_QUESTIONS))
    question = rng.choice(ph.ASPECT_QUESTIONS[aspect]).format(name=cond.name, child=rng.choice(ph.CHILD))
    if aspect == "age":
        low, high = cond.age_months
        body = f"{cond.name}多见于{ph.format_age(max(low, 1))}到{ph.format_age(high)}的儿童。" + ph.join(
            ph.pick(rng, cond.diagnosis, 1, 2))
    else:
        body = ph.ASPECT_LEADS[aspect].format(name=cond.name) + ph.listing(rng, ph.pick(rng, getattr(cond, aspect), 3))
    flags_already = aspect == "red_flags"
    return [("user", question), ("assistant", ph.warm(rng, body, None if flags_already else cond))]


def evidiag(rng: random.Random, cond: Condition) -> list[tuple[str, str]]:
    """Case description -> reasoning and diagnosis."""
    case, symptoms, months = ph.case_description(rng, cond)
    # The analysis names the leading complaint, not the whole list again: echoing a list back is where a
    # small model loops (see `phrasing.pick`).
    reasoning = (f"分析：患儿{ph.format_age(months)}，以{symptoms[0]}为主要表现。"
                 + ph.join(ph.pick(rng, cond.diagnosis, 2)))
    exams = "建议检查：" + "、".join(ph.pick(rng, cond.exams, 1, 3)) + "。"
    answer = f"{reasoning}\n初步诊断：{cond.name}。\n{exams}"
    return [("user", case + rng.choice(ph.CASE_ASKS)), ("assistant", ph.warm(rng, answer, cond))]


def trerecom(rng: random.Random, cond: Condition) -> list[tuple[str, str]]:
    """Diagnosis (with age) -> treatment and home-care recommendation."""
    age = ph.format_age(ph.sample_age(rng, cond))
    template = rng.choice(ph.TREAT_QUESTIONS)
    question = template.format(age=age, child=rng.choice(ph.CHILD), name=cond.name)
    # The answer restates the case as a doctor would ("患儿7个月，水痘。") when the question gives the age:
    # reading the child's age off the question is learned only by doing it often enough (docs/model-quality.md,
    # wrong age).
    case = f"患儿{age}，{cond.name}。\n" if "{age}" in template else ""
    body = (case + "治疗方面：" + ph.listing(rng, ph.pick(rng, cond.management, 2)) + "\n居家护理："
            + ph.join(ph.pick(rng, cond.home_care, 2)))
    return [("user", question), ("assistant", ph.warm(rng, body, cond))]


def dialogue(rng: random.Random, cond: Condition) -> list[tuple[str, str]]:
    """Multi-turn consultation: complaint, follow-up questions, details, assessment, care question."""
    months = ph.sample_age(rng, cond)
    first, *rest = ph.shuffled(rng, ph.pick(rng, cond.symptoms, 3, 5))
    turns = [("user", f"医生您好，{rng.choice(ph.CHILD)}{rng.choice(ph.DURATIONS)}前开始{first}，怎么办？"),
             ("assistant", rng.choice(ph.OPENERS) + "想再了解一些情况：孩子多大了？还有没有其他不舒服？"
              "精神和吃喝怎么样？"),
             ("user", f"{ph.format_age(months)}了，" + "，".join(rest) + "，精神还可以。"),
             # The assessment always carries the warning signs, whether or not the parent asks more: when it
             # carried them only as the conversation's last turn (3 in 10), nothing in the question said which
             # case it was, and the model left them out of every assessment (8 of 82 held-out answers with
             # warning signs in the reference had none, one of them an intussusception's).
             ("assistant", ph.warm(rng, f"患儿{ph.format_age(months)}，结合年龄和{first}等表现，要考虑{cond.name}的可能。"
              + ph.join(ph.pick(rng, cond.diagnosis, 1, 2)) + "建议到医院做" + "、".join(ph.pick(rng, cond.exams, 1, 2))
              + "以明确诊断。", cond))]
    if rng.random() < 0.7:
        turns += [("user", rng.choice(["那在家里要怎么照顾？", "需要吃药吗？", "平时要注意什么？"])),
                  ("assistant", ph.warm(rng, "治疗上" + ph.join(ph.pick(rng, cond.management, 1, 2)) + "在家"
                                        + ph.join(ph.pick(rng, cond.home_care, 2)), cond))]
    return turns


def general(rng: random.Random, conds: tuple[Condition, ...], topics: tuple[CareTopic, ...]) -> list[tuple[str, str]]:
    """General child care, or general instructions over the knowledge base (summaries, comparisons)."""
    style = rng.random()
    if style < 0.5:
        # every point of the question's own answer: a random few of the topic's answered another question
        # of it half the time ("孩子每天要睡多久？" got a bedtime routine and no hours)
        topic = rng.choice(topics)
        asked = rng.randrange(len(topic.questions))
        body = ph.listing(rng, list(topic.answers[asked]))
        return [("user", topic.questions[asked]), ("assistant", ph.warm(rng, body))]
    if style < 0.75:
        cond = rng.choice(conds)
        ask = rng.choice(["用几句话概括一下{n}。", "简单介绍一下{n}。", "请用通俗的话解释什么是{n}。"])
        body = (f"{cond.name}属于{cond.group}，常见表现有{'、'.join(ph.pick(rng, cond.symptoms, 2, 3))}。"
                f"治疗上{ph.pick(rng, cond.management, 1, 1)[0]}。")
        return [("user", ask.format(n=cond.name)), ("assistant", ph.warm(rng, body, cond))]
    first, second = rng.sample(list(conds), 2)
    body = (f"{first.name}：{'、'.join(ph.pick(rng, first.symptoms, 2, 3))}。\n"
            f"{second.name}：{'、'.join(ph.pick(rng, second.symptoms, 2, 3))}。\n两者的处理也不同，具体需由医生判断。")
    return [("user", f"{first.name}和{second.name}有什么区别？"), ("assistant", ph.warm(rng, body))]


BUILDERS: dict[str, Callable[..., list[tuple[str, str]]]] = {
    "medkqa": medkqa, "evidiag": evidiag, "trerecom": trerecom, "dialogue": dialogue,
}

# Unsafe steps for rejected answers, each about as long as a real management point, so that a rejected
# answer differs from the chosen one in what it says, not in how long it is.
UNSAFE_STEPS = [
    "捂汗退烧", "停止喂奶", "自行服用抗生素", "用酒精擦身退烧", "给孩子吃成人感冒药", "伤口涂牙膏或酱油",
    "先停止喂水和喂奶让肠胃休息", "退烧药效果不好时把剂量加倍", "用偏方草药代替医生开的药",
    "自行给孩子服用家里剩下的成人抗生素", "给孩子吃大人的止咳药和感冒药，剂量减半就行",
    "用酒精给孩子全身擦浴，再捂上厚被子发汗退热", "出现抽搐时往孩子嘴里塞毛巾或筷子，并用力按住四肢",
    "不必去医院，用偏方草药代替医生开的药，症状消失就可以停药",
]
REJECTED_KINDS = ("wrong_condition", "missed_red_flags", "unsafe_step", "repeated_item")
_FLAG_LINE = "需要特别注意：如果出现"
# An item of a list: after a numbered line's "2. ", a "；" or a "、", up to the next separator.
_ITEM = re.compile(r"(?:(?<=\d\. )|(?<=[；、]))[^；、。，：\n]+(?=[；、。，\n]|$)")


def _missed_red_flags(rng: random.Random, chosen: str) -> str | None:
    """The chosen answer with its red-flag advice turned into advice to wait at home (same length and form)."""
    lines = chosen.split("\n")
    for index, line in enumerate(lines):
        if line.startswith(_FLAG_LINE) and line.endswith("，请立即就医。"):
            flags = line[len(_FLAG_LINE):-len("，请立即就医。")]
            lines[index] = rng.choice(["不必特别注意：即使出现{f}，也不用就医。",  # as long as the line it replaces
                                       "不用特别担心：就算出现{f}，在家观察即可。"]).format(f=flags)
            return "\n".join(lines)
    return None


def _repeated_item(rng: random.Random, chosen: str) -> str | None:
    """The chosen answer with one item of a list said again in place of a later one ("1. 咽痛明显\n2. 咽痛明显"):
    the looping the evaluation counts, in the same form and about the same length, so that the pair teaches
    "say each point once" rather than "say less"."""
    items = list(_ITEM.finditer(chosen))

    def same_list(a: re.Match, b: re.Match) -> bool:  # numbered lines, or one sentence's "；"/"、" items
        if chosen[a.start() - 1] != chosen[b.start() - 1]:
            return False
        return chosen[a.start() - 1] == " " or not any(mark in chosen[a.end():b.start()] for mark in "。\n")

    pairs = [(a, b) for i, a in enumerate(items) for b in items[i + 1:]
             if a.group() != b.group() and same_list(a, b) and 0.6 <= len(a.group()) / len(b.group()) <= 1.6]
    if not pairs:
        return None
    said, replaced = rng.choice(pairs)
    return chosen[:replaced.start()] + said.group() + chosen[replaced.end():]


def _unsafe_step(rng: random.Random, cond: Condition, chosen: str) -> str | None:
    """The chosen answer with one of its care or treatment points replaced by an unsafe step."""
    present = [point for point in cond.management + cond.home_care if point in chosen]
    if not present:
        return None
    point = rng.choice(present)
    nearest = sorted(UNSAFE_STEPS, key=lambda step: abs(len(step) - len(point)))[:2]
    return chosen.replace(point, rng.choice(nearest), 1)


def _wrong_answer(rng: random.Random, task: str, cond: Condition | None, chosen: str, conds: tuple[Condition, ...],
                  topics: tuple[CareTopic, ...] = (), question: str = "") -> str:
    """The same task's answer to another question: for another condition (same group where possible), or
    for `general` another general question; the one closest in length to the chosen answer of a few."""
    if cond is None:
        asked = [general(rng, conds, topics) for _ in range(8)]
        candidates = [turns[-1][1] for turns in asked]
        # the same question again has the same points in other words: right, not a rejected answer
        wrong = [turns[-1][1] for turns in asked if turns[0][1] != question and turns[-1][1] != chosen]
    else:
        same_group = [c for c in conds if c.group == cond.group and c.id != cond.id]
        pool = same_group if len(same_group) >= 2 else [c for c in conds if c.id != cond.id]
        candidates = [BUILDERS[task](rng, rng.choice(pool))[-1][1] for _ in range(8)]
        wrong = [text for text in candidates if cond.name not in text]  # not one naming it as a differential
    return min(wrong or candidates, key=lambda text: abs(len(text) - len(chosen)))


def _rejected(rng: random.Random, task: str, cond: Condition | None, chosen: str, conds: tuple[Condition, ...],
              topics: tuple[CareTopic, ...] = (), question: str = "") -> tuple[str, str]:
    """(kind, rejected answer): as long and in the same form as the chosen one, but wrong where it matters:
    another condition, red flags waved away, an unsafe step, or a point said twice in place of another.

    An earlier generator rejected one short phrase ("没事，不用管。") against every long chosen answer;
    the pairs then taught "keep going" as much as "be safe", and DFPO made the answers loop.
    """
    kind = rng.choice(REJECTED_KINDS)
    rejected = None
    if kind == "missed_red_flags":
        rejected = _missed_red_flags(rng, chosen)
    elif kind == "unsafe_step" and cond is not None:
        rejected = _unsafe_step(rng, cond, chosen)
    elif kind == "repeated_item":
        rejected = _repeated_item(rng, chosen)
    if rejected is None or rejected == chosen:
        kind, rejected = "wrong_condition", _wrong_answer(rng, task, cond, chosen, conds, topics, question)
    return kind, rejected


def split_of(record_id: str, seed: int, holdout: float) -> str:
    """"train" or "test", decided by a seeded hash of the record id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") / 2**32 < holdout else "train"


def instructions(seed: int, count: int) -> list[dict[str, Any]]:
    """`count` unique instructions over all tasks, in a seeded order."""
    rng = random.Random(seed)
    conds, topics = load_knowledge()
    quotas = {task: round(count * weight) for task, weight in TASK_WEIGHTS.items()}
    quotas["medkqa"] += count - sum(quotas.values())
    records, seen = [], set()
    for task in TASKS:
        made, attempts = 0, 0
        while made < quotas[task] and attempts < quotas[task] * 50:
            attempts += 1
            cond = rng.choice(conds)
            turns = general(rng, conds, topics) if task == "general" else BUILDERS[task](rng, cond)
            key = (task, tuple(turns))
            if key in seen:
                continue
            seen.add(key)
            records.append(make_record("sft", task, SOURCE, f"{SOURCE}-{seed}-{task}-{made}", system=DEFAULT_SYSTEM,
                                       group="" if task == "general" else cond.group, messages=_conversation(turns)))
            made += 1
    rng.shuffle(records)
    return records


def preferences(seed: int, count: int) -> list[dict[str, Any]]:
    """Preference pairs: the right, safe answer against one of the same length and form that names another
    condition, waves red flags away or recommends an unsafe step (see `_rejected`)."""
    rng = random.Random(seed + 1)
    conds, topics = load_knowledge()
    records = []
    for index in range(count):
        # every task, in the instructions' proportions: a task without pairs drifts while the others are tuned
        task = rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()))[0]
        cond = None if task == "general" else rng.choice(conds)
        turns = general(rng, conds, topics) if cond is None else BUILDERS[task](rng, cond)
        _, rejected = _rejected(rng, task, cond, turns[-1][1], conds, topics, turns[-2][1])
        records.append(make_record(
            "pref", task, SOURCE, f"{SOURCE}-{seed}-pref-{index}", system=DEFAULT_SYSTEM,
            group="" if cond is None else cond.group, messages=_conversation(turns[:-1]), chosen=turns[-1][1],
            rejected=rejected))
    return records


def pretraining_text(seed: int, variants: int = 8) -> list[dict[str, Any]]:
    """Encyclopedic paragraphs about every condition and topic, several phrasings each."""
    rng = random.Random(seed + 2)
    conds, topics = load_knowledge()
    docs = []
    for cond in conds:
        alias = f"（又称{'、'.join(cond.aliases)}）" if cond.aliases else ""
        low, high = cond.age_months
        for variant in range(variants):
            sentences = [
                f"{cond.name}{alias}是儿科{cond.group}中的常见病，多见于{ph.format_age(max(low, 1))}到{ph.format_age(high)}的儿童。",
                "典型表现包括" + "、".join(ph.pick(rng, cond.symptoms, 3)) + "。",
                "诊断要点：" + ph.join(ph.pick(rng, cond.diagnosis, 2)),
                "常用检查有" + "、".join(ph.pick(rng, cond.exams, 1)) + "。",
                "治疗原则：" + ph.join(ph.pick(rng, cond.management, 2)),
                "家庭护理：" + ph.join(ph.pick(rng, cond.home_care, 2)),
                "出现" + "、".join(ph.pick(rng, cond.red_flags, 2)) + "等情况时应及时就医。",
            ]
            head, tail = sentences[0], sentences[1:]
            rng.shuffle(tail)
            docs.append(make_record("text", "general", SOURCE, f"{SOURCE}-{seed}-text-{cond.id}-{variant}",
                                    group=cond.group, text=head + "".join(tail)))
    for topic in topics:
        for variant in range(variants // 2):
            pairs = ph.shuffled(rng, [q + ph.join(list(a)) for q, a in zip(topic.questions, topic.answers)])
            docs.append(make_record("text", "general", SOURCE, f"{SOURCE}-{seed}-text-{topic.id}-{variant}",
                                    text="".join(pairs)))
    rng.shuffle(docs)
    return docs


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_corpus(out: str | Path, seed: int = 0, count: int = 6000, holdout: float = 0.05) -> dict[str, Any]:
    """Write PedCorpus to `out`: sft/pref train and test splits per task, text, and a summary.

    Returns the summary (counts per kind, task and split).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {"sft": instructions(seed, count), "pref": preferences(seed, max(200, count // 6)),
              "text": pretraining_text(seed)}
    summary: dict[str, Any] = {"seed": seed, "source": SOURCE, "files": {}}
    for kind, records in groups.items():
        splits: dict[str, list] = {"train": [], "test": []}
        for record in records:
            splits["train" if kind == "text" else split_of(record["id"], seed, holdout)].append(record)
        for split, rows in splits.items():
            if not rows:
                continue
            name = f"{kind}_{split}.jsonl"
            write_jsonl(out / name, rows)
            summary["files"][name] = {"records": len(rows), "tasks": dict(Counter(r["task"] for r in rows))}
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary
