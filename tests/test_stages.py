"""Stage specs and the DeepSpeed config, without Ray: trainable sets, batch layouts, config golden values."""

import numpy as np
import pytest
import torch

from pedray.config import load_recipe
from pedray.model.selective import selective_forward
from pedray.train.engine import deepspeed_config, process_group
from pedray.train.stages import STAGE_SPECS, collate_packed, collate_pairs
from pedray.vocab import STAGES, TASKS


def test_every_stage_has_a_spec():
    assert set(STAGE_SPECS) == set(STAGES)


def test_deepspeed_config_golden():
    recipe = load_recipe(None, ["scaling.zero_stage=2", "scaling.micro_batch_size=3", "scaling.grad_accum=4",
                                "scaling.precision=bf16", "scaling.offload_optimizer=true", "optim.lr=0.01",
                                "optim.warmup_ratio=0.1", "stages.sft.max_steps=50", "stages.sft.lr=0.002"])
    config = deepspeed_config(recipe.scaling, recipe.optim, recipe.stage("sft"), world_size=2)
    assert config["train_batch_size"] == 3 * 4 * 2
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}}
    assert config["bf16"] == {"enabled": True}
    assert config["optimizer"]["params"]["lr"] == 0.002  # the stage's lr wins over optim.lr
    assert config["optimizer"]["params"]["fused"] is True
    assert config["scheduler"]["params"]["warmup_num_steps"] == 5
    assert config["scheduler"]["params"]["total_num_steps"] == 50


def _step(model, batch, spec, recipe, stage):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss, _ = spec.loss(selective_forward(model, model), batch, recipe, stage)
    loss.backward()
    optimizer.step()
    return {n: not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()}


def _packed_batch(tokenizer):
    from pedray.corpus.generate import instructions
    from pedray.data.packing import pack
    from pedray.data.tokenize import encode_conversations

    records = instructions(0, 8)
    rows = pack(encode_conversations(tokenizer, records, 256), 256, tokenizer.pad_token_id,
                tags=[TASKS.index(r["task"]) for r in records])
    return collate_packed(rows, torch.device("cpu"))[0]


def test_full_stages_change_every_weight(tiny_model_dir, tiny_tokenizer):
    from pedray.model.build import load_model

    recipe = load_recipe(None)
    model = STAGE_SPECS["sft"].prepare(load_model(tiny_model_dir), recipe)
    changed = _step(model, _packed_batch(tiny_tokenizer), STAGE_SPECS["sft"], recipe, "sft")
    assert all(changed.values()), [n for n, c in changed.items() if not c]


@pytest.mark.parametrize("gating", ["token", "task"])
def test_mouse_changes_experts_and_routers_and_nothing_else(tiny_model_dir, tiny_tokenizer, gating):
    from pedray.model.build import load_model

    recipe = load_recipe(None, ["lora.rank=4", f"lora.gating={gating}", "lora.balance_coef=0.01"])
    model = STAGE_SPECS["mouse"].prepare(load_model(tiny_model_dir), recipe)
    batch = _packed_batch(tiny_tokenizer)
    _step(model, batch, STAGE_SPECS["mouse"], recipe, "mouse")  # B leaves zero on the first step
    changed = _step(model, batch, STAGE_SPECS["mouse"], recipe, "mouse")
    adapters = {n for n in changed if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "router", "noise")}
    assert len(adapters) == 4 * 14 and all(changed[n] for n in adapters), [n for n in adapters if not changed[n]]
    assert not any(changed[n] for n in changed if n not in adapters)
    assert model.stats.tokens.sum() > 0  # routing statistics were counted while training


def test_mouse_loss_runs_the_head_only_at_labelled_positions_for_the_same_value(tiny_model_dir, tiny_tokenizer):
    from pedray.losses import causal_lm_loss
    from pedray.model.build import load_model

    recipe = load_recipe(None, ["lora.rank=4"])
    model = STAGE_SPECS["mouse"].prepare(load_model(tiny_model_dir), recipe).eval()
    batch = _packed_batch(tiny_tokenizer)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(out.shape))
    loss, _ = STAGE_SPECS["mouse"].loss(selective_forward(model, model), batch, recipe, "mouse")
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(labelled, model.config.vocab_size)]  # not [B, T, V]
    full = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], task_ids=batch["task_ids"],
                 use_cache=False).logits
    torch.testing.assert_close(loss, causal_lm_loss(full, batch["labels"])[0])


def test_dfpo_loss_runs_the_head_only_at_answer_tokens_for_the_same_value(tiny_model_dir, tiny_tokenizer):
    """The preference loss (DPO term, following NLL and the chosen answers' unlikelihood term) from logits at
    the answers' tokens only equals the same loss computed from the full [B, T, V] logits."""
    from pedray.corpus.generate import preferences
    from pedray.data.tokenize import encode_preferences
    from pedray.losses import dfpo_loss, next_token_targets, sequence_logps, unlikelihood_loss
    from pedray.model.build import load_model

    recipe = load_recipe(None, ["stages.dfpo.unlikelihood=2.0", "stages.dfpo.mu=5.0"])
    model = load_model(tiny_model_dir).eval()
    columns = encode_preferences(tiny_tokenizer, preferences(0, 4), 256, 192)
    rows = {key: np.array(column + [None], dtype=object)[:-1] for key, column in columns.items()}  # ragged rows
    half = len(rows["chosen_input_ids"])
    rows.update(ref_chosen_logps=np.linspace(-40.0, -20.0, half), ref_rejected_logps=np.linspace(-45.0, -22.0, half))
    batch, _ = collate_pairs(rows, torch.device("cpu"), tiny_tokenizer.pad_token_id)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(out.shape))
    loss, metrics = STAGE_SPECS["dfpo"].loss(selective_forward(model, model), batch, recipe, "dfpo")
    assert seen == [(int((batch["labels"][:, 1:] != -100).sum()), model.config.vocab_size)]  # not [B, T, V]

    full = model(input_ids=batch["input_ids"], use_cache=False).logits  # the computation before the change
    logps, lengths = sequence_logps(full, batch["labels"])
    expected, _ = dfpo_loss(logps[:half], logps[half:], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                            lengths[:half], beta=recipe.stage("dfpo").beta, mu=5.0)
    keep, targets = next_token_targets(batch["labels"][:half])
    positions = torch.arange(keep.shape[1]).expand_as(keep)
    penalty, _ = unlikelihood_loss(full[:half][keep], targets, keep, positions)
    torch.testing.assert_close(loss, expected + 2.0 * penalty)
    assert penalty > 0


def test_pairs_collate_chosen_then_rejected_right_padded():
    batch = {"chosen_input_ids": np.array([np.array([1, 2, 3]), np.array([4, 5])], dtype=object),
             "chosen_labels": np.array([np.array([-100, 2, 3]), np.array([-100, 5])], dtype=object),
             "rejected_input_ids": np.array([np.array([1, 9]), np.array([4, 8, 7, 6])], dtype=object),
             "rejected_labels": np.array([np.array([-100, 9]), np.array([-100, 8, 7, 6])], dtype=object),
             "ref_chosen_logps": np.array([-1.0, -2.0]), "ref_rejected_logps": np.array([-3.0, -4.0])}
    tensors, tokens = collate_pairs(batch, torch.device("cpu"), pad_id=0)
    assert tensors["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [1, 9, 0, 0], [4, 8, 7, 6]]
    assert tensors["labels"][1].tolist() == [-100, 5, -100, -100]
    assert tokens == 11


def test_upstream_for_is_the_last_enabled_completed_stage_that_hands_a_model_on(tmp_path):
    """The one rule the chain and `pedray tune` use: a stage starts from the export of the last enabled,
    completed stage before it; mouse (an adapter) hands nothing on; nothing completed means the base."""
    import json

    from pedray.train.chain import upstream_for

    def complete(stage: str) -> None:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "manifest.json").write_text(json.dumps(
            {"status": "complete", "fingerprint": f"fp-{stage}", "paths": {"model": str(tmp_path / stage / "model")}}))

    recipe = load_recipe(None, [f"output_dir={tmp_path}"])
    assert upstream_for(recipe, "sft", base="BASE") == ("BASE", {"stage": "base", "path": "BASE",
                                                                 "fingerprint": "base:BASE"})
    complete("cpt")
    complete("sft")
    model, info = upstream_for(recipe, "mouse", base="BASE")
    assert str(model) == str(tmp_path / "sft" / "model") and info["stage"] == "sft" and info["fingerprint"] == "fp-sft"
    assert upstream_for(recipe, "sft", base="BASE")[1]["stage"] == "cpt"   # only stages before it count
    complete("mouse")
    assert upstream_for(recipe, "mouse", base="BASE")[1]["stage"] == "sft"
    disabled = load_recipe(None, [f"output_dir={tmp_path}", "stages.sft.enabled=false"])
    assert upstream_for(disabled, "dfpo", base="BASE")[1]["stage"] == "cpt"  # a disabled stage hands nothing on


def test_progress_window_reports_the_share_of_time_spent_waiting_for_data():
    """`data_wait` in every logged step: the share of the window the training thread waited for its next
    micro-batch (0 when the Ray Data stream keeps up; docs/ray-fixed-cost.md)."""
    import time

    from pedray.train.loop import _Window

    window = _Window()
    window.add({"loss": 2.0}, tokens=100)
    window.add({"loss": 4.0}, tokens=300)
    window.started = time.perf_counter() - 4.0  # a 4-second window, a quarter of it spent waiting
    window.waited = 1.0
    out, due = window.reduce(due=True)
    assert out["loss"] == 3.0 and due
    assert 0.2 < out["data_wait"] <= 0.25 and 0 < out["tokens_per_s"] <= 100


def test_a_cpu_process_group_builds_no_shared_memory_reduce():
    """DeepSpeed's CPU backend would compile its shared-memory all-reduce (57 s in a fresh clone), used only
    for tensor-parallel inference: pedray's training never loads it."""
    import deepspeed.comm.comm as ds_comm

    with process_group(use_gpu=False):
        assert ds_comm.cdb is not None and ds_comm.cdb.shm_comm_op is None


def _deepspeed_steps(model_dir, overrides: list[str], reduce: bool | None = None) -> list[torch.Tensor]:
    """The weights after three steps of pedray's Engine on the tiny model (`reduce`: force DeepSpeed's
    gradient all-reduce on or off; None leaves the Engine's choice)."""
    from pedray.model.build import load_model
    from pedray.train.engine import Engine

    recipe = load_recipe(None, ["scaling.micro_batch_size=2"] + overrides)
    torch.manual_seed(0)
    model = load_model(model_dir)
    with process_group(use_gpu=False):
        engine = Engine(model, deepspeed_config(recipe.scaling, recipe.optim, recipe.stage("sft"), 1))
        assert isinstance(engine.engine.basic_optimizer, torch.optim.AdamW)
        assert engine.engine.basic_optimizer.defaults["fused"] is recipe.optim.fused
        if reduce is not None:
            engine.engine.enable_backward_allreduce = reduce
        before = [p.detach().clone() for p in model.parameters()]
        ids = torch.randint(0, model.config.vocab_size, (2, 16))
        for _ in range(3):  # warm-up from 0: the first two steps run at learning rate 0
            engine.backward_and_step(engine.forward(input_ids=ids, labels=ids).loss)
    after = [p.detach().float().clone() for p in model.parameters()]
    assert any(not torch.equal(b.float(), a) for b, a in zip(before, after))
    return after


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deepspeed_uses_the_fused_adamw_the_recipe_asks_for_with_the_same_update(tiny_model_dir, precision):
    """`optim.fused` reaches the torch.optim.AdamW DeepSpeed builds (its `torch_adam`); fused and per-tensor
    AdamW leave the same weights after three steps (bf16: to one bf16 rounding step)."""
    fused = _deepspeed_steps(tiny_model_dir, [f"scaling.precision={precision}", "optim.fused=true"])
    loop = _deepspeed_steps(tiny_model_dir, [f"scaling.precision={precision}", "optim.fused=false"])
    tol = 1e-6 if precision == "fp32" else 2 ** -7
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_one_rank_without_zero_skips_the_gradient_all_reduce_with_the_same_weights(tiny_model_dir):
    """With one data-parallel rank and no ZeRO the Engine turns DeepSpeed's all-reduce pass off (it would
    flatten, reduce with itself and copy back every gradient); the weights are bit for bit those with it."""
    import deepspeed

    from pedray.model.build import load_model
    from pedray.train.engine import Engine

    with process_group(use_gpu=False):
        for zero, expected in ((0, False), (2, True)):  # ZeRO-2 moves gradients into its partitions there
            recipe = load_recipe(None, [f"scaling.zero_stage={zero}", "scaling.micro_batch_size=2"])
            engine = Engine(load_model(tiny_model_dir), deepspeed_config(recipe.scaling, recipe.optim,
                                                                         recipe.stage("sft"), 1))
            assert isinstance(engine.engine, deepspeed.DeepSpeedEngine)
            assert engine.engine.enable_backward_allreduce is expected, zero
    skipped = _deepspeed_steps(tiny_model_dir, ["scaling.precision=fp32"])
    reduced = _deepspeed_steps(tiny_model_dir, ["scaling.precision=fp32"], reduce=True)
    assert all(torch.equal(a, b) for a, b in zip(skipped, reduced))
