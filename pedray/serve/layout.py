"""Where a model folder's experts come from: a plain model is one expert for every route; a task-gated
MoUSE adapter is merged into one plain model per task (its own expert and route); a token-gated adapter
is served whole by one expert. And which python runs vLLM for plain experts."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from pedray import storage
from pedray.config.schema import ServeConfig
from pedray.vocab import TASKS

# The expert that serves a token-gated MoUSE adapter whole: every route goes to it.
WHOLE_ADAPTER = "mouse"


@dataclass(frozen=True)
class Layout:
    experts: dict[str, str]
    """Expert name -> model folder (or URI)."""
    routes: dict[str, str]
    """Route (task) -> expert name."""
    tokenizer: str
    """The folder whose tokenizer the router uses."""
    plain: bool
    """Whether every expert is a plain model folder (vLLM can serve it): not for a token-gated adapter
    served whole, whose per-token routing cannot be merged into plain weights."""


def expert_layout(model_dir: str | Path, cache: Path) -> Layout:
    """The experts and routes for a model folder.

    A task-gated MoUSE adapter is merged once per task into `cache` (keyed by the adapter's bytes); for
    an adapter at a URI the merged models are uploaded beside it, so that replicas on any node read them.
    """
    # torch comes with these: imported where a model is laid out (the driver), not where the router runs
    from pedray.model.mouse_io import ADAPTER_FILE, is_adapter, load_mouse, merge_tasks, read_config

    location, model_dir = str(model_dir), storage.local_copy(model_dir)  # replicas are handed the location itself
    if not is_adapter(model_dir):
        return Layout({"model": location}, dict.fromkeys(TASKS, "model"), location, plain=True)
    config = read_config(model_dir)
    base = str(config["base_model"])
    if config["lora"].get("gating") != "task":
        return Layout({WHOLE_ADAPTER: location}, dict.fromkeys(TASKS, WHOLE_ADAPTER), base, plain=False)
    digest = hashlib.sha256((model_dir / ADAPTER_FILE).read_bytes()).hexdigest()[:12]
    folder = cache / f"merged-{digest}"
    if not all((folder / task / "config.json").is_file() for task in config["tasks"]):
        from pedray.model.build import load_tokenizer

        merge_tasks(load_mouse(model_dir), folder, load_tokenizer(base))
    place: str | Path = folder
    if storage.is_uri(location):
        place = storage.publish(folder, str(storage.sibling(location, f"merged-{digest}")))
    experts = {task: str(storage.join(place, task)) for task in config["tasks"]}
    return Layout(experts, {task: task for task in TASKS if task in experts}, base, plain=True)


def vllm_python(cfg: ServeConfig) -> str:
    """The python that runs `vllm serve`: `serve.vllm.python`, else this one if it has vLLM."""
    if cfg.vllm.python:
        if not Path(cfg.vllm.python).is_file():
            raise FileNotFoundError(f"serve.vllm.python: no such file {cfg.vllm.python}")
        return cfg.vllm.python
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise FileNotFoundError("serve.engine=vllm needs vLLM: `python -m pedray vllm-env` makes an environment for "
                            "it on a CPU machine and prints its python; pass it as serve.vllm.python=PATH")
