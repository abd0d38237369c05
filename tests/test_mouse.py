"""The MoUSE layer: golden value, equivalence with PEFT LoRA, gradients, gating, balance, save/load, merge."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pedray.config.schema import LoraConfig
from pedray.model.mouse import MouseLinear, Routing, attach_mouse
from pedray.model.mouse_io import export_peft, load_mouse, merged_model, save_mouse


def _model(tiny_model_dir, **lora):
    from pedray.model.build import load_model

    return attach_mouse(load_model(tiny_model_dir), LoraConfig(**lora))


def _randomise(model, std=0.2, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.adapter_state().values():
            parameter.normal_(std=std)
    return model


IDS = torch.tensor([[5, 17, 230, 99, 1000, 4, 77, 12], [300, 2, 9, 9, 41, 600, 8, 1]])


def test_layer_golden_value():
    """W0 = [1, 1], x = [1, 2], s = alpha / r = 1, task gate logits [0, ln 3] -> g = [1/4, 3/4]:
    W0 x = 3; universal B_u A_u x = 2 * (1) = 2; E1 = 1 * (2) = 2; E2 = 4 * (1 + 2) = 12;
    h = 3 + 2 + 0.25 * 2 + 0.75 * 12 = 14.5."""
    base = torch.nn.Linear(2, 1, bias=False)
    routing = Routing()
    layer = MouseLinear(base, LoraConfig(rank=1, alpha=1.0, num_experts=2, gating="task"), routing, num_tasks=1)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.lora_A.copy_(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]))
        layer.lora_B.copy_(torch.tensor([[[2.0], [1.0], [4.0]]]))
        layer.router.copy_(torch.tensor([[0.0, math.log(3.0)]]))
    routing.task_ids = torch.tensor([0])
    layer.eval()
    assert layer(torch.tensor([[[1.0, 2.0]]])).item() == pytest.approx(14.5)
    assert layer.task_gate(0).tolist() == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("gating", ["token", "task"])
def test_zero_b_leaves_the_base_model_unchanged(tiny_model_dir, gating):
    from pedray.model.build import load_model

    reference = load_model(tiny_model_dir)(input_ids=IDS).logits
    model = _model(tiny_model_dir, rank=4, num_experts=3, gating=gating).eval()
    assert torch.equal(model(input_ids=IDS, task_ids=torch.tensor([0, 3])).logits, reference)


def test_one_expert_equals_peft_lora(tiny_model_dir):
    """T = 1 (its softmax gate is 1): MoUSE is W0 + s B_u A_u + s B_1 A_1, a PEFT LoRA of rank 2r whose
    A, B stack the two experts; with B_u = 0 it is a rank-r PEFT LoRA with A_1, B_1."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from pedray.model.build import load_model

    model = _randomise(_model(tiny_model_dir, rank=4, alpha=8.0, num_experts=1)).eval()
    for universal in (True, False):
        if not universal:
            with torch.no_grad():
                for layer in model.layers().values():
                    layer.lora_B[:, 0].zero_()
        rank = 8 if universal else 4
        peft = get_peft_model(load_model(tiny_model_dir), PeftLoraConfig(
            r=rank, lora_alpha=8.0 / 4 * rank, target_modules=model.targets, lora_dropout=0.0)).eval()
        with torch.no_grad():
            for name, layer in model.layers().items():
                wrapped = peft.base_model.model.get_submodule(name)
                experts = slice(0, 2) if universal else slice(1, 2)
                wrapped.lora_A["default"].weight.copy_(layer.lora_A[experts].flatten(0, 1))
                wrapped.lora_B["default"].weight.copy_(layer.lora_B[:, experts].flatten(1))
        torch.testing.assert_close(model(input_ids=IDS).logits, peft(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_gradients_reach_experts_and_routers_not_the_base(tiny_model_dir):
    model = _randomise(_model(tiny_model_dir, rank=4, num_experts=3)).train()
    output = model(input_ids=IDS)
    output.logits.float().pow(2).mean().backward()
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "router", "noise"):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    assert len(output.gates) == len(model.targets)


def test_noise_only_while_training_and_top_k(tiny_model_dir):
    model = _randomise(_model(tiny_model_dir, rank=4, num_experts=4, top_k=2))
    model.eval()
    assert torch.equal(model(input_ids=IDS).logits, model(input_ids=IDS).logits)
    model.train()
    first, second = model(input_ids=IDS), model(input_ids=IDS)
    assert not torch.equal(first.logits, second.logits)
    for gates in first.gates:
        assert ((gates > 0).sum(-1) == 2).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:-1]))


def test_balance_loss_moves_load_toward_uniform():
    """A router skewed to expert 0, trained on the balance loss alone, spreads the mean gate weight
    (the load the soft loss measures) from ~all on expert 0 to about 1/T each."""
    from pedray.losses import load_balance_loss

    torch.manual_seed(0)
    layer = MouseLinear(torch.nn.Linear(16, 16), LoraConfig(rank=2, num_experts=4, noise=False), Routing(), 1)
    with torch.no_grad():
        layer.router.zero_()
        layer.router[0] += 0.5
    x = torch.randn(512, 16) + 1.0
    optimizer = torch.optim.Adam([layer.router], lr=0.01)
    losses, loads = [], []
    for _ in range(100):
        gates = layer.gate(x)
        loss = load_balance_loss(gates)
        losses.append(loss.item())
        loads.append(gates.mean(0).detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loads[0].max() > 0.9 and losses[0] > 3.5
    assert loads[-1].max() < 0.35 and loads[-1].min() > 0.15 and losses[-1] < 1.1


@pytest.mark.parametrize("gating", ["token", "task"])
def test_save_load_round_trip_is_bit_identical(tiny_model_dir, tmp_path, gating):
    model = _randomise(_model(tiny_model_dir, rank=4, num_experts=3, top_k=2, gating=gating)).eval()
    tasks = torch.tensor([1, 4])
    save_mouse(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "mouse_config.json").read_text())
    assert config["base_model"] == str(tiny_model_dir) and config["lora"]["gating"] == gating
    loaded = load_mouse(tmp_path / "adapter")  # the base model found from the recorded path
    assert not loaded.training
    assert torch.equal(loaded(input_ids=IDS, task_ids=tasks).logits, model(input_ids=IDS, task_ids=tasks).logits)


def test_load_rejects_wrong_folders(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no MoUSE adapter"):
        load_mouse(tmp_path)
    save_mouse(_model(tiny_model_dir, rank=4, num_experts=3), tmp_path / "a")
    config = json.loads((tmp_path / "a" / "mouse_config.json").read_text())
    config["lora"]["num_experts"] = 2
    (tmp_path / "a" / "mouse_config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError):
        load_mouse(tmp_path / "a")


def test_task_merge_and_peft_export_match_the_unmerged_model(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pedray.model.build import load_model
    from pedray.model.mouse_io import merge_tasks

    model = _randomise(_model(tiny_model_dir, rank=4, num_experts=3, gating="task")).eval()
    folders = merge_tasks(model, tmp_path / "merged", tasks=["medkqa", "trerecom"])
    for task in ("medkqa", "trerecom"):
        with model.routed(task):
            expected = model(input_ids=IDS).logits
        merged = AutoModelForCausalLM.from_pretrained(folders[task]).eval()
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
        peft = PeftModel.from_pretrained(load_model(tiny_model_dir), export_peft(model, task, tmp_path / task)).eval()
        torch.testing.assert_close(peft(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
    medkqa = merged_model(model, "medkqa")(input_ids=IDS).logits
    assert not torch.allclose(medkqa, merged_model(model, "trerecom")(input_ids=IDS).logits)


def test_token_routing_cannot_be_merged(tiny_model_dir):
    model = _model(tiny_model_dir, rank=4, num_experts=2)
    with pytest.raises(ValueError, match="routes per token"):
        merged_model(model, "medkqa")


def test_routing_statistics_per_layer_and_task(tiny_model_dir, tmp_path):
    """Zero routers (and no noise) give uniform gates: mean gate 1/T and entropy log T everywhere."""
    model = _model(tiny_model_dir, rank=4, num_experts=3, noise=False)
    with torch.no_grad():
        for layer in model.layers().values():
            layer.router.zero_()
    model.train()
    task_ids = torch.tensor([[0] * 5 + [2] * 3, [2] * 6 + [-1] * 2])  # two padding tokens, not counted
    model(input_ids=IDS, task_ids=task_ids)
    summary = model.stats.summary()
    assert summary["tokens"] == {"medkqa": 5, "evidiag": 0, "trerecom": 9, "dialogue": 0, "general": 0}
    assert summary["mean_gate"][0][0] == pytest.approx([1 / 3] * 3)
    assert summary["entropy"][-1][2] == pytest.approx(math.log(3)) and summary["entropy"][0][1] is None
    paths = model.stats.write(tmp_path)
    assert paths["png"].stat().st_size > 1000
