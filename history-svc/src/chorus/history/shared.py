"""Group flush of committed calls' Redis writes (issue 19: run-start and run-end writes in
fewer round trips).

After the store committed, a call shares what it wrote: its new events on the live log (the
wake-up of watchers on every replica) and its new values in the cache. Calls do not each
send their own pipeline: they join the open *group*, and one flusher sends a group at a
time, in one pipeline (`EventLog.publish_many` with `Cache.run_writes`). While a group is
under way the next one fills, so under load a round trip carries every call that committed
meanwhile (100 concurrent run starts: a handful of round trips instead of ~5 per run),
while a call alone is flushed at the next turn of the event loop.

A call either answers at once and lets its writes follow (`wait=False`: events alone, a run
start in a new conversation — nothing cached can be stale) or waits for its group to be
sent (`wait=True`: a run's end, a run start or message append in an existing conversation,
whose caller may read the cache next). Nothing raises: Redis failures are counted and
their keys dropped once it answers again (`publish_many`, `RedisCache.run_writes_sent`),
and the store stays the truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from chorus.core.logging import get_logger
from chorus.history.cache import Appended, Cache
from chorus.history.event_log import EventLog
from chorus.v1 import conversation_pb2, run_pb2

log = get_logger("chorus.history.shared")

MAX_WRITES_AFTER_ANSWER = 256
"""Calls a group may hold whose writes follow their answer. Beyond this many (Redis is
behind: the group waits for the one under way), a call waits for its own group to be sent
(backpressure, memory bound)."""

Published = tuple[str, int, Sequence[bytes]]
"""`(run_id, first_seq, payloads)`: a committed batch for the live log."""


@dataclass(slots=True)
class _Group:
    """The writes of the calls that joined one flush, in the order they joined."""

    done: asyncio.Future[None]
    calls: int = 0
    published: list[Published] = field(default_factory=list)
    runs: list[run_pb2.Run] = field(default_factory=list)
    advanced: list[tuple[str, int]] = field(default_factory=list)
    conversations: list[conversation_pb2.Conversation] = field(default_factory=list)
    messages: list[Appended] = field(default_factory=list)


class SharedWrites:
    """The group flusher of one servicer (module docstring).

    Args:
        log: the live event log.
        cache: the cache (its `run_writes` go on the log's pipeline where both are Redis).
    """

    def __init__(self, log: EventLog, cache: Cache) -> None:
        self._log = log
        self._cache = cache
        self._open: _Group | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def write(
        self,
        published: Sequence[Published] = (),
        runs: Sequence[run_pb2.Run] = (),
        advanced: Sequence[tuple[str, int]] = (),
        conversations: Sequence[conversation_pb2.Conversation] = (),
        messages: Sequence[Appended] = (),
        *,
        wait: bool,
    ) -> None:
        """Join the open group with a committed call's writes: `published` batches, whole
        `runs`, `advanced` last seqs `(run_id, last_seq)`, new `conversations`, message
        appends `(conversation, added)`. With `wait`, return once the group was sent (its
        Redis round trip answered or failed); else at once, unless the group already holds
        `MAX_WRITES_AFTER_ANSWER` calls. A caller cancelled while waiting leaves the group
        to be sent for the others."""
        group = self._open
        if group is None:
            group = self._open = _Group(asyncio.get_running_loop().create_future())
        group.calls += 1
        group.published.extend(published)
        group.runs.extend(runs)
        group.advanced.extend(advanced)
        group.conversations.extend(conversations)
        group.messages.extend(messages)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        if wait or group.calls > MAX_WRITES_AFTER_ANSWER:
            await asyncio.shield(group.done)

    async def _flush(self) -> None:
        """Send the open group, then the one that filled meanwhile, until none is open."""
        try:
            while (group := self._open) is not None:
                self._open = None
                try:
                    await self._log.publish_many(
                        group.published,
                        self._cache.run_writes(
                            group.runs, group.advanced, group.conversations, group.messages
                        ),
                    )
                except Exception:  # never expected (publish_many raises nothing): go on
                    log.exception("shared_writes_failed", calls=group.calls)
                finally:
                    group.done.set_result(None)
        finally:
            self._flusher = None
            if self._open is not None:  # cancelled (shutdown): nobody may wait for ever
                self._open.done.set_result(None)
                self._open = None

    async def drain(self) -> None:
        """Wait until every group joined so far was sent (at shutdown, in tests)."""
        while self._flusher is not None:
            await asyncio.wait({self._flusher})
