"""Builds the embedded default model, loads any local Hugging Face model, and finds LoRA targets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pedray.cache import build_once, cache_root
from pedray.corpus import corpus_version
from pedray.corpus.generate import instructions, preferences, pretraining_text
from pedray.model.tokenizer import train_tokenizer
from pedray.storage import local_copy

# Llama architecture: AutoTokenizer keeps a locally trained tokenizer with it (qwen2 would swap the class).
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=2500, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    # The demo's model: at a laptop's budget (about a million training tokens in 15 minutes on 2 AVX2
    # cores) a 5M model that sees the corpus several times answers better than a 23M one that sees it once.
    "mini": dict(vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4),
    "small": dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=8),
}


def corpus_texts(seed: int = 0, count: int = 6000) -> list[str]:
    """Every piece of text in the embedded corpus, for training the tokenizer."""
    texts = [r["text"] for r in pretraining_text(seed)]
    for record in instructions(seed, count) + preferences(seed, count // 6):
        texts.append(record["system"])
        texts.extend(m["content"] for m in record["messages"])
        texts.extend(r for r in (record["chosen"], record["rejected"]) if r)
    return texts


def init_model(size: str, out: str | Path, seed: int = 0, max_positions: int = 4096) -> Path:
    """Train the tokenizer, build a Llama-architecture causal LM from a config and save both.

    Returns the output folder, loadable offline by AutoTokenizer / AutoModelForCausalLM.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; allowed: {sorted(MODEL_SIZES)}")
    out = Path(out)
    shape = dict(MODEL_SIZES[size])
    tokenizer = train_tokenizer(corpus_texts(seed), vocab_size=shape.pop("vocab_size"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        rope_theta=10000.0, **shape,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"size": size, "seed": seed, "parameters": sum(p.numel() for p in model.parameters())}
    (out / "pedray_model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out


def default_model_dir(size: str, seed: int = 0, cache: str | Path | None = None) -> Path:
    """The embedded default model of `size`, built once into the cache folder and reused."""
    # the tokenizer is trained on the corpus: a changed generator, tokenizer or model shape makes a new default model
    builder = hashlib.sha256(b"".join(Path(__file__).with_name(name).read_bytes()
                                      for name in ("build.py", "tokenizer.py"))).hexdigest()[:6]
    folder = Path(cache or cache_root()) / f"default-{size}-seed{seed}-{corpus_version()}{builder}"
    return build_once(folder, lambda out: init_model(size, out, seed=seed), "pedray_model.json")


def check_model_dir(path: str | Path) -> Path:
    """The model's local folder (for a URI, this node's cached copy of it); an error unless it is one."""
    path = local_copy(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json); "
                                "build one with `python -m pedray init-model --out DIR`")
    return path


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(check_model_dir(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               attn_implementation: str = "sdpa"):
    """Load a causal LM from a local folder (never a hub download)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        check_model_dir(path), dtype=dtype, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation, local_files_only=True,
    )


def find_lora_targets(model: torch.nn.Module) -> list[str]:
    """Names (last component) of the Linear layers inside transformer blocks: attention and MLP projections.

    The output head and embeddings are left out; works for Llama, Qwen2 and Baichuan2 (`W_pack`).
    """
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in full_name and "layers" in full_name:
            names.add(full_name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("no Linear layers found inside transformer blocks; set lora.target_modules")
    return sorted(names)
