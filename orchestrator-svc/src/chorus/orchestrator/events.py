"""A live run's event log: numbering, persistence to history-svc, and fan-out to watchers.

One `RunEventLog` per run executing in this process. It

* gives every event the next seq (1, 2, 3 … gapless) and its time;
* shows watchers only what is stored ("log before show", issue 18): an event reaches a
  watcher once history-svc committed it, so every replay returns whatever anyone was
  shown, and a crash never leaves a watcher ahead of the log;
* keeps recent stored events in memory and wakes watchers, which read from memory at their
  own pace — a slow watcher never slows the run: once it falls behind the buffer it reads
  the stored log from history-svc and catches up. Unstored events are kept as messages (the
  writes need them); once stored, the last `watcher_buffer_events` are kept serialized,
  without their run id, back to back in one buffer (~45 bytes for a token delta instead
  of ~900 for a message: a message owns a protobuf arena), and parsed again for a
  watcher that reads them;
* writes events to history-svc in order: token deltas through the process-wide
  `chorus.orchestrator.flusher.DeltaFlusher` (one AppendRunEventBatches call for the
  deltas of every live run, started as soon as the previous call returned: a group
  commit), and every other ("lifecycle") event through its own AppendRunEvents write, such
  that it is stored before the next lifecycle event is emitted (docs/architecture.md §4). A lifecycle event waits for the previous one's write, not for its own —
  so emitting one never delays the token stream that follows it. The two paths never
  overlap: a lifecycle write waits for the run's batch in flight, and the flusher skips
  a run whose lifecycle write is under way (that write stores its pending deltas too).

Hot path (`emit_delta`): no task, no timer, no await — one list append and one set add.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from chorus.core.logging import get_logger
from chorus.orchestrator import metrics
from chorus.v1 import run_pb2

if TYPE_CHECKING:
    from chorus.orchestrator.flusher import DeltaFlusher

log = get_logger("chorus.orchestrator.events")

IDLE_S = 0.25
"""A delta after this long without one, seconds, is the first of a turn: the flusher sends
it without waiting for its tick (`chorus.orchestrator.flusher`)."""
MAX_APPEND_BATCH = 1000
"""Events per AppendRunEvents call (history-svc's limit)."""
TERMINAL_PAYLOADS = frozenset({"run_completed", "run_failed", "run_cancelled"})
"""Payloads that end a run."""

EventWriter = Callable[[Sequence[run_pb2.RunEvent]], Awaitable[None]]
"""Stores a batch of consecutive events (HistoryService.AppendRunEvents); raises on failure."""
RejectionHandler = Callable[[Exception], None]
"""Told when history-svc rejected a delta batch of the run (e.g. FAILED_PRECONDITION)."""


def is_terminal(event: run_pb2.RunEvent) -> bool:
    """Whether `event` ends its run."""
    return event.WhichOneof("payload") in TERMINAL_PAYLOADS


class RunEventLog:
    """The numbered, persisted, watchable event log of one live run.

    Args:
        run_id: the run.
        writer: stores a batch of events (lifecycle writes and `sync`); exceptions mark
            the batch as not stored.
        flusher: the process-wide writer of token deltas.
        buffer_events: stored events kept in memory for watchers (besides unstored ones);
            up to half as many again before they are trimmed.
        next_seq: the seq of the first event this log emits (after the stored ones of a
            resumed run).
        lease_epoch: the owner's lease epoch (`Run.lease_epoch`), carried by every write so
            history-svc refuses it once another replica claimed the run.
        held: the run is not stored yet (its opening write is under way): token deltas
            are numbered and kept, not written, until `release`.
        on_rejected: called when history-svc rejected a delta batch written by the
            flusher (the batch stays pending; the next lifecycle write retries it).
    """

    def __init__(
        self,
        run_id: str,
        writer: EventWriter,
        *,
        flusher: DeltaFlusher,
        buffer_events: int,
        next_seq: int = 1,
        lease_epoch: int = 0,
        held: bool = False,
        on_rejected: RejectionHandler | None = None,
    ) -> None:
        self.run_id = run_id
        self.lease_epoch = lease_epoch
        """The run owner's lease epoch, sent with the flusher's batches (fencing)."""
        self._writer = writer
        self._flusher = flusher
        self._on_rejected = on_rejected
        self._keep = buffer_events
        self._loop = asyncio.get_running_loop()
        # Stored events `_buf_first` … `_stored`, serialized without the run id field (the
        # log's own; `_run_id_field` puts it back) one after the other in `_blob`, event i
        # ending at `_ends[i]` (no object per event); then the unstored ones as messages.
        self._blob = bytearray()
        self._ends = array("Q")
        self._buf_first = next_seq
        self._run_id_field = run_pb2.RunEvent(run_id=run_id).SerializeToString()
        self._next = next_seq
        self._stored = next_seq - 1
        self._pending: list[run_pb2.RunEvent] = []
        self._flush_lock = asyncio.Lock()
        self._emit_lock = asyncio.Lock()
        self._barrier: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None  # the flusher's batch
        self._waiters: list[asyncio.Future[None]] = []  # one per watcher waiting
        self._last_delta = -math.inf  # loop time of the last emit_delta
        self._held = held
        self.ended = False
        """True once the terminal event was emitted."""
        self.closed = False
        """True once the run's task is over (ended, or let go without a terminal event)."""

    # ------------------------------------------------------------------ state
    @property
    def last_seq(self) -> int:
        """Seq of the last emitted event (0 = none)."""
        return self._next - 1

    @property
    def stored_seq(self) -> int:
        """Seq of the last event stored in history-svc."""
        return self._stored

    @property
    def has_pending(self) -> bool:
        """Some emitted events are not stored yet."""
        return bool(self._pending)

    @property
    def writing(self) -> bool:
        """A write of this log is under way or scheduled (a lifecycle write, the run's end,
        or the flusher's batch). While it is, the flusher leaves the log alone: the pending
        events then include lifecycle ones, which only their own write may store (the end's
        write stores the final record with them)."""
        barrier = self._barrier
        return (
            self._in_flight is not None
            or self._flush_lock.locked()
            or (barrier is not None and not barrier.done())
        )

    # ------------------------------------------------------------------ emitting
    def _publish(self, event: run_pb2.RunEvent) -> None:
        event.run_id = self.run_id
        event.seq = self._next
        stamp, ns = event.time, time.time_ns()  # set in place: no Timestamp copied
        stamp.seconds, stamp.nanos = divmod(ns, 1_000_000_000)
        self._next += 1
        self._pending.append(event)

    def emit_stored(self, *events: run_pb2.RunEvent) -> list[run_pb2.RunEvent]:
        """Number `events` (the log's next seqs and time) and count them as stored: the
        caller stores them in a write of its own before anyone can watch the log (the run's
        opening write, HistoryService.RecordRunStart). Returns the events."""
        for event in events:
            self._publish(event)
        self._stored_through(len(events))
        return list(events)

    def emit_delta(self, event: run_pb2.RunEvent) -> None:
        """Emit a token delta now; it is stored with the flusher's next call (≤ its tick
        later; the first delta of a turn at once) — or, while the log is held, once it is
        released.

        Raises:
            RuntimeError: the run already ended.
        """
        if self.ended:
            raise RuntimeError("run already ended")
        self._publish(event)
        now = self._loop.time()
        idle = now - self._last_delta >= IDLE_S  # the first delta of a turn: no tick
        self._last_delta = now
        if not self._held:
            self._flusher.mark(self, urgent=idle)

    def release(self) -> None:
        """The run's opening write is stored: the token deltas emitted meanwhile (a
        prefetched first model call's) go to the flusher at once, without its tick."""
        self._held = False
        if self._pending:
            self._flusher.mark(self, urgent=True)

    async def emit(
        self,
        *events: run_pb2.RunEvent,
        durable: bool = False,
        writer: EventWriter | None = None,
    ) -> None:
        """Emit lifecycle events once every earlier lifecycle event is stored.

        Several events given together (e.g. `agent_finished` and `progress`, which happen at
        the same moment) are numbered consecutively and stored in one write. The write
        starts at once in the background (the next lifecycle event waits for it); with
        `durable` (terminal events, answers to RPCs) this call waits for it too. `writer`,
        when given, stores the batch that ends with these events instead of the log's
        writer (a turn boundary's events with the run's checkpoint).

        Raises:
            Exception: the writer's error when an earlier (or, with `durable`, this) write
                failed; the events stay pending and are retried by the next flush.
            RuntimeError: the run already ended.
        """
        await self._emit(events, durable, writer)

    async def end(self, *events: run_pb2.RunEvent, final_writer: EventWriter) -> None:
        """Emit the last lifecycle `events`, the terminal one last, once every earlier
        lifecycle event is stored, and wait until they are stored: the write that carries
        them (with the deltas still pending before them) goes through `final_writer`, which
        stores the run's final record in the same call (HistoryService.AppendRunEvents with
        `run`).

        Raises:
            ValueError: the last event is not terminal, or another one is.
            Exception: the writer's error (the events stay pending).
            RuntimeError: the run already ended.
        """
        if not events or sum(map(is_terminal, events)) != 1 or not is_terminal(events[-1]):
            raise ValueError("end() takes lifecycle events ending with one terminal event")
        await self._emit(events, True, final_writer)

    async def _emit(
        self,
        events: Sequence[run_pb2.RunEvent],
        durable: bool,
        final_writer: EventWriter | None,
    ) -> None:
        """`emit` and `end`: after the previous lifecycle write, number `events` and start
        their write (through `final_writer` for the end); wait for it when `durable`."""
        async with self._emit_lock:
            await self._await_barrier()
            if self.ended:
                raise RuntimeError("run already ended")
            for event in events:
                self._publish(event)
                if is_terminal(event):
                    self.ended = True
            self._barrier = self._loop.create_task(self._flush(self.last_seq, final_writer))
            self._barrier.add_done_callback(self._write_done)
            if durable:
                await self._await_barrier()

    def _write_done(self, write: asyncio.Task[None]) -> None:
        """A lifecycle write that stored its events is not kept until the next emit (a live
        run holds a finished task otherwise); a failed one is, to fail the next emit."""
        if self._barrier is write and not write.cancelled() and write.exception() is None:
            self._barrier = None

    async def _await_barrier(self) -> None:
        """Wait for the scheduled lifecycle write (raising its error, once). It stays the
        barrier while awaited, so the flusher keeps counting the log as `writing`."""
        barrier = self._barrier
        if barrier is not None:
            try:
                await barrier
            finally:
                if self._barrier is barrier:
                    self._barrier = None

    async def sync(self) -> None:
        """Wait until every emitted event is stored.

        Raises:
            Exception: the writer's error.
        """
        async with self._emit_lock:
            await self._await_barrier()
            await self._flush(self.last_seq)

    # ------------------------------------------------------------------ persisting
    async def _flush(self, through_seq: int, final_writer: EventWriter | None = None) -> None:
        """Store the pending events up to `through_seq` (and the deltas pending with them),
        then stop: deltas emitted while this write was under way are the flusher's — a
        write that went on while a stream is live would store them one run, one call at a
        time. The batch that reaches `through_seq` goes through `final_writer` if given."""
        async with self._flush_lock:
            while self._in_flight is not None:  # the flusher's batch goes first
                await asyncio.shield(self._in_flight)
            while self._pending and self._stored < through_seq:
                batch = self._pending[:MAX_APPEND_BATCH]
                writer = self._writer
                if final_writer is not None and batch[-1].seq >= through_seq:
                    writer = final_writer
                started = time.perf_counter()
                await writer(batch)
                metrics.EVENT_WRITE_SECONDS.observe(time.perf_counter() - started)
                self._stored_through(len(batch))
        if self._pending and not self.closed:  # deltas that arrived meanwhile
            self._flusher.mark(self)

    def _stored_through(self, count: int) -> None:
        """The first `count` pending events are stored: they move to the serialized buffer."""
        metrics.EVENTS_STORED.inc(count)
        prefix = self._run_id_field
        cut = len(prefix)
        blob, ends = self._blob, self._ends
        for event in self._pending[:count]:
            data = event.SerializeToString()
            # Fields are written in field-number order, so the run id comes first. Were it
            # not, prepending it again on reading is harmless (the last value wins).
            blob += memoryview(data)[cut:] if data.startswith(prefix) else data
            ends.append(len(blob))
        self._stored = self._pending[count - 1].seq
        del self._pending[:count]
        self._trim()
        self._wake_watchers()  # log before show: watchers wake for stored events only

    # The flusher's side (chorus.orchestrator.flusher): take, then stored or failed.

    def take_batch(self, limit: int) -> list[run_pb2.RunEvent]:
        """The first pending events (at most `limit`) for the flusher to write; the log
        counts them as being written until `batch_stored` or `batch_failed`.

        Only when `has_pending` and not `writing`."""
        assert self._pending and not self.writing
        self._in_flight = self._loop.create_future()
        return self._pending[:limit]

    def batch_stored(self, count: int) -> None:
        """The flusher stored the `count` events it took."""
        self._stored_through(count)
        self._end_batch()

    def batch_failed(self, exc: Exception, *, rejected: bool) -> None:
        """The flusher's batch was not stored: the whole call failed (`rejected` False; the
        flusher retries) or history-svc rejected this run's batch (`on_rejected` is told).
        The events stay pending either way."""
        self._end_batch()
        if rejected:  # a failed call is logged once by the flusher, not per run
            log.warning("event_flush_rejected", run_id=self.run_id, error=repr(exc))
            if self._on_rejected is not None:
                self._on_rejected(exc)

    def _end_batch(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and not in_flight.done():
            in_flight.set_result(None)

    def _trim(self) -> None:
        excess = len(self._ends) - self._keep
        if excess > self._keep // 2:  # amortised: trim in chunks
            cut = self._ends[excess - 1]
            del self._blob[:cut]
            self._ends = array("Q", [end - cut for end in self._ends[excess:]])
            self._buf_first += excess

    # ------------------------------------------------------------------ watching
    def events_after(self, seq: int) -> list[run_pb2.RunEvent] | None:
        """Stored events with seq greater than `seq` (maybe none), or None when some of
        them are no longer buffered (read those from history-svc).

        Only stored events are ever returned (issue 18, "log before show"): whatever a
        watcher is shown, every later replay returns too. They come back as new messages
        (parsed, ~1 µs each)."""
        index = seq + 1 - self._buf_first
        if index < 0:
            return None
        ends = self._ends
        stored = len(ends)
        if index >= stored:
            return []
        prefix, blob, parse = self._run_id_field, self._blob, run_pb2.RunEvent.FromString
        out = []
        start = ends[index - 1] if index else 0
        for end in ends[index:]:
            out.append(parse(prefix + blob[start:end]))
            start = end
        return out

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with seq greater than `seq` is stored, or the log was
        closed."""
        # A future per watcher, not one shared behind asyncio.shield: a watcher that goes
        # away cancels only its own, and the wake-up is one loop turn, not two (shield's
        # callback, then the task) — under a burst of run starts a turn of the
        # orchestrator's loop took 3–10 ms, on the path of every delta to its watchers.
        while self._stored <= seq and not self.closed:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):  # woken meanwhile: already taken
                    self._waiters.remove(waiter)
                raise

    def _wake_watchers(self) -> None:
        if not self._waiters:  # every stored batch comes here: no new list when none wait
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """The run's task is over: the flusher drops the log, every watcher wakes."""
        self.closed = True
        self._wake_watchers()
