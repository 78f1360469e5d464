"""The one translation of errors to HTTP: gRPC status → HTTP status + AIP-193 JSON body.

Every error the gateway answers has the shape of Google's JSON error (AIP-193)::

    {"error": {"code": 404, "message": "run … not found", "status": "NOT_FOUND",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "NOT_FOUND", "domain": "chorus.dev",
                            "metadata": {"request_id": "…"}}]}}

Sources of errors, all mapped here:

* a downstream gRPC call failed (`grpc.aio.AioRpcError`): its `google.rpc.Status` details
  (ErrorInfo, BadRequest, RetryInfo) are passed through as proto3 JSON;
* the gateway itself raised a `chorus.core.errors.ChorusError` (auth, rate limit, bad body);
* FastAPI rejected the request (`RequestValidationError`): INVALID_ARGUMENT with a
  `BadRequest` listing every invalid field;
* Starlette's own HTTP errors (unknown route 404, 405, …);
* anything else: INTERNAL, with the request id only (the traceback goes to the log).

HTTP codes follow the canonical mapping (google.rpc.Code comments, REFERENCE.md).
`RESOURCE_EXHAUSTED` with `RetryInfo` gets a `Retry-After` header, `UNAUTHENTICATED` from
the gateway's auth a `WWW-Authenticate` challenge where the mode has one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from chorus.core import identity
from chorus.core.errors import (
    ChorusError,
    Internal,
    InvalidArgument,
    Unauthenticated,
    error_for_code,
    status_code_from_rpc,
)
from chorus.core.logging import get_logger

log = get_logger("chorus.gateway.errors")

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
"""Canonical gRPC → HTTP mapping (google/rpc/code.proto)."""

_CODE_FOR_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""For Starlette's HTTP errors: the gRPC code whose name goes in `status`."""


class AuthenticationRequired(Unauthenticated):
    """UNAUTHENTICATED from the gateway's auth, with the `WWW-Authenticate` challenge to send.

    Args:
        challenge: the header value (`Basic realm="chorus"`…), or None when the mode has none.
    """

    def __init__(self, message: str, *, challenge: str | None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.challenge = challenge


class HttpStatusError(ChorusError):
    """An error whose HTTP status is not the canonical one of its gRPC code (e.g. 413).

    Args:
        http_status: the HTTP status to answer.
        code: the gRPC code named in `status`.
    """

    def __init__(
        self, http_status: int, code: grpc.StatusCode, message: str, *, reason: str
    ) -> None:
        super().__init__(message, reason=reason)
        self.code = code
        self.http_status = http_status


def error_body(status: status_pb2.Status, http_status: int | None = None) -> dict[str, Any]:
    """The AIP-193 JSON body of a `google.rpc.Status` (details as proto3 JSON of each Any)."""
    code = status_code_from_rpc(status.code)
    details: list[dict[str, Any]] = []
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail))
        except (TypeError, json_format.Error):  # a detail type this process does not know
            details.append({"@type": detail.type_url})
    return {
        "error": {
            "code": http_status if http_status is not None else HTTP_STATUS.get(code, 500),
            "message": status.message or code.name,
            "status": code.name,
            "details": details,
        }
    }


def status_of(exc: BaseException) -> tuple[status_pb2.Status, int | None]:
    """The `google.rpc.Status` of any exception, and an HTTP status override (or None).

    `AioRpcError` keeps the downstream status and details; `ChorusError` becomes its own
    status with the current request id; anything else is INTERNAL (and is logged).
    """
    request_id = identity.current_request_id()
    if isinstance(exc, grpc.aio.AioRpcError):
        status = rpc_status.from_call(exc)
        if status is None:
            code = exc.code()
            message = exc.details() or code.name
            if code == grpc.StatusCode.UNAVAILABLE:
                # A connection-level failure: its details name internal addresses, which go
                # to the log only (the stubs of `clients` name the service when they can).
                log.warning("backend_unavailable", details=message)
                message = "a backend service is unavailable; try again shortly"
            status = error_for_code(code, message).to_status(request_id)
        return status, None
    if isinstance(exc, HttpStatusError):
        return exc.to_status(request_id), exc.http_status
    if isinstance(exc, ChorusError):
        return exc.to_status(request_id), None
    log.exception("unhandled_exception", error_type=type(exc).__name__, exc_info=exc)
    return Internal(f"internal error (request id {request_id})").to_status(request_id), None


def retry_after_s(status: status_pb2.Status) -> int | None:
    """Whole seconds of the status's `RetryInfo.retry_delay` (at least 1), or None."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = float(info.retry_delay.seconds) + info.retry_delay.nanos / 1e9
            return int(max(1, math.ceil(seconds)))
    return None


def error_headers(exc: BaseException, status: status_pb2.Status) -> dict[str, str]:
    """Headers an error response carries: `Retry-After`, `WWW-Authenticate`."""
    headers: dict[str, str] = {}
    retry = retry_after_s(status)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    if isinstance(exc, AuthenticationRequired) and exc.challenge:
        headers["WWW-Authenticate"] = exc.challenge
    return headers


def error_response(exc: BaseException) -> Response:
    """The HTTP response for `exc`: mapped status code, AIP-193 JSON body, headers."""
    status, http_status = status_of(exc)
    body = error_body(status, http_status)
    return Response(
        orjson.dumps(body),
        status_code=body["error"]["code"],
        media_type="application/json",
        headers=error_headers(exc, status),
    )


def field_path(loc: Sequence[str | int]) -> str:
    """A FastAPI error location as a field path: `("body", "agents", 0, "name")` →
    `agents[0].name`; query, path and header parameters by their name."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidArgument:
    """INVALID_ARGUMENT with one field violation per FastAPI/pydantic error."""
    violations = [(field_path(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in errors]
    fields = ", ".join(dict.fromkeys(f for f, _ in violations))
    return InvalidArgument(f"invalid request: {fields}", violations)


def install(app: FastAPI) -> None:
    """Register the exception handlers that give every error the AIP-193 shape."""

    async def on_rpc_error(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODE_FOR_HTTP.get(
            exc.status_code,
            grpc.StatusCode.INVALID_ARGUMENT if exc.status_code < 500 else grpc.StatusCode.INTERNAL,
        )
        reason = "ROUTE_NOT_FOUND" if exc.status_code == 404 else code.name
        err = HttpStatusError(exc.status_code, code, str(exc.detail), reason=reason)
        response = error_response(err)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app.add_exception_handler(grpc.aio.AioRpcError, on_rpc_error)
    app.add_exception_handler(ChorusError, on_rpc_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_rpc_error)
