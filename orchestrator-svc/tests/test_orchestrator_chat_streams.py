"""The orchestrator's model calls share one ProviderService.StreamChats call per process
(`chorus.orchestrator.chat_streams`), opened on first use, with its response window."""

from __future__ import annotations

import asyncio

from orchestrator_helpers import RunClient, Stack, assert_well_formed, duet, spec
from prometheus_client import REGISTRY

from chorus.core.testing import wait_for


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
    opened = _value("chorus_stream_chats_calls_total")
    bidi = _provider_calls("StreamChats", "bidi_stream")
    single = _provider_calls("StreamChat", "server_stream")
    runs = await asyncio.gather(*(alice.stream(spec(team_spec=duet(turns=2))) for _ in range(3)))
    for events in runs:
        assert_well_formed(events)
        assert events[-1].HasField("run_completed")
    # 3 runs × 2 turns = 6 model calls, all streams of the one call this stack's
    # orchestrator opened; none made as a StreamChat call of its own
    assert _value("chorus_stream_chats_calls_total") - opened == 1
    assert _provider_calls("StreamChats", "bidi_stream") - bidi == 1
    assert _provider_calls("StreamChat", "server_stream") == single
    await wait_for(lambda: _value("chorus_model_call_streams") == 0, timeout=10)
