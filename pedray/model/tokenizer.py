"""Trains the default byte-level BPE tokenizer on PedCorpus, with whole Chinese characters and a chat template."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

# ChatML: the same layout Qwen uses, so prompts look alike whether the default or a real model serves.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# A number and its unit are pre-tokens of their own ("10个月" -> "10" "个月"), so that an age or a dose
# reads as the same tokens in the question and in the answer. Otherwise BPE merges the unit with whatever
# follows it ("个月了", "岁半男童"), and the model, which learns to copy the number, guesses the unit: the
# demo model called a 7-month-old "7岁" (docs/model-quality.md, wrong age).
QUANTITY = Regex(r"[0-9]+(?:\.[0-9]+)?(?:个月|岁半|岁|天|周|小时|分钟|次|度|公斤|毫升|毫克)")


def is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def _with_characters(texts: Iterable[str], characters: list[str], repeats: int) -> Iterator[str]:
    """The corpus, then each common character alone on a line, so BPE learns it as one token first.

    Byte-level BPE sees a Chinese character as three bytes; repeating the character on its own
    makes its two intra-character merges the most frequent pairs, ahead of cross-character merges.
    """
    yield from texts
    block = "\n".join(characters)
    for _ in range(repeats):
        yield block


def train_tokenizer(texts: list[str], vocab_size: int, min_char_count: int = 2):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer.

    Args:
        texts: training text (the corpus' documents and rendered conversations).
        vocab_size: target vocabulary size including bytes and special tokens.
        min_char_count: CJK characters seen at least this often are guaranteed whole tokens
            (as many as the vocabulary allows, most frequent first).
    """
    from transformers import PreTrainedTokenizerFast

    counts = Counter(ch for text in texts for ch in text if is_cjk(ch))
    room = max(0, (vocab_size - 256 - len(SPECIAL_TOKENS)) * 2 // 3)
    characters = [ch for ch, n in counts.most_common() if n >= min_char_count][:room]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(QUANTITY, behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
    )
    tokenizer.train_from_iterator(_with_characters(texts, characters, repeats=1000), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=IM_END, pad_token=PAD, unk_token=None,
        model_max_length=4096, clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
