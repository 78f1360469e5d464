"""The live run event log: Redis Streams across replicas, or in-process (embedded default).

It carries what AppendRunEvents committed to the store, so that `WatchRunEvents` on any
replica sees new events within milliseconds. It is a *log of recent batches*, not the
source of truth: a batch it missed (Redis down, trimmed by MAXLEN, expired, or two
appenders of one run racing) is simply absent, and the watcher (`chorus.history.watch`)
fills every gap from the store, so a watcher never skips an event.

Redis layout: one stream per run, `{prefix}run:{run_id}:events`. One entry per appended
batch with the explicit id `{last seq of the batch}-0` and one field per event
(`seq` → serialized RunEvent), so "the events after seq N" are the entries after id `N-0`.
Streams are trimmed to about `redis_stream_maxlen` entries and expire
`redis_stream_ttl_s` after their last append.

Each process tails every watched stream with ONE blocking `XREAD` (the hub), whatever the
number of watchers, and wakes it through a private stream when a new run is watched.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import ResponseError

from chorus.core.logging import get_logger
from chorus.history import metrics
from chorus.history.cache import RedisCache, RunWrites
from chorus.history.redis_guard import ERRORS, RedisGuard, queue_script
from chorus.history.redis_guard import client as redis_client
from chorus.history.settings import Settings

log = get_logger("chorus.history.event_log")

_Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""Entries of a stream as XRANGE / XREVRANGE return them (`(id, fields)`; the client is
bytes-only: no `decode_responses`)."""
_StreamsReply = list[tuple[bytes, _Entries]] | None
"""XREAD's reply: `(stream key, entries)` per stream with new entries; None on a timeout."""

# KEYS: run streams; ARGV[1]: MAXLEN (approximate); ARGV[2]: ttl ms; then for each key: the
# entry id, the number of events n, and n seq/event pairs. For each key: XADD the entry
# and, when it was added, PEXPIRE. Returns 1 per key added, 0 per key whose XADD was refused
# (an id not above the stream's last: a later batch of that run got there first).
_XADD_MANY = """
local added = {}
local a = 3
for k, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a + 1])
  local cmd = {'XADD', key, 'MAXLEN', '~', ARGV[1], ARGV[a]}
  for j = a + 2, a + 1 + 2 * n do cmd[#cmd + 1] = ARGV[j] end
  local reply = redis.pcall(unpack(cmd))
  if type(reply) == 'table' and reply.err then
    added[k] = 0
  else
    redis.call('PEXPIRE', key, ARGV[2])
    added[k] = 1
  end
  a = a + 2 + 2 * n
end
return added
"""

# Per `_XADD_MANY` call: at most this many runs, and only batches of at most
# `_MANY_EVENTS` events (Lua's `unpack` takes ~8,000 values); bigger batches go alone.
_MANY_RUNS = 200
_MANY_EVENTS = 1000

Events = list[tuple[int, bytes]]
"""`(seq, serialized RunEvent)` in seq order."""


class Subscription(abc.ABC):
    """One watcher's view of one run's live log (an async context manager)."""

    @abc.abstractmethod
    async def read(self, after_seq: int, timeout_s: float) -> Events | None:
        """Events with seq > `after_seq` the log holds, in seq order; they may start after
        `after_seq + 1` or skip seqs (the caller reads those from the store).

        Returns `[]` when nothing arrived within `timeout_s`, None when the log is
        unavailable right now (the caller polls the store instead).
        """

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class EventLog(abc.ABC):
    """Publishes committed event batches and lets watchers follow them."""

    @abc.abstractmethod
    async def publish(self, run_id: str, first_seq: int, payloads: Sequence[bytes]) -> None:
        """Add a committed batch (seqs `first_seq`…). Never raises: a failure is logged,
        counted, and left to the watchers' gap filling."""

    async def publish_many(
        self,
        batches: Sequence[tuple[str, int, Sequence[bytes]]],
        writes: RunWrites | None = None,
    ) -> None:
        """`publish` for each `(run_id, first_seq, payloads)`, and the cached records'
        `writes` of those batches (one round trip for both where the log and the cache are
        Redis). Never raises."""
        for run_id, first_seq, payloads in batches:
            await self.publish(run_id, first_seq, payloads)
        if writes is not None:
            await writes.send()

    @abc.abstractmethod
    async def drop(self, run_ids: Sequence[str]) -> None:
        """Forget deleted runs' logs (after the delete committed). Never raises: a log left
        behind expires on its own, and nobody reads it — a watch starts from the store,
        which no longer has the run."""

    @abc.abstractmethod
    def subscribe(self, run_id: str) -> Subscription:
        """A subscription to `run_id`'s new events (enter it before the first read)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and release connections."""


# In-process


@dataclass
class _LocalRun:
    batches: deque[tuple[int, Events]] = field(default_factory=deque)
    events: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: int = 0


class LocalEventLog(EventLog):
    """`EventLog` in this process: the recent batches of the most recently appended runs.

    Args:
        max_runs: runs kept (least recently appended dropped first, unless watched).
        max_events: events kept per run (oldest batches dropped first).
    """

    def __init__(self, max_runs: int, max_events: int) -> None:
        self._runs: OrderedDict[str, _LocalRun] = OrderedDict()
        self._max_runs = max_runs
        self._max_events = max_events

    def _run(self, run_id: str) -> _LocalRun:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _LocalRun()
            if len(self._runs) > self._max_runs:
                for old_id, old in list(self._runs.items()):
                    if old.subscribers == 0 and old_id != run_id:
                        del self._runs[old_id]
                        break
        else:
            self._runs.move_to_end(run_id)
        return run

    async def publish(self, run_id: str, first_seq: int, payloads: Sequence[bytes]) -> None:
        run = self._run(run_id)
        run.batches.append((first_seq + len(payloads) - 1, list(enumerate(payloads, first_seq))))
        run.events += len(payloads)
        while run.events > self._max_events and len(run.batches) > 1:
            run.events -= len(run.batches.popleft()[1])
        changed, run.changed = run.changed, asyncio.Event()
        changed.set()

    async def drop(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is not None and run.subscribers == 0:
                del self._runs[run_id]
            elif run is not None:  # watchers still read it: empty it, wake them
                run.batches.clear()
                run.events = 0
                changed, run.changed = run.changed, asyncio.Event()
                changed.set()

    def subscribe(self, run_id: str) -> Subscription:
        return _LocalSubscription(self, run_id)

    async def close(self) -> None:
        self._runs.clear()


class _LocalSubscription(Subscription):
    def __init__(self, log: LocalEventLog, run_id: str) -> None:
        self._log = log
        self._run_id = run_id
        self._state: _LocalRun | None = None

    async def __aenter__(self) -> Subscription:
        self._state = self._log._run(self._run_id)
        self._state.subscribers += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state is not None:
            self._state.subscribers -= 1

    def _after(self, after_seq: int) -> Events:
        assert self._state is not None
        found: list[Events] = []
        for last, events in reversed(self._state.batches):
            if last <= after_seq:
                break
            found.append(
                events if events[0][0] > after_seq else [e for e in events if e[0] > after_seq]
            )
        return [e for events in reversed(found) for e in events]

    async def read(self, after_seq: int, timeout_s: float) -> Events | None:
        assert self._state is not None, "enter the subscription first"
        events = self._after(after_seq)
        if events:
            return events
        changed = self._state.changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)
        return self._after(after_seq)


# Redis


def _decode(entries: Sequence[Any], after_seq: int) -> Events:
    """Events of XRANGE/XREAD entries (`(id, {seq: payload})`) with seq > after_seq."""
    out: Events = []
    for _, fields in entries:
        for seq, payload in fields.items():
            s = int(seq)
            if s > after_seq:
                out.append((s, payload))
    return out


class RedisEventLog(EventLog):
    """`EventLog` on Redis Streams (see the module docstring for the layout).

    Args:
        client: commands (publish, catch-up reads).
        guard: the shared Redis availability tracker.
    """

    BLOCK_MS = 5000

    def __init__(self, client: redis.Redis, guard: RedisGuard, settings: Settings) -> None:
        self._redis = client
        self._guard = guard
        self._settings = settings
        self._prefix = settings.redis_key_prefix
        self._maxlen = settings.redis_stream_maxlen
        self._ttl_ms = settings.redis_stream_ttl_s * 1000
        self._xadd_many = guard.script(client, _XADD_MANY)
        self.buffer_limit = settings.watch_buffer_events
        self._hub: _Hub | None = None

    def key(self, run_id: str) -> str:
        return f"{self._prefix}run:{run_id}:events"

    async def publish(self, run_id: str, first_seq: int, payloads: Sequence[bytes]) -> None:
        if not payloads:
            return
        if not self._guard.usable():
            metrics.EVENT_LOG_PUBLISH_FAILURES.inc()
            return
        key = self.key(run_id)
        last = first_seq + len(payloads) - 1
        fields = {str(seq): data for seq, data in enumerate(payloads, first_seq)}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, fields, id=f"{last}-0", maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.pexpire(key, self._ttl_ms)
                results = await pipe.execute(raise_on_error=False)
        except ERRORS as exc:
            self._guard.failed("publish", exc)
            metrics.EVENT_LOG_PUBLISH_FAILURES.inc()
            return
        self._guard.succeeded()
        if isinstance(results[0], ResponseError):
            # A later batch of the same run got there first (concurrent appenders): the
            # watchers read this one from the store.
            metrics.EVENT_LOG_PUBLISH_FAILURES.inc()
            log.debug("event_log_out_of_order", run_id=run_id, last_seq=last, error=str(results[0]))

    async def publish_many(
        self,
        batches: Sequence[tuple[str, int, Sequence[bytes]]],
        writes: RunWrites | None = None,
    ) -> None:
        batches = [b for b in batches if b[2]]
        if writes is not None and not isinstance(writes.cache, RedisCache):
            await writes.send()  # not on this client
            writes = None
        if not batches and writes is None:
            return
        if not (self._guard.usable() and await self._guard.scripts_ready(self._redis)):
            if batches:
                metrics.EVENT_LOG_PUBLISH_FAILURES.inc(len(batches))
            if writes is not None:
                await writes.send()  # (marks their keys stale if Redis is skipped)
            return
        # Cached values alone (a group of message appends) take the same one round trip.
        # A delta flush carries a batch for every live run: one script call per
        # `_MANY_RUNS` runs instead of an XADD and a PEXPIRE each (commands and replies were
        # most of history-svc's Redis time under 300 slow streams).
        small = [b for b in batches if len(b[2]) <= _MANY_EVENTS]
        large = [b for b in batches if len(b[2]) > _MANY_EVENTS]
        queued: int | None = 0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(small), _MANY_RUNS):
                    keys: list[str] = []
                    args: list[bytes | int | str] = [self._maxlen, self._ttl_ms]
                    for run_id, first_seq, payloads in small[start : start + _MANY_RUNS]:
                        keys.append(self.key(run_id))
                        args += (f"{first_seq + len(payloads) - 1}-0", len(payloads))
                        for seq, data in enumerate(payloads, first_seq):
                            args += (seq, data)
                    queue_script(pipe, self._xadd_many, keys, args)
                for run_id, first_seq, payloads in large:
                    key = self.key(run_id)
                    last = first_seq + len(payloads) - 1
                    fields = {str(seq): data for seq, data in enumerate(payloads, first_seq)}
                    pipe.xadd(key, fields, id=f"{last}-0", maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                    pipe.pexpire(key, self._ttl_ms)
                # The cached records' writes go last, on the same round trip.
                if writes is not None:
                    queued = await cast(RedisCache, writes.cache).queue_run_writes(pipe, writes)
                results = await pipe.execute(raise_on_error=False)
        except ERRORS as exc:
            self._guard.failed("publish", exc)
            metrics.EVENT_LOG_PUBLISH_FAILURES.inc(len(batches))
            if writes is not None and queued:
                cast(RedisCache, writes.cache).run_writes_sent(writes, exc)
            return
        if writes is not None and queued:
            cast(RedisCache, writes.cache).run_writes_sent(writes, results[-queued:])
            results = results[:-queued]
        scripts = -(-len(small) // _MANY_RUNS)
        failed = [r for r in results[:scripts] if isinstance(r, Exception)]
        if failed:  # a script call itself failed: none of its entries is known to be added
            self._guard.failed("publish", failed[0])
            metrics.EVENT_LOG_PUBLISH_FAILURES.inc(len(batches))
            return
        self._guard.succeeded()
        added = [flag for reply in results[:scripts] for flag in reply]
        added += [0 if isinstance(r, ResponseError) else 1 for r in results[scripts::2]]
        for (run_id, first_seq, payloads), ok in zip(small + large, added, strict=True):
            if not ok:  # out of order: see `publish`
                metrics.EVENT_LOG_PUBLISH_FAILURES.inc()
                log.debug(
                    "event_log_out_of_order",
                    run_id=run_id,
                    last_seq=first_seq + len(payloads) - 1,
                )

    async def drop(self, run_ids: Sequence[str]) -> None:
        keys = [self.key(run_id) for run_id in run_ids]
        if not keys or not self._guard.usable():
            return  # the streams expire after redis_stream_ttl_s
        try:
            for start in range(0, len(keys), 500):
                await self._redis.delete(*keys[start : start + 500])
        except ERRORS as exc:
            self._guard.failed("drop", exc)
            return
        self._guard.succeeded()

    def subscribe(self, run_id: str) -> Subscription:
        if self._hub is None:
            self._hub = _Hub(
                self, redis_client(self._settings, socket_timeout_s=self.BLOCK_MS / 1000 + 5)
            )
        return _RedisSubscription(self, self._hub, run_id)

    async def catch_up(self, run_id: str, after_seq: int, count: int = 50) -> Events:
        """Events after `after_seq` straight from the stream (raises Redis errors)."""
        entries = await self._redis.xrange(
            self.key(run_id), min=f"({after_seq}-0", max="+", count=count
        )
        return _decode(entries or [], after_seq)

    async def wake(self, key: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"w": "1"}, maxlen=100, approximate=True)
            pipe.pexpire(key, 3_600_000)
            await pipe.execute()

    async def close(self) -> None:
        if self._hub is not None:
            await self._hub.close()


class _RedisSubscription(Subscription):
    def __init__(self, log: RedisEventLog, hub: _Hub, run_id: str) -> None:
        self.log = log
        self.hub = hub
        self.run_id = run_id
        self.buffer: Events = []
        self.signal = asyncio.Event()
        self.caught_up = False
        self.hub_failed = False

    async def __aenter__(self) -> Subscription:
        await self.hub.add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hub.remove(self)

    def deliver(self, events: Events) -> None:
        """Called by the hub with new events (all of the entry; filtered on read)."""
        if len(self.buffer) + len(events) > self.log.buffer_limit:
            self.buffer = []  # too far behind: re-read from the stream / store
            self.caught_up = False
        else:
            self.buffer.extend(events)
        self.signal.set()

    def fail(self) -> None:
        """Called by the hub when its XREAD failed."""
        self.hub_failed = True
        self.signal.set()

    async def read(self, after_seq: int, timeout_s: float) -> Events | None:
        if self.hub_failed or not self.log._guard.usable():
            self.hub_failed = False
            self.caught_up = False
            if not self.log._guard.usable():
                return None
        if not self.caught_up:
            try:
                events = await self.log.catch_up(self.run_id, after_seq)
            except ERRORS as exc:
                self.log._guard.failed("watch_catch_up", exc)
                return None
            self.log._guard.succeeded()
            if events:
                return events
            self.caught_up = True
        if not self.buffer:
            self.signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signal.wait(), timeout_s)
            if self.hub_failed:
                return None
        events, self.buffer = [e for e in self.buffer if e[0] > after_seq], []
        return events


@dataclass
class _Tail:
    cursor: bytes | str
    subscribers: set[_RedisSubscription] = field(default_factory=set)


class _Hub:
    """One blocking XREAD over every watched run's stream, fanned out to the subscribers."""

    def __init__(self, log: RedisEventLog, blocking: redis.Redis) -> None:
        self._log = log
        self._redis = blocking
        self._tails: dict[str, _Tail] = {}
        self._keys: dict[bytes, str] = {}
        self._wake_key = f"{log._prefix}watch-wake:{uuid.uuid4().hex}"
        self._wake_cursor: bytes | str = "0-0"
        self._wakeup = asyncio.Event()
        self._blocked = False
        self._task: asyncio.Task[None] | None = None

    async def add(self, sub: _RedisSubscription) -> None:
        key = self._log.key(sub.run_id)
        tail = self._tails.get(sub.run_id)
        if tail is None:
            try:  # tail from the stream's current end; the subscriber catches up before it
                last = cast(_Entries, await self._log._redis.xrevrange(key, count=1))
            except ERRORS as exc:
                self._log._guard.failed("watch_subscribe", exc)
                last = []
            tail = self._tails.get(sub.run_id)  # another subscriber may have come meanwhile
            if tail is None:
                tail = self._tails[sub.run_id] = _Tail(last[0][0] if last else "0-0")
                self._keys[key.encode()] = sub.run_id
                tail.subscribers.add(sub)
                self._wakeup.set()
                if self._blocked:  # the running XREAD does not include this stream yet
                    try:
                        await self._log.wake(self._wake_key)
                    except ERRORS as exc:
                        self._log._guard.failed("watch_wake", exc)
        tail.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="history-watch-hub")

    def remove(self, sub: _RedisSubscription) -> None:
        tail = self._tails.get(sub.run_id)
        if tail is None:
            return
        tail.subscribers.discard(sub)
        if not tail.subscribers:
            del self._tails[sub.run_id]
            self._keys.pop(self._log.key(sub.run_id).encode(), None)

    async def _run(self) -> None:
        guard = self._log._guard
        while True:
            if not self._tails:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            streams: dict[Any, Any] = {self._wake_key: self._wake_cursor}
            for run_id, tail in self._tails.items():
                streams[self._log.key(run_id)] = tail.cursor
            self._blocked = True
            try:
                reply = cast(
                    _StreamsReply,
                    await self._redis.xread(streams, count=100, block=RedisEventLog.BLOCK_MS),
                )
            except Exception as exc:  # Redis errors, and anything unexpected: keep tailing
                if isinstance(exc, ERRORS):
                    guard.failed("watch_tail", exc)
                else:
                    log.exception("watch_tail_failed", error_type=type(exc).__name__)
                for tail in self._tails.values():
                    for sub in tail.subscribers:
                        sub.fail()
                await asyncio.sleep(self._log._settings.redis_retry_after_s)
                continue
            finally:
                self._blocked = False
            guard.succeeded()
            for key, entries in reply or ():
                if not entries:
                    continue
                watched = self._keys.get(key)
                if watched is None:
                    if key == self._wake_key.encode():
                        self._wake_cursor = entries[-1][0]
                    continue
                followed = self._tails.get(watched)
                if followed is None:
                    continue
                followed.cursor = entries[-1][0]
                events = _decode(entries, 0)
                for sub in followed.subscribers:
                    sub.deliver(events)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()
