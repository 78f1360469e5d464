"""The gRPC server runner every service uses.

`GrpcServer` builds a `grpc.aio` server with the Chorus interceptors, explicit keepalive and
message-size options, the standard health service (Check and Watch, one status per service
name plus the overall `""`) and server reflection. `run_service` runs one until SIGTERM or
SIGINT, then shuts down gracefully: health goes NOT_SERVING first, then
`server.stop(grace)` lets in-flight RPCs (streams included) finish within the grace period.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from chorus.core import tracing
from chorus.core.garbage_collection import configure_gc
from chorus.core.interceptors import ContextInterceptor, MetricsInterceptor
from chorus.core.logging import configure_logging, get_logger
from chorus.core.metrics import start_metrics_server
from chorus.core.settings import ConfigurationError, CoreSettings

log = get_logger("chorus.core.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServiceBinding:
    """One servicer to serve.

    Attributes:
        name: full service name, e.g. `chorus.v1.HistoryService` (health and reflection key).
        servicer: the servicer instance.
        add: the generated `add_XxxServicer_to_server` function.
    """

    name: str
    servicer: Any
    add: Callable[[Any, grpc.aio.Server], None]


def server_options(settings: CoreSettings) -> list[tuple[str, int]]:
    """Channel arguments of every Chorus server (names checked: unknown keys are ignored)."""
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
        # A call waits in gRPC's queue until the event loop takes it up; under a burst
        # (1,000 runs started at once) that can exceed gRPC's 30 s default, which cancels
        # the call — the client sees CANCELLED and nothing in our logs says why.
        ("grpc.server_max_unrequested_time_in_server", settings.max_unrequested_time_s),
    ]
    if settings.max_connection_age_s:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
    return options


class GrpcServer:
    """A started-on-demand grpc.aio server with health, reflection and interceptors.

    Args:
        bindings: the services to serve.
        settings: core settings (host, token, dev mode, options, grace period).
        port: TCP port; 0 picks a free one (see `port` after `start`).
    """

    def __init__(
        self, bindings: Sequence[ServiceBinding], settings: CoreSettings, port: int
    ) -> None:
        self.settings = settings
        self.bindings = list(bindings)
        self.health = HealthServicer()
        token = settings.internal_token.get_secret_value() if settings.internal_token else None
        self.server = grpc.aio.server(
            interceptors=[
                *tracing.server_interceptors(),  # outermost: its span is current for the rest
                MetricsInterceptor(),
                ContextInterceptor(internal_token=token, dev_mode=settings.dev_mode),
            ],
            options=server_options(settings),
        )
        for binding in self.bindings:
            binding.add(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{settings.host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind {settings.host}:{port}")

    @property
    def address(self) -> str:
        """`host:port` clients dial."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Start serving; every service reports SERVING."""
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool, names: Sequence[str] | None = None) -> None:
        """Report SERVING / NOT_SERVING for `names` (default: every service and `""`)."""
        status = SERVING if serving else NOT_SERVING
        for name in names if names is not None else ["", *(b.name for b in self.bindings)]:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, then stop accepting and drain for `grace` s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_period_s if grace is None else grace)


class ServiceApp(Protocol):
    """What `run_service` serves: a service's app object (`build_app(settings)` of
    provider-svc, history-svc and orchestrator-svc)."""

    @property
    def bindings(self) -> Sequence[ServiceBinding]:
        """The services to serve."""
        ...

    async def close(self) -> None:
        """Close pools, channels and background tasks (after the server stopped)."""
        ...


AppT = TypeVar("AppT", bound=ServiceApp)

AppHook = Callable[[AppT, "GrpcServer"], Awaitable[None]]
"""A hook of `run_service`: called with the app and its server."""


async def run_service(
    service: str,
    settings: CoreSettings,
    port: int,
    build_app: Callable[[], Awaitable[AppT]],
    *,
    on_started: AppHook[AppT] | None = None,
    on_stopping: AppHook[AppT] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully.

    Args:
        service: service name for logs (`provider`, `history`, `orchestrator`).
        settings: the service's settings; `check_security()` is enforced.
        port: gRPC port (0 picks one; the bound address is logged as `listening`).
        build_app: builds the app (runs inside the event loop, so channels and pools are
            created on the right loop); its `close()` runs after the server stopped.
        on_started: called once the server is SERVING (e.g. to start background sweeps).
        on_stopping: called when the signal arrived, after health reports NOT_SERVING and
            before the server stops taking calls (the orchestrator hands its runs over
            here, while its watchers are still connected); its time counts against the
            grace period (`CHORUS_GRACE_PERIOD_S`).
    """
    settings.check_security()
    app = await build_app()
    server = GrpcServer(app.bindings, settings, port)
    if settings.metrics_port is not None:
        metrics_port = start_metrics_server(settings.metrics_port, settings.host)
        log.info("metrics_listening", address=f"http://{settings.host}:{metrics_port}/metrics")
    # Signal handlers first: a SIGTERM right after "listening" is a graceful stop too.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    configure_gc(settings)
    log.info("listening", address=server.address, services=[b.name for b in server.bindings])
    if on_started is not None:
        await on_started(app, server)
    await stop.wait()
    log.info("shutting_down", grace_s=settings.grace_period_s)
    grace = settings.grace_period_s
    if on_stopping is not None:  # its time counts against the grace period
        started = time.monotonic()
        await server.set_serving(False)
        await on_stopping(app, server)
        grace = max(grace - (time.monotonic() - started), 1.0)
    await server.stop(grace)
    await app.close()
    log.info("stopped")


def settings_help(service: str, settings: CoreSettings) -> str:
    """`--help` text: usage, the `__main__` module's docstring, one line per setting."""
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    prefix = str(settings.model_config.get("env_prefix", ""))
    lines = [f"usage: python -m chorus.{service} [-h]", ""]
    if doc:
        lines += [doc, ""]
    lines.append("settings (environment variables; a .env file in the working directory too):")
    for name, field in type(settings).model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = "default computed"
        else:
            default = f"default {field.default!r}"
        lines.append(f"  {prefix}{name.upper()}  ({default})  {field.description or ''}".rstrip())
    return "\n".join(lines)


def main(
    service: str,
    settings: CoreSettings,
    port: int,
    build_app: Callable[[], Awaitable[AppT]],
    *,
    on_started: AppHook[AppT] | None = None,
    on_stopping: AppHook[AppT] | None = None,
) -> None:
    """Entry point of `python -m chorus.<service>`: logging, tracing, uvloop, `run_service`
    (arguments as there).

        `-h` / `--help` prints the module's docstring and every `CHORUS_*` setting the service
        reads (default and description), then exits 0 without serving.
    """
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(settings_help(service, settings))
        raise SystemExit(0)
    configure_logging(service, level=settings.log_level, json=settings.log_json)
    try:
        tracing.configure(service, instance_id=settings.instance_id)  # OTEL_* variables
    except ValueError as exc:  # an exporter that is not installed
        log.error("configuration_error", error=str(exc))
        raise SystemExit(2) from None
    try:
        uvloop.run(
            run_service(
                service, settings, port, build_app, on_started=on_started, on_stopping=on_stopping
            )
        )
    except ConfigurationError as exc:  # one clear line, exit 2
        log.error("configuration_error", error=str(exc))
        raise SystemExit(2) from None
    finally:
        tracing.shutdown()  # export the spans still buffered
