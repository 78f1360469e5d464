"""Typed FastAPI dependencies: settings, gRPC stubs, the caller, rate limits, bodies.

`CallerDep` authenticates the request (`chorus.gateway.auth`) and makes the caller the
current identity (`chorus.core.identity.set_identity`), so every gRPC call made while
serving the request carries `x-chorus-user` through `chorus.core.channels.ChannelPool`.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
import structlog
from fastapi import Depends, Request
from google.protobuf.message import Message
from starlette.requests import HTTPConnection

from chorus.core import identity
from chorus.core.errors import InvalidArgument
from chorus.gateway import protojson
from chorus.gateway.auth import Authenticator, Caller
from chorus.gateway.clients import ServiceClients
from chorus.gateway.ratelimit import RateLimiter
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import RunWatches
from chorus.v1 import history_service_pb2_grpc, provider_service_pb2_grpc, run_service_pb2_grpc

M = TypeVar("M", bound=Message)

AUTHENTICATED_BY = "gateway"
"""`Identity.authenticated_by` of identities the gateway vouches for."""


# Every dependency is `async def`: FastAPI runs plain `def` dependencies in its thread
# pool, a thread hop (and GIL hand-over) per dependency per request.


async def get_settings(conn: HTTPConnection) -> GatewaySettings:
    """The gateway settings (app state)."""
    settings: GatewaySettings = conn.app.state.settings
    return settings


def _clients(conn: HTTPConnection) -> ServiceClients:
    clients: ServiceClients = conn.app.state.clients
    return clients


async def get_clients(conn: HTTPConnection) -> ServiceClients:
    """The gRPC stubs (created in the app's lifespan)."""
    return _clients(conn)


async def get_limiter(conn: HTTPConnection) -> RateLimiter:
    """The rate limiter (created in the app's lifespan)."""
    limiter: RateLimiter = conn.app.state.limiter
    return limiter


def act_as(caller: Caller) -> None:
    """Make `caller` the identity of the gRPC calls made from the current context."""
    identity.set_identity(identity.Identity(caller.user, AUTHENTICATED_BY))
    structlog.contextvars.bind_contextvars(user=caller.user)


async def current_caller(request: Request) -> Caller:
    """Authenticate the request and act as its caller.

    Raises:
        AuthenticationRequired: HTTP 401 with `WWW-Authenticate`.
        PermissionDenied: a reserved user name (HTTP 403).
    """
    authenticator: Authenticator = request.app.state.authenticator
    caller = await authenticator.authenticate(request.headers)
    act_as(caller)
    request.state.caller = caller
    return caller


def stream_metadata(conn: HTTPConnection) -> list[tuple[str, str]]:
    """Metadata of a server-streaming call made for this request (identity, internal token,
    request id): pooled channels intercept only unary calls (`ChannelPool.metadata`)."""
    return _clients(conn).pool.metadata()


async def runs_stub(conn: HTTPConnection) -> run_service_pb2_grpc.RunServiceStub:
    """RunService (orchestrator-svc)."""
    return _clients(conn).runs


async def run_watches(conn: HTTPConnection) -> RunWatches:
    """The process's WatchRuns call (orchestrator-svc), shared by every SSE stream."""
    return _clients(conn).watches


async def history_stub(conn: HTTPConnection) -> history_service_pb2_grpc.HistoryServiceStub:
    """HistoryService (history-svc)."""
    return _clients(conn).history


async def provider_stub(conn: HTTPConnection) -> provider_service_pb2_grpc.ProviderServiceStub:
    """ProviderService (provider-svc)."""
    return _clients(conn).provider


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
ClientsDep = Annotated[ServiceClients, Depends(get_clients)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
CallerDep = Annotated[Caller, Depends(current_caller)]
RunsDep = Annotated[run_service_pb2_grpc.RunServiceStub, Depends(runs_stub)]
WatchesDep = Annotated[RunWatches, Depends(run_watches)]
HistoryDep = Annotated[history_service_pb2_grpc.HistoryServiceStub, Depends(history_stub)]
ProviderDep = Annotated[provider_service_pb2_grpc.ProviderServiceStub, Depends(provider_stub)]


async def json_body(request: Request, *, optional: bool = False) -> dict[str, object]:
    """The request body as a JSON object (`{}` for an empty optional body).

    Raises:
        InvalidArgument: not JSON, or not an object (field `body`).
    """
    raw = await request.body()
    if not raw.strip():
        if optional:
            return {}
        raise InvalidArgument("a JSON request body is required", [("body", "required")])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(
            f"the body is not valid JSON: {exc}", [("body", "invalid JSON")]
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgument("the body must be a JSON object", [("body", "must be a JSON object")])
    return data


async def proto_body(
    request: Request, message: M, *, optional: bool = False
) -> tuple[M, dict[str, object]]:
    """The body parsed as proto3 JSON into `message`, and the raw object (for update masks).

    Raises:
        InvalidArgument: malformed JSON, unknown fields, wrong types (field violations).
    """
    data = await json_body(request, optional=optional)
    return protojson.parse(data, message), data


def check_text(value: str, field: str, settings: GatewaySettings, *, required: bool = True) -> None:
    """Enforce the input size limit (and presence) on a user-supplied text.

    Raises:
        InvalidArgument: empty when required, or longer than `max_input_chars`.
    """
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required", [(field, "required")])
    if len(value) > settings.max_input_chars:
        raise InvalidArgument(
            f"{field} is too long",
            [(field, f"at most {settings.max_input_chars} characters, got {len(value)}")],
            reason="INPUT_TOO_LONG",
        )
