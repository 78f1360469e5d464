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
