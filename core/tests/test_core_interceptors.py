"""The server interceptors: identity, error mapping with rich details, metrics."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from chorus.core.errors import DOMAIN
from chorus.core.metrics import start_metrics_server
from chorus.core.server import GrpcServer, ServiceBinding
from chorus.core.settings import CoreSettings
from chorus.v1 import provider_service_pb2 as pb
from chorus.v1 import provider_service_pb2_grpc as pbg

from .conftest import AUTH, TOKEN, RecordingProvider


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, "rich status details missing"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_call_without_identity_is_unauthenticated(provider_server):
    server, servicer = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(channel).ListModels(pb.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(caught.value).reason == "MISSING_IDENTITY"
    assert servicer.calls == []


async def test_wrong_internal_token_is_unauthenticated(provider_server):
    server, _ = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(channel).ListModels(
                pb.ListModelsRequest(),
                metadata=(("x-chorus-user", "alice"), ("x-chorus-internal-token", "nope")),
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(caught.value).reason == "INVALID_TOKEN"


async def test_token_without_user_is_unauthenticated(provider_server):
    server, _ = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(channel).ListModels(
                pb.ListModelsRequest(), metadata=(("x-chorus-internal-token", TOKEN),)
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_identity_and_request_id_reach_the_handler(provider_server):
    server, servicer = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        await pbg.ProviderServiceStub(channel).ListModels(
            pb.ListModelsRequest(provider="ok"), metadata=(*AUTH, ("x-request-id", "req-42"))
        )
    assert servicer.calls[-1]["user"] == "alice"
    assert servicer.calls[-1]["request_id"] == "req-42"


async def test_chorus_error_keeps_code_reason_and_request_id(provider_server):
    server, _ = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(channel).ListModels(
                pb.ListModelsRequest(provider="missing"), metadata=(*AUTH, ("x-request-id", "r1"))
            )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = _error_info(caught.value)
    assert (info.reason, info.domain, info.metadata["request_id"]) == (
        "PROVIDER_NOT_FOUND",
        DOMAIN,
        "r1",
    )


async def test_invalid_argument_carries_field_violations(provider_server):
    server, _ = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(channel).ListModels(
                pb.ListModelsRequest(provider="invalid"), metadata=AUTH
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("provider", "must be lower case")
    ]


async def test_unexpected_exception_is_internal_without_traceback(provider_server):
    server, _ = provider_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pbg.ProviderServiceStub(channel).ListModels(
                pb.ListModelsRequest(provider="boom"), metadata=(*AUTH, ("x-request-id", "r-boom"))
            )
    err = caught.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.details() and "Traceback" not in err.details()
    assert "r-boom" in err.details()
    info = _error_info(err)
    assert (info.reason, info.domain, info.metadata["request_id"]) == ("INTERNAL", DOMAIN, "r-boom")


async def test_unimplemented_rpc_says_so(settings):
    from chorus.core.server import GrpcServer, ServiceBinding
    from chorus.v1 import history_service_pb2 as hpb
    from chorus.v1 import history_service_pb2_grpc as hpbg

    server = GrpcServer(
        [
            ServiceBinding(
                "chorus.v1.HistoryService",
                hpbg.HistoryServiceServicer(),
                hpbg.add_HistoryServiceServicer_to_server,
            )
        ],
        settings,
        0,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await hpbg.HistoryServiceStub(channel).GetConversation(
                    hpb.GetConversationRequest(), metadata=AUTH
                )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "not implemented yet" in caught.value.details()
    finally:
        await server.stop(0)


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_endpoint_counts_calls_by_code(provider_server):
    server, _ = provider_server
    labels = {
        "grpc_type": "unary",
        "grpc_service": "chorus.v1.ProviderService",
        "grpc_method": "ListModels",
    }
    ok_before = _counter("grpc_server_handled_total", **labels, grpc_code="OK")
    nf_before = _counter("grpc_server_handled_total", **labels, grpc_code="NOT_FOUND")
    stream_before = _counter(
        "grpc_server_msg_sent_total",
        grpc_type="server_stream",
        grpc_service="chorus.v1.ProviderService",
        grpc_method="StreamChat",
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pbg.ProviderServiceStub(channel)
        for _ in range(2):
            await stub.ListModels(pb.ListModelsRequest(provider="ok"), metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListModels(pb.ListModelsRequest(provider="missing"), metadata=AUTH)
        assert len([r async for r in stub.StreamChat(pb.StreamChatRequest(), metadata=AUTH)]) == 3

    port = start_metrics_server(0)
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text

    def scraped(sample: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(sample))
        return float(line.rsplit(" ", 1)[1])

    prefix = 'grpc_server_handled_total{grpc_code="%s",grpc_method="ListModels",grpc_service="chorus.v1.ProviderService",grpc_type="unary"}'
    assert scraped(prefix % "OK") == ok_before + 2
    assert scraped(prefix % "NOT_FOUND") == nf_before + 1
    assert (
        scraped(
            'grpc_server_msg_sent_total{grpc_method="StreamChat",grpc_service="chorus.v1.ProviderService",grpc_type="server_stream"}'
        )
        == stream_before + 3
    )
    assert "grpc_server_handling_seconds_bucket" in text


def _list_models_from_a_thread(address: str, result: list[object]) -> threading.Thread:
    """ListModels from a plain (threaded) gRPC client: it runs while this loop is blocked."""

    def call() -> None:
        with grpc.insecure_channel(address) as channel:
            try:
                pbg.ProviderServiceStub(channel).ListModels(
                    pb.ListModelsRequest(provider="ok"), metadata=AUTH, timeout=30
                )
                result.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                result.append(exc.code())

    thread = threading.Thread(target=call)
    thread.start()
    return thread


@pytest.mark.parametrize(("limit_s", "expected"), [(1, "CANCELLED"), (30, "OK")])
async def test_a_call_taken_up_late_by_a_busy_loop_is_cancelled_only_past_the_limit(
    limit_s: int, expected: str
) -> None:
    settings = CoreSettings(
        internal_token=TOKEN, dev_mode=False, instance_id="t", max_unrequested_time_s=limit_s
    )
    server = GrpcServer(
        [
            ServiceBinding(
                "chorus.v1.ProviderService",
                RecordingProvider(),
                pbg.add_ProviderServiceServicer_to_server,
            )
        ],
        settings,
        0,
    )
    await server.start()
    try:
        result: list[object] = []
        thread = _list_models_from_a_thread(server.address, result)
        # The event loop is busy (here: blocked) for 3 s, so the call waits in gRPC's queue.
        time.sleep(3)  # noqa: ASYNC251 - blocking the loop on purpose
        await asyncio.to_thread(thread.join, 30)
        assert result == [getattr(grpc.StatusCode, expected)]
    finally:
        await server.stop(0)
