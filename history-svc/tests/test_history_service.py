"""`python -m chorus.history`: the migrate command and the embedded default as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
from history_helpers import UserStub, env_for, make_settings, message, new_conversation

from chorus.core.testing import ServiceProcess
from chorus.v1 import history_service_pb2 as pb


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chorus.history", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_applies_pending_migrations_once(tmp_path: Path) -> None:
    env = env_for(make_settings(data_dir=tmp_path / "data"))
    listed = run_cli("migrate", "--list", env=env)
    assert listed.returncode == 0 and "0001.initial-schema" in listed.stderr
    applied = run_cli("migrate", env=env)
    assert applied.returncode == 0 and "0001.initial-schema" in applied.stderr
    assert (tmp_path / "data" / "history.sqlite3").exists()
    again = run_cli("migrate", "--list", env=env)
    assert again.returncode == 0
    pending = [
        json.loads(line)
        for line in again.stderr.splitlines()
        if line.startswith("{") and '"migrations_pending"' in line
    ]
    assert [p["migrations"] for p in pending] == [[]]


def test_migrate_reports_an_unreachable_database_and_fails() -> None:
    env = env_for(make_settings())
    env["CHORUS_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none"
    result = run_cli("migrate", env=env)
    assert result.returncode == 1 and "migration_failed" in result.stderr


async def test_the_embedded_default_serves_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    env = env_for(make_settings(data_dir=tmp_path / "data"))
    env["CHORUS_MIGRATE_ON_START"] = "true"
    with ServiceProcess("chorus.history", env=env) as proc:
        assert proc.address is not None
        async with grpc.aio.insecure_channel(proc.address) as channel:
            alice = UserStub(channel, "alice")
            conv = await new_conversation(alice, "kept")
            await alice.AppendMessages(
                pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("still here")])
            )
    assert proc.proc.returncode == 0  # SIGTERM → graceful stop
    with ServiceProcess("chorus.history", env=env) as proc:
        assert proc.address is not None
        async with grpc.aio.insecure_channel(proc.address) as channel:
            alice = UserStub(channel, "alice")
            listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id))
            assert [m.content for m in listed.messages] == ["still here"]
