"""The orchestrator's model calls share one ProviderService.StreamChats call per process
(`chorus.orchestrator.chat_streams`), opened on first use and again after it failed."""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import code_pb2
from orchestrator_helpers import (
    RunClient,
    Stack,
    assert_well_formed,
    duet,
    orchestrator_settings,
    running_orchestrator,
    sim,
    spec,
)
from prometheus_client import REGISTRY

from chorus.core.testing import TcpProxy, wait_for
from chorus.v1 import run_pb2
from chorus.v1 import run_service_pb2 as rs


def _provider_calls(method: str, grpc_type: str) -> float:
    labels = {"grpc_type": grpc_type, "grpc_service": "chorus.v1.ProviderService"}
    return (
        REGISTRY.get_sample_value("grpc_server_started_total", {**labels, "grpc_method": method})
        or 0.0
    )


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_every_model_call_of_the_process_goes_over_one_stream_chats_call(
    stack: Stack, alice: RunClient
) -> None:
    opened = _value("chorus_orchestrator_stream_chats_calls_total")
    bidi = _provider_calls("StreamChats", "bidi_stream")
    single = _provider_calls("StreamChat", "server_stream")
    runs = await asyncio.gather(*(alice.stream(spec(team_spec=duet(turns=2))) for _ in range(3)))
    for events in runs:
        assert_well_formed(events)
        assert events[-1].HasField("run_completed")
    # 3 runs × 2 turns = 6 model calls, all streams of the one call this stack's
    # orchestrator opened; none made as a StreamChat call of its own
    assert _value("chorus_orchestrator_stream_chats_calls_total") - opened == 1
    assert _provider_calls("StreamChats", "bidi_stream") - bidi == 1
    assert _provider_calls("StreamChat", "server_stream") == single
    await wait_for(lambda: _value("chorus_orchestrator_model_call_streams") == 0, timeout=10)


async def test_a_broken_stream_chats_call_fails_its_runs_retryable_and_a_new_call_serves_the_next(
    stack: Stack,
) -> None:
    host, port = stack.provider_server.address.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    settings = orchestrator_settings(proxy.address, stack.history_server.address)
    try:
        async with running_orchestrator(settings) as (_, server):
            channel = grpc.aio.insecure_channel(server.address)
            client = RunClient(channel, "carol")
            opened = _value("chorus_orchestrator_stream_chats_calls_total")
            slow = spec(
                team_spec=duet(turns=2, simulator=sim(tokens_per_second=50, output_tokens=200))
            )
            calls = [
                client.stub.StreamRun(rs.StreamRunRequest(spec=slow), metadata=client.md)
                for _ in range(2)
            ]
            streams: list[list[run_pb2.RunEvent]] = [[], []]

            async def read(i: int) -> None:
                async for response in calls[i]:
                    streams[i].append(response.event)

            readers = [asyncio.ensure_future(read(i)) for i in range(2)]
            await wait_for(
                lambda: all(any(e.HasField("text_delta") for e in s) for s in streams), timeout=20
            )
            proxy.cut()  # both runs' model calls are streams of the one call that breaks
            proxy.restore()
            await asyncio.wait_for(asyncio.gather(*readers), 30)
            for events in streams:
                assert_well_formed(events)
                failed = events[-1].run_failed
                assert events[-1].HasField("run_failed"), events[-1]
                assert failed.error.code == code_pb2.UNAVAILABLE and failed.error.retryable

            async def next_run_completes() -> bool:
                events = await asyncio.wait_for(client.stream(spec(team_spec=duet(turns=1))), 10)
                return events[-1].HasField("run_completed")

            # provider-svc is reachable again: a run (once grpc reconnected) completes, over
            # a call of its own
            await wait_for(next_run_completes, timeout=30, interval=0.2)
            assert _value("chorus_orchestrator_stream_chats_calls_total") - opened >= 2
            await channel.close()
    finally:
        proxy.close()
