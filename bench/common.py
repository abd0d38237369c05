"""What every bench does first (`import common` before any pedray import): pedray from this checkout,
tokenizers single-threaded, the Hugging Face hub offline; and the CPU kind a result is recorded with."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")


def cpu_kind() -> dict[str, str]:
    """torch's CPU capability, the lscpu flags that decide bf16 speed, cores and machine."""
    import torch

    flags = ""
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        pass
    kind = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return {"capability": torch.backends.cpu.get_cpu_capability(), "flags": ",".join(kind),
            "cores": str(os.cpu_count()), "machine": platform.machine()}
