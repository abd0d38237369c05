"""What every bench does first (`import common` before any pedray import): pedray from this checkout,
tokenizers single-threaded, the Hugging Face hub offline; and the CPU kind a result is recorded with."""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import subprocess
import sys
import tempfile
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


def scratch(prefix: str) -> Path:
    """A temporary folder for this bench run, removed when the run's process exits (a crash included,
    short of a kill). The benches had left theirs behind: stage checkpoints, peers' outputs and demo runs,
    1.3 GB for each train_throughput run, 24 GB of them on one development machine."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _send_result(conn, function, args, kwargs) -> None:
    try:
        conn.send((True, function(*args, **kwargs)))
    except BaseException as error:  # the parent raises it
        conn.send((False, f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


def in_child(function, *args, **kwargs):
    """`function(*args, **kwargs)` in a fresh Python process (spawned, not forked), its result returned.

    For a row that trains in the bench's own process: what it leaves there (its memory, its thread pools)
    must not reach the rows after it. Measured in train_throughput: after our loop had run in the bench's
    process, the Ray stage that followed stepped at 1,600-3,650 tokens/s, after the same loop in a child
    at 2,690-3,250 (alone: 3,000-3,470). `function` must be importable by the child (a module's top-level function)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_result, args=(send, function, args, kwargs))
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        ok, value = False, "the child process died without a result"
    child.join()
    if not ok:
        raise RuntimeError(f"{getattr(function, '__name__', function)} failed in its child process: {value}")
    return value
