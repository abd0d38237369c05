"""`pedray serve` as a user starts it: a private Ray that listens on loopback only, and Ctrl-C that stops
it cleanly. The process and everything it starts run in their own process group, stopped by that group."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pedray.net import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _listening(root: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket of `root` and its descendants."""
    import psutil

    found = []
    top = psutil.Process(root)
    for process in [top, *top.children(recursive=True)]:
        try:
            found += [(process.name(), c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_pedray_serve_listens_on_loopback_only_and_stops_cleanly_on_ctrl_c(tiny_model_dir, small_corpus):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own private Ray
    process = subprocess.Popen([sys.executable, "-m", "pedray", "serve", "--model", str(tiny_model_dir),
                                "--port", str(port), f"data.corpus_dir={small_corpus}", "serve.replicas.cpus=0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=60).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        else:
            pytest.fail("pedray serve did not come up")
        sockets = _listening(process.pid)
        assert any(p == port for _, _, p in sockets)  # the HTTP proxy is among them
        wide = [s for s in sockets if not _loopback(s[1])]
        assert not wide, f"listening beyond loopback: {wide}"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output.replace("Got KeyboardInterrupt", "")
    assert "pedray serve: stopped" in output
    assert "will not be applied" not in output
