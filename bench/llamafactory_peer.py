"""LLaMA-Factory as a peer of bench/train_throughput.py, in a virtual environment of its own.

Never a dependency of pedray: `ensure_env` creates the environment on first use (a few minutes) under
the cache, `run` trains there in a subprocess. Run as a script (by that environment's python) this
file is the subprocess: it starts LLaMA-Factory's own `run_exp` with one callback that stamps each
optimizer step and one hook that counts the non-padding tokens of each batch (attention_mask != 0;
with neat packing the mask is 4-D and additive, and a real token is one allowed to attend to itself),
so tokens are counted as for every row, not with `include_num_input_tokens_seen`.

Facts about 0.9.5 that shape the environment (measured here):
- `pip install torch==2.13.0` first, then `llamafactory==0.9.5 torch==2.13.0` together; unpinned,
  it pulls a CUDA torch. It resolves transformers 5.6.0.
- It drags in CUDA builds of torchvision and torchaudio that fail to load with the CPU torch; both
  are removed. PyPI has no torchaudio for torch 2.13 (its newest, 2.11, fails to load), yet
  LLaMA-Factory imports torchaudio at start-up, so a placeholder module that raises on any use is
  written in its place. Text-only training never touches it.
- bf16 on a CPU needs `use_cpu: true`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.9.5"
TORCH = "torch==2.13.0"
PLACEHOLDER = '''"""Placeholder written by pedray's bench/llamafactory_peer.py: no torchaudio build loads with torch 2.13."""


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is not installed in this benchmark environment")
'''


def ensure_env(root: Path) -> Path:
    """The python of LLaMA-Factory's environment under `root`, created when missing."""
    from pedray.cache import side_env

    def placeholder(site: Path) -> None:
        (site / "torchaudio").mkdir(exist_ok=True)
        (site / "torchaudio" / "__init__.py").write_text(PLACEHOLDER)

    return side_env(root / f"llamafactory-{VERSION}", [[TORCH], [f"llamafactory=={VERSION}", TORCH]],
                    ["torchvision", "torchaudio"], "import llamafactory, transformers, torch; "
                    "print(llamafactory.__version__, transformers.__version__, torch.__version__)",
                    f"LLaMA-Factory {VERSION}", patch=placeholder)


def run(python: Path, spec: dict, work: Path) -> dict:
    """Train with LLaMA-Factory as `spec` says (see `_train`); returns its timing and token counts."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    data.mkdir(exist_ok=True)
    link = data / "sft.jsonl"
    if not link.exists():
        link.symlink_to(Path(spec["data_file"]).resolve())
    (data / "dataset_info.json").write_text(json.dumps({"sft": {"file_name": "sft.jsonl", "formatting": "sharegpt",
                                                                "columns": {"messages": "conversations"}}}))
    spec = dict(spec, dataset_dir=str(data), output_dir=str(work / "out"))
    (work / "spec.json").write_text(json.dumps(spec))
    result_file = work / "result.json"
    done = subprocess.run([str(python), __file__, str(work / "spec.json"), str(result_file)], capture_output=True,
                          text=True, cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": str(work),
                                                    "OMP_NUM_THREADS": str(spec["threads"]),
                                                    "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"LLaMA-Factory run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _train(spec: dict, result_file: Path) -> None:
    import torch
    from transformers import Trainer, TrainerCallback

    from llamafactory.train.tuner import run_exp

    torch.set_num_threads(spec["threads"])
    tokens: list[int] = []
    stamps: list[float] = []
    original = Trainer.training_step

    def counting_step(self, model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]
        if mask.dim() == 4:  # neat packing: an additive block-diagonal mask; a real token may attend to itself
            real = torch.diagonal(mask[:, 0], dim1=-2, dim2=-1) == 0
        else:
            real = mask != 0
        tokens.append(int(real.sum()))
        return original(self, model, inputs, *args, **kwargs)

    Trainer.training_step = counting_step

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = {
        "model_name_or_path": spec["model_dir"], "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": "sft", "dataset_dir": spec["dataset_dir"], "template": "chatml", "cutoff_len": spec["cutoff"],
        "max_samples": spec["max_samples"], "overwrite_cache": True, "preprocessing_num_workers": 1,
        "output_dir": spec["output_dir"], "overwrite_output_dir": True, "save_strategy": "no",
        "logging_steps": 10**6, "report_to": "none", "per_device_train_batch_size": spec["batch"],
        "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "lr_scheduler_type": "constant",
        "max_steps": spec["steps"], "bf16": spec["precision"] == "bf16", "use_cpu": True,
        "packing": spec["packing"], "neat_packing": spec["packing"],
        "disable_gradient_checkpointing": not spec["checkpointing"], "flash_attn": "sdpa",
        "dataloader_num_workers": 0, "max_grad_norm": 1.0, "seed": 0,
        # its torch.compile switch (transformers' `torch_compile`), tried as one of its configurations
        "torch_compile": spec.get("compile", False),
    }
    started = time.perf_counter()
    run_exp(args, callbacks=[Clock()])
    warm = max(1, spec["steps"] // 4)
    steady_tokens = sum(tokens[warm + 1:spec["steps"]])
    result = {"tokens_per_s": steady_tokens / (stamps[-1] - stamps[warm]), "steps": len(stamps),
              "tokens_per_step": steady_tokens / max(1, spec["steps"] - warm - 1),
              "wall_s": round(time.perf_counter() - started, 1), "args": args}
    result_file.write_text(json.dumps(result))


if __name__ == "__main__":
    _train(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
