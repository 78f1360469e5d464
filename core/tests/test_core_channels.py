"""ChannelPool: one channel per target; identity, request id and deadline are forwarded."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from chorus.core import deadlines, identity
from chorus.core.channels import ChannelPool, channel_options
from chorus.v1 import provider_service_pb2 as pb
from chorus.v1 import provider_service_pb2_grpc as pbg

from .conftest import AUTH, RecordingProvider, Relay, provider_grpc_server


async def test_identity_request_id_and_deadline_are_forwarded(provider_server, settings):
    back, recorder = provider_server
    pool = ChannelPool(settings)
    front = provider_grpc_server(Relay(pool, back.address), settings)
    await front.start()
    try:
        async with grpc.aio.insecure_channel(front.address) as channel:
            await pbg.ProviderServiceStub(channel).ListModels(
                pb.ListModelsRequest(provider="ok"),
                metadata=(*AUTH, ("x-request-id", "chain-1")),
                timeout=5,
            )
    finally:
        await front.stop(0)
        await pool.close()
    call = recorder.calls[-1]
    assert call["user"] == "alice"
    assert call["request_id"] == "chain-1"
    # The forwarded deadline is the caller's (5 s) less the time spent: never more, but
    # the grpc-timeout header's rounding can show a few ms over (5.009 s seen in CI).
    assert call["remaining"] is not None and 0 < call["remaining"] <= 5.05


async def test_pool_reuses_one_channel_per_target(settings):
    pool = ChannelPool(settings)
    try:
        assert pool.get("127.0.0.1:1") is pool.get("127.0.0.1:1")
        assert pool.get("127.0.0.1:1") is not pool.get("127.0.0.1:2")
    finally:
        await pool.close()


async def test_outgoing_call_without_identity_context_is_rejected_downstream(
    provider_server, settings
):
    back, _ = provider_server
    pool = ChannelPool(settings)
    identity.set_identity(None)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(pool.get(back.address)).ListModels(pb.ListModelsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await pool.close()


async def test_background_identity_is_forwarded_without_deadline(provider_server, settings):
    back, recorder = provider_server
    pool = ChannelPool(settings)
    identity.set_identity(identity.Identity(identity.SYSTEM_USER, "internal-token"))
    deadlines.clear_deadline()
    try:
        await pbg.ProviderServiceStub(pool.get(back.address)).ListModels(
            pb.ListModelsRequest(provider="ok")
        )
    finally:
        await pool.close()
    assert recorder.calls[-1]["user"] == "system"
    assert recorder.calls[-1]["remaining"] is None


async def test_server_streaming_calls_carry_the_pools_metadata_explicitly(
    provider_server, settings
):
    back, _ = provider_server
    pool = ChannelPool(settings)
    identity.set_identity(identity.Identity("alice", "gateway"))
    stub = pbg.ProviderServiceStub(pool.get(back.address))
    try:
        texts = [
            r.text_delta.text
            async for r in stub.StreamChat(pb.StreamChatRequest(), metadata=pool.metadata())
        ]
        # streams are not intercepted: without the metadata the call is anonymous
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.StreamChat(pb.StreamChatRequest()):
                pass
    finally:
        await pool.close()
    assert texts == ["0", "1", "2"]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_channel_options_enable_retries_with_a_service_config(settings):
    options = dict(channel_options(settings))
    assert options["grpc.enable_retries"] == 1
    assert '"retryableStatusCodes": ["UNAVAILABLE"]' in options["grpc.service_config"]
    assert options["grpc.max_receive_message_length"] == settings.max_message_bytes


async def test_a_new_channel_does_not_inherit_a_failed_connection_to_its_address(settings):
    """A server went away and another now listens on its port (a restarted service, or a
    test's port 0 handed out again): a channel made now reaches it at once, although an
    older channel to that address is still failing and backing off. With gRPC's shared
    subchannel pool the new channel took the old one's failure: "connections to all
    backends failing … Connection refused" (a CI failure of the orchestrator suite)."""
    request = pb.ListModelsRequest(provider="ok")
    first = provider_grpc_server(RecordingProvider(), settings)
    await first.start()
    port = first.port
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=channel_options(settings)
    ) as old:
        await pbg.ProviderServiceStub(old).ListModels(request, metadata=AUTH, timeout=5)
        await first.stop(0)
        refused = 0
        async with asyncio.timeout(30):
            while refused < 3:  # the old channel's connection attempts are refused
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await pbg.ProviderServiceStub(old).ListModels(request, metadata=AUTH, timeout=5)
                refused += "connections to all backends failing" in (failed.value.details() or "")
        second = provider_grpc_server(RecordingProvider(), settings, port)
        await second.start()
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=channel_options(settings)
            ) as new:
                stub = pbg.ProviderServiceStub(new)
                assert (await stub.ListModels(request, metadata=AUTH, timeout=5)).models
        finally:
            await second.stop(0)
