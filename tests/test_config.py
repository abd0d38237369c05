"""Recipes: every jobs/*.yaml loads; overrides apply; a wrong key or value names key, file and what is allowed."""

from pathlib import Path

import pytest

from pedray.config import ConfigError, load_recipe
from pedray.vocab import STAGES

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("recipe", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    loaded = load_recipe(recipe)
    assert set(loaded.stages) == set(STAGES)


def test_recipe_inherits_from_base_and_overrides_apply():
    recipe = load_recipe(JOBS / "tiny.yaml", ["optim.lr=1e-4", "stages.sft.max_steps=3", "lora.target_modules=[q_proj]"])
    assert recipe.model.size == "tiny"          # from tiny.yaml
    assert recipe.lora.num_experts == 2          # tiny.yaml overrides default.yaml
    assert recipe.data.hybrid_ratio == 1.0       # inherited from default.yaml
    assert recipe.optim.lr == pytest.approx(1e-4)
    assert recipe.stages["sft"].max_steps == 3
    assert recipe.stages["cpt"].max_steps == 8   # untouched sibling keeps its value
    assert recipe.lora.target_modules == ["q_proj"]


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["optim.lrr", "allowed", "lr, weight_decay"]),
    ("model.size=huge", ["model.size", "'tiny', 'mini', 'small'"]),
    ("scaling.zero_stage=5", ["scaling", "zero_stage must be 0, 1, 2 or 3"]),
    ("stages.sft.max_steps=many", ["stages.sft.max_steps", "int"]),
    ("stages.ppo.max_steps=1", ["ppo", "cpt"]),
    ("data.pack=yes please", ["data.pack", "bool"]),
    ("stages.cpt.mu=5", ["stages.cpt.mu", "not used by cpt", "only dfpo"]),
    ("stages.mouse.beta=0.5", ["stages.mouse.beta", "only dfpo"]),
    ("serve.port=8001", ["'serve.port' is now 'serve.http.port'"]),
    ("serve.min_replicas=2", ["'serve.min_replicas' is now 'serve.replicas.min'"]),
    ("serve.vllm_python=/x", ["'serve.vllm_python' is now 'serve.vllm.python'"]),
    ("serve.replicas.min=3", ["serve", "need 0 <= min <= max"]),
    ("serve.http.port=0", ["serve.http", "port must be in 1..65535"]),
])
def test_wrong_override_names_key_and_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        load_recipe(JOBS / "tiny.yaml", [override])
    message = str(err.value)
    assert "tiny.yaml" in message
    for word in words:
        assert word in message


def test_serve_settings_by_concern():
    recipe = load_recipe(JOBS / "default.yaml", ["serve.http.port=8001", "serve.replicas.min=2", "serve.replicas.max=4",
                                                 "serve.vllm.kv_cache_gib=2", "serve.requests.presence_penalty=0.5"])
    serve = recipe.serve
    assert (serve.http.port, serve.http.host, serve.engine) == (8001, "127.0.0.1", "hf")
    assert (serve.replicas.min, serve.replicas.max, serve.replicas.cpus) == (2, 4, 0.25)  # cpus from default.yaml
    assert (serve.vllm.kv_cache_gib, serve.requests.presence_penalty) == (2, 0.5)


def test_wrong_key_in_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scaling:\n  num_worker: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'scaling.num_worker'; allowed: num_workers"):
        load_recipe(bad)


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
