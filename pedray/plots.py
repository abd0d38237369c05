"""Figures written to files: matplotlib with the file backend, the figure closed once saved."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def saved_figure(out: Path, dpi: int = 100, tight: bool = True, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """`with saved_figure(out, figsize=...) as (figure, axes):` draw; on leaving, the figure is laid out
    (`tight`), saved to `out` and closed. `subplots` go to `plt.subplots`. matplotlib is imported here:
    it costs a second of start-up that most commands never need."""
    # The first figure on a new machine builds matplotlib's font cache and says so at INFO ("generated new
    # fontManager"), which a Ray worker's log level passes on to the demo's console: a one-time fact, not a problem.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(**subplots)
    try:
        yield figure, axes
        if tight:
            figure.tight_layout()
        figure.savefig(out, dpi=dpi, bbox_inches=None if tight else "tight")
    finally:
        plt.close(figure)
