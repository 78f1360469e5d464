"""Database health → gRPC health status.

Every `health_check_interval_s` (and at once when a call found the database unreachable)
the monitor probes the store; while the probe fails every service of the server reports
NOT_SERVING, so load balancers and orchestrators stop sending traffic, and SERVING again as
soon as a probe succeeds. Redis is not part of health: without it the service still answers.
"""

from __future__ import annotations

import asyncio
import contextlib

from chorus.core.errors import ChorusError
from chorus.core.logging import get_logger
from chorus.core.server import GrpcServer
from chorus.history import metrics
from chorus.history.stores.base import Store

log = get_logger("chorus.history.health")


class HealthMonitor:
    """Probes the store and sets the server's health accordingly.

    Args:
        store: the store to probe (`Store.ping`).
        interval_s: seconds between probes.
    """

    def __init__(self, store: Store, interval_s: float) -> None:
        self._store = store
        self._interval = interval_s
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.serving = True

    def start(self, server: GrpcServer) -> None:
        """Begin probing (call once the server is started)."""
        self._task = asyncio.create_task(self._run(server), name="history-health")

    def trigger(self) -> None:
        """Probe now (a call just found the database unreachable)."""
        self._kick.set()

    async def probe(self) -> bool:
        """One probe: True when the database answered."""
        try:
            async with asyncio.timeout(self._interval * 2 + 1):
                await self._store.ping()
        except (ChorusError, OSError, TimeoutError) as exc:
            if self.serving:
                log.error("database_unreachable", database=self._store.kind, error=str(exc))
            return False
        return True

    async def _run(self, server: GrpcServer) -> None:
        # `asyncio.timeout`, not `wait_for`: on Python 3.11 a cancel arriving as wait_for's
        # wait ends can be lost, and close() then waited forever (seen in the test suite).
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._kick.wait()
            if self._stopping:
                return
            self._kick.clear()
            ok = await self.probe()
            metrics.DATABASE_UP.set(1 if ok else 0)
            if ok != self.serving:
                self.serving = ok
                await server.set_serving(ok)
                log.info("health_changed", serving=ok, database=self._store.kind)

    async def close(self) -> None:
        """Stop probing: the loop ends at its next wake-up (the flag), the cancel ends it at
        once; waits at most one probe's time for it."""
        self._stopping = True
        self._kick.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self._interval * 2 + 2)
