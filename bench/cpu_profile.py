"""CPU seconds per process over a window: what else runs while a stage trains (`train_throughput --profile`).

A thread samples the cumulative CPU time (user + system) of this process and every process below it
(a private Ray's GCS, raylet, agents and workers are all started from the driver) twice a second.
`window(t0, t1)` gives each process's CPU seconds between two wall-clock times, grouped by what the
process is: Ray's actor and task workers by their title (`ray::RayTrainWorker`), Ray's own servers by
their program (`raylet`, `gcs_server`, `dashboard agent`, ...). A process that was born or died inside the
window counts from its first or up to its last sample.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import psutil

_PROGRAMS = (("raylet", "raylet"), ("gcs_server", "gcs_server"), ("dashboard/agent.py", "dashboard agent"),
             ("runtime_env/agent", "runtime_env agent"), ("log_monitor", "log_monitor"),
             ("dashboard/dashboard.py", "dashboard"), ("monitor.py", "autoscaler monitor"))


def label(cmdline: list[str], pid: int) -> str:
    """What a process is, from its command line (Ray sets a worker's title to `ray::Class.method`)."""
    if pid == os.getpid():
        return "driver (bench)"
    head = cmdline[0] if cmdline else ""
    if head.startswith("ray::"):
        return head.split(".", 1)[0].split(" ", 1)[0]
    joined = " ".join(cmdline)
    for fragment, name in _PROGRAMS:
        if fragment in joined:
            return name
    return os.path.basename(head) or "?"


def _threads(proc: psutil.Process, name: str) -> dict[tuple[int, int], tuple[str, float]]:
    """Each thread's CPU time under `<name> / <thread name>` (Linux names threads in /proc/<pid>/task)."""
    out = {}
    for thread in proc.threads():
        try:
            with open(f"/proc/{proc.pid}/task/{thread.id}/comm", encoding="utf-8") as handle:
                title = handle.read().strip()
        except OSError:
            continue
        out[(proc.pid, thread.id)] = (f"{name} / {title}", thread.user_time + thread.system_time)
    return out


class CpuSampler:
    """Samples in a daemon thread from `start()` to `stop()`; `window()` reads the samples."""

    def __init__(self, interval: float = 0.5, threads_of: tuple[str, ...] = ("ray::RayTrainWorker",)):
        self.interval = interval
        self.threads_of = threads_of  # kinds of process also broken down by thread (`<kind> / <thread name>`)
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._names: dict[int, str] = {}

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _snapshot(self) -> dict:
        me = psutil.Process()
        out = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    name = label(proc.cmdline(), proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if name.startswith("ray::IDLE") and proc.pid in self._names:
                name = self._names[proc.pid]  # an actor's worker between calls keeps the name it had
            self._names[proc.pid] = name
            out[proc.pid] = (name, times.user + times.system)
            if name in self.threads_of:
                out.update(_threads(proc, name))
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._snapshot()))
            self._stop.wait(self.interval)

    def window(self, t0: float, t1: float) -> dict:
        """CPU seconds per kind of process between wall-clock times t0 and t1, and the window's length."""
        inside = [(t, snap) for t, snap in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return {"seconds": 0.0, "cpu_seconds": {}, "cores_busy": 0.0, "processes": {}, "threads": {}}
        first: dict[int, float] = {}
        last: dict[int, tuple[str, float]] = {}
        for _, snap in inside:
            for pid, (name, cpu) in snap.items():
                first.setdefault(pid, cpu)
                last[pid] = (name, cpu)
        seconds = inside[-1][0] - inside[0][0]
        per_kind: dict[str, float] = defaultdict(float)
        per_thread: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for key, (name, cpu) in last.items():
            if isinstance(key, tuple):
                per_thread[name] += cpu - first[key]
                continue
            per_kind[name] += cpu - first[key]
            count[name] += 1
        ranked = sorted(per_kind.items(), key=lambda item: -item[1])
        return {"seconds": round(seconds, 2), "cpu_seconds": {k: round(v, 2) for k, v in ranked},
                "cores_busy": round(sum(per_kind.values()) / max(seconds, 1e-9), 3),
                "processes": {k: count[k] for k, _ in ranked},
                "threads": {k: round(v, 2) for k, v in sorted(per_thread.items(), key=lambda item: -item[1])
                            if v >= 0.01}}
