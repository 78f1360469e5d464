"""Rate limits per identity: 429 with Retry-After, per user, per limit, and shared between
gateway replicas through Redis."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import redis.asyncio as redis
import websockets
from gateway_helpers import API_KEYS, api_key_hashes_json, detail, duet, error_of

from chorus.core.testing import require_service


def _keyed(url: str, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {API_KEYS[user]}"}
    )


@pytest.fixture(scope="module")
def limited_gateway(gateways) -> str:
    return gateways.url(
        auth_mode="apikey",
        api_key_hashes=api_key_hashes_json(),
        rate_limit_runs="2/minute",
        rate_limit_messages="1/minute",
    )


async def test_third_run_in_a_minute_is_429_with_retry_after(limited_gateway):
    async with _keyed(limited_gateway, "alice") as alice, _keyed(limited_gateway, "bob") as bob:
        for _ in range(2):
            assert (await alice.post("/api/v1/runs", json=duet())).status_code == 201
        refused = await alice.post("/api/v1/runs", json=duet())
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        error = error_of(refused)
        assert error["status"] == "RESOURCE_EXHAUSTED"
        assert detail(error, "ErrorInfo")["reason"] == "RATE_LIMITED"
        assert detail(error, "RetryInfo")["retryDelay"].endswith("s")
        streamed = await alice.post("/api/v1/runs/stream", json=duet())
        assert streamed.status_code == 429, "streaming starts count against the same limit"
        assert (await bob.post("/api/v1/runs", json=duet())).status_code == 201, "per user"
        assert (await alice.get("/api/v1/runs")).status_code == 200, "reads are not limited"


async def test_message_limit_covers_rest_and_websocket_chat(limited_gateway):
    async with _keyed(limited_gateway, "bob") as bob:
        conversation = (await bob.post("/api/v1/conversations", json={})).json()["id"]
        first = await bob.post(
            f"/api/v1/conversations/{conversation}/messages", json={"content": "hi"}
        )
        assert first.status_code == 200, first.text
        second = await bob.post(
            f"/api/v1/conversations/{conversation}/messages", json={"content": "hi"}
        )
        assert second.status_code == 429 and "retry-after" in second.headers
    ws_url = limited_gateway.replace("http", "ws") + "/api/v1/ws"
    headers = {"Authorization": f"Bearer {API_KEYS['bob']}"}
    async with websockets.connect(ws_url, additional_headers=headers) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "chat", "payload": {"message": "hi again"}}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "RESOURCE_EXHAUSTED"
        assert error["recoverable"] is True and error["retryAfter"] >= 1


async def test_limits_are_shared_between_replicas_through_redis(gateways):
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"chorus-gw-test-{uuid.uuid4().hex[:8]}"
    settings = {
        "redis_url": "redis://127.0.0.1:6379/0",
        "rate_limit_key_prefix": prefix,
        "rate_limit_runs": "3/minute",
    }
    first = gateways.url(**settings)
    second = gateways.url(**settings, gateway_host="127.0.0.2")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            codes = [
                (await client.post(f"{url}/api/v1/runs", json=duet())).status_code
                for url in (first, second, first, second)
            ]
        assert codes == [201, 201, 201, 429]
    finally:
        r = redis.Redis(host="127.0.0.1", port=6379)
        keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
        assert keys, "the counters were in Redis"
        await r.delete(*keys)
        await r.aclose()


async def test_a_burst_beyond_the_redis_pool_is_counted_not_failed_open():
    from chorus.gateway.ratelimit import STORAGE_ERRORS, RateLimiter
    from chorus.gateway.settings import GatewaySettings

    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"chorus-test-burst-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(
        GatewaySettings(
            redis_url="redis://127.0.0.1:6379/0",
            rate_limit_key_prefix=prefix,
            rate_limit_runs="1000/minute",
            rate_limit_redis_connections=2,
        )
    )
    errors_before = STORAGE_ERRORS._value.get()
    try:
        import asyncio

        await asyncio.gather(*(limiter.hit("runs", "burst-user") for _ in range(100)))
        stats = await limiter._strategy.get_window_stats(
            limiter.limits["runs"][0], "runs", "burst-user"
        )
        assert stats.remaining == 1000 - 100, "every hit of the burst was counted in Redis"
        assert STORAGE_ERRORS._value.get() == errors_before
    finally:
        await limiter.close()
        client = redis.Redis()
        async for key in client.scan_iter(f"{prefix}*"):
            await client.delete(key)
        await client.aclose()
