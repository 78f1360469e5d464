"""Run events as Server-Sent Events, from the process's WatchRuns call.

Wire format (WHATWG HTML §9.2), one frame per `RunEvent`::

    event: text_delta
    id: 17
    data: {"runId":"…","seq":"17","time":"…","agent":"optimist","textDelta":{"text":"Hi"}}

`event:` is the payload's field name (`run_started`, `text_delta`, …, `run_completed`),
`id:` the seq, `data:` the proto3 JSON of the event (`chorus.gateway.protojson`). A
browser's `Last-Event-ID` on reconnect is the seq to resume after. The stream ends after
the terminal event. An upstream failure after the response started is sent as
`event: error` with the AIP-193 error body, then the stream ends.

How the stream is served (the gateway's hot path):

* `open_event_stream` opens a watch on the shared WatchRuns call
  (`chorus.gateway.watches`) and waits for its first event (up to
  `sse_first_event_wait_s`) before answering, so a missing run is a real 404 and not a
  200 stream that fails; a stream with nothing after `after_seq` on a finished run is
  204 No Content, which tells `EventSource` to stop reconnecting; a seq past a finished
  run's last event is 400 OUT_OF_RANGE (nobody can have been shown it).
* The call's reader hands each update's events to the stream's buffer, encoded as SSE
  frames; the writer sends everything buffered in one `http.response.body` write. When
  events arrive faster than the socket drains, the writer's send is still waiting on
  flow control when the next events land, so several go out in the next write. At
  `sse_max_buffered_events` the stream pauses its watch and resumes it once the writer
  took the buffer: the orchestrator holds the run's events meanwhile, none lost.
* Writes are paced by a token bucket: `FLUSH_BURST` writes at once, then at most one per
  `sse_flush_interval_s`; events that arrive meanwhile share the next write. The first
  events of a run (time to first token) are never held back.
* An idle stream gets a `: keepalive` comment every `sse_keepalive_s`.
* Client disconnect (or any exit) stops the watch in `finally`; a run started by the
  stream then follows its `onDisconnect`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import TypedDict

import orjson
from prometheus_client import Counter, Gauge
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chorus.core import identity
from chorus.gateway import errors, protojson
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import RunWatches, WatchBuffer
from chorus.v1 import run_pb2

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
"""Headers of every event stream (no caching, no proxy buffering; never compressed)."""

KEEPALIVE = b": keepalive\n\n"
FLUSH_BURST = 8
"""Writes a stream may make back to back before the flush interval paces it."""
RETRY_MS = 2000
"""Reconnect delay suggested to `EventSource` (`retry:` field), milliseconds."""
RETRY = f"retry: {RETRY_MS}\n\n".encode()
"""The `retry:` field a stream starts with."""

STREAMS = Gauge("chorus_gateway_sse_streams", "SSE streams being served.")
EVENTS = Counter("chorus_gateway_sse_events_total", "Run events sent over SSE.")
WRITES = Counter("chorus_gateway_sse_writes_total", "Body writes of SSE streams (≤ events).")


def encode_event(event: run_pb2.RunEvent) -> bytes:
    """One SSE frame for `event` (`event:`, `id:`, `data:` lines and the blank line)."""
    kind = event.WhichOneof("payload") or "message"
    return b"".join(
        (
            b"event: ",
            kind.encode(),
            b"\nid: ",
            str(event.seq).encode(),
            b"\ndata: ",
            protojson.event_json(event),
            b"\n\n",
        )
    )


def encode_error(exc: BaseException) -> bytes:
    """The `event: error` frame of a failure after the stream started (AIP-193 body)."""
    status, http_status = errors.status_of(exc)
    return b"event: error\ndata: " + orjson.dumps(errors.error_body(status, http_status)) + b"\n\n"


_LIVE: weakref.WeakSet[_Pump] = weakref.WeakSet()


def close_all() -> int:
    """End every stream being served (on shutdown): each ends cleanly after what was already
    read, and its client reconnects with `Last-Event-ID` — to another replica. Returns how
    many were open."""
    pumps = list(_LIVE)
    for pump in pumps:
        pump.close()
    return len(pumps)


class _Pump(WatchBuffer):
    """The buffer of one stream: encoded frames of the events its watch delivered, taken
    by the response's writer."""

    def __init__(self, max_buffered: int, flush_interval_s: float = 0.0) -> None:
        super().__init__(max_buffered)
        self._interval = flush_interval_s
        self._credit = float(FLUSH_BURST)
        self._credit_time = 0.0
        self.frames: list[bytes] = []
        self.closed = False
        self._loop = asyncio.get_running_loop()
        # keepalive: one timer per stream re-armed at most once per `keepalive_s`, instead of
        # a timeout around every wait (a timer handle per event)
        self._keepalive_s = 0.0
        self._keepalive_due = 0.0
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._keepalive_now = False
        _LIVE.add(self)

    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        """Buffer the watch's next events as SSE frames."""
        frames = self.frames
        for event in events:
            frames.append(encode_event(event))
        self._delivered(len(frames))

    async def wait_first(self, timeout: float) -> None:
        """Wait until a frame is buffered, the stream ended, or `timeout` s passed."""
        if self.frames or self.finished:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            pass

    async def take(self, keepalive_s: float) -> bytes | None:
        """Everything buffered as one chunk; `KEEPALIVE` once nothing was taken for
        `keepalive_s` seconds; None at the end (stream finished and drained, or closed)."""
        self._keepalive_due = self._loop.time() + keepalive_s
        self._keepalive_now = False  # a keepalive due during the last write is moot
        if self._keepalive_timer is None:
            self._keepalive_s = keepalive_s
            self._keepalive_timer = self._loop.call_at(self._keepalive_due, self._keepalive)
        while not self.frames:
            if self.finished or self.closed:
                return None
            if self._keepalive_now:
                self._keepalive_now = False
                return KEEPALIVE
            self._ready.clear()
            await self._ready.wait()
        if self._interval:
            await self._pace()
        if self.closed:
            return None
        frames, self.frames = self.frames, []
        self._taken()
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def _keepalive(self) -> None:
        """Timer callback: wake `take` for a keepalive when it has waited `keepalive_s`,
        else re-arm for when it will have."""
        if self.closed or self.finished:
            self._keepalive_timer = None
            return
        if self._loop.time() >= self._keepalive_due:
            self._keepalive_now = True
            self._ready.set()
            self._keepalive_due += self._keepalive_s
        self._keepalive_timer = self._loop.call_at(self._keepalive_due, self._keepalive)

    async def _pace(self) -> None:
        """Token bucket of writes: `FLUSH_BURST` at once, then one per interval, so a fast
        stream's events are gathered into fewer writes while the first events of a run (and
        of any stream that was quiet for a while) go out at once."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._credit = min(FLUSH_BURST, self._credit + (now - self._credit_time) / self._interval)
        self._credit_time = now
        if self._credit < 1 and not self.finished:
            await asyncio.sleep((1 - self._credit) * self._interval)
            later = loop.time()
            self._credit += (later - now) / self._interval
            self._credit_time = later
        self._credit = max(0.0, self._credit - 1)

    def close(self) -> None:
        """Stop: let the watch go (unless it ended), wake the writer."""
        self.closed = True
        if self.watch is not None and not self.finished:
            self.watch.stop()
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        self._ready.set()


class EventStreamResponse(Response):
    """An ASGI response serving a `_Pump` as SSE until the run's end or the client's exit."""

    def __init__(self, pump: _Pump, keepalive_s: float, headers: dict[str, str] | None) -> None:
        self.pump = pump
        self.keepalive_s = keepalive_s
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS) + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = self.pump

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    pump.close()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        STREAMS.inc()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            # Each body message is a socket write: the `retry:` line leaves with the first
            # events (already buffered when the stream opened after its first event), and
            # the last events with the end of the body.
            body = RETRY
            if not pump.frames and not pump.finished:
                await send({"type": "http.response.body", "body": body, "more_body": True})
                body = b""
            while (chunk := await pump.take(self.keepalive_s)) is not None:
                if chunk is not KEEPALIVE:
                    WRITES.inc()
                    EVENTS.inc(chunk.count(b"\n\n"))
                body = body + chunk if body else chunk
                if pump.finished and not pump.frames:
                    break  # nothing can follow: these go out with the end
                await send({"type": "http.response.body", "body": body, "more_body": True})
                body = b""
            if pump.error is not None and not pump.closed:
                body += encode_error(pump.error)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except OSError:  # ASGI 2.4 servers raise on a send after the client left
            pass
        finally:
            STREAMS.dec()
            watcher.cancel()
            pump.close()


class StreamOptions(TypedDict):
    """`open_event_stream`'s timing and buffering keyword arguments."""

    first_event_wait_s: float
    keepalive_s: float
    max_buffered: int
    flush_interval_s: float


def stream_options(settings: GatewaySettings) -> StreamOptions:
    """`open_event_stream`'s timing and buffering arguments from the gateway settings."""
    return {
        "first_event_wait_s": settings.sse_first_event_wait_s,
        "keepalive_s": settings.sse_keepalive_s,
        "max_buffered": settings.sse_max_buffered_events,
        "flush_interval_s": settings.sse_flush_interval_s,
    }


async def open_event_stream(
    watches: RunWatches,
    *,
    user: str,
    start: run_pb2.RunSpec | None = None,
    run_id: str = "",
    after_seq: int = 0,
    first_event_wait_s: float,
    keepalive_s: float,
    max_buffered: int,
    flush_interval_s: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Response:
    """The HTTP response for a run's events: a run started from `start` (StreamRun), or
    `run_id`'s events after `after_seq` (WatchRun), for `user`, over `watches`.

    Waits up to `first_event_wait_s` for the first event, so early failures get their own
    HTTP status.

    Returns:
        a streaming 200 response; or 204 when the stream ended with no event (nothing after
        `after_seq` on a finished run).

    Raises:
        chorus.core.errors.StatusError | grpc.aio.AioRpcError: the watch failed before any
            event (e.g. NOT_FOUND, INVALID_ARGUMENT); the exception handlers turn it into
            the mapped HTTP error.
    """
    pump = _Pump(max_buffered, flush_interval_s)
    pump.watch = watches.open(
        pump,
        user=user,
        request_id=identity.current_request_id(),
        start=start,
        run_id=run_id,
        after_seq=after_seq,
    )
    try:
        await pump.wait_first(first_event_wait_s)
    except BaseException:
        pump.close()
        raise
    if pump.finished and not pump.frames:
        pump.close()
        if pump.error is not None:
            raise pump.error
        return Response(status_code=204, headers=headers)
    return EventStreamResponse(pump, keepalive_s, headers)
