"""A database password with any characters works the way compose and Kubernetes pass it.

compose and the manifests give history-svc `CHORUS_DATABASE_URL` without a password and the
password in `PGPASSWORD` (libpq — psycopg, so yoyo's migrations — and asyncpg read it), so
`@ : / # % ?` in the password need no URL encoding (issue 22). Checked against a throw-away
PostgreSQL cluster of the test's own that really asks for the password (scram-sha-256; the
machine's shared server trusts local connections and would prove nothing).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from chorus.core.healthcheck import check
from chorus.core.testing import ServiceProcess
from chorus.v1 import conversation_pb2, history_service_pb2, history_service_pb2_grpc

PASSWORD = "p@ss:w/rd#1%?&= 'x\""  # every character a URL would have to encode


@dataclass
class Cluster:
    port: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster on a free port whose role `chorus` logs in with PASSWORD only."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run initdb as")
    root = Path(tempfile.mkdtemp(prefix="chorus-pgpass-"))
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", _free_port()
    subprocess.run(
        _as_postgres(
            [initdb, "-D", str(data), "-U", "chorus", "--auth=scram-sha-256", f"--pwfile={pwfile}"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield Cluster(port)
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def history_env(cluster: Cluster, tmp: Path, password: str) -> dict[str, str]:
    """The variables compose and the manifests set (database `postgres`, the cluster's own)."""
    return {
        "CHORUS_DATABASE_URL": f"postgresql://chorus@127.0.0.1:{cluster.port}/postgres",
        "PGPASSWORD": password,
        "CHORUS_REDIS_URL": "",
        "CHORUS_HISTORY_PORT": "0",
        "CHORUS_DEV_MODE": "true",
        "CHORUS_DATA_DIR": str(tmp),
        "CHORUS_DB_STARTUP_TIMEOUT_S": "5",
        "CHORUS_LOG_JSON": "true",
    }


def migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chorus.history", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrations_log_in_with_the_password_from_pgpassword(cluster: Cluster, tmp_path: Path):
    done = migrate(history_env(cluster, tmp_path, PASSWORD))
    assert done.returncode == 0, done.stderr
    assert "migrations_applied" in done.stderr


def test_the_cluster_really_checks_the_password(cluster: Cluster, tmp_path: Path):
    done = migrate(history_env(cluster, tmp_path, "wrong"))
    assert done.returncode != 0
    assert "password authentication failed" in done.stderr


def test_the_password_inside_the_url_would_break(cluster: Cluster, tmp_path: Path):
    """What compose did before: `postgresql://chorus:${POSTGRES_PASSWORD}@…` with this
    password does not reach the server as the password."""
    env = history_env(cluster, tmp_path, "")
    env["CHORUS_DATABASE_URL"] = f"postgresql://chorus:{PASSWORD}@127.0.0.1:{cluster.port}/postgres"
    env.pop("PGPASSWORD")
    assert migrate(env).returncode != 0


def test_history_serves_on_postgresql_with_the_password_from_pgpassword(
    cluster: Cluster, tmp_path: Path
):
    """The asyncpg pool logs in the same way: a conversation created over gRPC is a row in
    the cluster's database."""
    migrate(history_env(cluster, tmp_path, PASSWORD))
    proc = ServiceProcess("chorus.history", env=history_env(cluster, tmp_path, PASSWORD))
    try:
        address = proc.wait_ready()
        assert check(address, "chorus.v1.HistoryService", timeout=10)
        with grpc.insecure_channel(address) as channel:
            reply = history_service_pb2_grpc.HistoryServiceStub(channel).CreateConversation(
                history_service_pb2.CreateConversationRequest(
                    conversation=conversation_pb2.Conversation(title="special password")
                ),
                metadata=[("x-chorus-user", "alice")],
                timeout=30,
            )
    finally:
        proc.stop()
    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user="chorus", dbname="postgres", password=PASSWORD
    ) as conn:
        row = conn.execute(
            "SELECT title FROM conversations WHERE id = %s", (reply.conversation.id,)
        ).fetchone()
    assert row == ("special password",)
