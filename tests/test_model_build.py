"""The embedded default model: tokenizer quality, offline reload, size, chat template, LoRA targets."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pedray.model.build import MODEL_SIZES, corpus_texts, find_lora_targets
from pedray.model.tokenizer import is_cjk


def test_reloads_offline_with_auto_classes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    text = "孩子发烧三天，咳嗽，需要去医院吗？"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == text
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_common_chinese_characters_are_whole_tokens(tiny_tokenizer):
    from collections import Counter

    counts = Counter(ch for text in corpus_texts() for ch in text if is_cjk(ch))
    common = [ch for ch, _ in counts.most_common(800)]
    split = [ch for ch in common if len(tiny_tokenizer.encode(ch, add_special_tokens=False)) != 1]
    assert split == []


def test_an_age_reads_as_the_same_tokens_in_the_question_and_the_answer(tiny_tokenizer):
    # the unit is a token of its own, not merged with what follows it ("个月了", "岁半男童"): the model can
    # copy an age from the question token by token (docs/model-quality.md, wrong age)
    def pieces(text):
        return [tiny_tokenizer.decode([i]) for i in tiny_tokenizer.encode(text, add_special_tokens=False)]

    for question, answer, age in [("我家男童10个月了，这一天吃奶少", "分析：患儿10个月，以吃奶少为主要表现", "10个月"),
                                  ("3岁半男童，两天前开始发热", "分析：患儿3岁半，以发热为主要表现", "3岁半")]:
        run = pieces(age)
        asked, answered = pieces(question), pieces(answer)
        assert any(asked[i:i + len(run)] == run for i in range(len(asked))), asked
        assert any(answered[i:i + len(run)] == run for i in range(len(answered))), answered
    assert tiny_tokenizer.decode(tiny_tokenizer.encode("体温38.5度两天", add_special_tokens=False)) == "体温38.5度两天"


def test_chat_template_has_system_user_assistant_roles(tiny_tokenizer):
    messages = [{"role": "system", "content": "系统"}, {"role": "user", "content": "问"},
                {"role": "assistant", "content": "答"}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>system\n系统<|im_end|>\n<|im_start|>user\n问<|im_end|>\n<|im_start|>assistant\n答<|im_end|>\n"
    prompt = tiny_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.eos_token == "<|im_end|>"


def test_small_size_is_tens_of_millions():
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(MODEL_SIZES["small"])
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, **shape))
    assert 10e6 < sum(p.numel() for p in model.parameters()) < 100e6


def test_lora_targets_found_for_llama_and_qwen2_shapes(tiny_model_dir):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert find_lora_targets(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    assert "q_proj" in find_lora_targets(qwen) and "lm_head" not in find_lora_targets(qwen)
