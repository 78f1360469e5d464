"""Helpers for Chorus tests: real services over real sockets, waits on conditions.

* `require_service` skips a test when PostgreSQL / Redis is unreachable, with a reason that
  the repository's conftest turns into a failure under `CI=true`.
* `ServiceProcess` starts `python -m chorus.<service>` on port 0 and learns its address from
  the `listening` log line.
* `wait_for` polls a condition with a timeout instead of sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any


def require_service(name: str, host: str, port: int) -> None:
    """Skip the calling test (`requires-service:` reason) unless `host:port` accepts TCP."""
    import pytest

    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError as exc:
        pytest.skip(f"requires-service: {name} at {host}:{port} unreachable ({exc})")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    condition: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Poll `condition` (sync or async) until it returns a truthy value; return that value.

    Raises:
        TimeoutError: when `timeout` seconds passed without a truthy value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


class ServiceProcess:
    """A Chorus service in its own process (`python -m <module>`), on port 0 by default.

    Args:
        module: e.g. `chorus.history`, or the path of a `.py` script to run.
        env: extra environment (`CHORUS_*` settings); the parent's environment is inherited.
        log_event: the log line event that carries the bound address.
    """

    def __init__(
        self, module: str, env: Mapping[str, str] | None = None, log_event: str = "listening"
    ) -> None:
        self.module = module
        self.lines: list[str] = []
        self.address: str | None = None
        self._event = log_event
        self._ready = threading.Event()
        full_env = {**os.environ, "CHORUS_LOG_JSON": "true", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, module] if module.endswith(".py") else [sys.executable, "-m", module],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.address is None:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == self._event and record.get("address"):
                    self.address = str(record["address"])
                    self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Block until the service logged its address; return it (`host:port`).

        Raises:
            RuntimeError: the process exited first or the timeout passed (its log is included).
        """
        self._ready.wait(timeout)
        if self.address is None:
            raise RuntimeError(
                f"{self.module} did not start (exit code {self.proc.poll()}):\n"
                + "\n".join(self.lines[-30:])
            )
        return self.address

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` (SIGTERM by default)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to `timeout` s (then SIGKILL); return the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
