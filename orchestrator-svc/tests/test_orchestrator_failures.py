"""Failures end runs cleanly: provider errors give `run_failed` with the provider's code and
retryable flag, failing tools do not fail the run, a run whose log another writer took lets
go, and a cancel of a run whose orchestrator died ends it at once. (Runs of an orchestrator
that died or stopped are resumed: test_orchestrator_durable.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from orchestrator_helpers import (
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    duet,
    kinds,
    orchestrator_process,
    read_until,
    running_stack,
    sim,
    spec,
    team,
)

from chorus.core.errors import rpc_code
from chorus.core.testing import wait_for
from chorus.v1 import chat_pb2, run_pb2, team_pb2
from chorus.v1 import history_service_pb2 as hs

Fault = chat_pb2.SimulatorFault
SINGLE = team_pb2.TEAM_KIND_SINGLE


def faulty_duet(fault: chat_pb2.SimulatorFault) -> team_pb2.TeamSpec:
    """Ada answers normally; Blaise's model call fails with `fault`."""
    return team(
        team_pb2.TEAM_KIND_ROUND_ROBIN,
        agent("Ada", simulator=sim(output_tokens=10)),
        agent("Blaise", simulator=sim(output_tokens=10, fault=fault)),
        max_turns=4,
    )


@pytest.mark.parametrize(
    ("fault", "code", "retryable"),
    [
        (
            Fault(
                kind=Fault.KIND_ERROR, after_tokens=3, code=rpc_code(grpc.StatusCode.UNAVAILABLE)
            ),
            grpc.StatusCode.UNAVAILABLE,
            True,
        ),
        (Fault(kind=Fault.KIND_DROP, after_tokens=3), grpc.StatusCode.UNAVAILABLE, False),
        (
            Fault(
                kind=Fault.KIND_ERROR,
                after_tokens=0,
                code=rpc_code(grpc.StatusCode.PERMISSION_DENIED),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            False,
        ),
    ],
    ids=["error-mid-stream", "drop-mid-stream", "refused-before-stream"],
)
async def test_a_provider_failure_mid_run_ends_it_with_the_providers_code_and_retryable_flag(
    stack: Stack,
    alice: RunClient,
    fault: chat_pb2.SimulatorFault,
    code: grpc.StatusCode,
    retryable: bool,
) -> None:
    events = await alice.stream(spec(team_spec=faulty_duet(fault)))
    assert_well_formed(events)
    error = events[-1].run_failed.error
    assert error.code == rpc_code(code)
    assert error.retryable is retryable
    assert error.reason == "PROVIDER_ERROR" and error.message
    # Ada's turn completed; Blaise's turn started (and streamed what it got) but never completed.
    completed = [e.agent for e in events if e.HasField("message_completed")]
    assert completed == ["Ada"]
    assert [e.agent for e in events if e.HasField("agent_started")] == ["Ada", "Blaise"]
    if fault.after_tokens:
        assert any(e.agent == "Blaise" and e.HasField("text_delta") for e in events)
    record = await stack.history_client(alice.user).record(events[0].run_id)
    assert record.status == run_pb2.RUN_STATUS_FAILED and record.error == error


TOOLS_MODULE = '''
import asyncio


def explode(reason: str) -> str:
    """Fail on purpose with the given reason."""
    raise RuntimeError(f"boom: {reason}")


async def nap(seconds: float) -> str:
    """Sleep for the given number of seconds."""
    await asyncio.sleep(60)
    return "rested"
'''


@pytest.fixture
def third_party_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution declaring two tools in the `chorus.tools` entry-point group."""
    site = tmp_path / "site"
    dist = site / "chorus_test_tools-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / "chorus_test_tools.py").write_text(TOOLS_MODULE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chorus-test-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[chorus.tools]\nexplode = chorus_test_tools:explode\nnap = chorus_test_tools:nap\n"
    )
    monkeypatch.syspath_prepend(str(site))


@pytest.mark.usefixtures("third_party_tools")
async def test_a_tool_that_raises_or_hangs_gives_an_unsuccessful_call_not_a_failed_run(
    tmp_path: Path,
) -> None:
    async with running_stack(
        tmp_path / "stack", orchestrator_values={"tool_timeout_s": 0.2}
    ) as stack:
        alice = stack.client("alice")
        for tool, expected in (("explode", "boom"), ("nap", "timed out after 0.2 s")):
            events = await alice.stream(
                spec(team_spec=team(SINGLE, agent("helper", tools=[tool])), input="please do it")
            )
            assert_well_formed(events)
            assert events[-1].HasField("run_completed"), kinds(events)
            (finished,) = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
            assert finished.call.name == tool and not finished.success
            assert expected in finished.result


async def test_a_tool_can_attach_an_artifact_to_the_run(alice: RunClient) -> None:
    events = await alice.stream(
        spec(
            team_spec=team(SINGLE, agent("charts", tools=["price_chart"])),
            input="Chart BTC for 30 days",
        )
    )
    assert_well_formed(events)
    (artifact,) = [e.artifact for e in events if e.HasField("artifact")]
    assert artifact.mime_type == "image/svg+xml" and artifact.name.endswith(".svg")
    assert artifact.data.startswith(b"<svg")
    k = kinds(events)
    assert k.index("tool_call_started") < k.index("artifact") < k.index("tool_call_finished")


# ~5 s per reply: the run is surely mid-stream when its orchestrator dies.
SLOW = duet(turns=4, simulator=sim(tokens_per_second=100.0, output_tokens=500))


async def _start_on(client: RunClient, stack: Stack) -> tuple[str, list[run_pb2.RunEvent]]:
    """Start a slow run through `client`; return its id and the events watched so far, once
    more than 5 of them are stored in history-svc (deltas are flushed in batches)."""
    run = await client.create(spec(team_spec=SLOW))
    head = await read_until(
        client.watch_call(run.id), lambda e: e.HasField("text_delta") and e.seq > 5
    )
    history = stack.history_client(client.user)

    async def stored() -> bool:
        return len(await history.events(run.id)) > 5

    await wait_for(stored, timeout=10, interval=0.02)
    return run.id, head


async def test_a_run_whose_delta_batch_history_rejects_lets_go_and_writes_nothing_more(
    stack: Stack, alice: RunClient
) -> None:
    run_id, _ = await _start_on(alice, stack)
    history = stack.history_client(alice.user)
    intruder = run_pb2.RunEvent(
        agent="intruder", text_delta=run_pb2.RunEvent.TextDelta(text="another writer")
    )

    async def intrude() -> bool:  # another writer takes the next seq (a recovery sweep would)
        stored = await history.events(run_id)
        intruder.seq = stored[-1].seq + 1
        try:
            await history.stub.AppendRunEvents(
                hs.AppendRunEventsRequest(run_id=run_id, events=[intruder]), metadata=history.md
            )
        except grpc.aio.AioRpcError:  # the orchestrator stored that seq first: try the next
            return False
        return True

    await wait_for(intrude, timeout=10)
    # The flusher's next batch for the run conflicts: the run lets go at once (well before
    # its agent's turn ends, ~5 s in, when a lifecycle write would have found the conflict).
    await wait_for(lambda: run_id not in stack.orchestrator.manager.live_runs, timeout=2)
    events = await history.events(run_id)
    assert events[intruder.seq - 1].agent == "intruder"
    # nothing of the orchestrator's after it (only, maybe, another replica's resume)
    rest = events[intruder.seq :]
    assert not rest or rest[0].HasField("run_resumed")


@pytest.mark.parametrize("orchestrator_values", [{"sweep_interval_s": 60.0}], indirect=True)
async def test_cancel_of_a_run_whose_orchestrator_died_ends_it_at_once_as_cancelled(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run_id, head = await _start_on(RunClient(channel, alice.user), stack)
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)

    # This replica sweeps only at its start: wait until the heartbeat is stale (1 s).
    async def stale() -> bool:
        beat = (await alice.get(run_id)).heartbeat_time
        return time.time() - (beat.seconds + beat.nanos / 1e9) > 1.2

    await wait_for(stale, timeout=10, interval=0.1)
    response = await alice.cancel(run_id, reason="owner gone")
    assert response.cancelled and "stopped" in response.message
    assert response.run.status == run_pb2.RUN_STATUS_CANCELLED
    events = await alice.watch(run_id)
    assert_well_formed(events)
    assert events[-1].run_cancelled.cancellation.reason == "owner gone"
    stored = events[:-1]
    n = min(len(head), len(stored))
    assert stored[:n] == head[:n]
