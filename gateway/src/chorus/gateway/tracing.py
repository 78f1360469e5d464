"""Tracing of the gateway's HTTP requests (issue 22; `chorus.core.tracing` has the rest).

`instrument(app, settings)` sets the process's tracing up from the `OTEL_*` variables
(`chorus.core.tracing.configure`; a no-op when `OTEL_TRACES_EXPORTER` is unset or `none`)
and, when on, instruments the app with opentelemetry-instrumentation-fastapi: one SERVER
span per HTTP request — an SSE stream's and a WebSocket's last as long as the stream — that
continues a W3C `traceparent` sent by the client; the gRPC calls a request makes are its
children and carry the context on (`chorus.core.channels`). Health probes, `/metrics` and
static files are not traced; nor is each ASGI send / receive (an SSE stream or WebSocket
would otherwise get a span per event).
"""

from __future__ import annotations

from fastapi import FastAPI

from chorus.core import tracing
from chorus.core.settings import ConfigurationError, CoreSettings
from chorus.gateway import __version__

EXCLUDED_URLS = "/health,/metrics,/static/,/favicon.ico"
"""Not traced (regular expressions searched in the URL, comma-separated)."""


def instrument(app: FastAPI, settings: CoreSettings) -> None:
    """Trace `app`'s requests when tracing is on (see the module docstring).

    Raises:
        ConfigurationError: `OTEL_TRACES_EXPORTER` names an exporter that is not installed.
    """
    try:
        tracing.configure("gateway", instance_id=settings.instance_id, version=__version__)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if not tracing.enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.provider(),
        excluded_urls=EXCLUDED_URLS,
        exclude_spans=["receive", "send"],
    )
