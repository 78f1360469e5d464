"""Helpers of the orchestrator-svc tests: the three services in process, clients, builders.

Every service here is the real one on a real socket: provider-svc with its simulator,
history-svc on SQLite (or PostgreSQL + Redis), orchestrator-svc — each a `GrpcServer` on
port 0 in the test's event loop, or a `python -m chorus.orchestrator` child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from prometheus_client import REGISTRY

from chorus.core.identity import TOKEN_KEY, USER_KEY
from chorus.core.server import GrpcServer
from chorus.core.testing import ServiceProcess
from chorus.core.testing import fields_of as fields_of
from chorus.core.testing import rpc_error as rpc_error
from chorus.history.app import HistoryApp
from chorus.history.app import build_app as build_history
from chorus.history.settings import Settings as HistorySettings
from chorus.orchestrator.app import OrchestratorApp
from chorus.orchestrator.app import build_app as build_orchestrator
from chorus.orchestrator.settings import Settings as OrchestratorSettings
from chorus.provider.app import ProviderApp
from chorus.provider.app import build_app as build_provider
from chorus.provider.settings import Settings as ProviderSettings
from chorus.v1 import (
    chat_pb2,
    history_service_pb2_grpc,
    run_pb2,
    run_service_pb2_grpc,
    team_pb2,
)
from chorus.v1 import (
    history_service_pb2 as hs,
)
from chorus.v1 import (
    run_service_pb2 as rs,
)

TOKEN = "orchestrator-test-token"
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
ADMIN_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
TERMINAL = ("run_completed", "run_failed", "run_cancelled")
TIMEOUT_S = 20.0
"""Upper bound of any wait in these tests (they normally take milliseconds)."""

BOTH_BACKENDS = pytest.mark.parametrize("history_backend", ["sqlite", "postgres"], indirect=True)
"""Runs a test with history-svc on SQLite and on PostgreSQL + Redis."""

ORCHESTRATOR_TEST_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_s": 0.1,
    "lease_duration_s": 1.0,
    "sweep_interval_s": 0.2,
    "cancel_wait_s": 5.0,
    "tool_entry_points": True,
}
"""Short liveness intervals so cross-replica cancels and recovery take a fraction of a second."""


def orchestrator_settings(provider: str, history: str, **values: Any) -> OrchestratorSettings:
    """Orchestrator settings for tests (token auth, port 0, short intervals, no .env)."""
    base: dict[str, Any] = {
        "internal_token": TOKEN,
        "dev_mode": False,
        "orchestrator_port": 0,
        "provider_address": provider,
        "history_address": history,
        "instance_id": f"orch-{uuid.uuid4().hex[:8]}",
        **ORCHESTRATOR_TEST_SETTINGS,
    }
    base.update(values)
    return OrchestratorSettings(_env_file=None, **base)  # type: ignore[call-arg]


def orchestrator_env(provider: str, history: str, **values: Any) -> dict[str, str]:
    """Environment of a `python -m chorus.orchestrator` child with the test settings."""
    settings = {**ORCHESTRATOR_TEST_SETTINGS, **values}
    env = {
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "CHORUS_DEV_MODE": "false",
        "CHORUS_ORCHESTRATOR_PORT": "0",
        "CHORUS_PROVIDER_ADDRESS": provider,
        "CHORUS_HISTORY_ADDRESS": history,
        "CHORUS_GRACE_PERIOD_S": "1",
    }
    env.update(
        {
            f"CHORUS_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in settings.items()
        }
    )
    return env


# --------------------------------------------------------------------------- clients
class RunClient:
    """RunService calls as one user (internal token + `x-chorus-user`)."""

    def __init__(self, channel: grpc.aio.Channel, user: str) -> None:
        self.stub = run_service_pb2_grpc.RunServiceStub(channel)
        self.user = user
        self.md = ((USER_KEY, user), (TOKEN_KEY, TOKEN))

    async def create(self, spec: run_pb2.RunSpec) -> run_pb2.Run:
        response = await self.stub.CreateRun(rs.CreateRunRequest(spec=spec), metadata=self.md)
        return response.run

    async def stream(self, spec: run_pb2.RunSpec) -> list[run_pb2.RunEvent]:
        """StreamRun to the end; the events."""
        call = self.stub.StreamRun(rs.StreamRunRequest(spec=spec), metadata=self.md)
        return [r.event async for r in call]

    async def watch(self, run_id: str, after_seq: int = 0) -> list[run_pb2.RunEvent]:
        """WatchRun to the end; the events."""
        call = self.stub.WatchRun(
            rs.WatchRunRequest(run_id=run_id, after_seq=after_seq), metadata=self.md
        )
        return [r.event async for r in call]

    def watch_call(self, run_id: str, after_seq: int = 0) -> Any:
        """An open WatchRun call (read it with `async for` or `.read()`)."""
        return self.stub.WatchRun(
            rs.WatchRunRequest(run_id=run_id, after_seq=after_seq), metadata=self.md
        )

    async def get(self, run_id: str) -> run_pb2.Run:
        return (await self.stub.GetRun(rs.GetRunRequest(run_id=run_id), metadata=self.md)).run

    async def list(self, **fields: Any) -> rs.ListRunsResponse:
        return await self.stub.ListRuns(rs.ListRunsRequest(**fields), metadata=self.md)

    async def cancel(self, run_id: str, reason: str = "") -> rs.CancelRunResponse:
        return await self.stub.CancelRun(
            rs.CancelRunRequest(run_id=run_id, reason=reason), metadata=self.md
        )

    async def update_agent(
        self, run_id: str, agent_name: str, agent: team_pb2.AgentSpec, paths: Iterable[str]
    ) -> team_pb2.AgentSpec:
        request = rs.UpdateRunAgentRequest(
            run_id=run_id,
            agent_name=agent_name,
            agent=agent,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        return (await self.stub.UpdateRunAgent(request, metadata=self.md)).agent

    async def submit_input(
        self,
        run_id: str,
        input_id: str,
        *,
        text: str | None = None,
        approve: bool | None = None,
        reason: str = "",
        request_id: str = "",
    ) -> rs.SubmitRunInputResponse:
        """SubmitRunInput: `text`, or a decision (`approve` True / False with `reason`)."""
        request = rs.SubmitRunInputRequest(run_id=run_id, input_id=input_id, request_id=request_id)
        if text is not None:
            request.text = text
        if approve is not None:
            request.decision.CopyFrom(run_pb2.ApprovalDecision(approved=approve, reason=reason))
        return await self.stub.SubmitRunInput(request, metadata=self.md)

    async def templates(self) -> list[team_pb2.TeamTemplate]:
        response = await self.stub.ListTeamTemplates(
            rs.ListTeamTemplatesRequest(), metadata=self.md
        )
        return list(response.templates)

    async def wait_status(
        self, run_id: str, *statuses: int, timeout: float = TIMEOUT_S
    ) -> run_pb2.Run:
        """Poll GetRun until the run has one of `statuses`."""
        async with asyncio.timeout(timeout):
            while True:
                run = await self.get(run_id)
                if run.status in statuses:
                    return run
                await asyncio.sleep(0.02)


class HistoryClient:
    """HistoryService calls as one user (to look at what the orchestrator stored)."""

    def __init__(self, channel: grpc.aio.Channel, user: str) -> None:
        self.stub = history_service_pb2_grpc.HistoryServiceStub(channel)
        self.md = ((USER_KEY, user), (TOKEN_KEY, TOKEN))

    async def events(self, run_id: str, after_seq: int = 0) -> list[run_pb2.RunEvent]:
        out: list[run_pb2.RunEvent] = []
        while True:
            page = await self.stub.ListRunEvents(
                hs.ListRunEventsRequest(run_id=run_id, after_seq=after_seq, page_size=5000),
                metadata=self.md,
            )
            if not page.events:
                return out
            out.extend(page.events)
            after_seq = page.events[-1].seq

    async def record(self, run_id: str) -> run_pb2.Run:
        response = await self.stub.GetRunRecord(
            hs.GetRunRecordRequest(run_id=run_id), metadata=self.md
        )
        return response.run

    async def messages(self, conversation_id: str) -> list[Any]:
        response = await self.stub.ListMessages(
            hs.ListMessagesRequest(conversation_id=conversation_id, page_size=1000),
            metadata=self.md,
        )
        return list(response.messages)

    async def conversations(self) -> list[Any]:
        response = await self.stub.ListConversations(
            hs.ListConversationsRequest(page_size=1000), metadata=self.md
        )
        return list(response.conversations)


def history_calls(method: str) -> float:
    """HistoryService unary calls of `method` started so far in this process (history-svc's
    own `grpc_server_started_total`; the stack's history-svc runs here)."""
    labels = {"grpc_type": "unary", "grpc_service": "chorus.v1.HistoryService"}
    return (
        REGISTRY.get_sample_value("grpc_server_started_total", {**labels, "grpc_method": method})
        or 0.0
    )


# --------------------------------------------------------------------------- services
@dataclass
class Stack:
    """provider-svc, history-svc and orchestrator-svc running in this process."""

    provider: ProviderApp
    provider_server: GrpcServer
    history: HistoryApp
    history_server: GrpcServer
    orchestrator: OrchestratorApp
    server: GrpcServer
    channel: grpc.aio.Channel
    history_channel: grpc.aio.Channel
    extra: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.server.address

    def client(self, user: str) -> RunClient:
        return RunClient(self.channel, user)

    def history_client(self, user: str) -> HistoryClient:
        return HistoryClient(self.history_channel, user)

    @property
    def received(self) -> Any:
        """The simulator's received StreamChat requests (a deque, oldest first)."""
        return self.provider.simulator.received


def provider_settings(**values: Any) -> ProviderSettings:
    base: dict[str, Any] = {
        "internal_token": TOKEN,
        "dev_mode": False,
        "simulator_time_to_first_token_s": 0.0,
        "simulator_tokens_per_second": 0.0,
    }
    base.update(values)
    return ProviderSettings(_env_file=None, **base)  # type: ignore[call-arg]


def history_settings(data_dir: Path, **values: Any) -> HistorySettings:
    base: dict[str, Any] = {
        "internal_token": TOKEN,
        "dev_mode": False,
        "data_dir": data_dir,
        "migrate_on_start": True,
    }
    base.update(values)
    return HistorySettings(_env_file=None, **base)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running_orchestrator(
    settings: OrchestratorSettings,
) -> AsyncIterator[tuple[OrchestratorApp, GrpcServer]]:
    """An orchestrator in this process."""
    app = await build_orchestrator(settings)
    server = GrpcServer(app.bindings, settings, 0)
    await server.start()
    await app.on_started(server)
    try:
        yield app, server
    finally:
        await server.stop(0)
        await app.close(timeout_s=5)


@contextlib.asynccontextmanager
async def running_stack(
    data_dir: Path,
    *,
    history_values: dict[str, Any] | None = None,
    orchestrator_values: dict[str, Any] | None = None,
) -> AsyncIterator[Stack]:
    """The three services in this process."""
    provider = await build_provider(provider_settings())
    provider_server = GrpcServer(provider.bindings, provider.settings, 0)
    await provider_server.start()
    history = await build_history(history_settings(data_dir, **(history_values or {})))
    history_server = GrpcServer(history.bindings, history.settings, 0)
    await history_server.start()
    await history.on_started(history_server)
    settings = orchestrator_settings(
        provider_server.address, history_server.address, **(orchestrator_values or {})
    )
    async with running_orchestrator(settings) as (app, server):
        channel = grpc.aio.insecure_channel(server.address)
        history_channel = grpc.aio.insecure_channel(history_server.address)
        try:
            yield Stack(
                provider,
                provider_server,
                history,
                history_server,
                app,
                server,
                channel,
                history_channel,
            )
        finally:
            await channel.close()
            await history_channel.close()
    await history_server.stop(0)
    await history.close()
    await provider_server.stop(0)
    await provider.close()


@contextlib.asynccontextmanager
async def orchestrator_process(
    stack: Stack, **values: Any
) -> AsyncIterator[tuple[ServiceProcess, grpc.aio.Channel]]:
    """`python -m chorus.orchestrator` using the stack's provider-svc and history-svc."""
    env = orchestrator_env(stack.provider_server.address, stack.history_server.address, **values)
    proc = ServiceProcess("chorus.orchestrator", env={**os.environ, **env})
    try:
        address = await asyncio.to_thread(proc.wait_ready)
        channel = grpc.aio.insecure_channel(address)
        try:
            yield proc, channel
        finally:
            await channel.close()
    finally:
        await asyncio.to_thread(proc.stop)


# --------------------------------------------------------------------------- builders
def sim(
    *,
    ttft_s: float = 0.0,
    tokens_per_second: float | None = 0.0,
    output_tokens: int = 0,
    fault: chat_pb2.SimulatorFault | None = None,
    seed: int = 0,
) -> chat_pb2.SimulatorOptions:
    """Simulator options (fast by default)."""
    options = chat_pb2.SimulatorOptions(
        seed=seed,
        time_to_first_token=duration_pb2.Duration(
            nanos=int(ttft_s * 1e9) % 1_000_000_000, seconds=int(ttft_s)
        ),
        output_tokens=output_tokens,
    )
    if tokens_per_second is not None:
        options.tokens_per_second = tokens_per_second
    if fault is not None:
        options.fault.CopyFrom(fault)
    return options


def agent(
    name: str,
    *,
    model: str = "sim-1",
    provider: str = "simulator",
    prompt: str = "",
    tools: Iterable[str] = (),
    simulator: chat_pb2.SimulatorOptions | None = None,
    temperature: float | None = None,
) -> team_pb2.AgentSpec:
    spec = team_pb2.AgentSpec(
        name=name,
        system_prompt=prompt or f"You are {name}.",
        model=chat_pb2.ModelRef(provider=provider, model=model),
        tools=list(tools),
    )
    if simulator is not None:
        spec.simulator.CopyFrom(simulator)
    if temperature is not None:
        spec.temperature = temperature
    return spec


def team(kind: int, *agents: team_pb2.AgentSpec, max_turns: int = 0) -> team_pb2.TeamSpec:
    return team_pb2.TeamSpec(kind=kind, agents=agents, max_turns=max_turns)


def duet(
    *, turns: int = 4, simulator: chat_pb2.SimulatorOptions | None = None
) -> team_pb2.TeamSpec:
    """Two round-robin agents on two simulator models."""
    return team(
        team_pb2.TEAM_KIND_ROUND_ROBIN,
        agent("Ada", model="sim-1", simulator=simulator),
        agent("Blaise", model="sim-fast", simulator=simulator),
        max_turns=turns,
    )


def slow_duet(
    turns: int = 4, tokens_per_second: float = 200.0, output_tokens: int = 400
) -> team_pb2.TeamSpec:
    """A duet whose every reply streams for `output_tokens / tokens_per_second` seconds."""
    return duet(
        turns=turns, simulator=sim(tokens_per_second=tokens_per_second, output_tokens=output_tokens)
    )


def paced_duet() -> team_pb2.TeamSpec:
    """Two agents (Ada, Blaise, both on sim-1), 4 turns of about a second each."""
    options = sim(tokens_per_second=150.0, output_tokens=150)
    return team(
        team_pb2.TEAM_KIND_ROUND_ROBIN,
        agent("Ada", simulator=options),
        agent("Blaise", simulator=options),
        max_turns=4,
    )


SLOW_DUET = slow_duet(tokens_per_second=50.0, output_tokens=500)
"""Four turns, each reply streaming ~10 s unless cancelled."""


def is_delta(event: run_pb2.RunEvent) -> bool:
    """Whether `event` is a `text_delta`."""
    return event.HasField("text_delta")


def spec(
    *,
    template: str = "",
    team_spec: team_pb2.TeamSpec | None = None,
    input: str = "Is remote work better for software teams?",
    **fields: Any,
) -> run_pb2.RunSpec:
    out = run_pb2.RunSpec(template=template, input=input, **fields)
    if team_spec is not None:
        out.team.CopyFrom(team_spec)
    return out


# --------------------------------------------------------------------------- checks
def kinds(events: Iterable[run_pb2.RunEvent]) -> list[str]:
    return [str(e.WhichOneof("payload")) for e in events]


def assert_well_formed(events: list[run_pb2.RunEvent]) -> None:
    """Seqs 1..n without gaps, `run_started` first, exactly one terminal event, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].WhichOneof("payload") == "run_started"
    terminal = [i for i, k in enumerate(kinds(events)) if k in TERMINAL]
    assert terminal == [len(events) - 1], kinds(events)
    assert len({e.run_id for e in events}) == 1


async def read_until(call: Any, predicate: Any) -> list[run_pb2.RunEvent]:
    """Read a streaming call until an event satisfies `predicate`; the events read."""
    out: list[run_pb2.RunEvent] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            response = await call.read()
            assert response is not grpc.aio.EOF, f"stream ended early after {kinds(out)}"
            out.append(response.event)
            if predicate(response.event):
                return out


async def read_rest(call: Any) -> list[run_pb2.RunEvent]:
    """Read a streaming call (already read with `.read()`) to its end; the events."""
    out: list[run_pb2.RunEvent] = []
    async with asyncio.timeout(TIMEOUT_S):
        while (response := await call.read()) is not grpc.aio.EOF:
            out.append(response.event)
    return out
