"""Liveness, readiness and Prometheus metrics (no authentication: no user data)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import orjson
from fastapi import APIRouter
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from chorus.gateway.api.deps import ClientsDep, SettingsDep
from chorus.gateway.clients import Backend

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    """`{"status": "ok"}` while the process serves HTTP (checks nothing else)."""
    return {"status": "ok"}


async def _check(backend: Backend, timeout: float) -> dict[str, str]:
    try:
        reply = await backend.health.Check(
            health_pb2.HealthCheckRequest(service=backend.service), timeout=timeout
        )
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        status = f"{exc.code().name}: {exc.details() or ''}".rstrip(": ")
    return {"service": backend.service, "address": backend.address, "status": status}


@router.get(
    "/health/ready",
    summary="Readiness",
    responses={503: {"description": "A service is not SERVING (AIP-193 error, UNAVAILABLE)."}},
)
async def ready(clients: ClientsDep, settings: SettingsDep) -> Response:
    """200 when every gRPC service reports SERVING through grpc.health.v1 — history-svc
    reports NOT_SERVING while its storage is unreachable, so this covers the database too.
    Otherwise 503 with each service's status in the error's `ErrorInfo.metadata`."""
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


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics() -> Response:
    """Prometheus text exposition: HTTP requests, SSE streams and events, WebSocket
    connections, rate-limit refusals."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
