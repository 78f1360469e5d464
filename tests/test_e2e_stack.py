"""End to end: the stack started the way `make run` starts it (`python -m chorus.cli.stack`),
on PostgreSQL + Redis, used by real clients — grpcurl, a generated-stub Python client, REST +
SSE + WebSocket, and the `chorus` CLI. history-svc reaches Redis through a TCP proxy the test
controls, so one test can cut it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import psycopg
import pytest
import websockets

from chorus.core.testing import TcpProxy, free_port, require_service
from chorus.v1 import (
    history_service_pb2,
    history_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

from .conftest import GRPCURL, REPO, launch_stack, stop_stack_process

pytestmark = pytest.mark.e2e
MD = (("x-chorus-user", "dev"),)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class RunningStack:
    proc: subprocess.Popen[str]
    lines: list[str]
    ports: dict[str, int]
    database_url: str
    redis_proxy: TcpProxy
    env: dict[str, str]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    name = f"chorus_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    proxy = TcpProxy(("127.0.0.1", 6379))
    ports = {n: free_port() for n in ("provider", "history", "orchestrator", "gateway")}
    env = {
        **os.environ,
        "CHORUS_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        "CHORUS_REDIS_URL": f"redis://{proxy.address}/0",
        "CHORUS_REDIS_KEY_PREFIX": f"chorus-e2e-{name}:",
        "CHORUS_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "CHORUS_GRACE_PERIOD_S": "5",
        "CHORUS_RATE_LIMIT_RUNS": "1000/minute",
        # provider-svc's own default pace, not `make run`'s human one (40 tokens/s)
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "250",
        **{f"CHORUS_{n.upper()}_PORT": str(p) for n, p in ports.items()},
    }
    for key in ("CHORUS_INTERNAL_TOKEN", "CHORUS_OPENAI_API_KEY", "CHORUS_ANTHROPIC_API_KEY"):
        env.pop(key, None)
    proc, lines = launch_stack(env, 90)
    running = RunningStack(proc, lines, ports, env["CHORUS_DATABASE_URL"], proxy, env)
    try:
        assert any("all services SERVING" in line for line in lines), "\n".join(lines[-40:])
        yield running
    finally:
        stop_stack_process(proc)
        proxy.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def grpcurl(
    *args: str, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    assert GRPCURL
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=timeout, input=stdin
    )


def messages_of(stdout: str) -> list[dict]:
    """grpcurl prints one JSON object per streamed message, with the proto's field names."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    text = stdout.strip()
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def events_of(stdout: str) -> list[dict]:
    return [message["event"] for message in messages_of(stdout)]


def payload(event: dict) -> str:
    return next(k for k in event if k not in ("run_id", "seq", "time", "agent"))


def test_startup_prints_every_address_and_the_simulator_banner(stack):
    text = "\n".join(stack.lines)
    assert stack.gateway in text
    for name in ("provider", "history", "orchestrator"):
        assert stack.address(name) in text
    assert "SIMULATOR" in text
    assert "PostgreSQL" in text and "Redis" in text


def test_grpcurl_lists_describes_and_streams_a_duet_to_completion(stack):
    listed = grpcurl(stack.address("orchestrator"), "list")
    assert "chorus.v1.RunService" in listed.stdout.split()
    described = grpcurl(stack.address("orchestrator"), "describe", "chorus.v1.RunService")
    assert (
        "rpc StreamRun ( .chorus.v1.StreamRunRequest ) returns ( stream .chorus.v1.StreamRunResponse );"
        in described.stdout
    )
    body = json.dumps(
        {"spec": {"template": "duet", "input": "Is remote work here to stay?", "maxTurns": 4}}
    )
    done = grpcurl("-d", body, stack.address("orchestrator"), "chorus.v1.RunService/StreamRun")
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    assert payload(events[0]) == "run_started" and payload(events[-1]) == "run_completed"
    agents = {e.get("agent") for e in events if payload(e) == "text_delta"}
    assert len(agents) == 2, f"both duet agents speak: {agents}"

    run_id = events[0]["run_id"]
    replay = grpcurl(
        "-d",
        json.dumps({"runId": run_id, "afterSeq": 10}),
        stack.address("orchestrator"),
        "chorus.v1.RunService/WatchRun",
    )
    assert replay.returncode == 0, replay.stderr
    assert events_of(replay.stdout) == events[10:]


def test_grpcurl_watches_several_runs_over_one_call(stack):
    requests = [
        {"watch_id": 1, "start": {"template": "duet", "input": "Tabs or spaces?", "max_turns": 2}},
        {"watch_id": 2, "watch": {"run_id": "00000000-0000-4000-8000-000000000000"}},
        {"watch_id": 3, "watch": {"run_id": "x", "after_seq": -1}},
    ]
    done = grpcurl(
        "-d",
        "@",
        stack.address("orchestrator"),
        "chorus.v1.RunService/WatchRuns",
        stdin="\n".join(json.dumps(r) for r in requests),
    )
    assert done.returncode == 0, done.stderr
    events: dict[str, list[dict]] = {}
    status: dict[str, dict] = {}
    for message in messages_of(done.stdout):
        for update in message["updates"]:
            assert update["watch_id"] not in status, "nothing after a watch's end"
            events.setdefault(update["watch_id"], []).extend(update.get("events", []))
            if "status" in update:
                status[update["watch_id"]] = update["status"]
    assert status["1"] == {}  # OK
    assert status["2"]["code"] == 5 and events["2"] == []  # NOT_FOUND, that watch only
    assert status["3"]["code"] == 3  # INVALID_ARGUMENT
    duet = events["1"]
    assert [int(e["seq"]) for e in duet] == list(range(1, len(duet) + 1))
    assert payload(duet[0]) == "run_started" and payload(duet[-1]) == "run_completed"
    replay = grpcurl(
        "-d",
        json.dumps({"run_id": duet[0]["run_id"]}),
        stack.address("orchestrator"),
        "chorus.v1.RunService/WatchRun",
    )
    assert events_of(replay.stdout) == duet


def test_grpcurl_cancels_a_live_run(stack):
    slow = {"tokens_per_second": 20, "output_tokens": 400}
    team = {
        "kind": "TEAM_KIND_ROUND_ROBIN",
        "agents": [
            {"name": "pro", "model": {"provider": "simulator"}, "simulator": slow},
            {"name": "con", "model": {"provider": "simulator"}, "simulator": slow},
        ],
    }
    body = json.dumps({"spec": {"team": team, "input": "A long debate", "max_turns": 10}})
    created = grpcurl("-d", body, stack.address("orchestrator"), "chorus.v1.RunService/CreateRun")
    assert created.returncode == 0, created.stderr
    run_id = json.loads(created.stdout)["run"]["id"]
    orchestrator = stack.address("orchestrator")
    cancelled = grpcurl(
        "-d",
        json.dumps({"run_id": run_id, "reason": "e2e"}),
        orchestrator,
        "chorus.v1.RunService/CancelRun",
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancelled"] is True
    watched = grpcurl(
        "-d", json.dumps({"run_id": run_id}), orchestrator, "chorus.v1.RunService/WatchRun"
    )
    last = events_of(watched.stdout)[-1]
    assert payload(last) == "run_cancelled"
    assert last["run_cancelled"]["cancellation"]["reason"] == "e2e"
    again = grpcurl(
        "-d", json.dumps({"run_id": run_id}), orchestrator, "chorus.v1.RunService/CancelRun"
    )
    assert json.loads(again.stdout).get("cancelled", False) is False


async def test_python_grpc_client_streams_and_resumes(stack):
    async with grpc.aio.insecure_channel(stack.address("orchestrator")) as channel:
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        spec = run_pb2.RunSpec(template="duet", input="Tabs or spaces?", max_turns=2)
        events = [
            r.event
            async for r in runs.StreamRun(run_service_pb2.StreamRunRequest(spec=spec), metadata=MD)
        ]
        assert events[-1].WhichOneof("payload") == "run_completed"
        run_id = events[0].run_id
        for k in (0, 1, len(events) // 2, len(events) - 1):
            tail = [
                r.event
                async for r in runs.WatchRun(
                    run_service_pb2.WatchRunRequest(run_id=run_id, after_seq=k), metadata=MD
                )
            ]
            assert [e.seq for e in tail] == list(range(k + 1, len(events) + 1))
        got = await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), metadata=MD)
        assert got.run.status == run_pb2.RUN_STATUS_COMPLETED


async def _sse_events(client: httpx.AsyncClient, url: str) -> list[dict]:
    out = []
    async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
    return out


async def test_rest_sse_and_websocket_see_the_same_events(stack):
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        created = await client.post(
            "/api/v1/runs", json={"template": "duet", "input": "Cats or dogs?", "maxTurns": 2}
        )
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]

        async def over_ws() -> list[dict]:
            ws_url = stack.gateway.replace("http", "ws") + "/api/v1/ws"
            got: list[dict] = []
            async with websockets.connect(ws_url, origin=stack.gateway) as ws:
                assert json.loads(await ws.recv()) == {"type": "status", "status": "connected"}
                await ws.send(
                    json.dumps({"type": "subscribe", "payload": {"run_id": run_id, "after_seq": 0}})
                )
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if "seq" in frame:
                        got.append(frame)
                        if any(k in frame for k in ("runCompleted", "runFailed", "runCancelled")):
                            return got

        sse, ws_events = await asyncio.gather(
            _sse_events(client, f"/api/v1/runs/{run_id}/events"), over_ws()
        )
    assert [e["seq"] for e in sse] == [e["seq"] for e in ws_events]
    # a WebSocket event frame is SSE's data with the payload's name as "type"
    kinds = [next(k for k in e if k not in ("runId", "seq", "time", "agent")) for e in sse]
    assert [e.pop("type") for e in ws_events] == [
        "".join(f"_{c.lower()}" if c.isupper() else c for c in k) for k in kinds
    ]
    assert sse == ws_events
    assert "runCompleted" in sse[-1]


def test_cli_runs_duet_and_lists_it(stack):
    env = {
        **stack.env,
        **{
            f"CHORUS_{n.upper()}_ADDRESS": stack.address(n)
            for n in ("provider", "history", "orchestrator")
        },
    }
    chorus = shutil.which("chorus", path=str(REPO / ".venv/bin")) or "chorus"
    done = subprocess.run(
        [chorus, "run", "duet", "--input", "Is remote work here to stay?", "--max-turns", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final answer" in done.stdout
    listed = subprocess.run(
        [chorus, "runs", "list", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)["runs"]
    assert runs[0]["spec"]["input"] == "Is remote work here to stay?"
    assert runs[0]["status"] == "RUN_STATUS_COMPLETED"


async def test_history_is_in_postgres_and_readable_with_redis_cut(stack):
    async with grpc.aio.insecure_channel(stack.address("orchestrator")) as channel:
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        spec = run_pb2.RunSpec(template="duet", input="Coffee or tea?", max_turns=2)
        events = [
            r.event
            async for r in runs.StreamRun(run_service_pb2.StreamRunRequest(spec=spec), metadata=MD)
        ]
    run_id = events[0].run_id
    with psycopg.connect(stack.database_url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "select table_name from information_schema.tables where table_schema='public'"
            )
        }
        assert tables, "no tables in PostgreSQL"
    stack.redis_proxy.cut()
    try:
        async with grpc.aio.insecure_channel(stack.address("history")) as channel:
            history = history_service_pb2_grpc.HistoryServiceStub(channel)
            record = await history.GetRunRecord(
                history_service_pb2.GetRunRecordRequest(run_id=run_id), metadata=MD, timeout=10
            )
            assert record.run.status == run_pb2.RUN_STATUS_COMPLETED
            listed = await history.ListRunEvents(
                history_service_pb2.ListRunEventsRequest(run_id=run_id, page_size=5000),
                metadata=MD,
                timeout=10,
            )
            assert [e.seq for e in listed.events] == [e.seq for e in events]
            messages = await history.ListMessages(
                history_service_pb2.ListMessagesRequest(
                    conversation_id=record.run.conversation_id, run_id=run_id
                ),
                metadata=MD,
                timeout=10,
            )
            completed = [e for e in events if e.WhichOneof("payload") == "message_completed"]
            assert len(messages.messages) >= len(completed) > 0
    finally:
        stack.redis_proxy.restore()


def test_sigterm_stops_every_process_with_exit_code_0(stack):
    """Runs last in this module: stops the shared stack."""
    stack.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert stack.proc.wait(30) == 0, "\n".join(stack.lines[-30:])
    assert time.monotonic() - started < 5 + 5
    assert any("stopped (exit code 0)" in line for line in stack.lines)
    assert not any("exited unexpectedly" in line for line in stack.lines)
