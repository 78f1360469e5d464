"""The distributions install the ordinary way, and uv.lock is what gets installed (issue 22).

A fresh virtual environment with plain `pip install ./core ./provider-svc ./history-svc
./orchestrator-svc ./gateway ./cli` must resolve (autogen-core's `protobuf ~= 5.29` included,
no overrides file) and the services must start far enough to print their `--help`. The
workspace lock must be fresh, and the generated code must come from the pinned generator.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from .conftest import REPO

DISTS = ["core", "provider-svc", "history-svc", "orchestrator-svc", "gateway", "cli"]
UV = REPO / ".venv" / "bin" / "uv"
ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = tomllib.loads((REPO / "uv.lock").read_text())


def locked(name: str) -> str:
    """The version uv.lock pins for the package `name`."""
    versions = [p["version"] for p in LOCK["package"] if p["name"] == name and "version" in p]
    assert len(versions) == 1, f"{name}: {versions}"
    return str(versions[0])


def requirement(dist: str, name: str) -> str:
    """The requirement string on `name` in `dist`'s pyproject.toml."""
    deps = tomllib.loads((REPO / dist / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [d for d in deps if re.match(rf"{re.escape(name)}\s*(\[|[<>=!~]|$)", d)]
    assert len(found) == 1, f"{dist}: {name}: {found}"
    return str(found[0])


def test_workspace_lists_every_distribution_and_no_override_file_remains():
    assert ROOT["tool"]["uv"]["workspace"]["members"] == DISTS
    assert not (REPO / "overrides.txt").exists()
    for dist in DISTS[1:]:
        sources = tomllib.loads((REPO / dist / "pyproject.toml").read_text())["tool"]["uv"]
        assert sources["sources"]["chorus-core"] == {"workspace": True}, dist


def test_the_library_declares_ranges_not_exact_pins():
    project = tomllib.loads((REPO / "core" / "pyproject.toml").read_text())["project"]
    pinned = [d for d in project["dependencies"] if "==" in d]
    assert not pinned, f"chorus-core pins exactly: {pinned}"
    for name in ("grpcio", "grpcio-status", "grpcio-health-checking", "protobuf"):
        assert "<" in requirement("core", name), f"{name} needs an upper bound"


def test_generated_code_comes_from_the_locked_generator():
    """grpcio-tools is pinned in the dev group, locked at that version, and the committed
    chorus.v1 code names the same grpcio and protobuf versions."""
    (tools,) = [d for d in ROOT["dependency-groups"]["dev"] if d.startswith("grpcio-tools")]
    version = tools.split("==")[1]
    assert locked("grpcio-tools") == version
    generated = (REPO / "core/src/chorus/v1/run_service_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{version}'" in generated
    gencode = re.search(
        r"Protobuf Python Version: (\d+)\.(\d+)",
        (REPO / "core/src/chorus/v1/run_service_pb2.py").read_text(),
    )
    assert gencode, "no protobuf gencode version in run_service_pb2.py"
    runtime = tuple(int(x) for x in locked("protobuf").split(".")[:2])
    # the runtime must be the gencode's major and at least its minor
    assert runtime[0] == int(gencode[1]) and runtime >= (int(gencode[1]), int(gencode[2]))
    assert int(locked("grpcio").split(".")[1]) >= int(version.split(".")[1])


def test_every_installed_requirement_on_protobuf_accepts_the_locked_protobuf():
    """autogen-core (`~=5.29`), opentelemetry-proto, googleapis-common-protos, grpcio-* …:
    the lock's protobuf satisfies what each of them declares."""
    protobuf = Version(locked("protobuf"))
    demanding = {}
    for dist in metadata.distributions():
        for text in dist.requires or []:
            req = Requirement(text)
            if req.name == "protobuf" and (
                req.marker is None or req.marker.evaluate({"extra": ""})
            ):
                demanding[dist.metadata["Name"]] = req.specifier
    assert "autogen-core" in demanding, "autogen-core is not installed"
    refused = {name: str(spec) for name, spec in demanding.items() if protobuf not in spec}
    assert not refused, f"protobuf {protobuf} is refused by {refused}"


@pytest.mark.skipif(not UV.exists(), reason="uv is installed by `make install`")
def test_lock_is_fresh():
    """`uv lock --check`: a pyproject changed without `make lock` fails here and in make lint."""
    done = subprocess.run(
        [str(UV), "lock", "--check", "--offline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(900)
def test_plain_pip_installs_every_service_in_a_fresh_venv(tmp_path: Path):
    """The issue's check: plain pip (no uv, no overrides) resolves the six distributions
    together, `pip check` finds no conflict, and `python -m chorus.orchestrator --help` runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {
        **os.environ,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "VIRTUAL_ENV": str(venv),
    }
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *[f"./{d}" for d in DISTS]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    check = subprocess.run(
        [str(python), "-m", "pip", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout
    # Installed, not editable: run from a directory that is not the repository.
    helped = subprocess.run(
        [str(python), "-m", "chorus.orchestrator", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stderr
    assert "usage: python -m chorus.orchestrator" in helped.stdout
    assert "CHORUS_ORCHESTRATOR_PORT" in helped.stdout
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import google.protobuf, autogen_core, grpc; print(google.protobuf.__version__)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert versions.returncode == 0, versions.stderr
    assert versions.stdout.startswith("5.29."), versions.stdout


@pytest.mark.parametrize(
    ("module", "listed"),
    [
        ("chorus.provider", "CHORUS_PROVIDER_PORT"),
        ("chorus.orchestrator", "CHORUS_ORCHESTRATOR_PORT"),
        ("chorus.history", "migrate"),
        ("chorus.gateway", "new-api-key"),
    ],
)
def test_every_service_answers_help_without_serving(module: str, listed: str, tmp_path: Path):
    """`--help` exits 0 at once, binds nothing, and needs no token (CHORUS_INTERNAL_TOKEN unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # argparse prints "usage: python -m …", typer (the gateway) " Usage: python -m …".
    assert "usage: python -m " in done.stdout.lower() and listed in done.stdout
    assert "listening" not in done.stderr
