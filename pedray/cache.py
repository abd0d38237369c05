"""The build cache: where built defaults live, building a folder once, atomically, and the virtual
environments of tools that pin versions pedray cannot share (vLLM, the LLaMA-Factory peer of a bench)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    """Where built defaults live (PEDRAY_CACHE, else ~/.cache/pedray)."""
    return Path(os.environ.get("PEDRAY_CACHE", Path.home() / ".cache" / "pedray"))


def build_once(folder: Path, build: Callable[[Path], object], marker: str) -> Path:
    """Build into a staging folder and rename it to `folder`, unless `folder/marker` exists already.

    Concurrent or interrupted builds never leave half a folder: the loser of a race removes its copy.
    """
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    build(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def side_env(venv: Path, installs: list[list[str]], remove: list[str], versions: str, what: str,
             patch: Callable[[Path], None] | None = None, force: bool = False) -> Path:
    """The python of a virtual environment at `venv`, made once (a `.pedray-ready` file marks it done):
    each of `installs` is one `pip install` in turn (the CPU torch wheel first, or a package pulls a CUDA
    build), then the packages in `remove` are uninstalled, `patch(site-packages)` runs, and `versions`
    (python code that prints them) is run and its output kept in the marker."""
    python = venv / "bin" / "python"
    ready = venv / ".pedray-ready"
    if ready.is_file() and not force:
        return python
    print(f"[pedray] creating {what}'s environment in {venv} (once; several minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip"]
    for packages in installs:
        subprocess.run([*pip, "install", "-q", "--disable-pip-version-check", *packages], check=True)
    if remove:
        subprocess.run([*pip, "uninstall", "-q", "-y", *remove], check=True)
    if patch is not None:
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        patch(Path(site))
    ready.write_text(subprocess.run([str(python), "-c", versions], check=True, capture_output=True,
                                    text=True).stdout.strip())
    return python
