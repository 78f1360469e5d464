"""ProviderService.StreamChats: many model calls over one call — per stream exactly the events
StreamChat gives, errors that end one stream only (with StreamChat's status), cancel and
per-stream deadlines that close the upstream, identity rules, the response window (flow
control), protocol errors that end the call."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from provider_helpers import (
    STALL,
    FakeUpstream,
    Provider,
    Reply,
    chunk,
    expect_status,
    kinds,
    request,
)

from chorus.core.identity import SYSTEM_USER, USER_KEY
from chorus.core.testing import wait_for
from chorus.v1 import chat_pb2
from chorus.v1 import provider_service_pb2 as ps

pytestmark = pytest.mark.timeout(60)


class Streams:
    """One StreamChats call; collects every stream's events and final status."""

    def __init__(self, p: Provider, user: str = SYSTEM_USER) -> None:
        self.call = p.stub.StreamChats(metadata=((USER_KEY, user),))
        self.events: dict[int, list[ps.StreamChatResponse]] = {}
        self.status: dict[int, status_pb2.Status] = {}

    async def open(self, stream_id: int, req: ps.StreamChatRequest, **fields: Any) -> None:
        fields.setdefault("user", "alice")
        await self.call.write(ps.StreamChatsRequest(stream_id=stream_id, open=req, **fields))

    async def cancel(self, stream_id: int) -> None:
        await self.call.write(
            ps.StreamChatsRequest(stream_id=stream_id, cancel=ps.StreamChatsRequest.Cancel())
        )

    async def read_one(self) -> None:
        response = await self.call.read()
        assert response is not grpc.aio.EOF, "the call ended early"
        for update in response.updates:
            assert update.stream_id not in self.status, "an update after the end"
            self.events.setdefault(update.stream_id, []).extend(update.events)
            if update.HasField("status"):
                self.status[update.stream_id] = update.status

    async def read_until(self, done: Any) -> None:
        async with asyncio.timeout(20):
            while not done():
                await self.read_one()

    async def until_ended(self, *stream_ids: int) -> None:
        await self.read_until(lambda: all(s in self.status for s in stream_ids))


def _sim(**options: Any) -> chat_pb2.SimulatorOptions:
    return chat_pb2.SimulatorOptions(**options)


def _details(status: status_pb2.Status) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    reason, violations = "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = {v.field: v.description for v in bad.field_violations}
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    return code, reason, violations


async def test_each_stream_gets_exactly_what_stream_chat_gives(provider) -> None:
    p = await provider()
    requests = {
        i: request(f"Question {i} about tides", simulator=_sim(seed=i, output_tokens=30 * i))
        for i in (1, 2, 3)
    }
    streams = Streams(p)
    for stream_id, req in requests.items():
        await streams.open(stream_id, req)
    await streams.until_ended(1, 2, 3)
    for stream_id, req in requests.items():
        assert streams.status[stream_id].code == 0
        assert streams.events[stream_id] == await p.collect(req)
        assert kinds(streams.events[stream_id])[-1] == "finish"
    await streams.call.done_writing()
    assert await streams.call.read() is grpc.aio.EOF
    assert await streams.call.code() == grpc.StatusCode.OK


async def test_an_error_ends_its_own_stream_with_the_status_stream_chat_returns(
    provider,
) -> None:
    p = await provider()
    bad = {
        1: ps.StreamChatRequest(model=chat_pb2.ModelRef(provider="simulator")),  # no messages
        2: request("hi", provider="no-such-provider"),
    }
    good = request("A short answer", simulator=_sim(seed=7, output_tokens=10))
    streams = Streams(p)
    for stream_id, req in bad.items():
        await streams.open(stream_id, req)
    await streams.open(3, good)
    await streams.until_ended(1, 2, 3)
    for stream_id, req in bad.items():
        direct = await expect_status(p.stream(req))
        code, reason, violations = _details(streams.status[stream_id])
        assert code == direct.code != grpc.StatusCode.OK
        assert direct.info is not None and reason == direct.info.reason
        assert violations == direct.violations
        assert streams.events.get(stream_id, []) == []
    assert streams.status[3].code == 0
    assert streams.events[3] == await p.collect(good)


async def test_cancel_closes_the_upstream_and_the_stream_gets_nothing_more(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "one"}), chunk({"content": " two"}), STALL]))
    p = await provider()
    streams = Streams(p)
    await streams.open(1, request("hi", provider="openai", model="gpt-4o-mini"))
    await streams.read_until(lambda: len(streams.events.get(1, [])) >= 3)
    assert kinds(streams.events[1]) == ["start", "text_delta", "text_delta"]
    await streams.cancel(1)
    await wait_for(lambda: upstream.disconnects == 1, timeout=10)
    # the call goes on for other streams; the cancelled one never ends with a status
    other = request("next", simulator=_sim(seed=3, output_tokens=5))
    await streams.open(2, other)
    await streams.until_ended(2)
    assert streams.events[2] == await p.collect(other)
    assert 1 not in streams.status and len(streams.events[1]) == 3


async def test_a_stream_past_its_timeout_ends_deadline_exceeded_and_closes_the_upstream(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "one"}), STALL]))
    p = await provider()
    streams = Streams(p)
    await streams.open(
        1,
        request("hi", provider="openai", model="gpt-4o-mini"),
        timeout=duration_pb2.Duration(nanos=300_000_000),
    )
    await streams.open(2, request("hi"), timeout=duration_pb2.Duration(seconds=-1))
    await streams.until_ended(1, 2)
    code, _, _ = _details(streams.status[1])
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert kinds(streams.events[1]) == ["start", "text_delta"]
    await wait_for(lambda: upstream.disconnects == 1, timeout=10)
    code, _, violations = _details(streams.status[2])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(violations) == {"timeout"}


async def test_a_stream_acts_for_its_user_only_when_the_call_is_the_systems(provider) -> None:
    p = await provider()
    as_system = Streams(p)
    await as_system.open(1, request("hi"), user="")
    await as_system.until_ended(1)
    code, _, violations = _details(as_system.status[1])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(violations) == {"user"}
    as_alice = Streams(p, user="alice")
    await as_alice.open(1, request("hi"), user="mallory")
    await as_alice.open(2, request("hi", simulator=_sim(output_tokens=3)), user="")
    await as_alice.until_ended(1, 2)
    assert _details(as_alice.status[1])[0] == grpc.StatusCode.PERMISSION_DENIED
    assert as_alice.status[2].code == 0


async def test_with_a_response_window_nothing_more_goes_out_until_acknowledged(provider) -> None:
    p = await provider()
    streams = Streams(p)
    await streams.call.write(ps.StreamChatsRequest(response_window=1))  # flow control alone
    requests = {
        i: request(f"Story {i} about rivers", simulator=_sim(seed=i, output_tokens=40))
        for i in (1, 2, 3)
    }
    for stream_id, req in requests.items():
        await streams.open(stream_id, req)
    await streams.read_until(lambda: streams.events)  # the first response
    following = asyncio.ensure_future(streams.read_until(lambda: len(streams.status) == 3))
    await wait_for(lambda: p.app.simulator.active_streams == 0, timeout=10)
    done, _ = await asyncio.wait([following], timeout=0.5)
    assert not done, "a response went out beyond the window"
    await streams.call.write(ps.StreamChatsRequest(acknowledged=1))
    await asyncio.wait_for(following, 20)  # everything gathered meanwhile, at once
    for stream_id, req in requests.items():
        assert streams.status[stream_id].code == 0
        assert streams.events[stream_id] == await p.collect(req)


async def test_a_reader_that_acknowledges_every_response_gets_every_stream_whole(
    provider,
) -> None:
    p = await provider()
    streams = Streams(p)
    await streams.call.write(ps.StreamChatsRequest(response_window=2))
    requests = {
        i: request(f"Question {i} about tides", simulator=_sim(seed=i, output_tokens=25 * i))
        for i in (1, 2, 3, 4)
    }
    for stream_id, req in requests.items():
        await streams.open(stream_id, req)
    async with asyncio.timeout(20):
        while len(streams.status) < 4:
            await streams.read_one()
            await streams.call.write(ps.StreamChatsRequest(acknowledged=1))
    for stream_id, req in requests.items():
        assert streams.status[stream_id].code == 0
        assert streams.events[stream_id] == await p.collect(req)


@pytest.mark.parametrize(
    "fields",
    [
        {"stream_id": 0, "open": request("hi")},
        {"stream_id": 1},
        {"stream_id": 1, "acknowledged": 1},
        {},
    ],
    ids=["no-stream-id", "no-action", "acknowledged-with-a-stream-id-and-no-action", "empty"],
)
async def test_a_request_that_breaks_the_protocol_ends_the_call(provider, fields) -> None:
    p = await provider()
    streams = Streams(p)
    await streams.call.write(ps.StreamChatsRequest(user="alice", **fields))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await streams.read_until(lambda: False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_opening_a_stream_under_an_open_id_ends_the_call(provider) -> None:
    p = await provider()
    streams = Streams(p)
    slow = request("A long story", simulator=_sim(tokens_per_second=20, output_tokens=500))
    await streams.open(5, slow)
    await streams.read_until(lambda: len(streams.events.get(5, [])) >= 2)
    await streams.open(5, slow)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await streams.read_until(lambda: False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already open" in (info.value.details() or "")
    await wait_for(lambda: p.app.simulator.active_streams == 0, timeout=10)
