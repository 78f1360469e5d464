"""How `/api/v1` routes read query parameters, and their OpenAPI operationIds.

Query parameters are named like the bodies' fields — lowerCamelCase (`pageSize`,
`updateMask`, `afterSeq`) — and their snake_case spelling (`page_size`) is accepted too,
as proto3 JSON parsers accept both for bodies (issue 23, item 14). A parameter the route
does not declare is an error, not silently ignored: `?pageSize=abc` is a 400 naming
`pageSize`, and so is `?page_sise=10` (a typo that used to answer the default page).

Every router of the API is built with `router(...)`, which gives its routes `ApiRoute`;
`operation_id` makes the operationIds a client generator turns into method names
(`createRun`, `listRuns`, `streamRunEvents`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from chorus.core.errors import InvalidArgument
from chorus.gateway.protojson import snake_case


def camel_case(name: str) -> str:
    """`create_run` → `createRun`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def operation_id(route: APIRoute) -> str:
    """The operationId of `route`: its name in lowerCamelCase (`create_run` → `createRun`),
    unless the route sets one."""
    return camel_case(route.name)


class ApiRoute(APIRoute):
    """An API route whose query string is checked before FastAPI reads it: snake_case
    names of declared parameters are rewritten to their (camelCase) names; an undeclared
    parameter, or one given under both names, is INVALID_ARGUMENT (HTTP 400) with a
    `BadRequest` violation per parameter."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = list(dict.fromkeys(_query_names(self.dependant)))
        names = {name: name for name in declared}
        names.update({snake_case(name): name for name in declared if snake_case(name) != name})
        known = ", ".join(declared) or "none"

        async def route_handler(request: Request) -> Response:
            raw: bytes = request.scope.get("query_string", b"")
            if raw:
                request.scope["query_string"] = _normalized(raw, names, known)
            return await handler(request)

        return route_handler


def _query_names(dependant: Dependant) -> list[str]:
    """Names of the query parameters of `dependant` and its dependencies."""
    names = [param.alias for param in dependant.query_params]
    for sub in dependant.dependencies:
        names.extend(_query_names(sub))
    return names


def _normalized(raw: bytes, names: dict[str, str], known: str) -> bytes:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    violations: list[tuple[str, str]] = []
    spelled: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for key, value in pairs:
        name = names.get(key)
        if name is None:
            violations.append((key, f"unknown query parameter; known: {known}"))
            continue
        first = spelled.setdefault(name, key)
        if first != key:
            violations.append((name, f"given as both {first!r} and {key!r}"))
            continue
        out.append((name, value))
    if violations:
        fields = ", ".join(dict.fromkeys(f for f, _ in violations))
        raise InvalidArgument(f"invalid query parameters: {fields}", violations)
    return urlencode(out).encode("latin-1")


def router(prefix: str, tags: list[str]) -> APIRouter:
    """An API router whose routes are `ApiRoute`s."""
    return APIRouter(prefix=prefix, tags=list(tags), route_class=ApiRoute)
