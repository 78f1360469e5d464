"""Fixtures for chorus.core tests: a real grpc.aio server on port 0 with a test servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chorus.core import deadlines, identity
from chorus.core.channels import ChannelPool
from chorus.core.errors import InvalidArgument, NotFound
from chorus.core.server import GrpcServer, ServiceBinding
from chorus.core.settings import CoreSettings
from chorus.v1 import chat_pb2, provider_service_pb2, provider_service_pb2_grpc

TOKEN = "test-internal-token"


class RecordingProvider(provider_service_pb2_grpc.ProviderServiceServicer):
    """A ProviderService whose ListModels behaviour is chosen by `request.provider`.

    `ok` answers, `missing` raises NotFound, `invalid` raises InvalidArgument with a field
    violation, `boom` raises an unexpected RuntimeError. Every call records the caller's
    identity, request id and remaining deadline in `calls`.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def ListModels(
        self, request: provider_service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> provider_service_pb2.ListModelsResponse:
        self.calls.append(
            {
                "user": identity.current_identity().user,
                "request_id": identity.current_request_id(),
                "remaining": deadlines.time_remaining(),
            }
        )
        if request.provider == "missing":
            raise NotFound("provider missing not found", reason="PROVIDER_NOT_FOUND")
        if request.provider == "invalid":
            raise InvalidArgument("bad request", [("provider", "must be lower case")])
        if request.provider == "boom":
            raise RuntimeError("database password is hunter2")
        return provider_service_pb2.ListModelsResponse(
            models=[provider_service_pb2.Model(ref=chat_pb2.ModelRef(provider="p", model="m"))]
        )

    async def StreamChat(
        self, request: provider_service_pb2.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_service_pb2.StreamChatResponse]:
        for i in range(3):
            yield provider_service_pb2.StreamChatResponse(
                text_delta=provider_service_pb2.StreamChatResponse.TextDelta(text=str(i))
            )


class Relay(provider_service_pb2_grpc.ProviderServiceServicer):
    """Front service: ListModels and StreamChat call the back service through a
    ChannelPool (identity, request id and deadline forwarded)."""

    def __init__(self, pool: ChannelPool, target: str) -> None:
        self.pool = pool
        self.stub = provider_service_pb2_grpc.ProviderServiceStub(pool.get(target))

    async def ListModels(self, request, context):
        return await self.stub.ListModels(request)

    async def StreamChat(self, request, context):
        async for item in self.stub.StreamChat(request, metadata=self.pool.metadata()):
            yield item


def provider_grpc_server(
    servicer: provider_service_pb2_grpc.ProviderServiceServicer,
    settings: CoreSettings,
    port: int = 0,
) -> GrpcServer:
    """A GrpcServer on `port` (0: a free one) serving `servicer` as chorus.v1.ProviderService
    (not started)."""
    return GrpcServer(
        [
            ServiceBinding(
                "chorus.v1.ProviderService",
                servicer,
                provider_service_pb2_grpc.add_ProviderServiceServicer_to_server,
            )
        ],
        settings,
        port,
    )


@pytest.fixture
def settings() -> CoreSettings:
    return CoreSettings(internal_token=TOKEN, dev_mode=False, instance_id="test")


@pytest.fixture
async def provider_server(
    settings: CoreSettings,
) -> AsyncIterator[tuple[GrpcServer, RecordingProvider]]:
    servicer = RecordingProvider()
    server = provider_grpc_server(servicer, settings)
    await server.start()
    yield server, servicer
    await server.stop(0)


AUTH = ((identity.USER_KEY, "alice"), (identity.TOKEN_KEY, TOKEN))
