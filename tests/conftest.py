"""Shared fixtures: offline environment, a tiny model, a small corpus, one local Ray for the session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.update({
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
    # `scaling.compile: auto` would compile every tiny stage that runs in bf16 (on AMX/AVX512-BF16 machines);
    # tests/test_compiled.py turns it on where it is the subject.
    "PEDRAY_COMPILE_AUTO": "0",
    # For the moto S3 server the storage tests start; set before Ray starts so that its workers have them too.
    "AWS_ACCESS_KEY_ID": "pedray-test", "AWS_SECRET_ACCESS_KEY": "pedray-test-secret",
})
os.environ.setdefault("PEDRAY_CACHE", str(Path(tempfile.gettempdir()) / "pedray-test-cache"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data kit beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data kit not found at {SHARED_DATA} (only present beside a project checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded tiny default model (tokenizer trained on our corpus), built once per session."""
    from pedray.model.build import init_model

    return init_model("tiny", tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from pedray.model.build import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A small PedCorpus (600 instructions) written by the generator."""
    from pedray.corpus.generate import write_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, seed=0, count=600, holdout=0.1)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray with 2 CPUs for the whole session (never a stale cluster, never `ray stop`)."""
    import ray

    from pedray.cluster import loopback_only

    if not ray.is_initialized():
        loopback_only()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PEDRAY_CACHE": os.environ["PEDRAY_CACHE"]}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    # A TrainController hung on exit after its run (Ray 2.60, pedray.cluster.reap_dead_actors) outlived one
    # CI run's session as an orphan: its process is this session's raylet's child, killed here by PID.
    from pedray.cluster import reap_dead_actors

    reap_dead_actors(private=True)
    ray.shutdown()
