"""Small helpers the tests share: waiting for a condition, a free local port."""

from __future__ import annotations

import socket
import time

from pedray.net import free_port  # noqa: F401  (tests import it from here)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """The first truthy value of `predicate()`; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
