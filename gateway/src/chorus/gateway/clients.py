"""The gRPC stubs the gateway calls, built once per process inside the running loop.

Channels come from `chorus.core.channels.ChannelPool`, which forwards the caller's
identity (`x-chorus-user`), the internal token and the request id on every unary call;
server-streaming calls pass `pool.metadata()` themselves
(`chorus.gateway.api.deps.stream_metadata`). The gateway sets the identity per request
(`chorus.gateway.api.deps`). SSE streams share one WatchRuns call made as the system
identity (`watches`, `chorus.gateway.watches`); its watches reattach to another replica when
theirs goes away.

`CHORUS_ORCHESTRATOR_ADDRESS` may name several replicas — a comma-separated list of
`ip:port`, or `dns:///name:port` — and calls go round robin over them
(`chorus.core.channels.balanced_target`).
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.core.channels import ChannelPool
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import RunWatches
from chorus.v1 import history_service_pb2_grpc, provider_service_pb2_grpc, run_service_pb2_grpc


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
        self.runs = run_service_pb2_grpc.RunServiceStub(runs)
        self.watches = RunWatches(
            self.runs, self.pool.system_metadata(), reattach_s=settings.watch_reattach_s
        )
        self.history = history_service_pb2_grpc.HistoryServiceStub(history)
        self.provider = provider_service_pb2_grpc.ProviderServiceStub(provider)
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
