"""The process-wide writer of token deltas: every live run's pending deltas in one call.

A slow stream (a few tokens per second) leaves about one delta per run per flush interval,
so writing each run's deltas on its own costs one AppendRunEvents call (one database
transaction, two Redis round trips) per run per interval, plus a timer and a task per run
here. Instead, `RunEventLog.emit_delta` marks its log dirty (a set add); one timer per
process fires `interval_s` after the first mark and one task sends the pending deltas of
every dirty run as ONE HistoryService.AppendRunEventBatches call (several, concurrently,
beyond `max_batches` runs or `max_events` events). So no delta waits longer than about
the interval plus one call, whatever the number of runs.

Per run the order stays that of `RunEventLog`: the flusher skips a run whose lifecycle
write is under way (that write stores the pending deltas too) and a lifecycle write waits
for the run's batch in flight. Failures are handled like a failed per-run flush was: a
call that failed as a whole leaves the events pending and is retried at the next interval
(and by the run's next lifecycle write); a batch history-svc rejected (e.g.
FAILED_PRECONDITION: another writer stored these seqs) is reported to the run
(`RunEventLog.batch_failed`), which lets go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
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

BatchWriter = Callable[
    [Sequence[tuple[str, Sequence[run_pb2.RunEvent]]]], Awaitable[Sequence[int | Exception]]
]
"""Stores many runs' batches (HistoryService.AppendRunEventBatches): per batch, in order,
the run's last stored seq or the exception rejecting it; raises when the call failed."""


class DeltaFlusher:
    """Writes the pending token deltas of every live run of this process, in one call per
    interval.

    Args:
        writer: stores many runs' batches in one call.
        interval_s: the oldest unstored delta is sent within this time.
        max_batches: runs per call.
        max_events: events per call, all runs together.
    """

    def __init__(
        self,
        writer: BatchWriter,
        *,
        interval_s: float,
        max_batches: int = MAX_BATCHES_PER_CALL,
        max_events: int = MAX_EVENTS_PER_CALL,
    ) -> None:
        self._writer = writer
        self._interval = interval_s
        self._max_batches = max_batches
        self._max_events = max_events
        self._dirty: set[RunEventLog] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def mark(self, run_log: RunEventLog) -> None:
        """`run_log` has pending deltas: send them with the next flush (≤ the interval)."""
        self._dirty.add(run_log)
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush(), name="delta-flush")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send the pending deltas of every marked run now (the timer calls this)."""
        dirty, self._dirty = self._dirty, set()
        calls: list[list[tuple[RunEventLog, list[run_pb2.RunEvent]]]] = [[]]
        events = 0
        for run_log in dirty:
            if run_log.closed or not run_log.has_pending:
                continue
            if run_log.writing:  # its batch in flight or its lifecycle write: look again later
                self.mark(run_log)
                continue
            batch = run_log.take_batch(MAX_APPEND_BATCH)
            if len(calls[-1]) >= self._max_batches or events + len(batch) > self._max_events:
                calls.append([])
                events = 0
            calls[-1].append((run_log, batch))
            events += len(batch)
        if calls[0]:
            await asyncio.gather(*(self._send(call) for call in calls))

    async def _send(self, call: list[tuple[RunEventLog, list[run_pb2.RunEvent]]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._writer([(run_log.run_id, batch) for run_log, batch in call])
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
                    self.mark(run_log)
            return
        metrics.DELTA_FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.DELTA_FLUSH_RUNS.observe(len(call))
        for (run_log, batch), result in zip(call, results, strict=True):
            if isinstance(result, Exception):
                metrics.DELTA_FLUSH_FAILURES.labels("rejected").inc()
                run_log.batch_failed(result, rejected=True)
                continue
            run_log.batch_stored(len(batch))
            if run_log.has_pending and not run_log.closed:  # more arrived meanwhile
                self.mark(run_log)

    async def close(self) -> None:
        """Stop the timer and wait for (at most) the calls in flight to end."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
