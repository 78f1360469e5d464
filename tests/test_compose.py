"""docker-compose.yml and the Dockerfiles agree with what the services actually read.

No Docker engine runs here, so the file is checked structurally: every service builds from
an existing Dockerfile whose CMD is the compose command, runs an importable module, and is
given only `CHORUS_*` variables its own settings class reads.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re

import pytest
import yaml

from chorus.core.settings import CoreSettings

from .conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = {
    "provider": ("chorus.provider.settings", "Settings"),
    "history": ("chorus.history.settings", "Settings"),
    "orchestrator": ("chorus.orchestrator.settings", "Settings"),
    "gateway": ("chorus.gateway.settings", "GatewaySettings"),
}


def env_names(module: str, cls: str) -> set[str]:
    settings = getattr(importlib.import_module(module), cls)
    prefix = settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def test_compose_declares_the_stack_with_healthchecked_storage():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "redis", *SERVICES}
    for store in ("postgres", "redis"):
        assert services[store]["healthcheck"]["test"], f"{store} needs a healthcheck"
        assert services[store]["volumes"], f"{store} needs a volume"
        volume = services[store]["volumes"][0].split(":")[0]
        assert volume in COMPOSE["volumes"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert services["gateway"]["ports"] == ["8000:8000"]
    assert all("ports" not in services[name] for name in ("provider", "history", "orchestrator"))


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_matches_dockerfile_and_module(name):
    service = COMPOSE["services"][name]
    dockerfile = REPO / service["build"]["dockerfile"]
    assert dockerfile.exists()
    text = dockerfile.read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert service["command"] == cmd
    assert cmd[:2] == ["python", "-m"]
    assert importlib.util.find_spec(cmd[2]) is not None, f"{cmd[2]} is not importable"
    assert importlib.util.find_spec(f"{cmd[2]}.__main__") is not None
    assert "USER chorus" in text and "HEALTHCHECK" in text
    assert "FROM python:3.11-slim" in text


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_environment_is_read_by_its_settings(name):
    reads = env_names(*SERVICES[name])
    given = {k for k in COMPOSE["services"][name]["environment"] if k.startswith("CHORUS_")}
    assert given, "no CHORUS_ settings given"
    unread = given - reads
    assert not unread, f"{name} is given settings it never reads: {sorted(unread)}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_port_in_compose_matches_the_exposed_port(name):
    service = COMPOSE["services"][name]
    port = service["environment"][f"CHORUS_{name.upper()}_PORT"]
    assert f"EXPOSE {port}" in (REPO / service["build"]["dockerfile"]).read_text()


def test_addresses_point_at_compose_services_and_their_ports():
    services = COMPOSE["services"]
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if key.endswith("_ADDRESS"):
                host, port = value.split(":")
                assert host in services, f"{name}.{key} points at unknown host {host}"
                assert services[host]["environment"][f"CHORUS_{host.upper()}_PORT"] == port


def test_env_example_names_only_settings_someone_reads():
    reads = set().union(*(env_names(*spec) for spec in SERVICES.values())) | {"POSTGRES_PASSWORD"}
    example = [
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert example and not set(example) - reads, sorted(set(example) - reads)
    assert not (REPO / ".env").exists() or ".env" in (REPO / ".gitignore").read_text()


def _seconds(duration: str) -> float:
    """A compose duration (`40s`, `1m30s`, `1m`) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"unexpected duration {duration!r}"
    return int(parts.group(1) or 0) * 60 + float(parts.group(2) or 0)


def _grace_period(service: dict) -> float:
    default = CoreSettings.model_fields["grace_period_s"].default
    return float(service["environment"].get("CHORUS_GRACE_PERIOD_S", default))


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_services_restart_and_get_their_grace_period_plus_a_margin_to_stop(name):
    service = COMPOSE["services"][name]
    assert service["restart"] == "unless-stopped"
    margin = 10 if name == "orchestrator" else 5
    # SIGTERM → SIGKILL: the service's own grace period, then time to finish (the
    # orchestrator's handoff writes the checkpoint and releases the lease after it)
    assert _seconds(service["stop_grace_period"]) >= _grace_period(service) + margin


def test_the_orchestrator_gets_time_to_hand_its_runs_over():
    orchestrator = COMPOSE["services"]["orchestrator"]
    assert _grace_period(orchestrator) >= 30  # a real model's turn can take that long
    assert _seconds(orchestrator["stop_grace_period"]) == _grace_period(orchestrator) + 10


def test_compose_stops_in_the_order_make_run_does():
    """Compose stops dependents first: gateway, orchestrator, then provider and history."""
    services = COMPOSE["services"]
    assert set(services["gateway"]["depends_on"]) == {"orchestrator"}
    assert set(services["orchestrator"]["depends_on"]) == {"provider", "history"}
    assert set(services["history"]["depends_on"]) == {"postgres", "redis"}
    assert all(services[s]["restart"] == "unless-stopped" for s in ("postgres", "redis"))
