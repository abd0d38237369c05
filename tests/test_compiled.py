"""`scaling.compile`: when a worker compiles its decoder layers, and that the compiled model trains as the eager one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pedray.config import ConfigError, load_recipe
from pedray.train import compiled

TINY = Path(__file__).resolve().parents[1] / "jobs" / "tiny.yaml"


def _scaling(*overrides: str):
    return load_recipe(None, list(overrides)).scaling


def test_auto_compiles_bf16_cpu_training_with_a_compiler_only(monkeypatch):
    monkeypatch.setenv(compiled.AUTO_ENV, "1")
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "/usr/bin/g++")
    assert compiled.wanted(_scaling(), "bf16")
    assert not compiled.wanted(_scaling(), "fp32")
    assert not compiled.wanted(_scaling("scaling.use_gpu=true"), "bf16")  # untested there: say `always`
    assert not compiled.wanted(_scaling("scaling.zero_stage=3"), "bf16")
    assert compiled.wanted(_scaling("scaling.compile=always"), "fp32")
    assert not compiled.wanted(_scaling("scaling.compile=never"), "bf16")
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: None)
    assert not compiled.wanted(_scaling(), "bf16")
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setenv(compiled.AUTO_ENV, "0")
    assert not compiled.wanted(_scaling(), "bf16")
    with pytest.raises(ConfigError, match="zero_stage below 3"):
        _scaling("scaling.compile=always", "scaling.zero_stage=3")
    with pytest.raises(ConfigError):
        _scaling("scaling.compile=on")  # YAML reads `on` as true: the values are auto, always, never


@pytest.mark.skipif(compiled.cxx_compiler() is None, reason="no C++ compiler for Inductor's CPU code")
def test_compiled_layers_give_the_eager_loss_and_gradients_under_the_same_names(tiny_model_dir, tiny_tokenizer):
    from pedray.corpus.generate import instructions
    from pedray.data.packing import pack
    from pedray.data.tokenize import encode_conversations
    from pedray.model.build import load_model
    from pedray.model.selective import selective_forward
    from pedray.train.stages import STAGE_SPECS, collate_packed

    recipe = load_recipe(None)
    rows = pack(encode_conversations(tiny_tokenizer, instructions(0, 8), 256), 256, tiny_tokenizer.pad_token_id)
    batch = collate_packed(rows, torch.device("cpu"))[0]
    results = []
    for compile_layers in (False, True):
        model = load_model(tiny_model_dir)
        names = list(model.state_dict())
        if compile_layers:
            assert compiled.compile_layers(model) == model.config.num_hidden_layers
        loss, _ = STAGE_SPECS["sft"].loss(selective_forward(model, model), batch, recipe, "sft")
        loss.backward()
        assert list(model.state_dict()) == names  # checkpoints and exports see the same model
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager, eager_grads), (fused, fused_grads) = results
    assert fused == pytest.approx(eager, rel=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.skipif(compiled.cxx_compiler() is None, reason="no C++ compiler for Inductor's CPU code")
def test_a_stage_with_compiled_layers_trains_as_the_eager_one(ray_local, tmp_path, small_corpus, tiny_model_dir):
    """The real path: a Ray Train worker, DeepSpeed, the held-out evaluation (no grad: a second compile)."""
    from pedray.train.runner import run_stage

    runs = {}
    for mode in ("never", "always"):
        recipe = load_recipe(TINY, [f"output_dir={tmp_path / mode}", f"data.corpus_dir={small_corpus}",
                                    "scaling.num_workers=1", "scaling.precision=fp32", f"scaling.compile={mode}",
                                    "stages.sft.max_steps=4", "stages.sft.log_every=1",
                                    "stages.sft.checkpoint_every=100", "stages.sft.eval_rows=8"])
        manifest = run_stage(recipe, "sft", tiny_model_dir, tmp_path / mode / "sft", {"stage": "base"})
        history = json.loads(Path(manifest["paths"]["history"]).read_text())
        runs[mode] = (manifest, [row["sft/loss"] for row in history])
    (eager, eager_losses), (fused, fused_losses) = runs["never"], runs["always"]
    assert eager["compiled_layers"] == 0 and fused["compiled_layers"] > 0
    assert fused_losses == pytest.approx(eager_losses, rel=1e-4)
    assert [e["loss"] for e in fused["held_out_loss"]] == pytest.approx(
        [e["loss"] for e in eager["held_out_loss"]], rel=1e-4)
