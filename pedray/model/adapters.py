"""Parameter-efficient adapters for the mouse stage: attach to a frozen base, save in their own files."""

from __future__ import annotations

from pathlib import Path

import torch

from pedray.config.schema import LoraConfig
from pedray.model.build import find_lora_targets


def attach_adapters(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """Freeze the base model and wrap its target linear layers with LoRA (PEFT)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora.target_modules or find_lora_targets(model)
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def save_adapters(model: torch.nn.Module, state: dict[str, torch.Tensor], out: Path) -> None:
    """Write the adapter weights and config (PEFT layout: adapter_model.safetensors + adapter_config.json)."""
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
