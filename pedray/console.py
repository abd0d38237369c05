"""Lines for the person watching a run: whole lines, whatever thread writes them."""

from __future__ import annotations

import sys
import threading

_LOCK = threading.Lock()


def say(text: str) -> None:
    """Print `text` as whole lines and flush. `print` writes the text and its newline in two calls, so the
    driver's evaluation thread and the chain, printing at once, ran two lines together
    ("[eval] sft: 100 questions[dfpo] starting from sft")."""
    with _LOCK:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
