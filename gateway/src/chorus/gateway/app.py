"""Builds the FastAPI application: routers, middleware, error handlers, web page, lifespan.

`build_app(settings)` is the in-process entry point (tests, `__main__`). The lifespan
creates the gRPC channels inside the running event loop (grpc#32480) and closes them on
shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import disable_created_metrics
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from chorus.core.logging import get_logger
from chorus.gateway import __version__, errors, openapi, routing, ws
from chorus.gateway.api.deps import current_caller
from chorus.gateway.api.routes import conversations, health, models, runs, teams, user
from chorus.gateway.api.routes import settings as settings_routes
from chorus.gateway.auth import Authenticator
from chorus.gateway.clients import ServiceClients
from chorus.gateway.middleware import RequestContextMiddleware
from chorus.gateway.openai_api import install as install_openai_api
from chorus.gateway.ratelimit import RateLimiter
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.tracing import instrument as instrument_tracing

log = get_logger("chorus.gateway")

API_PREFIX = "/api/v1"
STATIC_DIR = resources.files("chorus.gateway") / "static"

DESCRIPTION = """\
REST, Server-Sent Events and WebSocket access to Chorus agent teams.

Bodies are proto3 JSON of the `chorus.v1` messages (lowerCamelCase names, enums as names,
int64 as strings, default values omitted); a response body is the RPC's response message.
Errors are AIP-193: `{"error": {"code", "message", "status", "details"}}`.
"""


def build_app(settings: GatewaySettings) -> FastAPI:
    """The gateway application for `settings`.

    Raises:
        ConfigurationError: settings that must not serve (`GatewaySettings.check_gateway`).
    """
    settings.check_gateway()
    # No `<name>_created` series beside every counter and histogram on /metrics: they double
    # what a scrape carries and Prometheus does not use them.
    disable_created_metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.clients = ServiceClients(settings)
        app.state.limiter = RateLimiter(settings)
        log.info(
            "gateway_started",
            auth_mode=settings.auth_mode,
            orchestrator=settings.orchestrator_address,
            history=settings.history_address,
            provider=settings.provider_address,
            shared_rate_limits=settings.redis_url is not None,
        )
        try:
            yield
        finally:
            await app.state.clients.close()
            await app.state.limiter.close()

    app = FastAPI(
        title="Chorus gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # FastAPI's own OpenTelemetry (off): it looked the global providers up on every
        # request (~2 % of a run start's CPU here); the gateway's spans come from
        # `tracing.instrument` when tracing is on.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings)

    # Each module's router straight on the app, not through one `/api/v1` router: FastAPI
    # matches a request once per level of included routers (twice, as it also matches
    # when handling), ~25 µs of a run start's CPU per level.
    for module in (runs, conversations, models, teams, settings_routes, user):
        app.include_router(
            module.router,
            prefix=API_PREFIX,
            dependencies=[Depends(current_caller)],
            generate_unique_id_function=routing.operation_id,
        )
    app.include_router(ws.router, prefix=API_PREFIX)
    app.include_router(health.router)

    page_deps = [Depends(current_caller)] if settings.auth_mode == "basic" else []

    @app.get("/", include_in_schema=False, dependencies=page_deps)
    async def index() -> Response:
        """The web page (in basic mode behind the login, so the browser asks once)."""
        return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """The page's icon where browsers look for it first (an SVG; the page links it too)."""
        return FileResponse(
            str(STATIC_DIR / "favicon.svg"),
            media_type="image/svg+xml",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    errors.install(app)
    openapi.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID", "Location", "Content-Disposition"],
            max_age=600,
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_request_bytes=settings.max_request_bytes,
    )
    install_openai_api(app)  # /v1, OpenAI-compatible; its error middleware wraps the above
    instrument_tracing(app, settings)  # OTEL_* variables; nothing when tracing is off
    return app
