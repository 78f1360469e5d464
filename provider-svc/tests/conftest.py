"""Fixtures for provider-svc tests (helpers in `provider_helpers.py`).

* `upstream` — a `FakeUpstream` HTTP server on 127.0.0.1:0 replaying scripted replies.
* `provider` — a factory: `await provider(**settings)` serves provider-svc from a real
  `GrpcServer` on port 0 (every provider's credentials point at `upstream`) and returns a
  `Provider` with a stub on a real channel.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # provider_helpers (pytest uses importlib mode)

from provider_helpers import FakeUpstream, Provider, make_settings

from chorus.core.server import GrpcServer
from chorus.provider.app import build_app
from chorus.v1 import provider_service_pb2_grpc


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def provider(
    upstream: FakeUpstream,
) -> AsyncIterator[Callable[..., Awaitable[Provider]]]:
    started: list[Provider] = []

    async def start(**overrides: Any) -> Provider:
        settings = make_settings(upstream, **overrides)
        app = await build_app(settings)
        server = GrpcServer(app.bindings, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(server.address)
        p = Provider(app, server, channel, provider_service_pb2_grpc.ProviderServiceStub(channel))
        started.append(p)
        return p

    yield start
    for p in started:
        await p.channel.close()
        await p.server.stop(0)
        await p.app.close()
