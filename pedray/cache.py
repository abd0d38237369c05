"""The build cache: where built defaults live, and building a folder once, atomically."""

from __future__ import annotations

import os
import shutil
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
