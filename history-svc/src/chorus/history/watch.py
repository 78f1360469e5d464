"""WatchRunEvents: replay a run's events after a seq, then follow new ones, exactly once each.

The watcher keeps one position, `pos` (the last seq it sent). Whatever the live log
(`chorus.history.event_log`) hands it is filtered to seq > pos; when the log's next event
is beyond pos + 1 (the log was trimmed, expired, missed a batch, or the watch starts far
behind) the missing seqs are read from the store first. So replay and live tail are one
loop and there is no boundary where an event could be lost or repeated.

The store is also consulted when the log is quiet for `watch_idle_poll_s` (a batch the log
never got) and, every `watch_degraded_poll_s`, while the log is unavailable. The stream
ends after the terminal event (docs/architecture.md §3), or when the run has had a terminal status for
`watch_terminal_grace_s` without a terminal event after pos (a run failed by the recovery
sweep without one); it fails NOT_FOUND when the run is deleted under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from chorus.history import metrics, runs
from chorus.history.event_log import EventLog, Events
from chorus.history.events import TERMINAL_PAYLOADS
from chorus.history.limits import EVENTS_PAGE
from chorus.history.settings import Settings
from chorus.history.stores.base import Store, run_not_found
from chorus.history.timeutil import now_us, ts_to_us
from chorus.v1 import history_service_pb2


class Watcher:
    """Runs WatchRunEvents streams over a store and a live event log."""

    def __init__(self, store: Store, log: EventLog, settings: Settings) -> None:
        self._store = store
        self._log = log
        self._idle_s = settings.watch_idle_poll_s
        self._degraded_s = settings.watch_degraded_poll_s
        self._grace_us = int(settings.watch_terminal_grace_s * 1_000_000)

    async def watch(
        self, run_id: str, after_seq: int
    ) -> AsyncIterator[history_service_pb2.WatchRunEventsResponse]:
        """The events of `run_id` with seq > `after_seq`, then live ones, until the end.

        The caller has checked that the run exists and is visible to the caller.
        """
        pos = after_seq
        if await self._ended(run_id, pos):
            return
        metrics.WATCHERS.inc()
        try:
            async with self._log.subscribe(run_id) as sub:
                while True:
                    events = await sub.read(pos, self._idle_s)
                    if not events:
                        degraded = events is None
                        events = await self._store.list_events(run_id, pos, EVENTS_PAGE[0])
                        if not events:
                            if await self._ended(run_id, pos):
                                return
                            if degraded:
                                await asyncio.sleep(self._degraded_s)
                            continue
                    if events[-1][0] <= pos:  # only old news: maybe nothing more will come
                        if await self._ended(run_id, pos):
                            return
                        continue
                    for seq, payload in events:
                        if seq <= pos:
                            continue
                        if seq > pos + 1:
                            async for item in self._fill(run_id, pos, seq - 1):
                                yield item
                                pos = item.event.seq
                            if pos != seq - 1:
                                break  # the store does not hold them yet: read again
                        item = history_service_pb2.WatchRunEventsResponse()
                        item.event.ParseFromString(payload)
                        yield item
                        pos = seq
                        if item.event.WhichOneof("payload") in TERMINAL_PAYLOADS:
                            return
        finally:
            metrics.WATCHERS.dec()

    async def _fill(
        self, run_id: str, after_seq: int, until_seq: int
    ) -> AsyncIterator[history_service_pb2.WatchRunEventsResponse]:
        """Stored events after_seq < seq <= until_seq (never a terminal one: a later seq exists)."""
        pos = after_seq
        while pos < until_seq:
            page: Events = await self._store.list_events(run_id, pos, EVENTS_PAGE[0], until_seq)
            if not page:
                return
            for seq, payload in page:
                item = history_service_pb2.WatchRunEventsResponse()
                item.event.ParseFromString(payload)
                yield item
                pos = seq

    async def _ended(self, run_id: str, pos: int) -> bool:
        """Nothing more will come after `pos`: its terminal event is at or before `pos`,
        or it has had a terminal status for the grace period with no event after `pos`.

        Raises:
            NotFound: the run was deleted meanwhile (issue 23): the watch ends with
                NOT_FOUND, as it would have started with.
        """
        state = await self._store.event_log_state(run_id)
        if state is None:
            raise run_not_found(run_id)
        last, ended = state
        if ended and pos >= last:
            return True
        if last > pos:
            return False
        run = await self._store.get_run(run_id, None)
        if run is None:
            raise run_not_found(run_id)
        if run.status not in runs.TERMINAL:
            return False
        ended_us = ts_to_us(run.end_time) or ts_to_us(run.update_time) or 0
        return now_us() - ended_us >= self._grace_us
