"""`pedray plan`: parameter counts of a recipe's model and DeepSpeed's memory estimate for its scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pedray.config import load_recipe
from pedray.train.engine import memory_estimate


def count_parameters(architecture: str | Path, trust_remote_code: bool = False) -> tuple[int, int]:
    """(total parameters, parameters of the largest single module) from a config.json, on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(architecture, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def plan(config: str | None, overrides: list[str], architecture: str | None, gpus_per_node: int) -> dict[str, Any]:
    recipe = load_recipe(config, overrides)
    source = architecture or recipe.model.path
    if not source or not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(f"no config.json under {source!r}: pass --architecture DIR (jobs/architectures/...) "
                                "or set model.path to a local model")
    total, largest = count_parameters(source, recipe.model.trust_remote_code)
    workers = max(recipe.scaling.num_workers, 1)
    per_node = min(gpus_per_node, workers) if recipe.scaling.use_gpu else 1
    nodes = max(1, workers // per_node)
    return {"architecture": str(source), "parameters": total, "largest_layer_parameters": largest,
            "zero_stage": recipe.scaling.zero_stage, "gpus_per_node": per_node, "nodes": nodes,
            "deepspeed_estimate": memory_estimate(total, largest, recipe.scaling.zero_stage, per_node, nodes)}
