"""The orchestrator's model calls over one ProviderService.StreamChats call.

One StreamChat call per model call would cost a gRPC call (~48 KB) per live run on each
side and a gRPC message (~170 µs of CPU, both sides) per event
(`bench/bench_grpc_costs.py`); over StreamChats a response carries the news of many model
calls at once (`chorus.core.multiplex.MultiplexClient`).

`ChatStreams.open` returns a `ChatStream`: an async iterator of the call's
`StreamChatResponse`s (buffered as they arrive, so a stream opened early — a prefetched
first call — loses nothing) with `cancel()`. Iteration raises `ChorusError` when the stream
ends with an error: the status StreamChat would have returned (`StatusError`, details
kept), the failure of the whole call (`from_rpc_error`), or CANCELLED after `cancel()`.
The call is made as the system identity; each stream names the run's owner. Closing the
channel (on shutdown) ends the call.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from chorus.core import tracing
from chorus.core.errors import ChorusError, error_for_code, from_rpc_error
from chorus.core.multiplex import MultiplexClient, Stream, Update
from chorus.orchestrator import metrics
from chorus.v1 import provider_service_pb2 as ps
from chorus.v1 import provider_service_pb2_grpc

_CANCEL = ps.StreamChatsRequest.Cancel()
_METHOD = "/chorus.v1.ProviderService/StreamChats"

RESPONSE_WINDOW = 1
"""Most responses provider-svc sends ahead of this process's reading them: the reader
gets one message per event-loop turn, so when the loop is busy (a burst of run starts)
the events wait in provider-svc's outboxes and leave as one response, not as a backlog of
small messages queued in front of the reader. 1 (each response read before the next
leaves) measured best: 1,000 slow streams, 6 alternated rounds each, lag p99 median ~47 ms
with 1, ~55 with 4, ~161 with 2 (bench/README.md, session 7)."""


def _flow(response_window: int, acknowledged: int) -> ps.StreamChatsRequest:
    return ps.StreamChatsRequest(response_window=response_window, acknowledged=acknowledged)


def _updates(response: ps.StreamChatsResponse) -> Iterable[Update]:
    for update in response.updates:
        yield (
            update.stream_id,
            update.events,
            update.status if update.HasField("status") else None,
        )


class ChatStream:
    """One model call: `async for response in stream`, `stream.cancel()`."""

    __slots__ = ("_error", "_events", "_finished", "_span", "_stream", "_waiter")

    def __init__(self, span: Any = None) -> None:
        self._span = span  # the stream's client span (None: tracing off)
        self._events: collections.deque[ps.StreamChatResponse] = collections.deque()
        self._error: ChorusError | None = None
        self._finished = False
        self._waiter: asyncio.Future[None] | None = None
        self._stream: Stream[ps.StreamChatsRequest] | None = None

    # --- the StreamSink side (the call's reader) ---------------------------------------
    def deliver(self, items: Sequence[Any]) -> None:
        self._events.extend(items)
        self._wake()

    def end(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        if isinstance(error, grpc.aio.AioRpcError):
            error = from_rpc_error(error)
        if error is not None and not isinstance(error, ChorusError):
            error = error_for_code(grpc.StatusCode.UNAVAILABLE, str(error))
        self._error = error
        if self._span is not None:
            if error is None:
                tracing.end_stream_span(self._span)
            else:
                tracing.end_stream_span(self._span, error.code.name, error.message)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the consumer side -------------------------------------------------------------
    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> ps.StreamChatResponse:
        while not self._events:
            if self._finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._events.popleft()

    def cancel(self) -> bool:
        """Stop the model call (provider-svc closes the upstream response); iteration then
        raises a CANCELLED `ChorusError`. Returns False when it had already ended."""
        if self._finished:
            return False
        if self._stream is not None:
            self._stream.stop(ps.StreamChatsRequest(stream_id=self._stream.key, cancel=_CANCEL))
        self._events.clear()
        self.end(error_for_code(grpc.StatusCode.CANCELLED, "model call cancelled"))
        return True


class ChatStreams:
    """The process's StreamChats call to provider-svc, opened on first use.

    Args:
        stub: ProviderService on provider-svc's channel.
        metadata: the call's metadata: the system identity and the internal token.
    """

    def __init__(
        self,
        stub: provider_service_pb2_grpc.ProviderServiceStub,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        md = list(metadata)
        self._client: MultiplexClient[ps.StreamChatsRequest] = MultiplexClient(
            lambda requests: stub.StreamChats(requests, metadata=md),
            _updates,
            "StreamChats",
            on_call=metrics.STREAM_CHATS_CALLS.inc,
            flow=_flow,
            window=RESPONSE_WINDOW,
        )
        metrics.MODEL_CALL_STREAMS.set_function(lambda: self._client.open_streams)

    def open(
        self, request: ps.StreamChatRequest, *, user: str, request_id: str | None, timeout_s: float
    ) -> ChatStream:
        """Start the model call `request` for `user`, with a deadline of `timeout_s`."""
        timeout = duration_pb2.Duration()
        timeout.FromNanoseconds(int(timeout_s * 1e9))
        # The model call's client span; its context rides in the stream's own request (the
        # call is shared by every run: gRPC metadata would name one of them).
        carrier: dict[str, str] = {}
        span = (
            tracing.start_stream_client_span(
                _METHOD, carrier, {"chorus.run_id": request.metadata.get("run_id", "")}
            )
            if tracing.enabled()
            else None
        )

        def opening(stream_id: int) -> ps.StreamChatsRequest:
            out = ps.StreamChatsRequest(
                stream_id=stream_id,
                user=user,
                request_id=request_id or "",
                open=request,  # a copy: the caller's request stays as it was
                timeout=timeout,
            )
            if carrier:
                out.open.metadata.update(carrier)
            return out

        stream = ChatStream(span)
        stream._stream = self._client.open(stream, opening)
        return stream
