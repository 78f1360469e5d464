"""Fixtures for cross-service tests: services started as real processes on port 0."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chorus.core.testing import ServiceProcess

TOKEN = "cross-service-test-token"
REPO = Path(__file__).resolve().parents[1]
GRPCURL = shutil.which("grpcurl", path=str(REPO / ".venv/bin")) or shutil.which("grpcurl")

SERVICES = {
    "chorus.provider": ("chorus.v1.ProviderService", "CHORUS_PROVIDER_PORT"),
    "chorus.history": ("chorus.v1.HistoryService", "CHORUS_HISTORY_PORT"),
    "chorus.orchestrator": ("chorus.v1.RunService", "CHORUS_ORCHESTRATOR_PORT"),
}


def service_env(tmp: Path, port_var: str) -> dict[str, str]:
    """Environment of a service process on embedded defaults, port 0, a test token."""
    return {
        port_var: "0",
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "CHORUS_DEV_MODE": "false",
        "CHORUS_DATA_DIR": str(tmp / "data"),
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
        "CHORUS_GRACE_PERIOD_S": "3",
    }


@pytest.fixture(scope="module", params=sorted(SERVICES))
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(full service name, address) of one service running as its own process."""
    module = request.param
    name, port_var = SERVICES[module]
    proc = ServiceProcess(module, env=service_env(tmp_path_factory.mktemp(module), port_var))
    try:
        yield name, proc.wait_ready()
    finally:
        proc.stop()


def launch_stack(
    env: dict[str, str], ready_timeout_s: float
) -> tuple[subprocess.Popen[str], list[str]]:
    """The whole stack as one process (`python -m chorus.cli.stack`, the dev launcher) in
    `env`, started from the repo root; waits up to `ready_timeout_s` seconds for its
    `all services SERVING` (or `startup failed`) line. Returns the process and its output
    lines, which a reader thread keeps appending; the caller checks readiness in them and
    ends the process with `stop_stack_process`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chorus.cli.stack"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "all services SERVING" in line or "startup failed" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(ready_timeout_s)
    return proc, lines


def stop_stack_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (a graceful drain), killed after 30 s; nothing when it already exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
