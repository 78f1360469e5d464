"""SINGLE teams (the agent run directly, no group chat): the reply streams and completes,
cancel stops the provider stream, a provider failure keeps its code, UpdateRunAgent is
announced, the first model call is opened with the run's start (and cancelled when the run
does not start)."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from orchestrator_helpers import (
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    history_calls,
    kinds,
    read_rest,
    read_until,
    sim,
    spec,
    team,
)
from prometheus_client import REGISTRY

from chorus.core.errors import rpc_code
from chorus.core.testing import wait_for
from chorus.orchestrator.events import RunEventLog
from chorus.v1 import chat_pb2, run_pb2, team_pb2
from chorus.v1 import run_service_pb2 as rs

SINGLE = team_pb2.TEAM_KIND_SINGLE
Fault = chat_pb2.SimulatorFault


async def test_a_single_run_streams_its_reply_and_completes(stack: Stack, alice: RunClient) -> None:
    events = await alice.stream(
        spec(team_spec=team(SINGLE, agent("writer", simulator=sim(output_tokens=12))))
    )
    assert_well_formed(events)
    k = kinds(events)
    assert k[:2] == ["run_started", "agent_started"]
    assert k[-4:] == ["message_completed", "agent_finished", "progress", "run_completed"]
    assert set(k[2:-4]) == {"text_delta"}
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    done = events[-1].run_completed
    assert done.final_answer == text == events[-4].message_completed.message.content
    assert list(done.agents) == ["writer"] and done.stop_reason == "completed"
    assert done.usage.output_tokens == 12


async def test_a_single_run_is_three_history_writes_opening_reply_and_end(
    stack: Stack, alice: RunClient
) -> None:
    methods = ("RecordRunStart", "AppendRunEvents", "AppendMessages", "RecordRun")
    before = {m: history_calls(m) for m in methods}
    events = await alice.stream(
        spec(team_spec=team(SINGLE, agent("writer", simulator=sim(output_tokens=5))))
    )
    calls = {m: history_calls(m) - before[m] for m in methods}
    # the opening (with agent_started), the reply message, and one write of the turn's
    # closing events, the terminal event and the final record; no record update after it
    assert calls == {"RecordRunStart": 1, "AppendRunEvents": 1, "AppendMessages": 1, "RecordRun": 0}
    assert kinds(events)[:2] == ["run_started", "agent_started"]
    end = events[-1]
    record = await stack.history_client(alice.user).record(end.run_id)
    assert record.status == run_pb2.RUN_STATUS_COMPLETED
    assert record.final_answer == end.run_completed.final_answer
    assert record.last_seq == end.seq and record.turns == 1
    assert record.usage.output_tokens == 5 and record.end_time.seconds > 0
    stored = await stack.history_client(alice.user).events(end.run_id)
    assert stored == events  # the log as streamed, seq 1 to the end


async def test_a_single_run_is_cancelled_mid_stream(stack: Stack, alice: RunClient) -> None:
    slow = sim(tokens_per_second=50.0, output_tokens=500)
    run = await alice.create(spec(team_spec=team(SINGLE, agent("writer", simulator=slow))))
    call = alice.watch_call(run.id)
    head = await read_until(call, lambda e: e.HasField("text_delta"))
    assert stack.provider.simulator.active_streams == 1
    response = await alice.cancel(run.id, reason="enough")
    assert response.cancelled and response.run.status == run_pb2.RUN_STATUS_CANCELLED
    await wait_for(lambda: stack.provider.simulator.active_streams == 0, timeout=2)
    events = head + await read_rest(call)
    assert_well_formed(events)
    assert events[-1].run_cancelled.cancellation.reason == "enough"


async def test_a_provider_failure_of_a_single_run_keeps_the_providers_code(
    stack: Stack, alice: RunClient
) -> None:
    fault = Fault(
        kind=Fault.KIND_ERROR, after_tokens=2, code=rpc_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
    )
    events = await alice.stream(
        spec(team_spec=team(SINGLE, agent("writer", simulator=sim(output_tokens=9, fault=fault))))
    )
    assert_well_formed(events)
    error = events[-1].run_failed.error
    assert error.code == rpc_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error.retryable and error.reason == "PROVIDER_ERROR"


async def test_an_update_of_a_live_single_run_is_announced_and_the_run_completes(
    stack: Stack, alice: RunClient
) -> None:
    paced = sim(tokens_per_second=60.0, output_tokens=30)
    run = await alice.create(spec(team_spec=team(SINGLE, agent("writer", simulator=paced))))
    call = alice.watch_call(run.id)
    head = await read_until(call, lambda e: e.HasField("text_delta"))
    updated = await alice.update_agent(
        run.id, "writer", team_pb2.AgentSpec(temperature=0.3), ["temperature"]
    )
    assert updated.temperature == pytest.approx(0.3)
    events = head + await read_rest(call)
    assert_well_formed(events)
    assert events[-1].HasField("run_completed")
    (update,) = [e for e in events if e.HasField("agent_updated")]
    assert update.agent == "writer" and list(update.agent_updated.fields) == ["temperature"]
    # One turn only: the change was staged for a next turn that a SINGLE run never has.
    (request,) = [r for r in stack.received if r.metadata.get("run_id") == run.id]
    assert not request.HasField("temperature")


def prefetches(outcome: str) -> float:
    """`chorus_orchestrator_model_call_prefetches_total{outcome}` of the orchestrator in this process."""
    return (
        REGISTRY.get_sample_value(
            "chorus_orchestrator_model_call_prefetches_total", {"outcome": outcome}
        )
        or 0
    )


async def test_the_first_model_call_of_a_new_conversations_run_is_opened_with_its_start(
    stack: Stack, alice: RunClient
) -> None:
    writer = agent("writer", tools=["current_time"], simulator=sim(output_tokens=4))
    used = prefetches("used")
    events = await alice.stream(spec(team_spec=team(SINGLE, writer)))
    assert events[-1].HasField("run_completed")
    assert prefetches("used") == used + 1  # the agent's own request was the prefetched one
    # its tool call, then the reply after the tool's result: two calls, the first prefetched
    first, _ = [r for r in stack.received if r.metadata.get("run_id") == events[0].run_id]
    assert [m.role for m in first.messages] == [chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_USER]
    assert [t.name for t in first.tools] == ["current_time"]


@pytest.mark.parametrize("repeat", ["request_id", "conversation"])
async def test_a_run_that_could_find_an_earlier_run_or_context_calls_its_model_once_started(
    stack: Stack, alice: RunClient, repeat: str
) -> None:
    writer = agent("writer", simulator=sim(output_tokens=4))
    first = await alice.stream(spec(team_spec=team(SINGLE, writer)))
    fields = (
        {"request_id": "0f9b3a52-3d5e-4d0a-9a53-6a1f1c2b8e11"}
        if repeat == "request_id"
        else {"conversation_id": first[0].run_started.run.conversation_id}
    )
    before = {o: prefetches(o) for o in ("used", "mismatch", "dropped")}
    events = await alice.stream(spec(team_spec=team(SINGLE, writer), **fields))
    assert events[-1].HasField("run_completed")
    assert {o: prefetches(o) for o in before} == before
    assert len([r for r in stack.received if r.metadata.get("run_id") == events[0].run_id]) == 1


@pytest.mark.parametrize("history_backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("orchestrator_values", [{"store_outage_limit_s": 0.0}], indirect=True)
async def test_the_first_model_call_runs_during_the_opening_write_and_ends_when_it_fails(
    stack: Stack, alice: RunClient, pg_url: str
) -> None:
    dropped = prefetches("dropped")
    async with (
        await psycopg.AsyncConnection.connect(pg_url) as lock,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin,
    ):
        # New conversations wait for this lock: the run's opening write stays under way.
        await lock.execute("LOCK TABLE conversations IN EXCLUSIVE MODE")
        waiting = agent("writer", simulator=sim(ttft_s=60, output_tokens=4))
        start = asyncio.create_task(alice.stream(spec(team_spec=team(SINGLE, waiting))))

        async def blocked_write() -> tuple[int] | None:
            # (not on `lock`: a transaction sees one snapshot of pg_stat_activity)
            waiting = await admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            return await waiting.fetchone()

        pid = await wait_for(blocked_write)
        await wait_for(lambda: stack.provider.simulator.active_streams == 1)
        await admin.execute("SELECT pg_cancel_backend(%s)", pid)  # the write fails
        with pytest.raises(grpc.aio.AioRpcError):  # INTERNAL: history-svc's statement failed
            await start
        await lock.rollback()
    await wait_for(lambda: stack.provider.simulator.active_streams == 0)
    assert prefetches("dropped") == dropped + 1
    assert await stack.history_client(alice.user).conversations() == []  # nothing stored


@pytest.mark.parametrize("history_backend", ["postgres"], indirect=True)
async def test_the_first_deltas_are_read_during_the_opening_write_and_shown_after_it(
    stack: Stack, alice: RunClient, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Time to first token: the prefetched call's deltas enter the run's log as they arrive,
    # while the opening write is under way (their own write starts with its answer, not
    # once the team is built); log before show: nobody sees them before both are stored.
    emitted: list[run_pb2.RunEvent] = []
    emit_delta = RunEventLog.emit_delta

    def counted(self: RunEventLog, event: run_pb2.RunEvent) -> None:
        emitted.append(event)
        emit_delta(self, event)

    monkeypatch.setattr(RunEventLog, "emit_delta", counted)
    async with (
        await psycopg.AsyncConnection.connect(pg_url) as lock,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin,
    ):
        # New conversations wait for this lock: the run's opening write stays under way.
        await lock.execute("LOCK TABLE conversations IN EXCLUSIVE MODE")
        writer = agent("writer", simulator=sim(output_tokens=4))
        request = rs.StreamRunRequest(spec=spec(team_spec=team(SINGLE, writer)))
        call = alice.stub.StreamRun(request, metadata=alice.md)
        first = asyncio.create_task(read_until(call, lambda e: True))

        async def blocked_write() -> tuple[int] | None:
            waiting = await admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            return await waiting.fetchone()

        await wait_for(blocked_write)  # the opening write waits for the lock …
        await wait_for(lambda: emitted)  # … while the reply enters the log
        assert emitted[0].seq == 3  # after run_started and agent_started
        assert not first.done()  # nothing shown: the run is not stored
        await lock.rollback()
    events = await first + await read_rest(call)
    assert_well_formed(events)
    assert kinds(events)[:3] == ["run_started", "agent_started", "text_delta"]
    assert events[-1].HasField("run_completed")
    assert await stack.history_client(alice.user).events(events[0].run_id) == events
