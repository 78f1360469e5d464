"""Cancel is real (the provider stream stops), recorded (who, why), idempotent, works from
any replica, and follows `on_disconnect` when a StreamRun client goes away."""

from __future__ import annotations

import grpc
import pytest
from orchestrator_helpers import (
    BOTH_BACKENDS,
    SLOW_DUET,
    RunClient,
    Stack,
    assert_well_formed,
    duet,
    is_delta,
    orchestrator_process,
    read_rest,
    read_until,
    rpc_error,
    sim,
    spec,
)

from chorus.core.testing import wait_for
from chorus.v1 import run_pb2
from chorus.v1 import run_service_pb2 as rs


@BOTH_BACKENDS
async def test_cancel_mid_token_stream_stops_the_provider_stream_and_ends_the_run_cancelled(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=SLOW_DUET))
    call = alice.watch_call(run.id)
    head = await read_until(call, is_delta)
    assert stack.provider.simulator.active_streams == 1

    response = await alice.cancel(run.id, reason="enough")
    assert response.cancelled and response.message == "run cancelled"
    assert response.run.status == run_pb2.RUN_STATUS_CANCELLED
    await wait_for(lambda: stack.provider.simulator.active_streams == 0, timeout=2)

    events = head + await read_rest(call)
    assert_well_formed(events)
    cancelled = events[-1].run_cancelled.cancellation
    assert cancelled.requested_by == alice.user and cancelled.reason == "enough"
    assert cancelled.request_time.seconds > 0
    record = await stack.history_client(alice.user).record(run.id)
    assert record.status == run_pb2.RUN_STATUS_CANCELLED
    assert record.cancellation == cancelled
    assert record.last_seq == events[-1].seq

    again = await alice.cancel(run.id, reason="again")
    assert not again.cancelled and again.message == "run already cancelled"
    assert again.run.cancellation.reason == "enough"
    assert await alice.watch(run.id) == events  # nothing was added


@BOTH_BACKENDS
async def test_cancel_sent_to_another_orchestrator_process_stops_the_run_here(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=SLOW_DUET))
    call = alice.watch_call(run.id)
    head = await read_until(call, is_delta)
    async with orchestrator_process(stack) as (_, channel):
        other = RunClient(channel, alice.user)
        response = await other.cancel(run.id, reason="from replica B")
        assert response.cancelled
        assert "replica" in response.message
        events = head + await read_rest(call)
        assert_well_formed(events)
        assert events[-1].run_cancelled.cancellation.reason == "from replica B"
        assert events[-1].run_cancelled.cancellation.requested_by == alice.user
        await wait_for(lambda: stack.provider.simulator.active_streams == 0, timeout=2)
        await other.wait_status(run.id, run_pb2.RUN_STATUS_CANCELLED)
        again = await other.cancel(run.id)
        assert not again.cancelled and again.message == "run already cancelled"


async def test_cancelling_a_finished_run_changes_nothing_and_says_so(alice: RunClient) -> None:
    events = await alice.stream(spec(team_spec=duet(turns=2)))
    run_id = events[0].run_id
    response = await alice.cancel(run_id)
    assert not response.cancelled
    assert response.message == "run already completed"
    assert response.run.status == run_pb2.RUN_STATUS_COMPLETED
    assert not response.run.HasField("cancellation")
    assert await alice.watch(run_id) == events


async def test_cancel_of_an_unknown_or_foreign_run_is_not_found_and_a_long_reason_is_invalid(
    alice: RunClient, bob: RunClient
) -> None:
    run = await alice.create(spec(team_spec=SLOW_DUET))
    assert (await rpc_error(bob.cancel(run.id))).code == grpc.StatusCode.NOT_FOUND
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await rpc_error(alice.cancel(unknown))).code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(alice.cancel(run.id, reason="x" * 1001))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await alice.get(run.id)).status == run_pb2.RUN_STATUS_RUNNING
    assert (await alice.cancel(run.id)).cancelled


@pytest.mark.parametrize(
    ("on_disconnect", "status"),
    [
        (run_pb2.ON_DISCONNECT_UNSPECIFIED, run_pb2.RUN_STATUS_COMPLETED),
        (run_pb2.ON_DISCONNECT_CONTINUE, run_pb2.RUN_STATUS_COMPLETED),
        (run_pb2.ON_DISCONNECT_CANCEL, run_pb2.RUN_STATUS_CANCELLED),
    ],
)
async def test_a_stream_run_client_that_goes_away_leaves_the_run_to_on_disconnect(
    stack: Stack, alice: RunClient, on_disconnect: int, status: int
) -> None:
    # Runs that continue should end soon; one that must be cancelled must outlive the cancel.
    cancels = status == run_pb2.RUN_STATUS_CANCELLED
    team_spec = (
        SLOW_DUET
        if cancels
        else duet(turns=2, simulator=sim(tokens_per_second=200.0, output_tokens=40))
    )
    call = alice.stub.StreamRun(
        rs.StreamRunRequest(spec=spec(team_spec=team_spec, on_disconnect=on_disconnect)),
        metadata=alice.md,
    )
    head = await read_until(call, is_delta)
    run_id = head[0].run_id
    call.cancel()  # the client goes away mid-stream
    run = await alice.wait_status(run_id, status)
    events = await alice.watch(run_id)
    assert_well_formed(events)
    if cancels:
        assert run.cancellation.reason == "client disconnected"
        assert run.cancellation.requested_by == alice.user
    else:
        assert events[-1].HasField("run_completed")
