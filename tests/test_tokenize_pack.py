"""Prompt masking, hybrid flattening, packing without cross-document attention."""

import numpy as np
import torch

from pedray.data.columns import IGNORE_INDEX, make_record
from pedray.data.packing import first_fit_decreasing, non_padding_fraction, pack, pad_rows
from pedray.data.tokenize import encode_conversations, encode_preferences, encode_texts, flatten_instruction

CONVERSATION = make_record("sft", "dialogue", "test", "c1", system="系统", messages=[
    {"role": "user", "content": "孩子发烧"}, {"role": "assistant", "content": "多喝水"},
    {"role": "user", "content": "还咳嗽"}, {"role": "assistant", "content": "去医院"}])


def test_only_assistant_turns_carry_loss(tiny_tokenizer):
    (ids, labels), = encode_conversations(tiny_tokenizer, [CONVERSATION], max_len=512)
    learned = tiny_tokenizer.decode(ids[labels != IGNORE_INDEX].tolist())
    assert learned == "多喝水<|im_end|>去医院<|im_end|>"
    assert np.array_equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    (short, short_labels), = encode_conversations(tiny_tokenizer, [CONVERSATION], max_len=10)
    assert len(short) == 10 and np.array_equal(short, ids[:10])


def test_flattened_instruction_is_plain_text():
    assert flatten_instruction(CONVERSATION) == "问：孩子发烧\n答：多喝水\n问：还咳嗽\n答：去医院"


def test_preference_prompt_is_masked_and_left_truncated(tiny_tokenizer):
    pair = make_record("pref", "medkqa", "test", "p1", messages=[{"role": "user", "content": "问" * 50}],
                       chosen="好的回答", rejected="差")
    columns = encode_preferences(tiny_tokenizer, [pair], max_len=64, max_prompt_len=16)
    ids, labels = columns["chosen_input_ids"][0], columns["chosen_labels"][0]
    assert (labels[:16] == IGNORE_INDEX).all() and (labels[16:] != IGNORE_INDEX).all()
    assert tiny_tokenizer.decode(ids[16:].tolist()) == "好的回答<|im_end|>"


def test_first_fit_decreasing_golden():
    # lengths 5,4,3,3,1 into capacity 8: [5,3] [4,3,1]
    assert first_fit_decreasing([3, 5, 1, 4, 3], 8) == [[1, 0], [3, 4, 2]]


def test_pack_masks_boundaries_and_counts_tokens():
    docs = [(np.arange(1, 6, dtype=np.int32), np.arange(1, 6, dtype=np.int32)),
            (np.arange(10, 13, dtype=np.int32), np.arange(10, 13, dtype=np.int32))]
    rows = pack(docs, seq_len=10, pad_id=0)
    assert rows["input_ids"].tolist() == [[1, 2, 3, 4, 5, 10, 11, 12, 0, 0]]
    assert rows["labels"].tolist() == [[-100, 2, 3, 4, 5, -100, 11, 12, -100, -100]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert rows["tokens"].tolist() == [8] and non_padding_fraction(rows) == 0.8
    long = pack([(np.arange(25, dtype=np.int32), np.arange(25, dtype=np.int32))], 10, 0, truncate=False)
    assert long["tokens"].tolist() == [10, 10, 5]
    padded = pad_rows(docs, 10, 0)
    assert padded["input_ids"].shape == (2, 10) and padded["tokens"].tolist() == [5, 3]
    assert "task_ids" not in rows


def test_task_tags_follow_their_documents():
    docs = [(np.arange(1, 6, dtype=np.int32),) * 2, (np.arange(10, 13, dtype=np.int32),) * 2,
            (np.arange(20, 27, dtype=np.int32),) * 2]
    rows = pack(docs, seq_len=10, pad_id=0, tags=[3, 1, 4])
    by_token = {int(t): int(k) for t, k in zip(rows["input_ids"].ravel(), rows["task_ids"].ravel()) if t}
    assert all(by_token[t] == 3 for t in range(1, 6)) and all(by_token[t] == 4 for t in range(20, 27))
    assert (rows["task_ids"][rows["input_ids"] == 0] == -1).all()
    assert pad_rows(docs, 10, 0, tags=[3, 1, 4])["task_ids"][1].tolist() == [1, 1, 1] + [-1] * 7


def test_packed_rows_give_the_same_logits_as_documents_alone(tiny_model_dir, tiny_tokenizer):
    """No attention crosses a document boundary: each packed document's logits equal its own."""
    from pedray.model.build import load_model

    model = load_model(tiny_model_dir).eval()
    docs = encode_texts(tiny_tokenizer, ["幼儿急疹的特点是热退疹出。", "手足口病要居家隔离。", "川崎病要查心脏超声。"])
    rows = pack(docs, seq_len=64, pad_id=tiny_tokenizer.pad_token_id)
    assert rows["input_ids"].shape[0] == 1
    with torch.no_grad():
        packed = model(input_ids=torch.tensor(rows["input_ids"]).long(),
                       position_ids=torch.tensor(rows["position_ids"]).long(), use_cache=False).logits[0]
        starts = np.flatnonzero(rows["position_ids"][0] == 0)
        for start, end in zip(starts[:-1], starts[1:]):
            alone = model(input_ids=torch.tensor(rows["input_ids"][:, start:end]).long(), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-5)
