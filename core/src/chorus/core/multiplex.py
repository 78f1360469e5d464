"""Many keyed streams over one bidirectional gRPC call (RunService.WatchRuns,
ProviderService.StreamChats): the server side gathers every stream's news into few large
responses, the client side hands each update to its stream's sink.

Why: a grpc.aio message costs ~170 µs of CPU (both sides) and a live call ~48 KB
(`bench/bench_grpc_costs.py`); one call whose responses carry many streams' items replaces
one call per stream and one message per item.

The shape both RPCs share: each request names a stream by the client's key (> 0) and opens,
pauses, resumes or stops it; each response holds updates `(key, items, status)`, at most one
per stream, items in order; a stream's last update carries its `google.rpc.Status` (OK, or
the error that ended that stream only).

Server (`MultiplexServer`): a producer task per stream `put`s items into its `Outbox`; one
sender builds a response from every outbox with news. It sends at most one response per
`tick_s` (default `TICK_S`, 5 ms): news that comes within a tick of the last response waits
for the tick's end and leaves with everything else gathered by then, so many slow streams
(100 runs × 20 tokens/s, each token its own item) cost ~200 responses/s, not one per item.
Nothing waits when the call was quiet for a tick (a lone item goes out at once), nor for
the first item of a stream that had nothing for `IDLE_S` (a run's first event, the first
token of a turn: time to first token is not taxed), nor for an item its producer puts as
urgent while no other stream's news waits (WatchRuns: a turn's first token, which follows
its run's other events within a tick), nor for a stream whose buffer is full.
An outbox holds at most `buffer_items` unsent items, then its producer waits; a paused
stream sends nothing until resumed.
With a response window (`flow`, announced by the client) at most that many responses
are out unacknowledged; news gathers meanwhile, so a reader that falls
behind gets fewer, larger responses instead of a backlog of small ones (a grpc.aio reader
takes one message per event-loop turn).

Client (`MultiplexClient`): requests go out in order from a queue; a reader task hands each
update to its sink (`StreamSink.deliver` / `end`) and, with a window, acknowledges the
responses read (those read while an acknowledgement waits to go out share it). When the
call fails every sink on it ends with that error and the next `open` starts a new call.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.rpc import status_pb2

from chorus.core.errors import (
    ChorusError,
    Internal,
    InvalidArgument,
    PermissionDenied,
    StatusError,
    Unavailable,
)
from chorus.core.identity import Identity, current_request_id
from chorus.core.logging import get_logger

log = get_logger("chorus.core.multiplex")

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

OK = status_pb2.Status(code=0)
"""The status of a stream that ended normally."""
TICK_S = 0.005
"""Default least time between two responses of a busy call, seconds (`MultiplexServer`)."""
IDLE_S = 0.25
"""A stream with nothing put for this long, seconds, sends its next item without waiting
for the tick: longer than the gap between two tokens of any live model stream (≥ 4
tokens/s), so only the first item of a stream or of a turn goes out at once."""

Update = tuple[int, Sequence[Any], status_pb2.Status | None]
"""One stream's news in a response: key, items (in order), final status or None."""


def acting_user(caller: Identity, user: str) -> str:
    """Whom one request of a multiplexed call acts for: its `user` on a call made as the
    system identity (a relay of many users' requests: the gateway, the orchestrator), else
    the caller.

    Raises:
        InvalidArgument: the call is the system identity's and `user` is empty (field
            `user`).
        PermissionDenied: another caller named a user other than itself.
    """
    if caller.is_system:
        if not user:
            raise InvalidArgument(
                "user is required on a call made as the system identity", [("user", "required")]
            )
        return user
    if user not in ("", caller.user):
        raise PermissionDenied("only the system identity may act for another user")
    return caller.user


# --------------------------------------------------------------------------- server
class Outbox(Generic[T]):
    """One stream of a multiplexed call on the server: its items not sent yet."""

    __slots__ = ("_last_put", "_server", "items", "key", "paused", "status")

    def __init__(self, server: MultiplexServer[T, Any], key: int) -> None:
        self._server = server
        self.key = key
        self.items: list[T] = []
        self.status: status_pb2.Status | None = None
        """Set when the stream ended: its last update carries it."""
        self.paused = False
        self._last_put = -math.inf  # loop time of the last put

    async def put(self, item: T, *, urgent: bool = False) -> None:
        """Queue `item`; waits while the stream is paused or holds `buffer_items` unsent.
        `urgent` (the producer knows: a turn's first token, say): the item does not wait
        for the tick when no other stream's news does — on a busy call it leaves with them
        at the tick's end, so many streams' urgent items cost no more responses."""
        server = self._server
        items = self.items
        items.append(item)
        now = server._loop.time()
        idle = now - self._last_put >= server._idle
        self._last_put = now
        full = len(items) >= server._buffer
        if not self.paused:
            news = server._news
            mine = self.key in news
            if urgent and len(news) > mine:  # another stream's news waits: this one too
                urgent = False
            if not mine:
                news[self.key] = self
                server._wake_sender(urgent=idle or urgent)
            elif urgent:  # with this stream's own news held so far
                server._wake_sender(urgent=True)
            if full:
                server._wake_sender(urgent=True)
        if self.paused or full:
            await server._wait_space(self)


class MultiplexServer(Generic[T, Resp]):
    """The server side of one multiplexed call.

    Args:
        build: one response from the updates gathered for it.
        buffer_items: unsent items one stream may hold before its producer waits.
        max_items: most items in one response; the rest go in the next.
        tick_s: least time between two responses, seconds, but for the first item of an
            idle stream and a full buffer (module docstring); 0: each response leaves as
            soon as the sender runs.
        idle_s: a stream with nothing put for this long sends its next item at once.
    """

    def __init__(
        self,
        build: Callable[[list[Update]], Resp],
        *,
        buffer_items: int = 256,
        max_items: int = 4096,
        tick_s: float = TICK_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self._build = build
        self._buffer = buffer_items
        self._max_items = max_items
        self._tick = tick_s
        self._idle = idle_s
        self._loop = asyncio.get_running_loop()
        self._sent_at = -math.inf  # loop time the last response was built
        self._urgent = False  # news that must not wait for the tick
        self._ticking = False  # the sender waits for the tick's end
        self._outboxes: dict[int, Outbox[T]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._on_stop: dict[int, Callable[[], None]] = {}
        self._news: dict[int, Outbox[T]] = {}  # streams with unsent items or status, in order
        self._space: dict[int, asyncio.Future[None]] = {}  # producers waiting to put
        self._wake = asyncio.Event()
        self._requests_done = False
        self._fatal: ChorusError | None = None
        self._window = 0  # most unacknowledged responses; 0: no limit
        self._in_flight = 0  # responses sent since the window was set, not acknowledged

    @property
    def open_count(self) -> int:
        """Streams whose producer is still running."""
        return len(self._tasks)

    def flow(self, response_window: int, acknowledged: int) -> bool:
        """A request's flow control. `response_window` > 0: send at most that many
        responses the client has not acknowledged (the count restarts); `acknowledged`:
        the client has read that many more. Returns whether the request carried any."""
        if response_window:
            self._window = response_window
            self._in_flight = 0
        if acknowledged:
            self._in_flight = max(0, self._in_flight - acknowledged)
        if response_window or acknowledged:
            self._wake.set()
            return True
        return False

    def is_open(self, key: int) -> bool:
        """True while the stream has not sent its last update (nor been stopped)."""
        return key in self._outboxes

    async def serve(
        self, requests: AsyncIterator[Req], handle: Callable[[Req], None]
    ) -> AsyncIterator[Resp]:
        """The call's responses until the client half-closed and every stream ended.
        `handle` acts on each request (`open`, `stop`, `pause`, `resume`, `end`).

        Raises:
            ChorusError: `handle` raised it (a request broke the protocol): the call ends.
        """
        reader = asyncio.create_task(self._read(requests, handle))
        loop = self._loop
        try:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._news and (not self._window or self._in_flight < self._window):
                    due = self._sent_at + self._tick
                    if not self._urgent and loop.time() < due:
                        await self._tick_end(due)
                        continue
                    self._urgent = False
                    self._sent_at = loop.time()
                    self._in_flight += 1
                    yield self._response()
                    continue
                if self._requests_done and not self._outboxes:
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            reader.cancel()
            for key in list(self._tasks):
                self.stop(key)

    def _wake_sender(self, *, urgent: bool) -> None:
        """News: the sender runs now, or at the tick's end when it waits for it and the
        news is not `urgent`."""
        if urgent:
            self._urgent = True
            self._wake.set()
        elif not self._ticking:
            self._wake.set()

    async def _tick_end(self, due: float) -> None:
        """Until loop time `due`, or earlier when urgent news, an acknowledgement or the
        client's half-close wakes the sender."""
        self._ticking = True
        self._wake.clear()
        timer = self._loop.call_at(due, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
            self._ticking = False

    async def _read(self, requests: AsyncIterator[Req], handle: Callable[[Req], None]) -> None:
        try:
            async for request in requests:
                handle(request)
        except ChorusError as exc:
            self._fatal = exc
        except Exception as exc:  # the client went away mid-request; the call is ending
            log.debug("multiplexed_requests_ended", error_type=type(exc).__name__)
        finally:
            self._requests_done = True
            self._window = 0  # nobody left to acknowledge
            self._wake.set()

    # ------------------------------------------------------------------ streams
    def open(
        self,
        key: int,
        produce: Callable[[Outbox[T]], Awaitable[None]],
        *,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """Start stream `key`: `produce(outbox)` runs in a task of its own (it inherits the
        current context: set identity / request id before). It ends the stream with OK when
        it returns, with its status when it raises a `ChorusError`, INTERNAL on anything
        else. `on_stop` runs if the stream is stopped (or the call ends) before that."""
        outbox: Outbox[T] = Outbox(self, key)
        self._outboxes[key] = outbox
        if on_stop is not None:
            self._on_stop[key] = on_stop
        task = asyncio.create_task(self._produce(outbox, produce))
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._produced, key))

    def end(self, key: int, status: status_pb2.Status) -> None:
        """Open stream `key` only to end it with `status` (a request refused at once)."""
        outbox: Outbox[T] = Outbox(self, key)
        self._outboxes[key] = outbox
        self._finish(outbox, status)

    def stop(self, key: int) -> None:
        """The client let stream `key` go (or the call ended): no more updates for it;
        its `on_stop` runs if it had not ended. Unknown keys are ignored."""
        outbox = self._outboxes.pop(key, None)
        self._news.pop(key, None)
        task = self._tasks.pop(key, None)
        on_stop = self._on_stop.pop(key, None)
        if task is not None and not task.done():
            task.cancel()
        if outbox is not None and outbox.status is None and on_stop is not None:
            on_stop()

    def pause(self, key: int) -> None:
        """Send nothing more of stream `key` until `resume`."""
        outbox = self._outboxes.get(key)
        if outbox is not None:
            outbox.paused = True
            self._news.pop(key, None)  # held until resumed

    def resume(self, key: int) -> None:
        """Send stream `key` again, from where it stopped."""
        outbox = self._outboxes.get(key)
        if outbox is not None and outbox.paused:
            outbox.paused = False
            if outbox.items or outbox.status is not None:
                self._news[key] = outbox
                self._wake_sender(urgent=False)
            self._release(key)

    async def _produce(
        self, outbox: Outbox[T], produce: Callable[[Outbox[T]], Awaitable[None]]
    ) -> None:
        try:
            await produce(outbox)
            status = OK
        except asyncio.CancelledError:
            raise
        except ChorusError as exc:
            status = exc.to_status(current_request_id())
        except Exception as exc:
            log.exception("stream_failed", key=outbox.key, error_type=type(exc).__name__)
            request_id = current_request_id()
            status = Internal(f"internal error (request id {request_id})").to_status(request_id)
        self._on_stop.pop(outbox.key, None)
        self._finish(outbox, status)

    def _produced(self, key: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    def _finish(self, outbox: Outbox[T], status: status_pb2.Status) -> None:
        outbox.status = status
        if not outbox.paused:
            self._news[outbox.key] = outbox
            # A stream that ends before its first item (a refused request) is answered at once.
            self._wake_sender(urgent=outbox._last_put == -math.inf)

    async def _wait_space(self, outbox: Outbox[T]) -> None:
        """Until the stream is resumed and its unsent items are below the buffer."""
        while outbox.paused or len(outbox.items) >= self._buffer:
            waiter = asyncio.get_running_loop().create_future()
            self._space[outbox.key] = waiter
            try:
                await waiter
            finally:
                self._space.pop(outbox.key, None)

    def _release(self, key: int) -> None:
        waiter = self._space.get(key)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _response(self) -> Resp:
        """One response of the news gathered so far (at most `max_items` items); streams
        left with items stay in the news for the next one."""
        updates: list[Update] = []
        budget = self._max_items
        news = self._news
        while news and budget > 0:
            key = next(iter(news))
            outbox = news[key]
            items = outbox.items
            status = None
            if len(items) > budget:
                taken = items[:budget]
                del items[:budget]  # the list stays the producer's: emptied, never replaced
            else:
                taken = items[:]
                items.clear()
                del news[key]
                if outbox.status is not None:
                    status = outbox.status
                    self._outboxes.pop(key, None)
            budget -= len(taken)
            updates.append((key, taken, status))
            self._release(key)
        return self._build(updates)


# --------------------------------------------------------------------------- client
class StreamSink(Protocol):
    """Where one stream's news goes on the client."""

    def deliver(self, items: Sequence[Any]) -> None:
        """The stream's next items, in order."""

    def end(self, error: BaseException | None) -> None:
        """The stream ended: None when OK, else why (`StatusError` with the server's
        status, `grpc.aio.AioRpcError` when the call failed, `Unavailable` when the server
        ended the call first)."""


_ACK = object()
"""Queued in place of a request: acknowledge the responses read so far."""


class _Call(Generic[Req]):
    """One multiplexed call and the sinks of the streams open on it."""

    def __init__(
        self,
        open_call: Callable[[AsyncIterator[Req]], Any],
        unpack: Callable[[Any], Iterable[Update]],
        name: str,
        flow: Callable[[int, int], Req] | None,
        window: int,
    ) -> None:
        self.sinks: dict[int, StreamSink] = {}
        self.broken = False
        self._name = name
        self._unpack = unpack
        self._flow = flow if window > 0 else None
        self._read_count = 0  # responses read, not acknowledged yet
        self._ack_queued = False
        self._requests: asyncio.Queue[Req | object | None] = asyncio.Queue()
        if self._flow is not None:
            self._requests.put_nowait(self._flow(window, 0))
        self._call = open_call(self._outgoing())
        self._reader = asyncio.create_task(self._read())

    def send(self, request: Req) -> None:
        if not self.broken:
            self._requests.put_nowait(request)

    async def _outgoing(self) -> AsyncIterator[Req]:
        while (request := await self._requests.get()) is not None:
            if request is _ACK:
                # Every response read since the last acknowledgement, in one request.
                self._ack_queued = False
                count, self._read_count = self._read_count, 0
                assert self._flow is not None
                yield self._flow(0, count)
            else:
                yield request  # type: ignore[misc]

    def _acknowledge(self) -> None:
        self._read_count += 1
        if not self._ack_queued:
            self._ack_queued = True
            self._requests.put_nowait(_ACK)

    async def _read(self) -> None:
        error: BaseException = Unavailable(
            f"{self._name}: the server ended the call", reason="STREAM_CALL_ENDED"
        )
        sinks = self.sinks
        unpack = self._unpack
        try:
            async for response in self._call:
                for key, items, status in unpack(response):
                    sink = sinks.get(key)
                    if sink is None:  # stopped meanwhile
                        continue
                    if items:
                        sink.deliver(items)
                    if status is not None:
                        del sinks[key]
                        sink.end(StatusError(status) if status.code else None)
                if self._flow is not None:
                    self._acknowledge()
        except grpc.aio.AioRpcError as exc:
            error = exc
        finally:
            self.broken = True
            if sinks:
                code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
                log.warning(
                    "multiplexed_call_ended",
                    call=self._name,
                    code=getattr(code, "name", "OK"),
                    details=error.details() if isinstance(error, grpc.aio.AioRpcError) else None,
                    streams=len(sinks),
                )
            ended, self.sinks = list(sinks.values()), {}
            for sink in ended:
                sink.end(error)

    def close(self) -> None:
        self.broken = True
        self._requests.put_nowait(None)
        self._call.cancel()


class Stream(Generic[Req]):
    """A handle on one stream of a `MultiplexClient` (no-ops once the stream ended)."""

    __slots__ = ("_call", "key")

    def __init__(self, call: _Call[Req], key: int) -> None:
        self._call = call
        self.key = key

    def send(self, request: Req) -> None:
        """Send a request about this stream (pause, resume…) while it is open."""
        if self.key in self._call.sinks:
            self._call.send(request)

    def stop(self, request: Req) -> None:
        """Let the stream go: its sink gets nothing more; `request` tells the server."""
        if self._call.sinks.pop(self.key, None) is not None:
            self._call.send(request)


class MultiplexClient(Generic[Req]):
    """A process's multiplexed call to one service, opened on first use and again after a
    failure.

    Args:
        open_call: starts the call with a request iterator (e.g.
            `lambda requests: stub.WatchRuns(requests, metadata=...)`).
        unpack: a response's updates as `(key, items, status or None)`.
        name: the RPC, for logs.
        on_call: called each time a call is started (a metric).
        flow: a request carrying flow control only: `flow(response_window, acknowledged)`;
            with `window` > 0 each call starts with `flow(window, 0)` and every response
            read is acknowledged (several at once when the requests queue up), so the server
            sends at most `window` responses ahead of this reader.
        window: see `flow`; 0: no flow control (the server sends as fast as it gathers).
    """

    def __init__(
        self,
        open_call: Callable[[AsyncIterator[Req]], Any],
        unpack: Callable[[Any], Iterable[Update]],
        name: str,
        *,
        on_call: Callable[[], None] | None = None,
        flow: Callable[[int, int], Req] | None = None,
        window: int = 0,
    ) -> None:
        self._open_call = open_call
        self._unpack = unpack
        self._name = name
        self._on_call = on_call
        self._flow = flow
        self._window = window
        self._call: _Call[Req] | None = None
        self._last_key = 0

    @property
    def open_streams(self) -> int:
        """Streams open on the current call."""
        return len(self._call.sinks) if self._call is not None else 0

    def open(self, sink: StreamSink, request: Callable[[int], Req]) -> Stream[Req]:
        """Open a stream under a new key: `request(key)` is the request that opens it;
        its news goes to `sink`."""
        call = self._call
        if call is None or call.broken:
            call = self._call = _Call(
                self._open_call, self._unpack, self._name, self._flow, self._window
            )
            if self._on_call is not None:
                self._on_call()
        self._last_key += 1
        key = self._last_key
        call.sinks[key] = sink
        call.send(request(key))
        return Stream(call, key)

    def close(self) -> None:
        """Cancel the call (on shutdown; the streams on it end with its error)."""
        if self._call is not None:
            self._call.close()
            self._call = None
