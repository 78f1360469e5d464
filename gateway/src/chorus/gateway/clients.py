"""The gRPC stubs the gateway calls, built once per process inside the running loop.

Channels come from `chorus.core.channels.ChannelPool`, which forwards the caller's
identity (`x-chorus-user`), the internal token and the request id on every unary call;
server-streaming calls pass `pool.metadata()` themselves
(`chorus.gateway.api.deps.stream_metadata`). The gateway sets the identity per request
(`chorus.gateway.api.deps`). SSE streams share one WatchRuns call made as the system
identity (`watches`, `chorus.gateway.watches`); its watches reattach to another replica when
theirs goes away.

A unary call that cannot reach its service fails with UNAVAILABLE naming the service
(`orchestrator`, `history`, `provider`) and no address; the address goes to the log.

`CHORUS_ORCHESTRATOR_ADDRESS` may name several replicas — a comma-separated list of
`ip:port`, or `dns:///name:port` — and calls go round robin over them
(`chorus.core.channels.balanced_target`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from chorus.core.channels import ChannelPool
from chorus.core.errors import Unavailable
from chorus.core.logging import get_logger
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import RunWatches
from chorus.v1 import history_service_pb2_grpc, provider_service_pb2_grpc, run_service_pb2_grpc

log = get_logger("chorus.gateway.clients")

S = TypeVar("S")


def unavailable(service: str, exc: grpc.aio.AioRpcError) -> Unavailable:
    """The error a client sees when `service` cannot be reached: it names the service and
    nothing of the network (issue 23: no internal addresses in bodies); the transport's
    details, addresses included, go to the log."""
    log.warning("backend_unavailable", service=service, details=exc.details() or "")
    return Unavailable(
        f"the {service} service is unavailable; try again shortly",
        reason="SERVICE_UNAVAILABLE",
        metadata={"service": service},
    )


def _unary(method: Callable[..., Any], service: str) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            # A status the service itself sent carries details (ErrorInfo) and its own
            # message; one without them is the channel's (connection refused, reset).
            if exc.code() == grpc.StatusCode.UNAVAILABLE and rpc_status.from_call(exc) is None:
                raise unavailable(service, exc) from exc
            raise

    return call


class _NamedStub:
    """A stub whose unary calls report a connection-level UNAVAILABLE as the named
    service being unavailable (`unavailable`); streaming calls are the stub's own."""

    def __init__(self, stub: object, service: str) -> None:
        self._stub = stub
        self._service = service

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if isinstance(method, grpc.aio.UnaryUnaryMultiCallable):
            method = _unary(method, self._service)
        setattr(self, name, method)  # resolved once per method
        return method


def named(stub: S, service: str) -> S:
    """`stub` with unary calls whose connection failures name `service` (`_NamedStub`)."""
    return cast(S, _NamedStub(stub, service))


@dataclass(frozen=True)
class Backend:
    """One gRPC service the gateway depends on, for readiness checks.

    Attributes:
        name: short name in readiness reports (`orchestrator`, `history`, `provider`).
        service: the full gRPC service name checked with grpc.health.v1.
        address: as configured (`host:port`, a list, or `dns:///name:port`).
        health: the health stub on its channel.
    """

    name: str
    service: str
    address: str
    health: health_pb2_grpc.HealthStub


class ServiceClients:
    """Stubs of RunService, HistoryService and ProviderService on pooled channels.

    Args:
        settings: the services' addresses; channel options and internal token.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.pool = ChannelPool(settings)
        runs = self.pool.get(settings.orchestrator_address)
        history = self.pool.get(settings.history_address)
        provider = self.pool.get(settings.provider_address)
        self.runs = named(run_service_pb2_grpc.RunServiceStub(runs), "orchestrator")
        self.watches = RunWatches(
            self.runs, self.pool.system_metadata(), reattach_s=settings.watch_reattach_s
        )
        self.history = named(history_service_pb2_grpc.HistoryServiceStub(history), "history")
        self.provider = named(provider_service_pb2_grpc.ProviderServiceStub(provider), "provider")
        self.backends = [
            Backend(
                "orchestrator",
                "chorus.v1.RunService",
                settings.orchestrator_address,
                health_pb2_grpc.HealthStub(runs),
            ),
            Backend(
                "history",
                "chorus.v1.HistoryService",
                settings.history_address,
                health_pb2_grpc.HealthStub(history),
            ),
            Backend(
                "provider",
                "chorus.v1.ProviderService",
                settings.provider_address,
                health_pb2_grpc.HealthStub(provider),
            ),
        ]

    async def close(self) -> None:
        """Close every channel (in-flight calls are cancelled)."""
        self.watches.close()
        await self.pool.close()


SERVING = health_pb2.HealthCheckResponse.SERVING
