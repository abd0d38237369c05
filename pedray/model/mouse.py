"""MoUSE: a mixture of universal-specific LoRA experts around a frozen model (PediatricsGPT, §3.4).

Every targeted linear layer becomes

    h = W0 x + s * B_u A_u x + s * sum_j g_j(x) B_j A_j x,   s = alpha / rank
    g(x) = softmax(x Wg + eps * softplus(x Wn)),  eps ~ N(0, 1) while training, 0 in eval

The universal expert (index 0) always has weight 1. All experts run as two matmuls: A of every
expert is stacked into one [(T+1) r, C] matrix and B into one [O, (T+1) r] matrix, and the gate
scales each expert's r columns in between, so sum_j g_j B_j A_j x = B_cat (g * A_cat x).

In task gating the router is a table: each task label selects a learned gate distribution, so a
task's mixture is a constant and can be folded into plain weights (`pedray.model.mouse_io`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pedray.config.schema import LoraConfig
from pedray.model.build import find_lora_targets
from pedray.model.routing import RoutingStats
from pedray.vocab import TASKS


class Routing:
    """State shared by the MoUSE layers of one model: the task labels in force and the gates seen."""

    def __init__(self) -> None:
        self.task_ids: torch.Tensor | None = None   # [B, L] per token, [B] per row, or [] for all
        self.record = False
        self.gates: list[torch.Tensor] = []

    def tasks_like(self, x: torch.Tensor) -> torch.Tensor:
        """Task index of every position of `x` ([..., C] -> [...]), padding (-1) mapped to 0."""
        if self.task_ids is None:
            raise ValueError("task gating needs task labels: pass task_ids (or use model.routed(task))")
        ids = self.task_ids.to(x.device)
        if ids.dim() == 1:
            ids = ids.view(-1, *([1] * (x.dim() - 2)))
        return ids.clamp(min=0).expand(x.shape[:-1])


class MouseLinear(nn.Module):
    """A frozen linear layer plus one universal and T specific LoRA experts mixed by a gate."""

    def __init__(self, base: nn.Linear, lora: LoraConfig, routing: Routing, num_tasks: int) -> None:
        super().__init__()
        self.base, self.routing = base, routing
        self.experts, self.rank, self.top_k = lora.num_experts, lora.rank, lora.top_k
        self.gating, self.noisy = lora.gating, lora.noise
        self.scaling = lora.alpha / lora.rank
        self.dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else nn.Identity()
        options = {"dtype": base.weight.dtype, "device": base.weight.device}
        width_in, width_out = base.in_features, base.out_features
        self.lora_A = nn.Parameter(torch.empty(self.experts + 1, self.rank, width_in, **options))
        self.lora_B = nn.Parameter(torch.zeros(width_out, self.experts + 1, self.rank, **options))
        # token gating: Wg, Wn are [T, C] maps of the hidden state; task gating: [tasks, T] tables of logits
        shape = (self.experts, width_in) if self.gating == "token" else (num_tasks, self.experts)
        self.router = nn.Parameter(torch.empty(shape, **options))
        self.noise = nn.Parameter(torch.zeros(shape, **options))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A as PEFT's LoRA (Kaiming uniform, a=sqrt(5)), B zero so training starts at the base model;
        a small random router so experts do not start identical in every token's mixture."""
        for expert in self.lora_A:
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        nn.init.normal_(self.router, std=0.02)
        nn.init.zeros_(self.noise)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights over the specific experts: [..., C] -> [..., T], rows summing to 1."""
        if self.gating == "token":
            logits = F.linear(x, self.router)
            noise_scale = (lambda: F.softplus(F.linear(x, self.noise)))
        else:
            tasks = self.routing.tasks_like(x)
            logits = self.router[tasks]
            noise_scale = (lambda: F.softplus(self.noise[tasks]))
        logits = logits.float()
        if self.training and self.noisy:
            logits = logits + torch.randn_like(logits) * noise_scale().float()
        return self._mix(logits).to(x.dtype)

    def _mix(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the experts, keeping only the top k logits when top_k is set (fp32)."""
        if 0 < self.top_k < self.experts:
            kept = logits.topk(self.top_k, dim=-1).indices
            logits = logits + torch.full_like(logits, float("-inf")).scatter(-1, kept, 0.0)
        return logits.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gate(x)                                             # [B, L, T]
        if self.routing.record:
            self.routing.gates.append(gates)
        weights = torch.cat([gates.new_ones(*gates.shape[:-1], 1), gates], dim=-1)  # universal first
        hidden = F.linear(self.dropout(x), self.lora_A.flatten(0, 1))   # [B, L, (T+1) r]
        hidden = (hidden.unflatten(-1, (self.experts + 1, self.rank)) * weights.unsqueeze(-1)).flatten(-2)
        return self.base(x) + F.linear(hidden, self.lora_B.flatten(1)) * self.scaling

    def task_factors(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's eval-mode mixture as a single low-rank pair (task gating only): A [(T+1) r, C] with
        each expert's rows scaled by its gate weight (universal 1), and B [O, (T+1) r]; the update is s B A."""
        if self.gating != "task":
            raise ValueError("only task gating has a fixed per-task mixture; this adapter routes per token")
        weights = torch.cat([self.router.new_ones(1), self.task_gate(task)])
        return (self.lora_A * weights.view(-1, 1, 1)).flatten(0, 1), self.lora_B.flatten(1)

    def delta_weight(self, task: int) -> torch.Tensor:
        """The update this layer adds for one task in task gating (eval): s * B_cat diag(w) A_cat, [O, C]."""
        down, up = self.task_factors(task)
        return (up @ down) * self.scaling

    def task_gate(self, task: int) -> torch.Tensor:
        """The eval-mode (noise-free) gate of one task under task gating: [T]."""
        return self._mix(self.router[task].float()).to(self.router.dtype)


class MouseModel(nn.Module):
    """A causal LM whose target linear layers carry MoUSE experts; only the experts and routers learn.

    `forward` takes the model's usual arguments plus `task_ids` (per token [B, L], per row [B]).
    In training mode every layer's gates are kept on the output as `gates` (for the balance loss
    and routing statistics).
    """

    def __init__(self, model: nn.Module, lora: LoraConfig, targets: list[str], tasks: tuple[str, ...] = TASKS):
        super().__init__()
        self.model, self.lora, self.tasks = model, lora, tuple(tasks)
        self.routing = Routing()
        self.targets = list(targets)
        self.stats = RoutingStats(self.targets, self.tasks, lora.num_experts)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        modules = dict(model.named_modules())
        missing = [name for name in self.targets if not isinstance(modules.get(name), nn.Linear)]
        if missing:
            raise ValueError(f"MoUSE targets must be linear layers; not found or not linear: {missing[:5]}")
        for name in self.targets:
            parent_name, _, child = name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            setattr(parent, child, MouseLinear(modules[name], lora, self.routing, len(self.tasks)))

    @property
    def config(self):
        return self.model.config

    def get_output_embeddings(self) -> nn.Module | None:
        """The wrapped model's output head (`pedray.model.selective` restricts it to the labelled positions)."""
        return self.model.get_output_embeddings()

    def layers(self) -> dict[str, MouseLinear]:
        """The MoUSE layers by the name of the linear layer they wrap, in forward order."""
        return {name: self.model.get_submodule(name) for name in self.targets}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Expert and router weights keyed `<target>.<lora_A|lora_B|router|noise>` (the saved layout)."""
        return {f"{name}.{key}": value for name, layer in self.layers().items()
                for key, value in layer.named_parameters(recurse=False)}

    def forward(self, *args, task_ids: torch.Tensor | None = None, **kwargs):
        self.routing.gates = []
        self.routing.record = self.training
        previous = self.routing.task_ids
        if task_ids is not None:
            self.routing.task_ids = task_ids
        try:
            output = self.model(*args, **kwargs)
        finally:
            self.routing.task_ids = previous
        output.gates = self.routing.gates
        if self.training and task_ids is not None and task_ids.dim() == 2:
            self.stats.add(output.gates, task_ids)
        self.routing.gates, self.routing.record = [], False
        return output

    @contextmanager
    def routed(self, task: str | int | torch.Tensor) -> Iterator["MouseModel"]:
        """Every forward inside uses this task label (a name, an index or a tensor of per-row indices)."""
        previous = self.routing.task_ids
        if isinstance(task, str):
            task = self.tasks.index(task)
        self.routing.task_ids = torch.as_tensor(task).reshape(-1) if not torch.is_tensor(task) else task
        try:
            yield self
        finally:
            self.routing.task_ids = previous

    def generate(self, *args, task: str | int | None = None, **kwargs):
        """The wrapped model's `generate`; with task gating, the task of the request must be given."""
        if task is None:
            return self.model.generate(*args, **kwargs)
        with self.routed(task):
            return self.model.generate(*args, **kwargs)


def attach_mouse(model: nn.Module, lora: LoraConfig, tasks: tuple[str, ...] = TASKS) -> MouseModel:
    """Freeze `model` and wrap its target linear layers (configured, or found automatically) with MoUSE."""
    suffixes = lora.target_modules or find_lora_targets(model)
    targets = [name for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in suffixes]
    if not targets:
        raise ValueError(f"no linear layer named {suffixes} in the model")
    return MouseModel(model, lora, targets, tasks)
