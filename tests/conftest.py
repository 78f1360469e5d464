"""Fixtures for cross-service tests: services started as real processes on port 0."""

from __future__ import annotations

import shutil
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
