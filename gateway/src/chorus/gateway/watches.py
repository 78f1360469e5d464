"""Every SSE stream (and WebSocket follow) of the gateway over one RunService.WatchRuns call.

One gRPC call per stream costs ~48 KB of memory per live stream and one gRPC message
(~170 µs of CPU, both sides) per event (`bench/bench_grpc_costs.py`); over WatchRuns a
response carries the news of many runs at once and one call serves them all
(`chorus.core.multiplex.MultiplexClient`).

* `RunWatches.open` starts a run (as StreamRun) or follows one (as WatchRun) for a sink —
  the stream's buffer (`chorus.gateway.sse`, `chorus.gateway.ws`) — and returns a `Watch`
  handle to pause, resume or stop it;
* the sink gets the watch's events, then its end: None for OK, else
  `chorus.core.errors.StatusError` carrying the orchestrator's `google.rpc.Status` as is
  (the same error StreamRun / WatchRun returned);
* when the call fails because the orchestrator replica serving it went away (UNAVAILABLE,
  CANCELLED by the server, the call ended under its streams) — or one watch ends
  UNAVAILABLE — each watch of a known run **reattaches**: it is opened again, on a new
  call that gRPC's round robin sends to a live replica, after the last seq its sink was
  given, with jittered exponential backoff (tenacity) for up to `reattach_s` seconds
  without news. The sink sees one uninterrupted stream: no error, no gap, no duplicate.
  Errors that are final (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, …), a run
  started by the watch that failed before its first event (its id is not known yet), and
  `reattach_s` spent end the sink with the error, as before.

The call is made as the system identity (internal token): each request names the user the
gateway authenticated, and the orchestrator checks that user's access to the run.

With tracing on, a watch's opening request carries the W3C trace context of the client
request that opened it (`WatchRunsRequest.trace_context`: the gateway's HTTP / WebSocket
span, taken once in `RunWatches.open` and sent again on every reattach), so the
orchestrator's span of the watch — and the run a `start` begins — join that request's
trace; the call itself has no span (it serves every stream). Off: the field stays empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import grpc
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random_exponential

from chorus.core import tracing
from chorus.core.errors import SERVER_GONE_CODES, ChorusError, Unavailable, server_went_away
from chorus.core.identity import REQUEST_ID_KEY, USER_KEY
from chorus.core.logging import get_logger
from chorus.core.multiplex import MultiplexClient, Stream, StreamSink, Update
from chorus.v1 import run_pb2, run_service_pb2_grpc
from chorus.v1 import run_service_pb2 as rs

log = get_logger("chorus.gateway.watches")

_PAUSE = rs.WatchRunsRequest.Pause()
_RESUME = rs.WatchRunsRequest.Resume()
_STOP = rs.WatchRunsRequest.Stop()
_TERMINAL = frozenset(("run_completed", "run_failed", "run_cancelled"))

REATTACH_FIRST_WAIT_S = 0.05
"""Scale of the backoff between reattach attempts: waits are drawn uniformly from
[0, min(`REATTACH_MAX_WAIT_S`, this × 2^attempt)] (tenacity's full-jitter exponential),
so the watches of a lost call do not all return at the same instant."""
REATTACH_MAX_WAIT_S = 2.0
"""Longest wait between two reattach attempts."""

CANCEL_TIMEOUT_S = 10.0
"""Deadline of the CancelRun a reattached `ON_DISCONNECT_CANCEL` watch sends when its client
leaves."""


def reattachable(error: BaseException) -> bool:
    """Whether a watch that ended with `error` may be opened again on another replica: the
    call failed because its server went away (`chorus.core.errors.server_went_away`; the
    gateway's own cancel is a close, which never reattaches), or the orchestrator ended the
    watch UNAVAILABLE (its store unreachable). Every other code is final."""
    if isinstance(error, grpc.aio.AioRpcError):
        return server_went_away(error)
    if isinstance(error, ChorusError):  # StatusError of one watch; Unavailable: call ended
        return error.code in SERVER_GONE_CODES
    return False


def _updates(response: rs.WatchRunsResponse) -> Iterable[Update]:
    for update in response.updates:
        yield (
            update.watch_id,
            update.events,
            update.status if update.HasField("status") else None,
        )


class Watch:
    """One watch of a run for one sink: pause, resume or stop it (no-ops once it ended).

    It is the stream's sink on the WatchRuns call: it remembers the last seq handed on,
    and when the call (or the watch) fails in a way another replica can take over
    (`reattachable`) it opens the watch again after that seq — see the module docstring.
    """

    __slots__ = (
        "_attached",
        "_reattach",
        "_stream",
        "_watches",
        "last_seq",
        "paused",
        "reattached",
        "request_id",
        "run_id",
        "sink",
        "start",
        "stopped",
        "terminal",
        "trace_context",
        "user",
    )

    def __init__(
        self,
        watches: RunWatches,
        sink: StreamSink,
        *,
        user: str,
        request_id: str,
        start: run_pb2.RunSpec | None,
        run_id: str,
        after_seq: int,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        self._watches = watches
        self.sink = sink
        self.user = user
        self.request_id = request_id
        self.start = start
        self.run_id = run_id
        self.last_seq = after_seq
        """The seq of the last event handed to the sink (where a reattach resumes)."""
        self.trace_context = trace_context
        """W3C carrier of the client request that opened the watch (None: tracing off)."""
        self.terminal = False
        self.reattached = False
        """Opened again at least once (a started run is followed as a watch since)."""
        self.paused = False
        self.stopped = False
        self._stream: Stream[rs.WatchRunsRequest] | None = None
        self._reattach: asyncio.Task[None] | None = None
        self._attached: asyncio.Future[bool] | None = None
        """While a reattach attempt waits for its first news: True when the watch ended OK,
        False when events came; its error when it failed."""

    @property
    def id(self) -> int:
        """The watch's id on its current call (0 between two attempts)."""
        return self._stream.key if self._stream is not None else 0

    def _open(self) -> None:
        start = self.start if self.last_seq == 0 and not self.run_id else None

        def request(watch_id: int) -> rs.WatchRunsRequest:
            out = rs.WatchRunsRequest(watch_id=watch_id, user=self.user, request_id=self.request_id)
            if self.trace_context:
                out.trace_context.update(self.trace_context)
            if start is not None:
                out.start.CopyFrom(start)
            else:
                out.watch.run_id = self.run_id
                out.watch.after_seq = self.last_seq
            return out

        self._stream = stream = self._watches._client.open(self, request)
        if self.paused:
            stream.send(rs.WatchRunsRequest(watch_id=stream.key, pause=_PAUSE))

    # --- StreamSink: the news of the current attempt ------------------------------------
    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        if events[0].seq <= self.last_seq:  # never expected: a resume is exact
            events = [e for e in events if e.seq > self.last_seq]
            if not events:
                return
        last = events[-1]
        self.last_seq = last.seq
        if not self.run_id:
            self.run_id = last.run_id
        if last.WhichOneof("payload") in _TERMINAL:
            self.terminal = True
        attached = self._attached
        if attached is not None and not attached.done():
            attached.set_result(False)
        self.sink.deliver(events)

    def end(self, error: BaseException | None) -> None:
        self._stream = None
        if self.terminal:
            error = None  # the call broke after the terminal event: the stream is complete
        attached = self._attached
        if attached is not None:  # a reattach attempt ended: its task decides
            if not attached.done():
                if error is None:
                    attached.set_result(True)
                else:
                    attached.set_exception(error)
            elif error is not None and self._may_reattach(error):
                self._start_reattach(error)  # failed again after its first news
            else:
                self.sink.end(error)
            return
        if error is not None and self._may_reattach(error):
            self._start_reattach(error)
            return
        self.sink.end(error)

    # --- reattach ------------------------------------------------------------------------
    def _retryable(self, error: BaseException) -> bool:
        return not self.stopped and not self._watches.closed and reattachable(error)

    def _may_reattach(self, error: BaseException) -> bool:
        return (
            not self.stopped
            and not self._watches.closed
            and self._watches.reattach_s > 0
            and bool(self.run_id)
            and reattachable(error)
        )

    def _start_reattach(self, error: BaseException) -> None:
        log.info(
            "watch_reattaching",
            run_id=self.run_id,
            after_seq=self.last_seq,
            error=_describe(error),
        )
        self._reattach = asyncio.get_running_loop().create_task(self._reattach_loop())
        self._watches._reattaching.add(self._reattach)
        self._reattach.add_done_callback(self._watches._reattaching.discard)

    async def _reattach_loop(self) -> None:
        """Open the watch again after `last_seq` until an attempt brings news or ends OK,
        with jittered backoff, for up to `reattach_s`; then hand the outcome to the sink."""
        attempts = 0
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._retryable),
            wait=wait_random_exponential(multiplier=REATTACH_FIRST_WAIT_S, max=REATTACH_MAX_WAIT_S),
            stop=stop_after_delay(self._watches.reattach_s),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    ended = await self._attempt()
        except asyncio.CancelledError:
            if self._watches.closed and not self.stopped:
                self.sink.end(Unavailable("the gateway is shutting down"))
            raise
        except Exception as exc:
            REATTACHES.labels("failed").inc()
            log.warning(
                "watch_reattach_failed",
                run_id=self.run_id,
                after_seq=self.last_seq,
                attempts=attempts,
                error=_describe(exc),
            )
            if not self.stopped:
                self.sink.end(exc)
            return
        finally:
            if self._reattach is asyncio.current_task():
                self._reattach = None
        REATTACHES.labels("resumed").inc()
        log.info("watch_reattached", run_id=self.run_id, after_seq=self.last_seq, attempts=attempts)
        if ended and not self.stopped:
            self.sink.end(None)

    async def _attempt(self) -> bool:
        """One attempt: open the watch; True when it ended OK before any news, False once
        events came (the watch is attached again).

        Raises:
            BaseException: the error the attempt ended with.
        """
        if self.stopped:
            return True
        if self._watches.closed:
            raise Unavailable("the gateway is shutting down")
        attached = self._attached = asyncio.get_running_loop().create_future()
        try:
            self.reattached = True
            self._open()
            return await attached
        finally:
            self._attached = None

    # --- the handle -----------------------------------------------------------------------
    def pause(self) -> None:
        """Stop sending this watch's events until `resume` (its sink is full)."""
        self.paused = True
        if self._stream is not None:
            self._stream.send(rs.WatchRunsRequest(watch_id=self._stream.key, pause=_PAUSE))

    def resume(self) -> None:
        """Send this watch's events again, from where they stopped."""
        self.paused = False
        if self._stream is not None:
            self._stream.send(rs.WatchRunsRequest(watch_id=self._stream.key, resume=_RESUME))

    def stop(self) -> None:
        """The client left: no more news; a started run follows `spec.on_disconnect` (the
        orchestrator applies it to the watch that started the run; after a reattach the
        gateway asks for the cancel itself)."""
        if (
            not self.stopped
            and not self.terminal
            and self.start is not None
            and self.start.on_disconnect == run_pb2.ON_DISCONNECT_CANCEL
            and self.reattached
        ):
            self._watches.cancel_run(self.user, self.run_id, self.request_id)
        self.stopped = True
        if self._reattach is not None:
            self._reattach.cancel()
        if self._stream is not None:
            self._stream.stop(rs.WatchRunsRequest(watch_id=self._stream.key, stop=_STOP))
            self._stream = None


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


class WatchBuffer:
    """The gateway's side of one watch (a `StreamSink`): the end, and flow control — at
    `max_buffered` delivered but not yet sent items the watch is paused, and once they were
    taken it is resumed (the orchestrator holds the run's events meanwhile). Subclasses
    keep the items and call `_delivered` / `_taken`."""

    def __init__(self, max_buffered: int) -> None:
        self.watch: Watch | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.paused = False
        self._max = max_buffered
        self._ready = asyncio.Event()

    def end(self, error: BaseException | None) -> None:
        """The watch ended (after its terminal event, or with `error`)."""
        self.error = error
        self.finished = True
        self._ready.set()

    def _delivered(self, buffered: int) -> None:
        """Items were delivered; `buffered` are now waiting to be sent on."""
        self._ready.set()
        if buffered >= self._max and not self.paused and self.watch is not None:
            self.paused = True
            self.watch.pause()

    def _taken(self) -> None:
        """Everything delivered was taken to be sent on: resume a paused watch."""
        if self.paused and self.watch is not None:
            self.paused = False
            self.watch.resume()


RESPONSE_WINDOW = 1
"""Most WatchRuns responses the orchestrator sends ahead of this process's reading them:
the call's reader gets one message per event-loop turn, so while the loop is busy (a burst
of new streams) events wait in the orchestrator's outboxes and come as one response, not as
a backlog of small messages queued in front of the reader. 1, as the orchestrator's
StreamChats call (`chorus.orchestrator.chat_streams.RESPONSE_WINDOW`: measured there)."""


def _flow(response_window: int, acknowledged: int) -> rs.WatchRunsRequest:
    return rs.WatchRunsRequest(response_window=response_window, acknowledged=acknowledged)


class RunWatches:
    """The process's WatchRuns call to the orchestrator, opened on first use (and again
    after it failed), and the watches on it.

    Args:
        stub: RunService on the orchestrator's channel (round robin over its replicas).
        metadata: the call's metadata: the system identity and the internal token
            (`ChannelPool.system_metadata`).
        reattach_s: how long a watch whose call failed keeps trying to reattach without
            news (`CHORUS_WATCH_REATTACH_S`); 0: never, its sink ends with the error.
    """

    def __init__(
        self,
        stub: run_service_pb2_grpc.RunServiceStub,
        metadata: Sequence[tuple[str, str]],
        *,
        reattach_s: float = 60.0,
    ) -> None:
        md = list(metadata)
        self._stub = stub
        self._token_md = [(k, v) for k, v in md if k != USER_KEY]
        self._cancels: set[asyncio.Task[None]] = set()
        self.reattach_s = reattach_s
        self.closed = False
        self._reattaching: set[asyncio.Task[None]] = set()
        self._client: MultiplexClient[rs.WatchRunsRequest] = MultiplexClient(
            lambda requests: stub.WatchRuns(requests, metadata=md),
            _updates,
            "WatchRuns",
            on_call=WATCH_CALLS.inc,
            flow=_flow,
            window=RESPONSE_WINDOW,
        )
        WATCHES.set_function(lambda: self._client.open_streams)

    def open(
        self,
        sink: StreamSink,
        *,
        user: str,
        request_id: str | None,
        start: run_pb2.RunSpec | None = None,
        run_id: str = "",
        after_seq: int = 0,
    ) -> Watch:
        """Start a run (`start`) or follow `run_id` after `after_seq` for `user`; the news
        goes to `sink`. Errors (a bad spec, an unknown run, …) come to `sink.end`; a lost
        orchestrator replica does not (the watch reattaches). With tracing on, the current
        span (the client request's) is the parent of the orchestrator's side of the watch."""
        watch = Watch(
            self,
            sink,
            user=user,
            request_id=request_id or "",
            start=start,
            run_id="" if start is not None else run_id,
            after_seq=0 if start is not None else after_seq,
            trace_context=tracing.carrier_of() if tracing.enabled() else None,
        )
        watch._open()
        return watch

    def cancel_run(self, user: str, run_id: str, request_id: str) -> None:
        """Cancel `user`'s run `run_id` in the background (its client went away and the run
        asked for `ON_DISCONNECT_CANCEL`); a failure is logged."""

        async def cancel() -> None:
            metadata = [(USER_KEY, user), *self._token_md]
            if request_id:
                metadata.append((REQUEST_ID_KEY, request_id))
            try:
                await self._stub.CancelRun(
                    rs.CancelRunRequest(run_id=run_id, reason="client disconnected"),
                    metadata=metadata,
                    timeout=CANCEL_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("cancel_on_disconnect_failed", run_id=run_id, error=_describe(exc))

        task = asyncio.get_running_loop().create_task(cancel())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    @property
    def reattaching(self) -> int:
        """Watches waiting to reattach now."""
        return len(self._reattaching)

    def close(self) -> None:
        """Cancel the call (on shutdown; the streams on it end with its error, none
        reattaches)."""
        self.closed = True
        for task in list(self._reattaching):
            task.cancel()
        self._client.close()


WATCHES = Gauge("chorus_gateway_run_watches", "Runs watched over the WatchRuns call.")
WATCH_CALLS = Counter(
    "chorus_gateway_watch_runs_calls_total",
    "WatchRuns calls opened to the orchestrator (one serves every stream; more than one: "
    "a call failed and was replaced).",
)
REATTACHES = Counter(
    "chorus_gateway_watch_reattaches_total",
    "Watches whose orchestrator replica went away, by outcome: resumed (opened again on a "
    "live replica after the last seq delivered) or failed (final error, or "
    "CHORUS_WATCH_REATTACH_S spent).",
    ["outcome"],
)
