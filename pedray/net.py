"""A free TCP port on 127.0.0.1 (for DeepSpeed's one-process group, a vLLM child, tests and benches)."""

from __future__ import annotations

import random
import socket

# Below the kernel's ephemeral range (Linux: 32768-60999), where every process that binds port 0 (Ray's
# workers, agents and replicas among them) takes its ports: a port chosen there and closed again can be
# taken by one of them before its user binds it. Ray's own worker ports are 10002-19999.
_LOW, _HIGH = 20000, 32768


def free_port() -> int:
    """A port nothing listens on now, from 20000-32767 (random, so parallel callers rarely meet);
    the kernel's choice when none there is free."""
    for port in random.sample(range(_LOW, _HIGH), 64):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
