"""Corpora as users bring them: columns by meaning, broken records that never stop a run, BOMs, and every
format LLaMA-Factory documents for dataset_info.json. Every file here is small and written by us."""

import json
import subprocess
import sys

import pytest

from pedray.ingest.layout import detect, join_title, parse_columns
from pedray.ingest.prep import inspect, prep
from pedray.ingest.readers import InputError, read_path

CONSULTATION = ("department,title,ask,answer\n"
                "儿科,宝宝发烧怎么办,孩子两岁，昨晚开始发烧三十八度五，精神还好。,多喝水，观察精神，超过三天不退要就医。\n"
                "小儿内科,孩子咳嗽一周,咳嗽一周了，夜里厉害。,建议看门诊听听肺部。\n")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _items(path, **kw):
    return [(where, record, reason) for _, where, record, reason in read_path(path, **kw)]


def _prep_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pedray", "prep", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


# ----- columns by meaning ---------------------------------------------------------------------------

def test_the_common_consultation_csv_layout_in_gb18030_is_read_in_full(tmp_path):
    path = tmp_path / "consult.csv"
    path.write_bytes(CONSULTATION.encode("gb18030"))
    items = _items(path)
    assert [reason for _, _, reason in items] == [None, None]
    first = items[0][1]
    assert first["group"] == "儿科" and first["kind"] == "sft"
    assert first["messages"][0]["content"] == "宝宝发烧怎么办\n孩子两岁，昨晚开始发烧三十八度五，精神还好。"
    assert first["messages"][1]["content"].startswith("多喝水")


def test_detect_by_name_in_chinese_and_english():
    assert detect(["科室", "标题", "问题", "回复"]) == {"group": "科室", "title": "标题", "question": "问题",
                                                     "answer": "回复"}
    assert detect(["Disease Groups", "questions", "answers", "explanations"]) == {
        "group": "Disease Groups", "question": "questions", "answer": "answers", "explanation": "explanations"}
    assert detect(["Prompt", "Response"]) == {"question": "Prompt", "answer": "Response"}


def test_title_and_question_join_without_saying_things_twice():
    assert join_title("宝宝发烧", "宝宝发烧三天了怎么办") == "宝宝发烧三天了怎么办"
    assert join_title("宝宝发烧怎么办？", "") == "宝宝发烧怎么办？"
    assert join_title("", "孩子咳嗽") == "孩子咳嗽"
    assert join_title("孩子咳嗽一周", "夜里厉害") == "孩子咳嗽一周\n夜里厉害"
    assert join_title("孩子咳嗽一周了，夜里厉害", "夜里厉害") == "孩子咳嗽一周了，夜里厉害"


def test_tsv_and_xlsx_with_chinese_columns(tmp_path):
    from openpyxl import Workbook

    tsv = tmp_path / "qa.tsv"
    tsv.write_text("问题\t回答\t类别\n孩子湿疹怎么护理？\t保湿，穿纯棉衣物。\t皮肤\n", encoding="utf-8")
    (_, record, reason), = _items(tsv)
    assert reason is None and record["group"] == "皮肤" and record["messages"][1]["content"] == "保湿，穿纯棉衣物。"
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["标题", "问题", "回复", "科室"])
    sheet.append(["高烧", "孩子发烧39度", "先退热，观察精神。", "儿科"])
    sheet.append([None, None, None, None])
    sheet.append(["数字答案", "一天喝几次奶？", 8, "新生儿科"])
    workbook.save(tmp_path / "qa.xlsx")
    items = _items(tmp_path / "qa.xlsx")
    assert [r["messages"][1]["content"] for _, r, _ in items] == ["先退热，观察精神。", "8"]
    assert items[0][1]["messages"][0]["content"] == "高烧\n孩子发烧39度" and items[1][1]["group"] == "新生儿科"


def test_explicit_columns_for_csv_and_json(tmp_path):
    csv_path = tmp_path / "odd.csv"
    csv_path.write_text("q_text,a_text,dept\n孩子腹泻,口服补液,消化\n", encoding="utf-8")
    with pytest.raises(InputError, match="--columns"):
        list(read_path(csv_path))
    layout = parse_columns("instruction=q_text, output=a_text, department=dept")
    (_, record, reason), = _items(csv_path, layout=layout)
    assert reason is None and record["group"] == "消化" and record["messages"][0]["content"] == "孩子腹泻"
    json_path = _jsonl(tmp_path / "odd.jsonl", [{"q_text": "孩子便秘", "a_text": "多吃蔬菜"}])
    (_, record, reason), = _items(json_path, layout=layout)
    assert reason is None and record["messages"][1]["content"] == "多吃蔬菜"
    with pytest.raises(ValueError, match="unknown role"):
        parse_columns("questionz=ask")
    with pytest.raises(InputError, match="not among the columns"):
        list(read_path(csv_path, layout=parse_columns("instruction=nope,output=a_text")))


def test_json_objects_with_unknown_keys_are_read_by_meaning(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"ask": "孩子咳嗽", "answer": "观察呼吸", "department": "儿科"},
                                          {"问题": "孩子发烧", "回答": "多喝水"}, {"foo": 1, "bar": 2}])
    items = _items(path)
    assert [r and r["messages"][1]["content"] for _, r, _ in items[:2]] == ["观察呼吸", "多喝水"]
    assert items[2][2].startswith("unrecognised layout") and "keys: foo, bar" in items[2][2]


def test_inspect_shows_columns_roles_and_first_records(tmp_path):
    path = tmp_path / "consult.csv"
    path.write_bytes(CONSULTATION.encode("gb18030"))
    shown = inspect(path)
    assert shown["columns"] == ["department", "title", "ask", "answer"]
    assert shown["roles"] == "title <- title, question <- ask, answer <- answer, group <- department"
    assert len(shown["first"]) == 2 and shown["first"][0]["group"] == "儿科"


def test_cli_takes_several_inputs_and_fails_on_a_file_with_nothing_kept(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"instruction": "孩子发烧", "output": "多喝水"}])
    good2 = _jsonl(tmp_path / "good2.jsonl", [{"instruction": "孩子咳嗽", "output": "观察呼吸"}])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"instruction": "孩子腹泻", "output": ""}])
    ok = _prep_cli("--input", good, good2, "--input", good, "--out", tmp_path / "o1")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text(encoding="utf-8"))
    assert summary["kept"] == 2 and summary["rejected"] == 1  # the repeated file's record is a duplicate
    failed = _prep_cli("--input", good, bad, "--out", tmp_path / "o2")
    assert failed.returncode == 1 and "no record of" in failed.stderr and "empty answer" in failed.stderr
    assert _prep_cli("--input", good, bad, "--out", tmp_path / "o3", "--allow-empty").returncode == 0
    shown = _prep_cli("--inspect", good)
    assert shown.returncode == 0 and "instruction" in shown.stdout


# ----- one bad record never stops a run -------------------------------------------------------------

BROKEN = [
    ("lone surrogate", '{"instruction": "孩子\\ud800发烧", "output": "多喝水"}', "lone surrogate"),
    ("surrogate in a key", '{"\\udc00": "x", "instruction": "问", "output": "答"}', None),
    ("NUL byte", '{"instruction": "孩子\\u0000发烧", "output": "多喝水"}', "NUL byte"),
    ("a list, not an object", '["孩子发烧", "多喝水"]', "record is not a JSON object"),
    ("a number", "42", "record is not a JSON object"),
    ("instruction a number", '{"instruction": 5, "output": "答"}', "field 'instruction' is not a string"),
    ("output an object", '{"instruction": "问", "output": {"a": 1}}', "field 'output' is not a string"),
    ("conversations a string", '{"conversations": "问答"}', "unrecognised layout"),
    ("turn a string", '{"conversations": ["问", "答"]}', "conversation turn lacks"),
    ("turn content a list", '{"conversations": [{"from": "human", "value": ["问"]}, {"from": "gpt", "value": "答"}]}',
     "field 'value' is not a string"),
    ("role null", '{"messages": [{"role": null, "content": "问"}]}', "unknown role"),
    ("history not a list", '{"instruction": "问", "output": "答", "history": "x"}', "field 'history' is not a list"),
    ("history pair of numbers", '{"instruction": "问", "output": "答", "history": [[1, 2]]}', "not a string"),
    ("chosen a number", '{"instruction": "问", "chosen": 1, "rejected": "差"}', "field 'chosen' is not a string"),
    ("deep nesting", '{"instruction": ' + "[" * 100000 + "]" * 100000 + "}", "bad JSON"),
]


def test_every_broken_record_is_a_reject_with_its_reason_and_the_run_goes_on(tmp_path):
    path = tmp_path / "broken.jsonl"
    good = '{"instruction": "孩子发烧怎么办", "output": "多喝水，观察精神。"}'
    path.write_text("\n".join([good] + [line for _, line, _ in BROKEN] +
                              ['{"instruction": "孩子咳嗽怎么办", "output": "观察呼吸。"}']) + "\n", encoding="utf-8")
    summary = prep([path], tmp_path / "out", near_duplicate_threshold=1.0)
    assert (tmp_path / "out" / "summary.json").exists()
    rejects = {r["where"]: r["reason"] for r in map(json.loads, open(tmp_path / "out" / "rejects.jsonl", encoding="utf-8"))}
    for number, (name, _, expected) in enumerate(BROKEN, 2):
        if expected is None:
            continue
        assert expected in rejects.get(f"line {number}", ""), (name, rejects.get(f"line {number}"))
    # the key with a surrogate is an unknown key: its record is kept
    assert summary["kept"] == 3 and summary["rejected"] == sum(1 for *_, e in BROKEN if e)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".txt", "dataset_info"])
def test_a_utf8_bom_is_dropped_in_every_text_format(tmp_path, suffix):
    bom = "\ufeff"
    if suffix == ".jsonl":
        path, body = tmp_path / "a.jsonl", '{"instruction": "问", "output": "答"}\n'
    elif suffix == ".json":
        path, body = tmp_path / "a.json", '[{"instruction": "问", "output": "答"}]'
    elif suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        path, body = tmp_path / f"a{suffix}", f"question{sep}answer\n问{sep}答\n"
    elif suffix == ".txt":
        path, body = tmp_path / "a.txt", "第一段。\n第二段。\n"
    else:
        _jsonl(tmp_path / "d.jsonl", [{"instruction": "问", "output": "答"}])
        path, body = tmp_path / "dataset_info.json", '{"d": {"file_name": "d.jsonl"}}'
    path.write_text(bom + body, encoding="utf-8")
    items = _items(path)
    assert items and all(reason is None for _, _, reason in items)
    first = items[0][1]
    assert bom not in json.dumps(first, ensure_ascii=False)
    assert (first["text"] or first["messages"][0]["content"]) in ("问", "第一段。")
