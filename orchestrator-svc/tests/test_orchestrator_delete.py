"""RunService.DeleteRun (issue 23 item 1): an active run is cancelled (its provider stream
stops, watchers get `run_cancelled`), then the run, its events and checkpoint are deleted;
every later read of the run is NOT_FOUND, deleting it again is NOT_FOUND, and no replica
brings it back — whether the run executes on the replica that is asked or on another one."""

from __future__ import annotations

import uuid

import grpc
import pytest
from orchestrator_helpers import (
    BOTH_BACKENDS,
    SLOW_DUET,
    RunClient,
    Stack,
    duet,
    fields_of,
    is_delta,
    orchestrator_process,
    read_rest,
    read_until,
    rpc_error,
    spec,
)

from chorus.core.testing import wait_for
from chorus.v1 import history_service_pb2 as hs
from chorus.v1 import run_pb2
from chorus.v1 import run_service_pb2 as rs


async def delete(client: RunClient, run_id: str) -> rs.DeleteRunResponse:
    return await client.stub.DeleteRun(rs.DeleteRunRequest(run_id=run_id), metadata=client.md)


async def assert_gone(stack: Stack, client: RunClient, run: run_pb2.Run) -> None:
    """GetRun, WatchRun, ListRuns, the stored record and events: the run is not there."""
    for call in (client.get(run.id), client.watch(run.id), delete(client, run.id)):
        assert (await rpc_error(call)).code == grpc.StatusCode.NOT_FOUND
    listed = await client.list(page_size=1000)
    assert run.id not in {r.id for r in listed.runs}
    history = stack.history_client(client.user)
    for call in (history.record(run.id), history.events(run.id)):
        assert (await rpc_error(call)).code == grpc.StatusCode.NOT_FOUND
    assert await stack.history.store.get_run(run.id, None) is None


@BOTH_BACKENDS
async def test_delete_of_a_finished_run_deletes_it(stack: Stack, alice: RunClient) -> None:
    events = await alice.stream(spec(team_spec=duet(turns=2)))
    run = await alice.get(events[0].run_id)
    await delete(alice, run.id)
    await assert_gone(stack, alice, run)
    # its conversation stays, and takes a new run
    again = await alice.stream(spec(team_spec=duet(turns=1), conversation_id=run.conversation_id))
    assert again[-1].HasField("run_completed")


@BOTH_BACKENDS
async def test_delete_of_an_active_run_cancels_it_first(stack: Stack, alice: RunClient) -> None:
    run = await alice.create(spec(team_spec=SLOW_DUET))
    call = alice.watch_call(run.id)
    head = await read_until(call, is_delta)
    assert stack.provider.simulator.active_streams == 1
    await delete(alice, run.id)
    await wait_for(lambda: stack.provider.simulator.active_streams == 0, timeout=5)
    events = head + await read_rest(call)
    assert events[-1].run_cancelled.cancellation.reason == "run deleted"
    await assert_gone(stack, alice, run)
    await wait_for(lambda: run.id not in stack.orchestrator.manager.live_runs, timeout=10)


@BOTH_BACKENDS
async def test_delete_through_another_replica_stops_the_run_and_nobody_resumes_it(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=SLOW_DUET))
    call = alice.watch_call(run.id)
    await read_until(call, is_delta)
    async with orchestrator_process(stack) as (_, channel):
        other = RunClient(channel, alice.user)
        await delete(other, run.id)
        await wait_for(lambda: stack.provider.simulator.active_streams == 0, timeout=10)
        await wait_for(lambda: run.id not in stack.orchestrator.manager.live_runs, timeout=10)
        await assert_gone(stack, other, run)
        await assert_gone(stack, alice, run)
        # a recovery sweep finds nothing to claim
        assert await stack.orchestrator.manager.liveness.sweep() == 0


@BOTH_BACKENDS
async def test_delete_of_another_users_run_is_not_found(
    stack: Stack, alice: RunClient, bob: RunClient
) -> None:
    events = await alice.stream(spec(team_spec=duet(turns=1)))
    run_id = events[0].run_id
    assert (await rpc_error(delete(bob, run_id))).code == grpc.StatusCode.NOT_FOUND
    assert (await alice.get(run_id)).status == run_pb2.RUN_STATUS_COMPLETED
    unknown = str(uuid.uuid4())
    assert (await rpc_error(delete(alice, unknown))).code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("run_id", ["", "nope"])
async def test_delete_needs_a_run_id(alice: RunClient, run_id: str) -> None:
    err = await rpc_error(delete(alice, run_id))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"run_id"}


@BOTH_BACKENDS
async def test_deleting_the_conversation_of_an_active_run_stops_the_run(
    stack: Stack, alice: RunClient
) -> None:
    """HistoryService.DeleteConversation alone (no cancel first): the owner learns from its
    next heartbeat or write that the run is gone, stops its model call and writes
    nothing more."""
    run = await alice.create(spec(team_spec=SLOW_DUET))
    call = alice.watch_call(run.id)
    await read_until(call, is_delta)
    history = stack.history_client(alice.user)
    await history.stub.DeleteConversation(
        hs.DeleteConversationRequest(conversation_id=run.conversation_id), metadata=history.md
    )
    await wait_for(lambda: stack.provider.simulator.active_streams == 0, timeout=10)
    await wait_for(lambda: run.id not in stack.orchestrator.manager.live_runs, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_rest(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await assert_gone(stack, alice, run)
