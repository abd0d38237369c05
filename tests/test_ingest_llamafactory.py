"""LLaMA-Factory's dataset_info.json formats, each on a small file written by us in its documented layout."""

import json

from pedray.ingest.prep import prep

USER, GPT = {"from": "human"}, {"from": "gpt"}


def _write(path, rows, jsonl=True):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if jsonl else json.dumps(rows, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")


def _kit(tmp_path):
    """A dataset folder with one entry of every kind LLaMA-Factory documents."""
    _write(tmp_path / "alpaca.json", [{"instruction": "孩子发烧怎么办", "input": "两岁", "output": "多喝水，观察精神。"}],
           jsonl=False)
    _write(tmp_path / "sharegpt.json", [{"conversations": [dict(USER, value="孩子咳嗽"), dict(GPT, value="观察呼吸。")],
                                         "system": "你是儿科医生"}], jsonl=False)
    _write(tmp_path / "pref_sharegpt.json", [
        {"conversations": [dict(USER, value=f"问题{i}")], "chosen": dict(GPT, value=f"好的回答{i}"),
         "rejected": dict(GPT, value=f"差的回答{i}")} for i in range(3)], jsonl=False)
    _write(tmp_path / "pref_alpaca.json", [{"instruction": "孩子腹泻", "input": "", "chosen": "口服补液。",
                                            "rejected": "马上用止泻药。"}], jsonl=False)
    _write(tmp_path / "c4.jsonl", [{"text": "儿童发热是常见症状。"}, {"text": "湿疹需要保湿。"}])
    kto = [("孩子发烧怎么办", "多喝水，观察精神。", True), ("孩子发烧怎么办", "马上输液。", False),
           ("孩子便秘怎么办", "灌肠就行。", False), ("孩子咳嗽怎么办", "观察呼吸。", True)]
    _write(tmp_path / "kto.json", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                    "label": label} for q, a, label in kto], jsonl=False)
    _write(tmp_path / "tools.json", [
        {"conversations": [dict(USER, value="查一下体温换算"), {"from": "function_call", "value": '{"name": "c2f"}'},
                           {"from": "observation", "value": "101.3"}, dict(GPT, value="是101.3华氏度。")],
         "tools": '[{"name": "c2f"}]'},
        {"conversations": [dict(USER, value="你好"), dict(GPT, value="您好。")], "tools": '[{"name": "c2f"}]'}],
        jsonl=False)
    _write(tmp_path / "mllm.json", [
        {"messages": [{"role": "user", "content": "<image>这是什么皮疹？"}, {"role": "assistant", "content": "像湿疹。"}],
         "images": ["mllm/1.jpg"]},
        {"messages": [{"role": "user", "content": "这是什么皮疹？"}, {"role": "assistant", "content": "看不到图。"}],
         "images": ["mllm/2.jpg"]}], jsonl=False)
    messages_tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {
        "alpaca": {"file_name": "alpaca.json"},
        "sharegpt": {"file_name": "sharegpt.json", "formatting": "sharegpt",
                     "columns": {"messages": "conversations", "system": "system"}},
        "dpo_sharegpt": {"file_name": "pref_sharegpt.json", "formatting": "sharegpt", "ranking": True,
                         "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "dpo_alpaca": {"file_name": "pref_alpaca.json", "ranking": True,
                       "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
        "kto": {"file_name": "kto.json", "formatting": "sharegpt",
                "columns": {"messages": "messages", "kto_tag": "label"}, "tags": messages_tags},
        "glaive": {"file_name": "tools.json", "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "tools": "tools"}},
        "mllm": {"file_name": "mllm.json", "formatting": "sharegpt",
                 "columns": {"messages": "messages", "images": "images"}, "tags": messages_tags},
        "hub": {"hf_hub_url": "someone/pediatrics"},
        "script": {"script_url": "some_script"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def _run(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "data").mkdir()
    summary = prep([_kit(tmp_path / "data")], out, near_duplicate_threshold=1.0)
    rows = {}
    for name in ("sft_train", "pref_train", "text_train"):
        path = out / f"{name}.jsonl"
        rows[name] = [json.loads(line) for line in open(path, encoding="utf-8")] if path.exists() else []
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    return summary, rows, rejects


def test_every_documented_format(tmp_path):
    summary, rows, rejects = _run(tmp_path)
    by_source = summary["kept_by_source"]
    # sharegpt preference pairs with message-object chosen/rejected, and alpaca ones with strings
    prefs = {r["chosen"]: r for r in rows["pref_train"]}
    assert by_source["pref_sharegpt.json"] == 3 and prefs["好的回答0"]["rejected"] == "差的回答0"
    assert prefs["好的回答0"]["messages"] == [{"role": "user", "content": "问题0"}]
    assert prefs["口服补液。"]["rejected"] == "马上用止泻药。"
    # pretraining text from the prompt column
    assert sorted(r["text"] for r in rows["text_train"]) == ["儿童发热是常见症状。", "湿疹需要保湿。"]
    assert by_source["alpaca.json"] == 1 and by_source["sharegpt.json"] == 1
    assert [r["system"] for r in rows["sft_train"] if r["source"] == "sharegpt.json"] == ["你是儿科医生"]


def test_kto_undesirable_answers_never_become_training_targets(tmp_path):
    summary, rows, rejects = _run(tmp_path)
    targets = [r["messages"][-1]["content"] for r in rows["sft_train"] if r["source"] == "kto.json"]
    assert sorted(targets) == ["多喝水，观察精神。", "观察呼吸。"]
    pair, = [r for r in rows["pref_train"] if r["source"] == "kto.json"]
    assert (pair["chosen"], pair["rejected"]) == ("多喝水，观察精神。", "马上输液。")
    unpaired = [r for r in rejects if r["where"].startswith("kto:")]
    assert len(unpaired) == 1 and "undesirable" in unpaired[0]["reason"]
    everything = json.dumps(rows, ensure_ascii=False)
    assert "灌肠就行" not in everything
    assert "马上输液" not in json.dumps(rows["sft_train"], ensure_ascii=False)


def test_tool_calls_and_multimodal_records_are_rejected_with_the_reason(tmp_path):
    summary, rows, rejects = _run(tmp_path)
    reasons = {r["where"]: r["reason"] for r in rejects}
    assert "tool" in reasons["glaive: item 1"] and "tool" in reasons["glaive: item 2"]
    assert reasons["mllm: item 1"].startswith("multimodal") and reasons["mllm: item 2"].startswith("multimodal")
    assert "glaive" not in json.dumps(summary["kept_by_source"]) and "tools.json" not in summary["kept_by_source"]
    assert "mllm.json" not in summary["kept_by_source"]


def test_hub_entries_are_listed_as_skipped(tmp_path):
    summary, _, _ = _run(tmp_path)
    skipped = {s["entry"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"hub", "script"} and "hf_hub_url=someone/pediatrics" in skipped["hub"]
    assert summary["read"] == 1 + 1 + 3 + 1 + 2 + 4 + 2 + 2
