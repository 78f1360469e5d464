"""Assembly of history-svc: store, cache, event log, servicer and health monitor.

`build_app(settings)` returns a `HistoryApp` whose `bindings` go to a
`chorus.core.server.GrpcServer` (or `run_service`); call `on_started(server)` once the
server runs and `close()` after it stopped. Tests of other services use this to run
history-svc in their own process:

    app = await build_app(Settings(dev_mode=True, data_dir=tmp_path))
    server = GrpcServer(app.bindings, app.settings, 0)
    await server.start(); await app.on_started(server)
    ...
    await server.stop(0); await app.close()
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as redis

from chorus.core.errors import Unavailable
from chorus.core.logging import get_logger
from chorus.core.server import GrpcServer, ServiceBinding
from chorus.core.settings import ConfigurationError
from chorus.history.cache import Cache, LocalCache, RedisCache
from chorus.history.event_log import EventLog, LocalEventLog, RedisEventLog
from chorus.history.health import HealthMonitor
from chorus.history.migrate import apply_migrations
from chorus.history.redis_guard import RedisGuard
from chorus.history.redis_guard import client as redis_client
from chorus.history.servicer import HistoryServicer
from chorus.history.settings import Settings
from chorus.history.stores.base import Store
from chorus.history.stores.postgres import PostgresStore
from chorus.history.stores.sqlite import SqliteStore
from chorus.v1 import history_service_pb2_grpc

log = get_logger("chorus.history.app")

SERVICE_NAME = "chorus.v1.HistoryService"


class HistoryApp:
    """A built history service: what to serve and what to close.

    Attributes:
        settings: the settings it was built with.
        store, cache, event_log, servicer, monitor: its parts.
        bindings: the `ServiceBinding`s to serve.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: Cache,
        event_log: EventLog,
        redis_client: redis.Redis | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.event_log = event_log
        self._redis = redis_client
        self.servicer = HistoryServicer(settings, store, cache, event_log)
        self.monitor = HealthMonitor(store, settings.health_check_interval_s)
        store.on_unavailable = self.monitor.trigger
        self.bindings: list[ServiceBinding] = [
            ServiceBinding(
                SERVICE_NAME,
                self.servicer,
                history_service_pb2_grpc.add_HistoryServiceServicer_to_server,
            )
        ]

    async def on_started(self, server: GrpcServer) -> None:
        """Start the database health monitor (health NOT_SERVING while the database is down)."""
        self.monitor.start(server)

    async def close(self) -> None:
        """Stop background work and close the store, cache and event log connections."""
        await self.monitor.close()
        await self.servicer.drain()
        await self.event_log.close()
        if self._redis is not None:
            await self._redis.aclose()
        await self.store.close()


async def _open_store(settings: Settings) -> Store:
    """Migrate (unless disabled) and connect, retrying an unreachable database for
    `db_startup_timeout_s`.

    Raises:
        ConfigurationError: still unreachable (or migrations failed) after the timeout.
    """
    deadline = time.monotonic() + settings.db_startup_timeout_s
    delay = 0.25
    while True:
        try:
            if settings.migrate_on_start:
                applied = await asyncio.to_thread(apply_migrations, settings)
                if applied:
                    log.info("migrations_applied", migrations=applied)
            if settings.database_url:
                return await PostgresStore.connect(settings)
            return await SqliteStore.connect(settings)
        except (Unavailable, OSError, Exception) as exc:  # psycopg/sqlite errors vary
            if time.monotonic() + delay > deadline:
                raise ConfigurationError(
                    f"cannot open the {'PostgreSQL' if settings.database_url else 'SQLite'} "
                    f"database: {exc}"
                ) from exc
            log.warning("database_unreachable_at_start", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def build_app(settings: Settings) -> HistoryApp:
    """Build the service from `settings`: PostgreSQL or SQLite, Redis or in-process.

    Raises:
        ConfigurationError: the database cannot be opened (see `_open_store`).
    """
    store = await _open_store(settings)
    client: redis.Redis | None = None
    cache: Cache
    event_log: EventLog
    if settings.redis_url:
        client = redis_client(settings)
        guard = RedisGuard(settings.redis_retry_after_s)
        cache = RedisCache(client, guard, settings)
        event_log = RedisEventLog(client, guard, settings)
    else:
        cache = LocalCache(settings)
        event_log = LocalEventLog(settings.local_event_log_runs, settings.local_event_log_events)
    log.info(
        "history_configured",
        database=store.kind,
        cache="redis" if client else "in-process",
        event_log="redis" if client else "in-process",
    )
    return HistoryApp(settings, store, cache, event_log, client)
