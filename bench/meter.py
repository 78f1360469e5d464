"""CPU time and resident memory of named groups of processes over a window (psutil).

A group is a function that returns the process ids that make it up right now — one service
process, a proxy and its worker processes, the PostgreSQL backends serving one database —
so processes that start or end inside the window are counted: a process that was not there
when the window opened counts from zero if it started after the window opened, and a
process that ended keeps the CPU time it was last seen with (sampled every `interval_s`, so
up to one interval of a short-lived process's CPU may be missed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

Group = Callable[[], list[int]]


def one(pid: int) -> Group:
    """The group of the single process `pid`."""
    return lambda: [pid]


def tree(pid: int) -> Group:
    """Process `pid` and all its descendants (a proxy's workers)."""

    def pids() -> list[int]:
        try:
            root = psutil.Process(pid)
            return [pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    return pids


def postgres_backends(database: str) -> Group:
    """The PostgreSQL backend processes connected to `database` (their process title reads
    `postgres: … <user> <database> <client> <state>`). The server's shared background
    processes (WAL writer, checkpointer) serve every database and are not counted."""
    needle = f" {database} "

    def pids() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])  # the title, padded with empty args
            if title.startswith("postgres:") and needle in title:
                found.append(proc.pid)
        return found

    return pids


@dataclass
class Window:
    """The readings of one window: CPU seconds and peak resident memory (MB) per group."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0


class Meter:
    """Measures `groups` (name → group) over windows; see the module docstring."""

    def __init__(self, groups: dict[str, Group], interval_s: float = 0.5) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self._procs: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                return None
        return proc

    def _read(self) -> dict[str, dict[int, tuple[float, float, float]]]:
        """Per group, per pid: (CPU seconds, RSS MB, start time)."""
        out: dict[str, dict[int, tuple[float, float, float]]] = {}
        for name, group in self.groups.items():
            readings: dict[int, tuple[float, float, float]] = {}
            for pid in group():
                proc = self._process(pid)
                if proc is None:
                    continue
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        readings[pid] = (
                            times.user + times.system,
                            proc.memory_info().rss / 2**20,
                            proc.create_time(),
                        )
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    self._procs.pop(pid, None)
            out[name] = readings
        return out

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each group now, MB (summed over its processes)."""
        return {
            name: round(sum(r[1] for r in readings.values()), 1)
            for name, readings in self._read().items()
        }

    @contextmanager
    def window(self) -> Iterator[Window]:
        """Measure while the block runs; the yielded `Window` is filled in when it exits."""
        result = Window()
        opened_wall = time.time()
        opened = time.monotonic()
        start = self._read()
        first = {
            name: {pid: r[0] for pid, r in readings.items()} for name, readings in start.items()
        }
        last = {name: dict(pids) for name, pids in first.items()}
        peak = {name: sum(r[1] for r in readings.values()) for name, readings in start.items()}
        stop = threading.Event()

        def sample() -> None:
            for name, readings in self._read().items():
                for pid, (cpu, _rss, created) in readings.items():
                    if pid not in first[name]:
                        # new in the window: from zero if it started after the window opened
                        first[name][pid] = 0.0 if created >= opened_wall - 0.05 else cpu
                    last[name][pid] = cpu
                peak[name] = max(peak[name], sum(r[1] for r in readings.values()))

        def loop() -> None:
            while not stop.wait(self.interval_s):
                sample()

        sampler = threading.Thread(target=loop, name="meter", daemon=True)
        sampler.start()
        try:
            yield result
        finally:
            stop.set()
            sampler.join()
            sample()
            result.elapsed_s = time.monotonic() - opened
            for name in self.groups:
                result.cpu_s[name] = round(
                    sum(last[name][pid] - first[name][pid] for pid in last[name]), 3
                )
                result.peak_rss_mb[name] = round(peak[name], 1)
