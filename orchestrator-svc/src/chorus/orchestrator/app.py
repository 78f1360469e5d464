"""Assembly of orchestrator-svc: channels, tool registry, templates, run manager, servicer.

`build_app(settings)` returns an `OrchestratorApp` whose `bindings` go to a
`chorus.core.server.GrpcServer` (or `run_service`); call `on_started(server)` once the
server runs (starts heartbeats and the recovery sweep) and `close()` after it stopped
(ends the runs still executing as failed, retryable, and closes the channels):

    app = await build_app(Settings(dev_mode=True, provider_address=..., history_address=...))
    server = GrpcServer(app.bindings, app.settings, 0)
    await server.start(); await app.on_started(server)
    ...
    await server.stop(0); await app.close()
"""

from __future__ import annotations

import logging

import grpc

from chorus.core import identity, tracing
from chorus.core.channels import channel_options
from chorus.core.healthcheck import wait_serving
from chorus.core.logging import get_logger
from chorus.core.server import GrpcServer, ServiceBinding
from chorus.orchestrator.auth import CallAuth
from chorus.orchestrator.catalog import CatalogCache
from chorus.orchestrator.chat_streams import ChatStreams
from chorus.orchestrator.history import HistoryClient
from chorus.orchestrator.manager import RunManager
from chorus.orchestrator.servicer import RunServicer
from chorus.orchestrator.settings import Settings
from chorus.orchestrator.templates import load_templates
from chorus.orchestrator.tools.registry import ToolRegistry
from chorus.v1 import provider_service_pb2_grpc, run_service_pb2_grpc

log = get_logger("chorus.orchestrator.app")

SERVICE_NAME = "chorus.v1.RunService"
HISTORY_SERVICE = "chorus.v1.HistoryService"


class OrchestratorApp:
    """A built orchestrator service.

    Attributes:
        settings: the settings it was built with.
        manager: the replica's runs.
        bindings: the `ServiceBinding`s to serve.
    """

    def __init__(
        self,
        settings: Settings,
        manager: RunManager,
        channels: list[grpc.aio.Channel],
    ) -> None:
        self.settings = settings
        self.manager = manager
        self._channels = channels
        self.bindings = [
            ServiceBinding(
                SERVICE_NAME,
                RunServicer(manager),
                run_service_pb2_grpc.add_RunServiceServicer_to_server,
            )
        ]

    async def on_started(self, server: GrpcServer) -> None:
        """Start heartbeats and the recovery sweep (the first sweep runs at once)."""
        self.manager.start()
        log.info(
            "orchestrator_ready",
            instance_id=self.settings.instance_id,
            provider=self.settings.provider_address,
            history=self.settings.history_address,
        )

    async def close(self, timeout_s: float | None = None) -> None:
        """Hand the runs still executing over (released at their next turn boundary, or
        at the deadline), stop the background loops and close the channels."""
        await self.manager.shutdown(
            self.settings.grace_period_s if timeout_s is None else timeout_s
        )
        for channel in self._channels:
            await channel.close()


async def build_app(settings: Settings) -> OrchestratorApp:
    """Build the service inside the running event loop (channels belong to it).

    Raises:
        chorus.core.settings.ConfigurationError: a broken team template file.
    """
    for name in ("autogen_core", "autogen_agentchat"):  # per-message event logs: costly noise
        logging.getLogger(name).setLevel(settings.autogen_log_level.upper())
    # No client interceptors on the channels (grpc.aio runs each intercepted call, and each
    # streamed message of one, through an extra task): calls to provider-svc and history-svc
    # carry identity, token and request id explicitly (`CallAuth`), and their deadlines.
    # Only with tracing on do unary and server-streaming calls get OpenTelemetry's client
    # interceptors (their spans and the `traceparent` they send).
    traced = tracing.client_interceptors() or None
    provider_channel = grpc.aio.insecure_channel(
        settings.provider_address, options=channel_options(settings), interceptors=traced
    )
    history_channel = grpc.aio.insecure_channel(
        settings.history_address, options=channel_options(settings), interceptors=traced
    )
    tools = ToolRegistry.load(
        entry_points=settings.tool_entry_points,
        code_execution=settings.code_execution_enabled,
        code_timeout_s=settings.code_execution_timeout_s,
    )
    provider = provider_service_pb2_grpc.ProviderServiceStub(provider_channel)
    auth = CallAuth(settings.internal_token.get_secret_value() if settings.internal_token else None)
    history = HistoryClient(history_channel, retry_s=settings.store_outage_limit_s, auth=auth)
    chats = ChatStreams(provider, auth.metadata(identity.SYSTEM_USER))
    manager = RunManager(
        settings,
        history,
        chats,
        auth,
        CatalogCache(provider, settings.model_catalog_ttl_s, auth),
        tools,
        load_templates(),
    )
    # The first recovery sweep reads history-svc: started together (`make run`, a
    # deployment), it waits for history-svc's health instead of failing and logging so.
    manager.liveness.history_ready = lambda: wait_serving(history_channel, HISTORY_SERVICE)
    return OrchestratorApp(settings, manager, [provider_channel, history_channel])
