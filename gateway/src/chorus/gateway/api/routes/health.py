"""Liveness, readiness and Prometheus metrics (no authentication: no user data).

Liveness: `/health`, `/health/live`, `/api/v1/health`. Readiness: `/health/ready`,
`/api/v1/health/ready`. Each group answers the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import orjson
from fastapi import APIRouter
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response

from chorus.core.logging import get_logger
from chorus.gateway.api.deps import ClientsDep, SettingsDep
from chorus.gateway.clients import Backend

log = get_logger("chorus.gateway.health")

router = APIRouter(tags=["health"])


LIVENESS_PATHS = {
    "/health": "getHealth",
    "/health/live": "getLiveness",
    "/api/v1/health": "getApiHealth",
}
"""Liveness paths and their operationIds."""
READINESS_PATHS = {"/health/ready": "getReadiness", "/api/v1/health/ready": "getApiReadiness"}
"""Readiness paths and their operationIds. The `/api/v1/…` paths are the MagenticOne
design's (issue 23); like the others they need no authentication."""

_LIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The process serves HTTP.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                    "required": ["status"],
                }
            }
        },
    }
}


async def health() -> Response:
    """`{"status": "ok"}` while the process serves HTTP (checks nothing else)."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _check(backend: Backend, timeout: float) -> dict[str, str]:
    try:
        reply = await backend.health.Check(
            health_pb2.HealthCheckRequest(service=backend.service), timeout=timeout
        )
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        # The details name addresses: logged, never answered (issue 23).
        log.warning(
            "readiness_check_failed",
            service=backend.name,
            address=backend.address,
            code=exc.code().name,
            details=exc.details() or "",
        )
        status = exc.code().name
    return {"service": backend.service, "status": status}


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every service is SERVING.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["ready"]},
                        "services": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "service": {"type": "string"},
                                    "status": {"type": "string"},
                                },
                            },
                        },
                    },
                    "required": ["status", "services"],
                }
            }
        },
    },
    503: {
        "description": "A service is not SERVING (AIP-193 error, UNAVAILABLE).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}


async def ready(clients: ClientsDep, settings: SettingsDep) -> Response:
    """200 when every gRPC service reports SERVING through grpc.health.v1 — history-svc
    reports NOT_SERVING while its storage is unreachable, so this covers the database too.
    Otherwise 503 with each service's status (`SERVING`, `NOT_SERVING`, or the gRPC code
    of the failed check, e.g. `UNAVAILABLE`) in the error's `ErrorInfo.metadata`; service
    addresses and transport details go to the log only."""
    results = await asyncio.gather(
        *(_check(b, settings.readiness_timeout_s) for b in clients.backends)
    )
    services = {b.name: r for b, r in zip(clients.backends, results, strict=True)}
    if all(r["status"] == "SERVING" for r in results):
        return Response(
            orjson.dumps({"status": "ready", "services": services}), media_type="application/json"
        )
    down = [name for name, r in services.items() if r["status"] != "SERVING"]
    body: dict[str, Any] = {
        "error": {
            "code": 503,
            "message": f"not ready: {', '.join(down)} not serving",
            "status": "UNAVAILABLE",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "NOT_READY",
                    "domain": "chorus.dev",
                    "metadata": {name: r["status"] for name, r in services.items()},
                }
            ],
        }
    }
    return Response(orjson.dumps(body), status_code=503, media_type="application/json")


for _paths, _endpoint, _summary, _responses in (
    (LIVENESS_PATHS, health, "Liveness", _LIVE_RESPONSES),
    (READINESS_PATHS, ready, "Readiness", _READY_RESPONSES),
):
    for _path, _operation in _paths.items():
        router.add_api_route(
            _path,
            _endpoint,
            methods=["GET"],
            summary=_summary,
            operation_id=_operation,
            responses=_responses,
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="getMetrics",
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        404: {"description": "CHORUS_METRICS_PORT is set: the metrics are on that port."},
    },
)
async def metrics(settings: SettingsDep) -> Response:
    """Prometheus text exposition: HTTP requests, SSE streams and events, WebSocket
    connections, rate-limit refusals.

    404 (like an unknown path) when `CHORUS_METRICS_PORT` is set: the metrics are then served
    on that internal port only (`python -m chorus.gateway`), never on the public one (issue 22).
    """
    if settings.metrics_port is not None:
        raise HTTPException(status_code=404)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
