"""Per-identity rate limits on starting runs and sending chat messages (the `limits` library).

Counters live in Redis when `redis_url` is set (shared by every gateway replica) and in
process memory otherwise. The strategy is a moving window: `10/minute` means at most 10
hits in any 60 s span. A refused hit is RESOURCE_EXHAUSTED (HTTP 429) with a `RetryInfo`
detail, which becomes the `Retry-After` header.

If Redis fails, the limit is not enforced for that request (fail open): a broken counter
store must not take the product down. The failure is logged and counted in
`chorus_gateway_rate_limit_errors_total`.
"""

from __future__ import annotations

import time
from typing import Literal

import redis.asyncio as aioredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from chorus.core.errors import ResourceExhausted
from chorus.core.logging import get_logger
from chorus.gateway.settings import GatewaySettings

log = get_logger("chorus.gateway.ratelimit")

LimitName = Literal["runs", "messages"]

LIMITED = Counter(
    "chorus_gateway_rate_limited_total", "Requests refused by a rate limit.", ["limit"]
)
STORAGE_ERRORS = Counter(
    "chorus_gateway_rate_limit_errors_total",
    "Rate-limit checks skipped because the counter store failed.",
)


def storage_uri(redis_url: str) -> str:
    """The `limits` async storage URI of a Redis URL (`redis://…` → `async+redis://…`)."""
    return redis_url if redis_url.startswith("async+") else f"async+{redis_url}"


class RateLimiter:
    """Checks and counts hits per (limit, user).

    Args:
        settings: limits (`rate_limit_runs`, `rate_limit_messages`), `redis_url`, key prefix.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.storage: Storage
        self._pool: aioredis.BlockingConnectionPool | None = None
        if settings.redis_url:
            # A bounded, blocking pool: 1,000 streams starting at once must queue for a
            # connection, not exhaust the client's default pool ("Too many connections").
            self._pool = pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.rate_limit_redis_connections,
                timeout=1.0,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
            self.storage = RedisStorage(
                storage_uri(settings.redis_url),
                implementation="redispy",
                key_prefix=settings.rate_limit_key_prefix,
                wrap_exceptions=True,
                # limits types **options as `float | str | bool`, but hands them to
                # redis-py's client, which takes a `connection_pool`.
                connection_pool=pool,  # type: ignore[arg-type]
            )
        else:
            self.storage = MemoryStorage()
        self._strategy = MovingWindowRateLimiter(self.storage)
        self.limits: dict[LimitName, list[RateLimitItem]] = {
            "runs": parse_many(settings.rate_limit_runs) if settings.rate_limit_runs else [],
            "messages": (
                parse_many(settings.rate_limit_messages) if settings.rate_limit_messages else []
            ),
        }

    def describe(self, name: LimitName) -> str:
        """The limit in `limits` notation (`10 per 1 minute`), or `unlimited`."""
        items = self.limits[name]
        return "; ".join(str(item) for item in items) if items else "unlimited"

    async def hit(self, name: LimitName, user: str) -> None:
        """Count one hit of `user` on limit `name`.

        Raises:
            ResourceExhausted: the limit is reached (reason RATE_LIMITED, `retry_after_s`).
        """
        for item in self.limits[name]:
            try:
                if await self._strategy.hit(item, name, user):
                    continue
                stats = await self._strategy.get_window_stats(item, name, user)
            except Exception as exc:  # fail open, see the module docstring
                STORAGE_ERRORS.inc()
                log.warning("rate_limit_storage_error", limit=name, error=str(exc))
                return
            LIMITED.labels(name).inc()
            retry = max(1.0, stats.reset_time - time.time())
            raise ResourceExhausted(
                f"rate limit reached: {item} for {name}; retry in {retry:.0f} s",
                retry_after_s=retry,
                reason="RATE_LIMITED",
                metadata={"limit": name, "quota": str(item)},
            )

    async def close(self) -> None:
        """Release the Redis connections (the counters stay in Redis)."""
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
        if self._pool is not None:
            await self._pool.disconnect()
