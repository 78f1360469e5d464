"""A run's events as an async feed, over the process's shared WatchRuns call.

`EventFeed` is a `chorus.gateway.watches.WatchBuffer`: it starts a run or follows one after
a seq (`RunWatches.open`), keeps what arrives until `next_batch` takes it, pauses the watch
when `max_buffered` events wait (flow control), and inherits the watch's reattach to another
orchestrator replica when the serving one goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from chorus.core import identity
from chorus.gateway.watches import RunWatches, WatchBuffer
from chorus.v1 import run_pb2


class EventFeed(WatchBuffer):
    """Run events from one watch, in seq order.

    Args:
        watches: the process's WatchRuns call (`chorus.gateway.clients.ServiceClients`).
        user: the caller the orchestrator checks access for.
        start: a run to start (as StreamRun); or
        run_id, after_seq: a run to follow after a seq (as WatchRun).
        max_buffered: events held before the watch is paused.
    """

    def __init__(
        self,
        watches: RunWatches,
        *,
        user: str,
        start: run_pb2.RunSpec | None = None,
        run_id: str = "",
        after_seq: int = 0,
        max_buffered: int = 4096,
    ) -> None:
        super().__init__(max_buffered)
        self.events: list[run_pb2.RunEvent] = []
        self.watch = watches.open(
            self,
            user=user,
            request_id=identity.current_request_id(),
            start=start,
            run_id=run_id,
            after_seq=after_seq,
        )

    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        """The watch's next events."""
        self.events.extend(events)
        self._delivered(len(self.events))

    async def next_batch(self, timeout: float | None = None) -> list[run_pb2.RunEvent] | None:
        """The events delivered since the last call; None once the watch ended OK and
        everything was taken; `[]` when `timeout` seconds passed with nothing new.

        Raises:
            chorus.core.errors.ChorusError | grpc.aio.AioRpcError: the watch's error (an
                unknown run, an invalid spec, …) once the events before it were taken.
        """
        while not self.events:
            if self.finished:
                if self.error is not None:
                    raise self.error
                return None
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await self._ready.wait()
                except TimeoutError:
                    return []
        batch, self.events = self.events, []
        self._taken()
        return batch

    def close(self) -> None:
        """Stop watching (the client left, or everything needed was read). A run started by
        the feed then follows its `on_disconnect`."""
        if self.watch is not None and not self.finished:
            self.watch.stop()
            self.finished = True

    async def first_batch(self, timeout: float) -> list[run_pb2.RunEvent]:
        """The first events (`[]` when none came within `timeout` seconds or the watch
        ended with none). An error before any event — or a cancellation — closes the feed
        and is raised, so the request answers it as a real HTTP error."""
        try:
            batch = await self.next_batch(timeout=timeout)
        except BaseException:
            self.close()
            raise
        return batch or []
