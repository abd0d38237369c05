"""Ingestion of foreign formats: every layout, every kind of bad record, normalisation and deduplication."""

import json

import pytest

from pedray.ingest.normalize import Deduplicator, normalize_text
from pedray.ingest.prep import prep
from pedray.ingest.readers import InputError, Skipped, read_path


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _records(path, **kw):
    return [(where, record, reason) for _, where, record, reason in read_path(path, **kw)]


def test_alpaca_with_history_and_system(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "孩子发烧", "input": "3岁", "output": "多喝水", "system": "医生",
                                 "history": [["你好", "您好"]]}], ensure_ascii=False), encoding="utf-8")
    (_, record, reason), = _records(path)
    assert reason is None and record["kind"] == "sft" and record["system"] == "医生"
    assert [m["content"] for m in record["messages"]] == ["你好", "您好", "孩子发烧\n3岁", "多喝水"]
    assert record["task"] == "dialogue"  # two user turns


def test_sharegpt_and_openai_messages(tmp_path):
    path = _write(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]},
        {"messages": [{"role": "user", "content": "问2"}, {"role": "assistant", "content": "答2"}]}])
    items = _records(path, task="medkqa")
    assert [r["messages"][-1]["content"] for _, r, _ in items] == ["答", "答2"]
    assert items[0][1]["system"] == "sys" and items[0][1]["task"] == "medkqa"


def test_preference_layouts(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"conversations": [{"from": "human", "value": "问"}], "chosen": "好", "rejected": "差"},
        {"instruction": "问", "output": ["好答", "差答"]}])
    kinds = [(r["kind"], r["chosen"], r["rejected"]) for _, r, _ in _records(path)]
    assert kinds == [("pref", "好", "差"), ("pref", "好答", "差答")]


def test_dataset_info_entries_with_columns_and_tags(tmp_path):
    _write(tmp_path / "chat.jsonl", [{"msgs": [{"role": "user", "text": "问"}, {"role": "bot", "text": "答"}]}])
    _write(tmp_path / "qa.jsonl", [{"q": "问", "a": "答"}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                 "tags": {"role_tag": "role", "content_tag": "text", "user_tag": "user", "assistant_tag": "bot"}},
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a"}},
        "remote": {"hf_hub_url": "someone/data"}}), encoding="utf-8")
    items = _records(tmp_path)  # a folder with dataset_info.json reads through it
    assert [reason for _, _, reason in items][:2] == [None, None]
    assert items[0][0].startswith("chat: line 1")
    assert items[2][0] == "remote" and isinstance(items[2][2], Skipped) and "hf_hub_url=someone/data" in items[2][2]


def test_raw_text_in_both_layouts(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("第一段。\n第二段。\n", encoding="utf-8")
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("第一段\n续行。\n\n第二段。\n\n\n第三段。", encoding="utf-8")
    assert [r["text"] for _, r, _ in _records(lines)] == ["第一段。", "第二段。"]
    assert [r["text"] for _, r, _ in _records(blocks)] == ["第一段\n续行。", "第二段。", "第三段。"]


@pytest.mark.parametrize("encoding", ["utf-8", "gb18030"])
def test_csv_with_detected_encoding(tmp_path, encoding):
    path = tmp_path / "qa.csv"
    path.write_bytes("question,answer\n孩子咳嗽怎么办？,多喝温水，观察呼吸。\n".encode(encoding))
    (_, record, reason), = _records(path)
    assert reason is None and record["messages"][1]["content"] == "多喝温水，观察呼吸。"


def test_bad_records_are_rejected_with_place_and_reason_and_neighbours_kept(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"instruction": "问", "output": "答"}, ensure_ascii=False).encode()
    lines = [good, b"{not json", json.dumps({"output": "no question"}).encode(),
             json.dumps({"instruction": "q", "output": ""}).encode(),
             json.dumps({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}).encode(),
             json.dumps({"conversations": [{"from": "alien", "value": "a"}]}).encode(),
             b'{"instruction": "\xff\xfe", "output": "x"}', good.replace("答".encode(), "答2".encode())]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    summary = prep([path], out)
    assert summary["read"] == 8 and summary["kept"] == 2 and summary["rejected"] == 6
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    reasons = {r["where"]: r["reason"] for r in rejects}
    assert reasons["line 2"].startswith("bad JSON")
    assert reasons["line 3"].startswith("unrecognised layout: no instruction, conversations, messages or text field")
    assert reasons["line 4"] == "empty answer"
    assert reasons["line 5"] == "wrong role order"
    assert reasons["line 6"] == "unknown role 'alien'"
    assert reasons["line 7"] == "undecodable bytes (not UTF-8)"
    assert all(r["file"] == str(path) for r in rejects)
    assert (out / "sft_train.jsonl").read_text(encoding="utf-8").count("\n") == 2


def test_unreadable_files_fail_with_a_message(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_path(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        list(read_path(broken))
    fake = tmp_path / "fake.xlsx"
    fake.write_text("not a workbook")
    with pytest.raises(InputError, match="cannot open as an xlsx workbook"):
        list(read_path(fake))
    with pytest.raises(InputError, match="unsupported file type"):
        list(read_path(tmp_path / "x.parquet" if (tmp_path / "x.parquet").touch() is None else None))


def test_normalisation():
    assert normalize_text("\n\n　孩子ＡＢ１２发烧,怎么办?\r\n\n\n\n多喝水  ") == "孩子AB12发烧，怎么办？\n\n多喝水"
    assert normalize_text("Take 2 tablets, twice a day.") == "Take 2 tablets, twice a day."


def test_exact_and_near_duplicates():
    dedup = Deduplicator(threshold=0.8)
    base = {"messages": [{"role": "user", "content": "孩子发烧三天了，体温三十九度，精神还可以，需要去医院吗？"}]}
    near = {"messages": [{"role": "user", "content": "孩子发烧三天了，体温三十九度，精神还可以，需要去医院吗"}]}
    other = {"messages": [{"role": "user", "content": "宝宝湿疹反复发作，应该怎么护理皮肤？"}]}
    assert dedup.check(base) is None
    assert dedup.check(dict(base)) == "exact duplicate"
    assert dedup.check(near) == "near duplicate"
    assert dedup.check(other) is None
