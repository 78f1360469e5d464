"""Errors of the OpenAI-compatible API in OpenAI's shape.

Every error under `/v1` is::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model",
               "code": "model_not_found"}}

with the HTTP status the `openai` SDKs map to their exception classes (400
`BadRequestError`, 401 `AuthenticationError`, 403 `PermissionDeniedError`, 404
`NotFoundError`, 409 `ConflictError`, 422 `UnprocessableEntityError`, 429
`RateLimitError` with `Retry-After`, 5xx `InternalServerError`).

The gateway answers every error in the AIP-193 shape (`chorus.gateway.errors`, one
translation of gRPC statuses for the whole app). `OpenAIErrorMiddleware` rewrites those
bodies for requests under `/v1` — whatever raised them: a route, the auth dependency, the
rate limiter, the request-size limit of `RequestContextMiddleware`, an unknown route — so
the OpenAI surface has one error shape without a second error-translation path:

* `type`: by HTTP status (`ERROR_TYPES`);
* `code`: the `ErrorInfo.reason` in lower case (`RATE_LIMITED` → `rate_limit_exceeded`,
  `INVALID_CREDENTIALS` → `invalid_api_key`, as OpenAI names them);
* `param`: the first `BadRequest` field violation (`None` for the body as a whole).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus.gateway import errors

PREFIX = "/v1/"

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}
"""OpenAI's error `type` by HTTP status (5xx: `server_error`)."""

_CODES = {
    "rate_limited": "rate_limit_exceeded",
    "invalid_credentials": "invalid_api_key",
    "missing_credentials": "missing_api_key",
    "internal": "server_error",
    "unknown": "server_error",
}


def error_type(http_status: int) -> str:
    """OpenAI's `error.type` for an HTTP status."""
    return ERROR_TYPES.get(
        http_status, "server_error" if http_status >= 500 else "invalid_request_error"
    )


def from_aip(body: Any, http_status: int) -> dict[str, Any]:
    """The OpenAI error body of an AIP-193 body (`chorus.gateway.errors.error_body`)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    reason: str | None = None
    param: str | None = None
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith(".ErrorInfo") and reason is None:
            reason = str(detail.get("reason") or "") or None
            meta = detail.get("metadata")
            if isinstance(meta, dict) and meta.get("param") and param is None:
                param = str(meta["param"])
        elif kind.endswith(".BadRequest") and param is None:
            for violation in detail.get("fieldViolations") or ():
                field = violation.get("field") if isinstance(violation, dict) else None
                if field and field != "body":
                    param = str(field)
                    break
    code = reason.lower() if reason else str(error.get("status") or "").lower() or None
    code = _CODES.get(code or "", code)
    return {
        "error": {
            "message": str(error.get("message") or "error"),
            "type": error_type(http_status),
            "param": param,
            "code": code,
        }
    }


def openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error body of an exception (mapped as the gateway maps
    every error: `chorus.gateway.errors.status_of`)."""
    status, http_status = errors.status_of(exc)
    aip = errors.error_body(status, http_status)
    code = int(aip["error"]["code"])
    return code, from_aip(aip, code)


class OpenAIErrorMiddleware:
    """Rewrites AIP-193 error bodies of requests under `/v1/` into OpenAI's error shape
    (status and headers such as `Retry-After` and `WWW-Authenticate` kept).

    Pure ASGI; only error responses with a JSON body are buffered (they are small); every
    other response, streams included, passes through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start_headers = dict(message.get("headers") or ())
                content_type = start_headers.get(b"content-type", b"")
                is_json = content_type.startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    start = message
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = int(start["status"])
            try:
                body = from_aip(orjson.loads(b"".join(chunks)), status)
            except orjson.JSONDecodeError:
                body = {
                    "error": {
                        "message": b"".join(chunks).decode("utf-8", "replace") or "error",
                        "type": error_type(status),
                        "param": None,
                        "code": None,
                    }
                }
            data = orjson.dumps(body)
            headers = [
                (k, v)
                for k, v in start.get("headers") or ()
                if k.lower() not in (b"content-length",)
            ]
            headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})

        await self.app(scope, receive, rewrite)
