"""The gateway's `/metrics` leaves the public port when `CHORUS_METRICS_PORT` is set (issue 22).

compose and the Kubernetes manifests set `CHORUS_METRICS_PORT` on every service: the
gateway then serves Prometheus metrics on that (internal, unpublished) port only, and its
public port answers `/metrics` like any unknown path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chorus.core.testing import ServiceProcess


def gateway_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "CHORUS_GATEWAY_PORT": "0",
        "CHORUS_GATEWAY_HOST": "127.0.0.1",
        "CHORUS_HOST": "127.0.0.1",
        "CHORUS_AUTH_MODE": "none",
        "CHORUS_DEV_MODE": "true",
        "CHORUS_REDIS_URL": "",
        # nothing listens there: the public routes under test need no backend
        "CHORUS_ORCHESTRATOR_ADDRESS": "127.0.0.1:9",
        "CHORUS_HISTORY_ADDRESS": "127.0.0.1:9",
        "CHORUS_PROVIDER_ADDRESS": "127.0.0.1:9",
        "CHORUS_DATA_DIR": str(tmp),
        **extra,
    }


def logged(proc: ServiceProcess, event: str, timeout: float = 30.0) -> dict[str, str]:
    """The first JSON log record `event` of `proc` (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(proc.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return dict(record)
        if proc.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {event} log line:\n" + "\n".join(proc.lines[-20:]))


@pytest.fixture(scope="module")
def gateway_with_metrics_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        "chorus.gateway",
        env=gateway_env(tmp_path_factory.mktemp("gw"), CHORUS_METRICS_PORT="0"),
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_metrics_are_served_on_the_metrics_port(gateway_with_metrics_port: ServiceProcess):
    address = logged(gateway_with_metrics_port, "metrics_listening")["address"]
    assert address.startswith("http://127.0.0.1:") and address.endswith("/metrics")
    public = gateway_with_metrics_port.address
    httpx.get(f"{public}/health", timeout=10).raise_for_status()  # counted by the middleware
    reply = httpx.get(address, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in reply.text
    assert "chorus_gateway_" in reply.text


def test_public_port_no_longer_serves_metrics(gateway_with_metrics_port: ServiceProcess):
    public = gateway_with_metrics_port.address
    reply = httpx.get(f"{public}/metrics", timeout=10)
    assert reply.status_code == 404
    assert reply.json()["error"]["status"] == "NOT_FOUND"  # AIP-193 body like any unknown path
    assert httpx.get(f"{public}/health", timeout=10).status_code == 200


def test_without_a_metrics_port_the_public_port_keeps_metrics(tmp_path: Path):
    proc = ServiceProcess("chorus.gateway", env=gateway_env(tmp_path))
    try:
        proc.wait_ready()
        reply = httpx.get(f"{proc.address}/metrics", timeout=10)
        assert reply.status_code == 200 and "# TYPE" in reply.text
        assert not any('"metrics_listening"' in line for line in proc.lines)
    finally:
        proc.stop()
