"""The process-wide writer of token deltas: every live run's pending deltas in one call.

Watchers are shown an event only once it is stored (issue 18, "log before show"), so a
delta's write is on the path to every watcher's screen: it must start at once, yet a slow
stream (a few tokens per second) across 1,000 runs must not cost one call (one database
transaction) per delta. `RunEventLog.emit_delta` marks its log dirty (a set add); the
flusher then sends the pending deltas of every dirty run as ONE
HistoryService.AppendRunEventBatches call (several, concurrently, beyond `max_batches`
runs or `max_events` events) — started in the next event-loop step when no call started
within the last `tick_s` (`FLUSH_TICK_S`, 5 ms) and fewer than `MAX_CALLS_IN_FLIGHT` calls
are under way, else at the tick's end or as soon as one returns. This is a group commit:
when idle, a delta waits for one call; under load, everything that arrived during the tick
and the calls in flight goes in the next one, so the number of calls per second is bounded
by the tick and history-svc's speed, not by the number of runs or deltas (100 runs × 20
tokens/s each made ~1 call per delta before the tick). The first delta of a turn (a run
with no delta for `chorus.orchestrator.events.IDLE_S`) does not wait for the tick. A run has at most one batch in
flight (its later deltas wait for it), so its events are stored in order.

Per run the order stays that of `RunEventLog`: the flusher skips a run whose lifecycle
write is under way (that write stores the pending deltas too, and marks the run again for
the deltas that arrived meanwhile) and a lifecycle write waits for the run's batch in
flight. Every batch carries the run's lease epoch, so history-svc refuses the writes of an
owner that lost its run. Failures: a call that failed as a whole leaves the events
pending and is retried after a backoff (the history client already retried it while
history-svc answered UNAVAILABLE); a batch history-svc rejected (FAILED_PRECONDITION:
LEASE_LOST, or another writer stored these seqs) is reported to the run
(`RunEventLog.batch_failed`), which lets go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from chorus.core.logging import get_logger
from chorus.orchestrator import metrics
from chorus.orchestrator.events import MAX_APPEND_BATCH, RunEventLog
from chorus.v1 import run_pb2

log = get_logger("chorus.orchestrator.flusher")

MAX_BATCHES_PER_CALL = 1000
"""Runs per AppendRunEventBatches call (history-svc's limit)."""
MAX_EVENTS_PER_CALL = 10_000
"""Events per AppendRunEventBatches call, all runs together (history-svc's limit)."""
MAX_CALLS_IN_FLIGHT = 8
"""Calls under way at once, with at most `RUNS_PER_CALL` runs each: under 1,000 slow
streams one large call at a time made deliveries bunch behind it (lag p99 304 ms, medians
of alternated rounds); 3 calls of ≤ 1000 runs 132–892 ms, 8 of ≤ 200 runs 147 ms, 16 of
≤ 100 runs 213 ms; tokens/s at 100 × 500 43.9k with 3 × 1000, 45.3k with 8 × 200
(bench/README.md, session 9)."""
RUNS_PER_CALL = 200
"""Runs per call the flusher sends (history-svc takes up to 1000)."""
RETRY_AFTER_FAILURE_S = 0.5
"""Pause before a call that failed as a whole is tried again."""
FLUSH_TICK_S = 0.005
"""Least time between the starts of two calls, seconds, but for the first delta of a turn."""


BatchWriter = Callable[
    [Sequence[tuple[str, int, Sequence[run_pb2.RunEvent]]]], Awaitable[Sequence[int | Exception]]
]
"""Stores many runs' batches `(run_id, lease_epoch, events)` in one call
(HistoryService.AppendRunEventBatches): per batch, in order, the run's last stored seq or
the exception rejecting it; raises when the call failed."""


class DeltaFlusher:
    """Writes the pending token deltas of every live run of this process, one call at a
    time (a group commit).

    Args:
        writer: stores many runs' batches in one call.
        max_in_flight: calls under way at once; a run has at most one batch in flight,
            so its deltas stay in order.
        max_batches: runs per call.
        max_events: events per call, all runs together.
        tick_s: least time between the starts of two calls, but for urgent marks; 0: a
            call starts whenever fewer than `max_in_flight` are under way.
    """

    def __init__(
        self,
        writer: BatchWriter,
        *,
        max_in_flight: int = MAX_CALLS_IN_FLIGHT,
        max_batches: int = RUNS_PER_CALL,
        max_events: int = MAX_EVENTS_PER_CALL,
        tick_s: float = FLUSH_TICK_S,
    ) -> None:
        self._writer = writer
        self._max_in_flight = max_in_flight
        self._max_batches = max_batches
        self._max_events = max_events
        self._dirty: set[RunEventLog] = set()
        self._starting = False  # a call's task exists but has not taken the dirty set yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._tick = tick_s
        self._started_at = -math.inf  # loop time the last call's task was made
        self._urgent = False  # a mark that does not wait for the tick
        self._timer: asyncio.TimerHandle | None = None

    def mark(self, run_log: RunEventLog, *, urgent: bool = False) -> None:
        """`run_log` has pending deltas: send them with the next call — at once when no
        call started within the tick, or when `urgent` (the first delta of a turn)."""
        self._dirty.add(run_log)
        if urgent:
            self._urgent = True
        self._schedule()

    def _tick_end(self) -> None:
        self._timer = None
        self._schedule()

    def _schedule(self) -> None:
        if (
            not self._starting
            and len(self._tasks) < self._max_in_flight
            and not self._closed
            and self._dirty
        ):  # the task's first step runs in the next loop step, so this step's marks go in
            # too; a task now, not a callback that makes one: one loop step less before the
            # first delta of a turn is on its way (TTFT)
            loop = asyncio.get_running_loop()
            now = loop.time()
            due = self._started_at + self._tick
            if now < due and not self._urgent:
                if self._timer is None:
                    self._timer = loop.call_at(due, self._tick_end)
                return
            self._started_at = now
            self._starting = True
            task = loop.create_task(self._flush_marked(), name="delta-flush")
            self._tasks.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():  # perhaps before its first step, which clears the flag
            self._starting = False
        self._schedule()

    async def _flush_marked(self) -> None:
        self._starting = False
        if not self._closed:
            await self.flush()

    async def flush(self) -> None:
        """Send the pending deltas of every marked run now."""
        dirty, self._dirty = self._dirty, set()
        self._urgent = False  # the urgent marks are in this call
        calls: list[list[tuple[RunEventLog, list[run_pb2.RunEvent]]]] = [[]]
        events = 0
        for run_log in dirty:
            if run_log.closed or not run_log.has_pending:
                continue
            if run_log.writing:  # its lifecycle write stores them, then marks it again
                continue
            batch = run_log.take_batch(MAX_APPEND_BATCH)
            if len(calls[-1]) >= self._max_batches or events + len(batch) > self._max_events:
                calls.append([])
                events = 0
            calls[-1].append((run_log, batch))
            events += len(batch)
        if calls[0]:
            failed = (  # one call (the usual case) in this task: no task per call to start
                [await self._send(calls[0])]
                if len(calls) == 1
                else await asyncio.gather(*(self._send(call) for call in calls))
            )
            if any(failed):  # history-svc unreachable beyond the client's retries
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)

    async def _send(self, call: list[tuple[RunEventLog, list[run_pb2.RunEvent]]]) -> bool:
        """One call; True when it failed as a whole (its runs are marked again)."""
        started = time.perf_counter()
        try:
            results = await self._writer(
                [(run_log.run_id, run_log.lease_epoch, batch) for run_log, batch in call]
            )
            if len(results) != len(call):
                raise RuntimeError(f"{len(results)} results for {len(call)} batches")
        except asyncio.CancelledError:  # never leave a run waiting on this batch
            for run_log, _ in call:
                run_log.batch_failed(RuntimeError("delta flush cancelled"), rejected=False)
            raise
        except Exception as exc:  # history-svc unreachable: keep the deltas, retry
            metrics.DELTA_FLUSH_FAILURES.labels("call").inc(len(call))
            log.warning("delta_flush_failed", runs=len(call), error=repr(exc))
            for run_log, _ in call:
                run_log.batch_failed(exc, rejected=False)
                if not run_log.closed:
                    self._dirty.add(run_log)
            return True
        metrics.DELTA_FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.DELTA_FLUSH_RUNS.observe(len(call))
        for (run_log, batch), result in zip(call, results, strict=True):
            if isinstance(result, Exception):
                metrics.DELTA_FLUSH_FAILURES.labels("rejected").inc()
                run_log.batch_failed(result, rejected=True)
                continue
            run_log.batch_stored(len(batch))
            if run_log.has_pending and not run_log.closed:  # more arrived meanwhile
                self._dirty.add(run_log)
        return False

    async def close(self) -> None:
        """Stop scheduling calls and wait for (at most) the calls in flight to end."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
