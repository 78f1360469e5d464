"""A channel built with `channel_options` spreads unary calls over every address its target
resolves to (round robin), as the orchestrator's channels to several provider-svc /
history-svc replicas behind one name need (issue 22)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from chorus.core.channels import channel_options
from chorus.core.server import GrpcServer
from chorus.core.settings import CoreSettings
from chorus.v1 import provider_service_pb2 as pb
from chorus.v1 import provider_service_pb2_grpc as pbg

from .conftest import AUTH, RecordingProvider, provider_grpc_server

MAX_CALLS = 200
"""Calls made before giving up on reaching both replicas (round robin needs two)."""


@pytest.fixture
async def replicas(
    settings: CoreSettings,
) -> AsyncIterator[list[tuple[GrpcServer, RecordingProvider]]]:
    started = []
    for _ in range(2):
        recorder = RecordingProvider()
        server = provider_grpc_server(recorder, settings)
        await server.start()
        started.append((server, recorder))
    yield started
    for server, _ in started:
        await server.stop(0)


def one_name_for_both(replicas: list[tuple[GrpcServer, RecordingProvider]]) -> str:
    """A target that resolves to both replicas' addresses."""
    return "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in replicas)


async def call_until_both_reached(
    channel: grpc.aio.Channel, recorders: list[RecordingProvider]
) -> int:
    """ListModels until every replica has served one (at most `MAX_CALLS`); the calls made."""
    stub = pbg.ProviderServiceStub(channel)
    for made in range(1, MAX_CALLS + 1):
        await stub.ListModels(pb.ListModelsRequest(provider="ok"), metadata=AUTH, timeout=10)
        if all(r.calls for r in recorders):
            return made
    return MAX_CALLS


async def test_calls_reach_every_address_the_target_resolves_to(replicas, settings):
    recorders = [recorder for _, recorder in replicas]
    # Built as the orchestrator builds its channels: the target and `channel_options`, no
    # load-balancing option of its own.
    async with grpc.aio.insecure_channel(
        one_name_for_both(replicas), options=channel_options(settings)
    ) as channel:
        await call_until_both_reached(channel, recorders)
        before = [len(r.calls) for r in recorders]
        stub = pbg.ProviderServiceStub(channel)
        for _ in range(20):  # both connected now: round robin alternates
            await stub.ListModels(pb.ListModelsRequest(provider="ok"), metadata=AUTH, timeout=10)
    assert all(r.calls for r in recorders)
    assert [len(r.calls) - b for r, b in zip(recorders, before, strict=True)] == [10, 10]


async def test_without_the_round_robin_config_every_call_goes_to_one_address(replicas, settings):
    """gRPC's default (pick_first): what `channel_options` is there to prevent."""
    recorders = [recorder for _, recorder in replicas]
    options = dict(channel_options(settings))
    config = json.loads(options["grpc.service_config"])
    del config["loadBalancingConfig"]
    options["grpc.service_config"] = json.dumps(config)
    async with grpc.aio.insecure_channel(
        one_name_for_both(replicas), options=list(options.items())
    ) as channel:
        made = await call_until_both_reached(channel, recorders)
    assert made == MAX_CALLS
    assert sorted(len(r.calls) for r in recorders) == [0, MAX_CALLS]


def test_the_service_config_asks_for_round_robin(settings):
    config = json.loads(dict(channel_options(settings))["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


class PeerRecorder(RecordingProvider):
    """Records the peer (client address and port) of every ListModels call."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []

    async def ListModels(self, request, context):
        self.peers.append(context.peer())
        return await super().ListModels(request, context)


@contextlib.asynccontextmanager
async def aged(
    servicer: RecordingProvider, settings: CoreSettings, age_s: float
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel (built with `channel_options`) to a server of `servicer` whose connections
    are sent away after `age_s`."""
    server = provider_grpc_server(
        servicer, settings.model_copy(update={"max_connection_age_s": age_s})
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=channel_options(settings)
        ) as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_a_server_with_a_connection_age_makes_callers_reconnect(settings):
    """`max_connection_age_s` (grpc.max_connection_age_ms): the server sends GOAWAY, the
    caller's next calls come over a new connection (a new client port), which is when a
    caller balancing over a DNS name resolves it again and finds new replicas."""
    recorder = PeerRecorder()
    async with aged(recorder, settings, 0.3) as channel:
        stub = pbg.ProviderServiceStub(channel)
        request = pb.ListModelsRequest(provider="ok")
        await stub.ListModels(request, metadata=AUTH, timeout=10)
        async with asyncio.timeout(15):
            while len(set(recorder.peers)) < 2:
                await channel.wait_for_state_change(channel.get_state())
                await stub.ListModels(request, metadata=AUTH, timeout=10)
    assert len(set(recorder.peers)) >= 2


class SlowStream(PeerRecorder):
    """StreamChat yields one delta every 0.1 s, ten in all."""

    async def StreamChat(self, request, context):
        for i in range(10):
            await asyncio.sleep(0.1)
            yield pb.StreamChatResponse(text_delta=pb.StreamChatResponse.TextDelta(text=str(i)))


async def test_a_stream_outlives_the_connection_age(settings):
    """GOAWAY only stops new calls on the connection: a stream open at that moment (a
    WatchRuns, a StreamChats) runs to its end; no grace limit cuts it."""
    async with aged(SlowStream(), settings, 0.2) as channel:
        stub = pbg.ProviderServiceStub(channel)
        call = stub.StreamChat(pb.StreamChatRequest(), metadata=AUTH, timeout=10)
        texts = [item.text_delta.text async for item in call]
        assert await call.code() == grpc.StatusCode.OK
    assert texts == [str(i) for i in range(10)]
