"""Connections of the `chorus` command: gRPC stubs with the caller's identity.

The CLI is an engineer's tool that speaks gRPC to the services directly, so it presents a
user name (`CHORUS_USER`, default `dev` — the identity of `make run`'s dev mode and of the
gateway with `CHORUS_AUTH_MODE=none`, so the browser sees the CLI's runs) and, against a
stack that is not in dev mode, the internal token (`CHORUS_INTERNAL_TOKEN`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from chorus.core import identity
from chorus.v1 import (
    history_service_pb2_grpc,
    provider_service_pb2_grpc,
    run_service_pb2_grpc,
)


@dataclass
class Connection:
    """Where the services are and who is calling.

    Attributes:
        orchestrator / history / provider: `host:port` of each gRPC service.
        user: the identity sent as `x-chorus-user`.
        token: the internal token (None in dev mode).
    """

    orchestrator: str
    history: str
    provider: str
    user: str
    token: str | None

    @classmethod
    def from_env(cls) -> Connection:
        """Defaults from `CHORUS_*_ADDRESS`, `CHORUS_USER` and `CHORUS_INTERNAL_TOKEN`."""
        return cls(
            orchestrator=os.environ.get("CHORUS_ORCHESTRATOR_ADDRESS", "127.0.0.1:50053"),
            history=os.environ.get("CHORUS_HISTORY_ADDRESS", "127.0.0.1:50052"),
            provider=os.environ.get("CHORUS_PROVIDER_ADDRESS", "127.0.0.1:50051"),
            user=os.environ.get("CHORUS_USER") or identity.DEV_USER,
            token=os.environ.get("CHORUS_INTERNAL_TOKEN") or None,
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Identity metadata for every call."""
        md = [(identity.USER_KEY, self.user)]
        if self.token:
            md.append((identity.TOKEN_KEY, self.token))
        return tuple(md)

    def runs(self, channel: grpc.aio.Channel) -> run_service_pb2_grpc.RunServiceStub:
        return run_service_pb2_grpc.RunServiceStub(channel)

    def history_stub(
        self, channel: grpc.aio.Channel
    ) -> history_service_pb2_grpc.HistoryServiceStub:
        return history_service_pb2_grpc.HistoryServiceStub(channel)

    def provider_stub(
        self, channel: grpc.aio.Channel
    ) -> provider_service_pb2_grpc.ProviderServiceStub:
        return provider_service_pb2_grpc.ProviderServiceStub(channel)
