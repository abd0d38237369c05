"""Columns by meaning: which column of a table (or key of a JSON object) holds the question, the answer, ...

Corpora name their columns in many ways (`ask`/`answer` in the widely used Chinese consultation CSVs,
`questions`/`answers` in PediaBench, `问题`/`回答`, `instruction`/`output` in alpaca). A `Layout` maps
each *role* to the column that plays it; `detect` finds it from the column names, `parse_columns`
reads an explicit mapping (`--columns instruction=ask,output=answer`), and `canonical` rewrites one
row into the alpaca-style object `records.to_record` reads (title and question joined, the
department kept as the record's group).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# Role -> column names that mean it (compared after lower-casing and dropping spaces, '_' and '-').
# Order matters: the first role a column matches is the one it plays.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "dialogue": ("conversations", "conversation", "messages", "dialogue", "dialog", "对话", "多轮对话"),
    "title": ("title", "subject", "标题", "主题", "问题标题"),
    "question": ("instruction", "question", "questions", "ask", "prompt", "问题", "提问", "问", "咨询",
                 "咨询内容", "病情描述", "患者提问", "问题描述", "题目", "题干"),
    "query": ("input", "query", "补充", "补充说明", "输入"),
    "answer": ("output", "answer", "answers", "response", "reply", "回答", "回复", "答案", "医生回答",
               "医生回复", "答复", "输出"),
    "options": ("options", "option", "choices", "选项"),
    "explanation": ("explanations", "explanation", "analysis", "解析", "解释", "答案解析"),
    "group": ("department", "category", "diseasegroups", "diseasegroup", "group", "科室", "类别", "分类",
              "疾病分类", "科别"),
    "system": ("system", "systemprompt", "系统提示"),
    "text": ("text", "content", "document", "正文", "文本", "内容"),
    "chosen": ("chosen", "preferred", "较好回答"),
    "rejected": ("rejected", "dispreferred", "较差回答"),
}
ROLES = tuple(SYNONYMS)
# Names `--columns` accepts for each role, alpaca's and LLaMA-Factory's included.
ROLE_ALIASES = {"instruction": "question", "prompt": "question", "question": "question", "input": "query",
                "query": "query", "output": "answer", "response": "answer", "answer": "answer",
                "title": "title", "group": "group", "department": "group", "category": "group",
                "system": "system", "text": "text", "conversations": "dialogue", "messages": "dialogue",
                "dialogue": "dialogue", "options": "options", "explanation": "explanation",
                "chosen": "chosen", "rejected": "rejected"}

Layout = dict[str, str]  # role -> column name


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def detect(columns: list[str] | tuple[str, ...]) -> Layout:
    """The role each column plays, judged by its name; a role goes to the first column that means it."""
    layout: Layout = {}
    for column in columns:
        key = _key(column)
        for role, names in SYNONYMS.items():
            if key in names and role not in layout:
                layout[role] = column
                break
    return layout


def parse_columns(spec: str | None) -> Layout:
    """`instruction=ask,output=answer,group=department` -> {role: column}; unknown roles are an error."""
    layout: Layout = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        role, sep, column = part.partition("=")
        if not sep or not column.strip():
            raise ValueError(f"--columns entry {part!r} must look like role=column")
        canonical_role = ROLE_ALIASES.get(role.strip().lower())
        if canonical_role is None:
            raise ValueError(f"--columns: unknown role {role.strip()!r}; known: {', '.join(sorted(ROLE_ALIASES))}")
        layout[canonical_role] = column.strip()
    return layout


def resolve(columns: list[str] | tuple[str, ...], explicit: Layout | None = None) -> Layout:
    """Detected roles, with an explicit mapping taking precedence (its columns then play no other role)."""
    explicit = dict(explicit or {})
    taken = set(explicit.values())
    detected = {role: column for role, column in detect([c for c in columns if c not in taken]).items()
                if role not in explicit}
    return {**detected, **explicit}


def usable(layout: Layout) -> bool:
    """Whether the layout says where a conversation, a question and its answer, or a text is."""
    return "dialogue" in layout or "text" in layout or (
        ("question" in layout or "title" in layout) and ("answer" in layout or "chosen" in layout))


def describe(layout: Layout) -> str:
    """One line: `question <- ask, answer <- answer, group <- department`."""
    return ", ".join(f"{role} <- {layout[role]}" for role in ROLES if role in layout) or "nothing recognised"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, str) else str(value)


def join_title(title: str, question: str) -> str:
    """Title and question as one prompt: either alone when the other is empty or already contains it."""
    title, question = title.strip(), question.strip()
    bare = re.sub(r"[\s。？?！!…．.、，,：:]+$", "", title)
    if not bare or bare in question:
        return question or title
    if not question or question in title:
        return title
    return f"{title}\n{question}"


def canonical(row: Mapping[str, Any], layout: Layout) -> dict[str, Any]:
    """One row in the alpaca-style shape `to_record` reads, plus `group`, `options` and `explanation`.

    Cells that are not text (numbers, dates from a spreadsheet) become text; JSON values of the
    dialogue, chosen and rejected columns are passed on as they are.
    """
    get = lambda role: row.get(layout[role]) if role in layout else None  # noqa: E731
    obj: dict[str, Any] = {}
    if "dialogue" in layout:
        obj["conversations"] = get("dialogue")
    if "text" in layout and not any(r in layout for r in ("question", "title", "answer", "dialogue")):
        obj["text"] = get("text")
        return obj
    if "question" in layout or "title" in layout:
        obj["instruction"] = join_title(_cell(get("title")), _cell(get("question")))
    if "query" in layout:
        obj["input"] = get("query")
    for role, key in (("answer", "output"), ("system", "system"), ("chosen", "chosen"), ("rejected", "rejected")):
        if role in layout:
            value = get(role)
            obj[key] = _cell(value) if role in ("answer", "system") or not isinstance(value, (dict, list)) else value
    for role in ("group", "options", "explanation"):
        if role in layout and get(role) not in (None, ""):
            obj[role] = _cell(get(role)).strip()
    if obj.get("options") and obj.get("instruction"):
        obj["instruction"] += "\n" + obj["options"]  # an exam question is asked with its options
    return obj
