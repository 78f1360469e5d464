"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and break
contextvars): request id, request size limit, HTTP metrics and access log.

* `x-request-id` — taken from the request when well-formed, generated otherwise; echoed in
  the response, bound to every log line, forwarded to the services by the ChannelPool.
* Bodies above `max_request_bytes` are refused with 413 (by `Content-Length` up front,
  or while reading a chunked body).
* An exception no handler answered becomes the AIP-193 INTERNAL response here (logged by
  `errors.status_of`), so the connection stays usable for the client's next request.
* `http_requests_total{method,route,code}` and `http_request_duration_seconds{method,route}`
  use the route template (`/api/v1/runs/{run_id}`), never the raw path, as the label.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import grpc
import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus.core import identity
from chorus.core.logging import get_logger
from chorus.gateway import errors

log = get_logger("chorus.gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUESTS = Counter("http_requests_total", "HTTP requests answered.", ["method", "route", "code"])
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to the end of the response (streams: their whole life), seconds.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class BodyTooLarge(errors.HttpStatusError):
    """413: the request body exceeds `max_request_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request body larger than {limit} bytes",
            reason="REQUEST_TOO_LARGE",
        )


class RequestContextMiddleware:
    """Request id, size limit, metrics and one access-log line per HTTP request.

    Args:
        app: the wrapped application.
        max_request_bytes: largest accepted body.
    """

    def __init__(self, app: ASGIApp, max_request_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        # A fresh context for this request: nothing of an earlier one on this task survives.
        identity.set_identity(None)
        identity.set_request_id(request_id)
        structlog.contextvars.unbind_contextvars("user", "run_id")
        structlog.contextvars.bind_contextvars(request_id=request_id)
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = errors.error_response(BodyTooLarge(self.max_bytes))
            response.headers["x-request-id"] = request_id
            await response(scope, receive, send)
            self._observe(scope, 413, time.perf_counter())
            return

        received = 0
        limit = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        status = 500
        started = False
        start = time.perf_counter()
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            if started:
                raise  # mid-response: only closing the connection can tell the client
            # Answer here rather than let the exception reach Starlette's outermost
            # middleware, which re-raises it after its 500: uvicorn then closes the
            # keep-alive connection and the client's next request on it is reset.
            await errors.error_response(exc)(scope, limited_receive, send_with_id)
        finally:
            self._observe(scope, status, start)

    @staticmethod
    def _template(scope: dict[str, Any] | Scope) -> str:
        """The matched route's full template (`/v1/responses/{response_id}`), `unmatched`
        when no route matched. FastAPI reports a route of an included router with its own
        path only (`/responses/{response_id}`, the prefixes of `/v1` and `/api/v1` left
        out), so the prefix is recovered from the request path: what comes before the
        longest tail the route's pattern matches (prefixes are static)."""
        route = scope.get("route")
        template: str | None = getattr(route, "path", None)
        if not template:
            return "unmatched"
        pattern = getattr(route, "path_regex", None)
        path: str = scope.get("path", "")
        if pattern is None or pattern.match(path):
            return template
        for i in range(1, len(path)):
            if path[i] == "/" and pattern.match(path[i:]):
                return path[:i] + template
        return template

    def _observe(self, scope: dict[str, Any] | Scope, status: int, start: float) -> None:
        template = self._template(scope)
        method = scope.get("method", "")
        elapsed = time.perf_counter() - start
        REQUESTS.labels(method, template, str(status)).inc()
        DURATION.labels(method, template).observe(elapsed)
        log.debug(  # not at INFO: a console line per request was ~3 % of a run start's CPU
            "http_request",
            method=method,
            path=scope.get("path", ""),
            route=template,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )
