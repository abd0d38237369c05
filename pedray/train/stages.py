"""Stage specs: what differs between cpt, sft, dfpo and mouse (batch layout, loss, trainable weights, export).

The training loop (`pedray.train.loop`) is the same for every stage; this registry is the only
place that branches on a stage name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pedray.config.schema import Recipe
from pedray.data.columns import IGNORE_INDEX
from pedray.losses import (dfpo_loss, labelled_lm_loss, labelled_sequence_logps, mixture_lm_loss,
                           next_token_targets, unlikelihood_loss)
from pedray.model.mouse import attach_mouse
from pedray.model.mouse_io import save_mouse

Batch = dict[str, torch.Tensor]


def collate_packed(batch: dict[str, np.ndarray], device: torch.device) -> tuple[Batch, int]:
    """Packed rows -> tensors (task_ids too when the rows carry them); also the number of real tokens."""
    # torch.tensor copies: Ray Data hands read-only arrays, which torch.as_tensor would share and warn about
    tensors = {k: torch.tensor(batch[k], dtype=torch.long, device=device)
               for k in ("input_ids", "labels", "position_ids", "task_ids") if k in batch}
    return tensors, int(batch["tokens"].sum())


def _pad(rows, value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return torch.from_numpy(out)


def collate_pairs(batch: dict[str, np.ndarray], device: torch.device, pad_id: int) -> tuple[Batch, int]:
    """Preference pairs -> chosen rows then rejected rows, right-padded to one width (one forward pass).

    Right padding needs no attention mask in a causal model: real tokens never see the pads after them.
    """
    ids = list(batch["chosen_input_ids"]) + list(batch["rejected_input_ids"])
    labels = list(batch["chosen_labels"]) + list(batch["rejected_labels"])
    tensors = {"input_ids": _pad(ids, pad_id).to(device), "labels": _pad(labels, IGNORE_INDEX).to(device),
               "ref_chosen_logps": torch.tensor(batch["ref_chosen_logps"], dtype=torch.float32, device=device),
               "ref_rejected_logps": torch.tensor(batch["ref_rejected_logps"], dtype=torch.float32, device=device)}
    return tensors, sum(len(r) for r in ids)


def lm_loss(forward: Callable, batch: Batch, recipe: Recipe, stage: str) -> tuple[torch.Tensor, dict]:
    """Causal LM loss over labelled tokens (cpt: every token; sft: answers only), with the output head
    run only where a label is taken (`logits_at`: prompt tokens cost no vocabulary projection)."""
    keep, targets = next_token_targets(batch["labels"])
    logits = forward(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                     logits_at=keep).logits
    return labelled_lm_loss(logits, targets, recipe.stage(stage).unlikelihood, keep, batch["position_ids"])


def mouse_loss(forward: Callable, batch: Batch, recipe: Recipe, stage: str) -> tuple[torch.Tensor, dict]:
    """LM loss over answers (the output head only where a label is taken, as in `lm_loss`) plus the
    experts' load-balancing term (gates are kept only while training)."""
    keep, targets = next_token_targets(batch["labels"])
    output = forward(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     task_ids=batch.get("task_ids"), use_cache=False, logits_at=keep)
    mask = batch["task_ids"] >= 0 if "task_ids" in batch else None
    return mixture_lm_loss(output.logits, targets, getattr(output, "gates", []), mask, recipe.lora.balance_coef,
                           recipe.stage(stage).unlikelihood, keep, batch["position_ids"])


def preference_loss(forward: Callable, batch: Batch, recipe: Recipe, stage: str) -> tuple[torch.Tensor, dict]:
    """DFPO on one forward pass over [chosen; rejected] against precomputed reference log-probs, with the
    output head run only at the answers' tokens (as in `lm_loss`)."""
    keep, targets = next_token_targets(batch["labels"])
    logits = forward(input_ids=batch["input_ids"], use_cache=False, logits_at=keep).logits
    logps, lengths = labelled_sequence_logps(logits, targets, keep)
    half = logps.shape[0] // 2
    settings = recipe.stage(stage)
    loss, metrics = dfpo_loss(logps[:half], logps[half:], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                              lengths[:half], beta=settings.beta, mu=settings.mu)
    if settings.unlikelihood <= 0:
        return loss, metrics
    # the following term is SFT on the chosen answers: it gets sft's unlikelihood term too (one answer a row,
    # so positions count from 0 in every row; the chosen rows come first, so their positions are the first
    # rows of the row-major logits)
    chosen = int(keep[:half].sum())
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep[:half])
    penalty, extra = unlikelihood_loss(logits[:chosen], targets[:chosen], keep[:half], positions)
    metrics.update(extra)
    return loss + settings.unlikelihood * penalty, metrics


def full_model(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """Full-parameter training: every weight learns."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def with_experts(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """Parameter-efficient training: freeze the base, wrap its linear layers with MoUSE experts."""
    return attach_mouse(model, recipe.lora)


def export_full(model: torch.nn.Module, state: dict[str, torch.Tensor], out: Path) -> None:
    model.save_pretrained(out, state_dict=state, safe_serialization=True)


def export_experts(model: torch.nn.Module, state: dict[str, torch.Tensor], out: Path) -> None:
    """The MoUSE adapter (routers included) plus its routing statistics (routing.json, routing.png)."""
    save_mouse(model, out, state)
    model.stats.write(out)


def gather_routing(model: torch.nn.Module) -> None:
    model.stats.reduce()


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """How one stage differs: its data, its model preparation, its loss, its export."""

    name: str
    data: str                     # which pipeline: "cpt" | "sft" | "dfpo" (see pedray.workspace.stage_dataset)
    prepare: Callable[[torch.nn.Module, Recipe], torch.nn.Module]
    loss: Callable[[Callable, Batch, Recipe, str], tuple[torch.Tensor, dict[str, Any]]]
    pairs: bool                   # batches are preference pairs (collate_pairs) rather than packed rows
    export: Callable[[torch.nn.Module, dict[str, torch.Tensor], Path], None]
    needs_reference: bool = False  # reference log-probs from the upstream model are added to the data
    gather: Callable[[torch.nn.Module], None] | None = None  # run on every rank before the export
    exports_adapter: bool = False  # saves an adapter over its upstream (which stays the model handed on)
    version: int = 1  # bump when what the stage trains or saves changes: a new fingerprint, no stale resume


STAGE_SPECS: dict[str, StageSpec] = {
    "cpt": StageSpec(name="cpt", data="cpt", prepare=full_model, loss=lm_loss, pairs=False, export=export_full),
    "sft": StageSpec(name="sft", data="sft", prepare=full_model, loss=lm_loss, pairs=False, export=export_full),
    "dfpo": StageSpec(name="dfpo", data="dfpo", prepare=full_model, loss=preference_loss, pairs=True,
                      export=export_full, needs_reference=True),
    "mouse": StageSpec(name="mouse", data="sft", prepare=with_experts, loss=mouse_loss, pairs=False,
                       export=export_experts, gather=gather_routing, exports_adapter=True,
                       version=2),  # 2: MoUSE experts (1 was a plain PEFT LoRA)
}
