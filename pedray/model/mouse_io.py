"""MoUSE adapters on disk: save/load (routers included), per-task merge into plain weights, PEFT export.

Layout of an adapter folder:
    mouse_config.json          the LoRA/MoUSE settings, the wrapped layer names, the task list, the base
    mouse_adapter.safetensors  `<layer>.lora_A` [T+1, r, C], `<layer>.lora_B` [O, T+1, r],
                               `<layer>.router`, `<layer>.noise` (expert 0 is the universal expert)
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from pedray.config.loader import build
from pedray.config.schema import LoraConfig
from pedray.model.build import load_model
from pedray.model.mouse import MouseLinear, MouseModel
from pedray.storage import local_copy

CONFIG_FILE = "mouse_config.json"
ADAPTER_FILE = "mouse_adapter.safetensors"
FORMAT = "pedray-mouse/1"


def save_mouse(model: MouseModel, out: str | Path, state: dict[str, torch.Tensor] | None = None,
               base_model: str | None = None) -> Path:
    """Write the adapter. `state`: a full state dict of the model (e.g. gathered from DeepSpeed ranks);
    by default the model's own adapter weights."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = model.adapter_state()
    if state is not None:
        by_suffix = {key.removeprefix("model."): value for key, value in state.items()}
        missing = [key for key in wanted if key not in by_suffix]
        if missing:
            raise KeyError(f"the state dict lacks adapter weights, e.g. {missing[:3]}")
        wanted = {key: by_suffix[key] for key in wanted}
    save_file({k: v.detach().to("cpu").contiguous() for k, v in wanted.items()}, str(out / ADAPTER_FILE),
              metadata={"format": FORMAT})
    config = {"format": FORMAT, "lora": dataclasses.asdict(model.lora), "targets": model.targets,
              "tasks": list(model.tasks),
              "base_model": base_model or getattr(model.config, "_name_or_path", "") or None}
    (out / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return out


def is_adapter(folder: str | Path) -> bool:
    """Whether a local folder holds a MoUSE adapter (else it is a plain model folder)."""
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: str | Path) -> dict:
    """The adapter's JSON config; a clear error when the folder holds no MoUSE adapter."""
    path = local_copy(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no MoUSE adapter ({CONFIG_FILE} missing)")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_mouse(folder: str | Path, base: nn.Module | str | Path | None = None, **load_kwargs) -> MouseModel:
    """Rebuild a MoUSE model from an adapter folder over `base` (a model, a path, or the recorded base).

    Every saved tensor must land on a layer and every layer must be filled; returns the model in eval mode.
    """
    from safetensors.torch import load_file

    folder = local_copy(folder)
    config = read_config(folder)
    if base is None:
        base = config.get("base_model")
        if not base:
            raise ValueError(f"{folder}: no base model recorded; pass one")
    if not isinstance(base, nn.Module):
        base = load_model(base, **load_kwargs)
    lora = build(LoraConfig, config["lora"], str(Path(folder) / CONFIG_FILE))
    model = MouseModel(base, lora, config["targets"], tuple(config["tasks"]))
    saved = load_file(str(Path(folder) / ADAPTER_FILE))
    expected = model.adapter_state()
    if set(saved) != set(expected):
        raise ValueError(f"{folder}: adapter weights do not match the layers "
                         f"(missing {sorted(set(expected) - set(saved))[:3]}, "
                         f"unexpected {sorted(set(saved) - set(expected))[:3]})")
    with torch.no_grad():
        for key, parameter in expected.items():
            parameter.copy_(saved[key])
    return model.eval()


def _task_index(model: MouseModel, task: str | int) -> int:
    if isinstance(task, int):
        return task
    if task not in model.tasks:
        raise ValueError(f"unknown task {task!r}; the adapter knows {list(model.tasks)}")
    return model.tasks.index(task)


def merged_model(model: MouseModel, task: str | int) -> nn.Module:
    """A plain copy of the base model with W0 + s * (B_u A_u + sum_j g_j(task) B_j A_j) in every layer."""
    index = _task_index(model, task)
    plain = copy.deepcopy(model.model)
    with torch.no_grad():
        for name in model.targets:
            layer: MouseLinear = plain.get_submodule(name)
            linear = layer.base
            linear.weight += layer.delta_weight(index).to(linear.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name) if parent_name else plain, child, linear)
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    return plain


def merge_tasks(model: MouseModel, out: str | Path, tokenizer=None, tasks: list[str] | None = None) -> dict[str, Path]:
    """One ordinary model folder per task (`out/<task>`), loadable by any HF/vLLM runtime."""
    folders = {}
    for task in tasks or list(model.tasks):
        folder = Path(out) / task
        merged_model(model, task).save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        folders[task] = folder
    return folders


def export_peft(model: MouseModel, task: str | int, out: str | Path) -> Path:
    """One task's universal+specific mixture as a standard PEFT LoRA adapter of rank (T+1) r (exact).

    PEFT computes scale * B A with scale = lora_alpha / r; stacking the experts' A (each scaled by
    its gate weight) and B gives rank (T+1) r, and lora_alpha = s (T+1) r keeps the scale s.
    """
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import save_file

    index, out = _task_index(model, task), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights, rank = {}, (model.lora.num_experts + 1) * model.lora.rank
    for name, layer in model.layers().items():
        down, up = layer.task_factors(index)
        weights[f"base_model.model.{name}.lora_A.weight"] = down
        weights[f"base_model.model.{name}.lora_B.weight"] = up
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()},
              str(out / "adapter_model.safetensors"))
    config = PeftLoraConfig(r=rank, lora_alpha=model.lora.alpha / model.lora.rank * rank, lora_dropout=0.0,
                            target_modules=list(model.targets), task_type="CAUSAL_LM",
                            base_model_name_or_path=getattr(model.config, "_name_or_path", None))
    config.save_pretrained(str(out))
    return out
