"""Redis availability, shared by the cache and the event log.

Redis is an accelerator, never a dependency of a committed write: when a command fails the
caller goes on without Redis, and for `retry_after_s` every call skips Redis at once
(instead of paying a connect timeout per call); then one call tries again. Transitions are
logged once (`redis_unavailable`, `redis_recovered`), every failure is counted in
`chorus_history_redis_errors_total{operation}`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from chorus.core.logging import get_logger
from chorus.history import metrics
from chorus.history.settings import Settings

log = get_logger("chorus.history.redis")

ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
"""Exceptions meaning "Redis did not do it" (connection refused, reset, timeout, error reply)."""


def client(settings: Settings, *, socket_timeout_s: float | None = None) -> redis.Redis:
    """A `redis.asyncio` client on `settings.redis_url` (own pool), bytes in and out.

    The pool holds `redis_max_connections`; a command finding them all busy (a burst of
    concurrent calls) waits up to `redis_socket_timeout_s` for one instead of failing at
    once — such a failure would mark Redis unusable for `redis_retry_after_s` and send
    every watcher to the database meanwhile.

    Args:
        socket_timeout_s: read timeout (default `redis_socket_timeout_s`; blocking reads need
            more than their block time).
    """
    assert settings.redis_url is not None
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=socket_timeout_s or settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return redis.Redis.from_pool(pool)  # the client owns (and closes) the pool


def queue_script(
    pipe: Any, script: AsyncScript, keys: Sequence[str], args: Sequence[bytes | int | str]
) -> None:
    """Queue `script` on the pipeline `pipe` as a bare EVALSHA. redis-py's own way,
    `script(client=pipe)`, makes every execute of the pipeline ask SCRIPT EXISTS first:
    one more round trip per call (issue 19). The script must be registered with
    `RedisGuard.script` and loaded (`RedisGuard.scripts_ready`)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


class RedisGuard:
    """Tracks whether Redis is usable right now (a small circuit breaker).

    Args:
        retry_after_s: after a failure, seconds during which `usable()` is False.
    """

    def __init__(self, retry_after_s: float) -> None:
        self._retry_after = retry_after_s
        self._down_since: float | None = None
        self._next_try = 0.0
        self._scripts: list[AsyncScript] = []
        self._scripts_loaded = False
        self._loading = asyncio.Lock()

    def script(self, client: redis.Redis, source: str) -> AsyncScript:
        """Register a Lua script of `client`; pipelines queue it with `queue_script` once
        `scripts_ready` loaded it (direct calls load it themselves when needed)."""
        script = client.register_script(source)
        self._scripts.append(script)
        self._scripts_loaded = False
        return script

    async def scripts_ready(self, client: redis.Redis) -> bool:
        """Load the registered scripts into Redis when it may lack them — before the first
        pipeline, and after any failure (a NOSCRIPT reply, or a restarted Redis). False when
        that failed (counted as a failure of `script_load`)."""
        if self._scripts_loaded:
            return True
        async with self._loading:  # one load for all the calls waiting for it
            if self._scripts_loaded:
                return True
            try:
                for script in self._scripts:
                    await client.script_load(script.script)
            except ERRORS as exc:
                self.failed("script_load", exc)
                return False
            self._scripts_loaded = True
        return True

    def usable(self) -> bool:
        """False while Redis recently failed; True when it is (or may be) back."""
        return self._down_since is None or time.monotonic() >= self._next_try

    @property
    def down(self) -> bool:
        """True from a failure until the next success."""
        return self._down_since is not None

    def failed(self, operation: str, exc: BaseException) -> None:
        """Record a failed command."""
        metrics.REDIS_ERRORS.labels(operation).inc()
        # Redis may have lost the scripts (NOSCRIPT; or it restarted): load them again.
        self._scripts_loaded = False
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "redis_unavailable", operation=operation, error=str(exc) or type(exc).__name__
            )
        self._next_try = now + self._retry_after

    def succeeded(self) -> None:
        """Record a successful command."""
        if self._down_since is not None:
            log.info("redis_recovered", down_s=round(time.monotonic() - self._down_since, 3))
            self._down_since = None
