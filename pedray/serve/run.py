"""`pedray serve`: start the Serve app for a model folder (default: the newest model of a recipe's run)."""

from __future__ import annotations

import logging
from pathlib import Path

from ray import serve

from pedray import storage
from pedray.cache import cache_root
from pedray.cluster import ensure_ray
from pedray.config.schema import Recipe
from pedray.serve.app import build_app
from pedray.train.runner import read_manifest
from pedray.vocab import STAGES
from pedray.workspace import corpus_dirs


def default_model(recipe: Recipe) -> str | Path:
    """The last completed stage's model of the recipe's run (the chain's order from its end)."""
    for stage in reversed(STAGES):
        manifest = read_manifest(storage.join(recipe.output_dir, stage))
        if manifest and manifest.get("status") == "complete":
            return storage.as_location(manifest["paths"]["model"])
    raise FileNotFoundError(f"no trained model under {recipe.output_dir}: train one first with "
                            f"`python jobs/train_all.py` (or `make demo`), or pass --model DIR")


def _applied_options_filter(record: logging.LogRecord) -> bool:
    """serve.run connects to the Serve that serve.start just started with our http_options and logs that
    "New http_options ... will not be applied": they were (serve.start applied them), so the line misleads."""
    return "will not be applied" not in record.getMessage()


def start(model_dir: str | Path, recipe: Recipe, blocking: bool = False, app_name: str = "pedray") -> str:
    """Deploy the app on the running (or a new local) Ray; returns the base URL of its OpenAI API."""
    cfg = recipe.serve
    # metrics: the router counts requests per route as a Ray metric; batch: a request's wake-up preempts
    ensure_ray(metrics=True, batch=False)
    application = build_app(model_dir, cfg, corpus_dirs(recipe), cache_root() / "serve")
    serve.start(proxy_location=cfg.http.proxy_location, http_options={"host": cfg.http.host, "port": cfg.http.port})
    logging.getLogger("ray.serve").addFilter(_applied_options_filter)
    serve.run(application, name=app_name, route_prefix="/", blocking=blocking)
    return f"http://{cfg.http.host}:{cfg.http.port}/v1"
