"""Routing statistics of a MoUSE model: mean gate weight and gate entropy per layer and per task, and a heatmap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from pedray.plots import saved_figure


class RoutingStats:
    """Running sums of the gates a model produced, by layer and by the task label of each token."""

    def __init__(self, layers: Sequence[str], tasks: Sequence[str], experts: int) -> None:
        self.layers, self.tasks, self.experts = list(layers), list(tasks), experts
        self.gate_sums = torch.zeros(len(layers), len(tasks), experts, dtype=torch.float64)
        self.entropy_sums = torch.zeros(len(layers), len(tasks), dtype=torch.float64)
        self.tokens = torch.zeros(len(tasks), dtype=torch.float64)

    def add(self, gates: Sequence[torch.Tensor], task_ids: torch.Tensor) -> None:
        """Count one forward pass: `gates` [B, L, T] per layer, `task_ids` [B, L] (-1 = padding, ignored)."""
        if not gates:
            return
        ids = task_ids.reshape(-1).to("cpu")
        keep = ids >= 0
        ids = ids[keep]
        stacked = torch.stack([g.detach().reshape(-1, self.experts) for g in gates]).to("cpu", torch.float64)
        stacked = stacked[:, keep]                                           # [layers, N, T]
        entropy = -(stacked * stacked.clamp_min(1e-12).log()).sum(-1)        # [layers, N]
        self.gate_sums.index_add_(1, ids, stacked)
        self.entropy_sums.index_add_(1, ids, entropy)
        self.tokens.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))

    def reduce(self) -> None:
        """Sum the statistics over every rank (every rank must call)."""
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            for tensor in (self.gate_sums, self.entropy_sums, self.tokens):
                dist.all_reduce(tensor)

    def summary(self) -> dict:
        """Mean gate [layer][task][expert] and entropy [layer][task] (None where a task had no tokens)."""
        count = self.tokens.clamp(min=1)
        mean_gate = self.gate_sums / count.view(1, -1, 1)
        entropy = self.entropy_sums / count.view(1, -1)
        seen = [bool(n > 0) for n in self.tokens]
        return {
            "layers": self.layers, "tasks": self.tasks, "experts": self.experts,
            "tokens": {task: int(n) for task, n in zip(self.tasks, self.tokens)},
            "mean_gate": [[row.tolist() if ok else None for row, ok in zip(layer, seen)] for layer in mean_gate],
            "entropy": [[float(v) if ok else None for v, ok in zip(layer, seen)] for layer in entropy],
            "max_entropy": float(torch.log(torch.tensor(float(self.experts)))),
        }

    def write(self, folder: str | Path) -> dict[str, Path]:
        """routing.json and routing.png (one heatmap of layer x expert mean gate per task seen)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        (folder / "routing.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1))
        paths = {"json": folder / "routing.json"}
        seen = [i for i, n in enumerate(self.tokens) if n > 0]
        if seen:
            paths["png"] = heatmap(summary, seen, folder / "routing.png")
        return paths


def heatmap(summary: dict, tasks: list[int], out: Path) -> Path:
    """Draw the mean gate weight per layer (rows) and expert (columns), one panel per task."""
    layers = summary["layers"]
    height = max(3.0, 0.18 * len(layers) + 1.5)
    with saved_figure(out, dpi=110, tight=False, nrows=1, ncols=len(tasks),
                      figsize=(2.2 * len(tasks) + 2.5, height), squeeze=False) as (figure, axes):
        _draw_heatmap(figure, axes, summary, tasks, layers)
    return out


def _draw_heatmap(figure, axes, summary: dict, tasks: list[int], layers: list) -> None:
    for axis, task in zip(axes[0], tasks):
        grid = [layer[task] for layer in summary["mean_gate"]]
        image = axis.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
        entropy = sum(layer[task] for layer in summary["entropy"]) / len(layers)
        axis.set_title(f"{summary['tasks'][task]}\nH={entropy:.2f}/{summary['max_entropy']:.2f}", fontsize=8)
        axis.set_xticks(range(summary["experts"]), [f"E{j + 1}" for j in range(summary["experts"])], fontsize=7)
        axis.set_yticks(range(len(layers)), layers if axis is axes[0][0] else [""] * len(layers), fontsize=5)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mean gate weight")
    figure.suptitle("MoUSE routing: mean gate per layer and specific expert", fontsize=9)
