"""RunService.WatchRuns: many runs over one call — per watch exactly the events StreamRun /
WatchRun give, errors that end one watch only, pause / resume without gap or duplicate,
`on_disconnect` for stopped watches and ended calls, the response window (flow control),
protocol errors that end the call."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from orchestrator_helpers import (
    TIMEOUT_S,
    TOKEN,
    RunClient,
    Stack,
    assert_well_formed,
    duet,
    sim,
    slow_duet,
    spec,
)

from chorus.core.errors import from_status
from chorus.core.identity import SYSTEM_USER, TOKEN_KEY, USER_KEY
from chorus.core.multiplex import MultiplexServer
from chorus.orchestrator import watches
from chorus.v1 import run_pb2, run_service_pb2_grpc
from chorus.v1 import run_service_pb2 as rs

LIVE = duet(turns=4, simulator=sim(tokens_per_second=120.0, output_tokens=36))
"""~40 events per turn, 0.3 s per turn."""


class WatchRunsClient:
    """One WatchRuns call; collects every watch's events and final status."""

    def __init__(self, stack: Stack, user: str = SYSTEM_USER) -> None:
        stub = run_service_pb2_grpc.RunServiceStub(stack.channel)
        self.call = stub.WatchRuns(metadata=((USER_KEY, user), (TOKEN_KEY, TOKEN)))
        self.events: dict[int, list[run_pb2.RunEvent]] = {}
        self.status: dict[int, status_pb2.Status] = {}
        self.responses: list[rs.WatchRunsResponse] = []

    async def send(self, watch_id: int, **fields: Any) -> None:
        await self.call.write(rs.WatchRunsRequest(watch_id=watch_id, **fields))

    async def read_one(self) -> None:
        """Read one response."""
        response = await self.call.read()
        assert response is not grpc.aio.EOF, "the call ended early"
        self.responses.append(response)
        for update in response.updates:
            assert update.watch_id not in self.status, "an update after the end"
            self.events.setdefault(update.watch_id, []).extend(update.events)
            if update.HasField("status"):
                self.status[update.watch_id] = update.status

    async def read_until(self, done: Any) -> None:
        """Read responses until `done()` holds."""
        async with asyncio.timeout(TIMEOUT_S):
            while not done():
                await self.read_one()

    async def until_ended(self, *watch_ids: int) -> None:
        await self.read_until(lambda: all(w in self.status for w in watch_ids))


def error_of(status: status_pb2.Status) -> Any:
    return from_status(status)


async def test_one_call_carries_many_runs_each_exactly_as_stream_run_and_watch_run(
    stack: Stack, alice: RunClient, bob: RunClient
) -> None:
    finished = await alice.stream(spec(team_spec=duet(turns=2)))
    watches = WatchRunsClient(stack)
    await watches.send(1, user=alice.user, start=spec(team_spec=LIVE))
    await watches.send(2, user=bob.user, start=spec(team_spec=duet(turns=3)))
    await watches.send(3, user=alice.user, watch=rs.WatchRunRequest(run_id=finished[0].run_id))
    await watches.send(
        4, user=alice.user, watch=rs.WatchRunRequest(run_id=finished[0].run_id, after_seq=5)
    )
    await watches.until_ended(1, 2, 3, 4)
    assert all(s.code == 0 for s in watches.status.values()), watches.status
    for watch_id, client in ((1, alice), (2, bob)):
        events = watches.events[watch_id]
        assert_well_formed(events)
        assert events == await client.watch(events[0].run_id)
    assert watches.events[1][0].run_id != watches.events[2][0].run_id
    assert watches.events[3] == finished
    assert watches.events[4] == finished[5:]
    # A finished run's events are all there at once: they go out together, not one by one.
    carrying = [r for r in watches.responses if any(u.watch_id == 3 for u in r.updates)]
    assert len(carrying) < len(finished) / 4
    await watches.call.done_writing()
    assert await watches.call.read() is grpc.aio.EOF
    assert await watches.call.code() == grpc.StatusCode.OK


async def test_an_error_ends_its_own_watch_only_with_the_status_watch_run_would_return(
    stack: Stack, alice: RunClient, bob: RunClient
) -> None:
    alices = await alice.create(spec(team_spec=duet(turns=1)))
    unknown = "00000000-0000-4000-8000-000000000000"
    watches = WatchRunsClient(stack)
    await watches.send(1, user=alice.user, watch=rs.WatchRunRequest(run_id=unknown))
    await watches.send(2, user=bob.user, watch=rs.WatchRunRequest(run_id=alices.id))
    await watches.send(3, user=alice.user, watch=rs.WatchRunRequest(run_id=alices.id, after_seq=-1))
    await watches.send(4, user=alice.user, start=spec(team_spec=duet(turns=1), input=""))
    await watches.send(5, watch=rs.WatchRunRequest(run_id=alices.id))  # no user
    await watches.send(6, user=alice.user, watch=rs.WatchRunRequest(run_id=alices.id))
    await watches.until_ended(1, 2, 3, 4, 5, 6)
    codes = {w: grpc.StatusCode(error_of(s).code) for w, s in watches.status.items() if s.code}
    assert codes == {
        1: grpc.StatusCode.NOT_FOUND,
        2: grpc.StatusCode.NOT_FOUND,  # another user's run
        3: grpc.StatusCode.INVALID_ARGUMENT,
        4: grpc.StatusCode.INVALID_ARGUMENT,
        5: grpc.StatusCode.INVALID_ARGUMENT,
    }
    assert {f for f, _ in error_of(watches.status[3]).violations} == {"after_seq"}
    assert "spec.input" in {f for f, _ in error_of(watches.status[4]).violations}
    assert {f for f, _ in error_of(watches.status[5]).violations} == {"user"}
    for watch_id in (1, 2, 3, 4, 5):
        assert watches.events.get(watch_id, []) == []
        info = error_details_pb2.ErrorInfo()
        assert watches.status[watch_id].details[0].Unpack(info)
        assert info.domain == "chorus.dev"
    assert watches.status[6].code == 0
    assert_well_formed(watches.events[6])
    # The failed start stored nothing.
    assert [r.id for r in (await alice.list()).runs] == [alices.id]


async def test_a_user_call_acts_only_for_its_caller(stack: Stack, alice: RunClient) -> None:
    run = await alice.create(spec(team_spec=duet(turns=1)))
    watches = WatchRunsClient(stack, user=alice.user)
    await watches.send(1, user="mallory", watch=rs.WatchRunRequest(run_id=run.id))
    await watches.send(2, watch=rs.WatchRunRequest(run_id=run.id))
    await watches.send(3, user=alice.user, watch=rs.WatchRunRequest(run_id=run.id))
    await watches.until_ended(1, 2, 3)
    assert grpc.StatusCode(error_of(watches.status[1]).code) == grpc.StatusCode.PERMISSION_DENIED
    assert watches.status[2].code == watches.status[3].code == 0
    assert watches.events[2] == watches.events[3]
    assert_well_formed(watches.events[2])


async def test_with_a_response_window_nothing_more_goes_out_until_acknowledged(
    stack: Stack, alice: RunClient
) -> None:
    watches = WatchRunsClient(stack)
    await watches.call.write(rs.WatchRunsRequest(response_window=1))  # flow control alone
    await watches.send(1, user=alice.user, start=spec(team_spec=LIVE))
    await watches.read_until(lambda: watches.responses)  # the first response
    run_id = watches.events[1][0].run_id
    await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)  # ~160 events meanwhile
    second = asyncio.ensure_future(watches.read_one())
    done, _ = await asyncio.wait([second], timeout=0.5)
    assert not done, "a response went out beyond the window"
    await watches.call.write(rs.WatchRunsRequest(acknowledged=1))
    await asyncio.wait_for(second, TIMEOUT_S)
    async with asyncio.timeout(TIMEOUT_S):
        while 1 not in watches.status:  # the rest, should more be left
            await watches.call.write(rs.WatchRunsRequest(acknowledged=1))
            await watches.read_one()
    assert watches.status[1].code == 0
    assert watches.events[1] == await alice.watch(run_id)
    assert len(watches.responses) < len(watches.events[1]) / 4  # gathered, not one by one


async def test_a_turns_first_token_does_not_wait_for_the_calls_tick(
    stack: Stack, alice: RunClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tick (and an idle time) no test would wait for: only urgent news goes out.
    slow = functools.partial(MultiplexServer, tick_s=60, idle_s=60)
    monkeypatch.setattr(watches, "MultiplexServer", slow)
    paced = duet(turns=2, simulator=sim(tokens_per_second=20.0, output_tokens=4))
    w = WatchRunsClient(stack)
    await w.send(1, user=alice.user, start=spec(team_spec=paced))

    def first_tokens() -> list[run_pb2.RunEvent]:
        """Each turn's first token received: a text_delta right after another kind."""
        got, kinds = [], [e.WhichOneof("payload") for e in w.events.get(1, [])]
        for i, kind in enumerate(kinds):
            if kind == "text_delta" and i and kinds[i - 1] != "text_delta":
                got.append(w.events[1][i])
        return got

    async with asyncio.timeout(10):  # each turn's events reach its first token within ~1 s
        await w.read_until(lambda: len(first_tokens()) == 2)
    assert [e.agent for e in first_tokens()] == ["Ada", "Blaise"]


@pytest.mark.parametrize(
    "request_fields",
    [
        {"watch_id": 0, "watch": rs.WatchRunRequest(run_id="x")},
        {"watch_id": 1},
        {"watch_id": 1, "acknowledged": 1},
        {},
    ],
    ids=["no-watch-id", "no-action", "acknowledged-with-a-watch-id-and-no-action", "empty"],
)
async def test_a_request_that_breaks_the_protocol_ends_the_call(
    stack: Stack, request_fields: dict[str, Any]
) -> None:
    watches = WatchRunsClient(stack)
    await watches.call.write(rs.WatchRunsRequest(user="someone", **request_fields))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watches.read_until(lambda: False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_opening_a_watch_under_an_open_id_ends_the_call(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=slow_duet(turns=4)))
    watches = WatchRunsClient(stack)
    await watches.send(7, user=alice.user, watch=rs.WatchRunRequest(run_id=run.id))
    await watches.read_until(lambda: len(watches.events.get(7, [])) >= 2)
    await watches.send(7, user=alice.user, watch=rs.WatchRunRequest(run_id=run.id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watches.read_until(lambda: False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already open" in (info.value.details() or "")
    assert (await alice.cancel(run.id)).cancelled


async def test_a_paused_watch_gets_nothing_until_resumed_then_the_rest_without_gap(
    stack: Stack, alice: RunClient
) -> None:
    watches = WatchRunsClient(stack)
    await watches.send(1, user=alice.user, start=spec(team_spec=LIVE))
    await watches.read_until(lambda: len(watches.events.get(1, [])) >= 3)
    await watches.send(1, pause=rs.WatchRunsRequest.Pause())
    run_id = watches.events[1][0].run_id
    await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)
    # Requests are handled in order: once watch 2 ended, the pause was in force before it.
    await watches.send(2, user=alice.user, watch=rs.WatchRunRequest(run_id=run_id))
    await watches.until_ended(2)
    held = len(watches.events[1])
    stored = await alice.watch(run_id)
    assert held < len(stored) and 1 not in watches.status
    await watches.send(1, resume=rs.WatchRunsRequest.Resume())
    await watches.until_ended(1)
    assert watches.status[1].code == 0
    assert watches.events[1] == watches.events[2] == stored


@pytest.mark.parametrize(
    ("on_disconnect", "status"),
    [
        (run_pb2.ON_DISCONNECT_CONTINUE, run_pb2.RUN_STATUS_COMPLETED),
        (run_pb2.ON_DISCONNECT_CANCEL, run_pb2.RUN_STATUS_CANCELLED),
    ],
)
@pytest.mark.parametrize("how", ["stop", "call-ends"])
async def test_a_started_run_let_go_follows_on_disconnect(
    stack: Stack, alice: RunClient, on_disconnect: int, status: int, how: str
) -> None:
    cancels = status == run_pb2.RUN_STATUS_CANCELLED
    team_spec = slow_duet(turns=4) if cancels else duet(turns=2, simulator=sim(output_tokens=40))
    watches = WatchRunsClient(stack)
    await watches.send(
        1, user=alice.user, start=spec(team_spec=team_spec, on_disconnect=on_disconnect)
    )
    await watches.read_until(lambda: len(watches.events.get(1, [])) >= 2)
    run_id = watches.events[1][0].run_id
    if how == "stop":
        await watches.send(1, stop=rs.WatchRunsRequest.Stop())
        await watches.send(2, user=alice.user, watch=rs.WatchRunRequest(run_id=run_id))
        await watches.until_ended(2)  # the other watch on the call goes on to the end
        assert watches.status[2].code == 0
        assert 1 not in watches.status
    else:
        watches.call.cancel()
    run = await alice.wait_status(run_id, status)
    events = await alice.watch(run_id)
    assert_well_formed(events)
    if cancels:
        assert run.cancellation.reason == "client disconnected"
        assert run.cancellation.requested_by == alice.user
    if how == "stop":
        assert watches.events[2] == events
