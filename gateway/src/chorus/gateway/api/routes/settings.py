"""Feature flags and limits a client needs (never secrets, never addresses)."""

from __future__ import annotations

from typing import Any

from chorus.gateway import __version__, routing
from chorus.gateway.api.deps import CallerDep, LimiterDep, SettingsDep

router = routing.router("/settings", ["settings"])


@router.get("", summary="Client-facing settings")
async def get_settings(
    caller: CallerDep, settings: SettingsDep, limiter: LimiterDep
) -> dict[str, Any]:
    """What a client may rely on: auth mode, rate limits, size limits, stream behaviour.
    Credentials, hashes, tokens and service addresses are never included."""
    return {
        "version": __version__,
        "authMode": settings.auth_mode,
        "rateLimits": {"runs": limiter.describe("runs"), "messages": limiter.describe("messages")},
        "limits": {
            "maxInputChars": settings.max_input_chars,
            "maxRequestBytes": settings.max_request_bytes,
            "wsMaxMessageBytes": settings.ws_max_message_bytes,
            "wsMaxSubscriptions": settings.ws_max_subscriptions,
        },
        "streams": {
            "sseKeepaliveSeconds": settings.sse_keepalive_s,
            "webSocketPath": "/api/v1/ws",
            "json": "proto3 JSON (lowerCamelCase names, enums as names, int64 as strings)",
        },
        "features": {
            "sharedRateLimits": settings.redis_url is not None,
            "cors": bool(settings.cors_origins),
            "devMode": settings.dev_mode,
        },
    }
