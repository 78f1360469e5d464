"""Server interceptors every Chorus service installs.

* `ContextInterceptor` — caller identity (`x-chorus-user` + internal token, or dev mode),
  request id (`x-request-id`, generated when absent), the caller's deadline, log context, and
  the one mapping of exceptions to `google.rpc.Status`: a `ChorusError` keeps its code and
  details; anything else is INTERNAL with `ErrorInfo` (reason INTERNAL, request id) and the
  traceback goes to the log only.
* `MetricsInterceptor` — Prometheus counters and histograms (`chorus.core.metrics`).

Health and reflection need no identity, so load balancers and `grpcurl list` work.
"""

from __future__ import annotations

import hmac
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from chorus.core import deadlines, identity, metrics
from chorus.core.errors import ChorusError, Internal, Unauthenticated, Unimplemented
from chorus.core.logging import get_logger

log = get_logger("chorus.core.interceptors")

_PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")
_MAX_USER_LEN = 256

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Unary], Unary],
    wrap_stream: Callable[[Stream, str], Stream],
) -> grpc.RpcMethodHandler:
    """A handler whose unary-unary, async-generator unary-stream or async-generator
    bidirectional behaviour is wrapped (`wrap_stream` gets the kind, `server_stream` or
    `bidi_stream`; a bidirectional handler's first argument is the request iterator).

    Other kinds (client streams, coroutine-style streams such as the health service's
    Watch) are returned unchanged.
    """
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream, "server_stream"),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream, "bidi_stream"),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class ContextInterceptor(grpc.aio.ServerInterceptor):
    """Identity, request id, deadline, log context and error mapping for every RPC.

    Args:
        internal_token: the shared token services must present; None only in dev mode.
        dev_mode: accept calls without identity as user `dev`.
    """

    def __init__(self, *, internal_token: str | None, dev_mode: bool) -> None:
        self._token = internal_token.encode() if internal_token else None
        self._dev_mode = dev_mode

    def _authenticate(self, metadata: dict[str, str]) -> identity.Identity:
        user = metadata.get(identity.USER_KEY, "")
        token = metadata.get(identity.TOKEN_KEY, "")
        if token and self._token and hmac.compare_digest(token.encode(), self._token):
            if not user or len(user) > _MAX_USER_LEN:
                raise Unauthenticated(
                    f"{identity.USER_KEY} must be 1..{_MAX_USER_LEN} characters",
                    reason="MISSING_USER",
                )
            return identity.Identity(user, "internal-token")
        if token:
            raise Unauthenticated("invalid internal token", reason="INVALID_TOKEN")
        if self._dev_mode:
            return identity.Identity(user or identity.DEV_USER, "dev-mode")
        raise Unauthenticated(
            f"missing caller identity: send {identity.USER_KEY} and {identity.TOKEN_KEY}",
            reason="MISSING_IDENTITY",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.lstrip("/").startswith(_PUBLIC_SERVICES):
            return handler
        metadata = {
            k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)
        }
        request_id = metadata.get(identity.REQUEST_ID_KEY) or uuid.uuid4().hex

        def enter(context: grpc.aio.ServicerContext) -> identity.Identity:
            """Authenticate and bind the context; raises Unauthenticated."""
            identity.set_request_id(request_id)
            structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
            deadlines.set_deadline(context.time_remaining())
            ident = self._authenticate(metadata)
            identity.set_identity(ident)
            structlog.contextvars.bind_contextvars(user=ident.user)
            return ident

        async def fail(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            if isinstance(exc, ChorusError):
                error = exc
                if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    log.error(
                        "rpc_error", code=error.code.name, reason=error.reason, error=error.message
                    )
            elif isinstance(exc, NotImplementedError):  # the generated servicers' default
                error = Unimplemented(f"{method} is not implemented yet")
            else:
                log.exception("unhandled_exception", error_type=type(exc).__name__)
                error = Internal(f"internal error (request id {request_id})")
            status = error.to_status(request_id)
            await context.abort(
                error.code,
                error.message,
                trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
            )

        def wrap_unary(inner: Unary) -> Unary:
            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    enter(context)
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(exc, context)

            return unary

        def wrap_stream(inner: Stream, kind: str) -> Stream:
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    enter(context)
                    async for item in inner(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(exc, context)

            return stream

        return rewrap(handler, wrap_unary, wrap_stream)


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


def _failure_code(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AbortError):
        return _code_of(context)
    if isinstance(exc, GeneratorExit) or type(exc).__name__ == "CancelledError":
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary, server-streaming and bidirectional RPC (async
    generator handlers); install it outermost."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        _, service, name = handler_call_details.method.split("/", 2)

        def wrap_unary(inner: Unary) -> Unary:
            labels = ("unary", service, name)

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                metrics.STARTED.labels(*labels).inc()
                start = time.perf_counter()
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await inner(request, context)
                    code = _code_of(context)
                    return response
                except BaseException as exc:
                    code = _failure_code(exc, context)
                    raise
                finally:
                    metrics.HANDLED.labels(*labels, code.name).inc()
                    metrics.HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - start)

            return unary

        def wrap_stream(inner: Stream, kind: str) -> Stream:
            labels = (kind, service, name)

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                metrics.STARTED.labels(*labels).inc()
                sent = metrics.MSG_SENT.labels(*labels)
                start = time.perf_counter()
                code = grpc.StatusCode.UNKNOWN
                try:
                    async for item in inner(request, context):
                        sent.inc()
                        yield item
                    code = _code_of(context)
                except BaseException as exc:
                    code = _failure_code(exc, context)
                    raise
                finally:
                    metrics.HANDLED.labels(*labels, code.name).inc()
                    metrics.HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - start)

            return stream

        return rewrap(handler, wrap_unary, wrap_stream)
