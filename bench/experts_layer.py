"""MoUSE layer speed: forward+backward of one MoUSE layer (universal + T specific experts, stacked
matmuls) side by side with a single PEFT LoRA layer of the same rank and with a naive Python loop
over the same experts (the same maths, one LoRA module per expert); then the whole `mouse` stage
against the `sft` stage on the same model and data (tokens/s through our training loop).

Layer timings are interleaved round by round (one timing of each variant per round) so drift on a
shared machine hits all three alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common  # noqa: E402  (first: this checkout's pedray, offline; bench/ is the script's folder)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


class NaiveMixture(nn.Module):
    """The MoUSE maths with one LoRA pair per expert and a Python loop over them (the reference style)."""

    def __init__(self, base: nn.Linear, rank: int, experts: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scaling = base, alpha / rank
        self.down = nn.ModuleList(nn.Linear(base.in_features, rank, bias=False) for _ in range(experts + 1))
        self.up = nn.ModuleList(nn.Linear(rank, base.out_features, bias=False) for _ in range(experts + 1))
        self.router = nn.Linear(base.in_features, experts, bias=False)
        self.noise = nn.Linear(base.in_features, experts, bias=False)
        for up in self.up:
            nn.init.normal_(up.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x).float()
        if self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x).float())
        gates = logits.softmax(-1).to(x.dtype)
        out = self.base(x) + self.up[0](self.down[0](x)) * self.scaling
        for j in range(1, len(self.down)):
            out = out + gates[..., j - 1:j] * self.up[j](self.down[j](x)) * self.scaling
        return out


def variants(width: int, rank: int, experts: int) -> dict[str, nn.Module]:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from pedray.config.schema import LoraConfig
    from pedray.model.mouse import MouseLinear, Routing

    def base() -> nn.Module:
        torch.manual_seed(0)
        linear = nn.Linear(width, width, bias=False)
        linear.weight.requires_grad_(False)
        return linear

    holder = nn.Sequential()
    holder.add_module("proj", base())
    peft = get_peft_model(holder, PeftLoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"]))
    mouse = MouseLinear(base(), LoraConfig(rank=rank, alpha=2 * rank, num_experts=experts), Routing(), 1)
    with torch.no_grad():
        mouse.lora_B.normal_(std=0.02)
    return {"peft_lora": peft.train(), "mouse": mouse.train(), "naive_loop": NaiveMixture(base(), rank, experts,
                                                                                         2 * rank).train()}


def time_layers(width: int, tokens: int, rank: int, experts: int, rounds: int, inner: int) -> dict:
    """Median seconds per forward+backward (input gradient included, as inside a network)."""
    layers = variants(width, rank, experts)
    x = torch.randn(1, tokens, width)
    times: dict[str, list[float]] = {name: [] for name in layers}

    def step(layer: nn.Module) -> None:
        inputs = x.clone().requires_grad_(True)
        layer(inputs).float().pow(2).mean().backward()

    for layer in layers.values():
        step(layer)  # warm-up
    for _ in range(rounds):
        for name, layer in layers.items():
            start = time.perf_counter()
            for _ in range(inner):
                step(layer)
            times[name].append((time.perf_counter() - start) / inner)
    out = {name: {"ms": round(statistics.median(ts) * 1e3, 3)} for name, ts in times.items()}
    out["trainable_params"] = {name: sum(p.numel() for p in layer.parameters() if p.requires_grad)
                               for name, layer in layers.items()}
    return out


def stage_speed(model_dir: Path, corpus: Path, out: Path, stage: str, steps: int, experts: int) -> dict:
    """Steady-state tokens/s of one stage through our loop (local mode: one process, DeepSpeed ZeRO-0)."""
    from pedray.config import load_recipe
    from pedray.train.runner import run_stage

    recipe = load_recipe(None, [
        f"output_dir={out}", f"data.corpus_dir={corpus}", f"model.path={model_dir}", "data.seq_len=512",
        "scaling.num_workers=0", "scaling.precision=fp32", "scaling.zero_stage=0", "scaling.micro_batch_size=2",
        "scaling.threads_per_worker=2", f"stages.{stage}.max_steps={steps}", f"stages.{stage}.log_every=1",
        f"stages.{stage}.checkpoint_every={steps * 10}", f"stages.{stage}.eval_rows=0", "lora.rank=8",
        f"lora.num_experts={experts}"])
    manifest = run_stage(recipe, stage, model_dir, out / stage, {"stage": "base", "fingerprint": "bench"})
    history = json.loads(Path(manifest["paths"]["history"]).read_text())
    steady = [h[f"{stage}/tokens_per_s"] for h in history[1:-1]] or [h[f"{stage}/tokens_per_s"] for h in history]
    return {"tokens_per_s": round(statistics.median(steady), 1), "steps": steps, "windows": len(steady)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (under two minutes)")
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rounds, inner, steps = (5, 3, 6) if args.quick else (15, 5, 20)

    shapes = {"small_width512": (512, 1024), "wide_width2048": (2048, 512)}
    results: dict = {"experts": args.experts, "rank": args.rank, "threads": 2, "layer": {}}
    for name, (width, tokens) in shapes.items():
        row = time_layers(width, tokens, args.rank, args.experts, rounds, inner)
        row.update(width=width, tokens=tokens,
                   mouse_vs_peft=round(row["mouse"]["ms"] / row["peft_lora"]["ms"], 3),
                   naive_vs_mouse=round(row["naive_loop"]["ms"] / row["mouse"]["ms"], 3))
        results["layer"][name] = row

    import ray

    from pedray.corpus.generate import write_corpus
    from pedray.model.build import default_model_dir

    work = common.scratch("pedray-bench-experts-")
    write_corpus(work / "corpus", seed=0, count=600, holdout=0.0)
    model_dir = default_model_dir("small")
    from pedray.cluster import loopback_only

    loopback_only()  # a private Ray listens on 127.0.0.1 only
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    results["stage"] = {stage: stage_speed(model_dir, work / "corpus", work / "run", stage, steps, args.experts)
                        for stage in ("sft", "mouse")}
    ray.shutdown()
    results["stage"]["mouse_vs_sft"] = round(results["stage"]["mouse"]["tokens_per_s"]
                                             / results["stage"]["sft"]["tokens_per_s"], 3)

    checks = []
    for name, row in results["layer"].items():
        checks.append({"name": f"{name}_mouse_vs_single_lora", "value": row["mouse_vs_peft"], "target": "<= 1.6",
                       "met": row["mouse_vs_peft"] <= 1.6})
        checks.append({"name": f"{name}_naive_loop_vs_mouse", "value": row["naive_vs_mouse"], "target": ">= 2.0",
                       "met": row["naive_vs_mouse"] >= 2.0})
    print(json.dumps({"bench": "experts_layer", "results": results, "checks": checks}))


if __name__ == "__main__":
    main()
