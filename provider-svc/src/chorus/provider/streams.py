"""ProviderService.StreamChats: many model calls' events over one bidirectional call.

The orchestrator runs one model call per live agent turn; one StreamChat call each would
cost a gRPC call (~48 KB) per live run and a gRPC message (~170 µs of CPU, both sides) per
event (`bench/bench_grpc_costs.py`). Here one call carries every stream of its client
(`chorus.core.multiplex.MultiplexServer`):

* a request opens a stream (`open`: a StreamChatRequest, with its own `timeout`) or
  cancels one, by the client's `stream_id`;
* a task per stream runs the same normalized stream as StreamChat
  (`ProviderServicer.stream`) into the stream's outbox, under the stream's user, request id
  and deadline;
* one sender gathers every stream with news into one response each time it runs.

A stream ends with an update whose `status` is OK after its terminal event (`finish` or
`error`), or the error StreamChat would have returned before `start` (validation,
retries exhausted, DEADLINE_EXCEEDED when its `timeout` ran out); that error ends the
stream only. Cancel stops the stream's task: the backend generator is closed, which closes
the upstream HTTP response at once. Requests that break the protocol (no `stream_id`, no
action, an id already open) end the call with INVALID_ARGUMENT.

Flow control: a client that sets `response_window` acknowledges the responses it has read;
the sender then has at most that many unacknowledged responses out and keeps gathering
meanwhile. Without it, a lightly loaded provider-svc sends one small response per event, and
a reader whose event loop turns slowly (the orchestrator while it starts a thousand runs)
gets a backlog — one message read per loop turn — that delays every stream on the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import structlog

from chorus.core import deadlines, identity, tracing
from chorus.core.errors import ChorusError, DeadlineExceeded, InvalidArgument
from chorus.core.multiplex import MultiplexServer, Outbox, Update, acting_user
from chorus.v1 import provider_service_pb2 as ps

STREAM_BUFFER_EVENTS = 1024
"""Unsent events one stream may hold before its task waits for the sender."""
MAX_EVENTS_PER_RESPONSE = 4096
"""Most events in one response; the rest go in the next one."""

_Update = ps.StreamChatsResponse.Update
_METHOD = "/chorus.v1.ProviderService/StreamChats"


def _response(updates: list[Update]) -> ps.StreamChatsResponse:
    return ps.StreamChatsResponse(
        updates=[
            _Update(stream_id=key, events=events, status=status) for key, events, status in updates
        ]
    )


class StreamChatsCall:
    """The server side of one ProviderService.StreamChats call.

    Args:
        stream: the normalized events of one request (`ProviderServicer.stream`).
        caller: the call's identity; only the system identity may act for `request.user`.
    """

    def __init__(
        self,
        stream: Callable[[ps.StreamChatRequest], AsyncGenerator[ps.StreamChatResponse, None]],
        caller: identity.Identity,
    ) -> None:
        self._stream = stream
        self._caller = caller
        self._request_id = identity.current_request_id()
        self._mux: MultiplexServer[ps.StreamChatResponse, ps.StreamChatsResponse] = MultiplexServer(
            _response, buffer_items=STREAM_BUFFER_EVENTS, max_items=MAX_EVENTS_PER_RESPONSE
        )

    def serve(
        self, requests: AsyncIterator[ps.StreamChatsRequest]
    ) -> AsyncIterator[ps.StreamChatsResponse]:
        """The call's responses until the client half-closed and every stream ended.

        Raises:
            InvalidArgument: a request broke the protocol (the call ends).
        """
        return self._mux.serve(requests, self._handle)

    def _handle(self, request: ps.StreamChatsRequest) -> None:
        stream_id = request.stream_id
        action = request.WhichOneof("action")
        if self._mux.flow(request.response_window, request.acknowledged) and not (
            stream_id or action
        ):
            return  # flow control only
        if stream_id <= 0:
            raise InvalidArgument(
                "stream_id must be greater than 0", [("stream_id", "must be > 0")]
            )
        if action is None:
            raise InvalidArgument("one of open, cancel is required", [("action", "required")])
        if action == "cancel":
            self._mux.stop(stream_id)
        elif self._mux.is_open(stream_id):
            raise InvalidArgument(
                f"stream {stream_id} is already open on this call",
                [("stream_id", "already open")],
            )
        else:
            self._open(stream_id, request)

    def _open(self, stream_id: int, request: ps.StreamChatsRequest) -> None:
        request_id = request.request_id or self._request_id
        timeout_s = request.timeout.ToTimedelta().total_seconds()
        try:
            user = acting_user(self._caller, request.user)
            if timeout_s < 0:
                raise InvalidArgument("timeout must not be negative", [("timeout", "must be ≥ 0")])
        except ChorusError as error:
            self._mux.end(stream_id, error.to_status(request_id))
            return
        # The stream's task inherits this context: its identity, request id and deadline.
        identity.set_request_id(request_id)
        identity.set_identity(identity.Identity(user, self._caller.authenticated_by))
        deadlines.set_deadline(timeout_s or None)
        structlog.contextvars.bind_contextvars(request_id=request_id, user=user)
        self._mux.open(stream_id, _Producer(self._stream, request.open, timeout_s).produce)


class _Producer:
    """Runs one stream's model call into its outbox."""

    __slots__ = ("_request", "_stream", "_timeout_s")

    def __init__(
        self,
        stream: Callable[[ps.StreamChatRequest], AsyncGenerator[ps.StreamChatResponse, None]],
        request: ps.StreamChatRequest,
        timeout_s: float,
    ) -> None:
        self._stream = stream
        self._request = request
        self._timeout_s = timeout_s

    async def produce(self, outbox: Outbox[ps.StreamChatResponse]) -> None:
        request, self._request = self._request, ps.StreamChatRequest()
        # The stream's server span: a child of the caller's span named in the request's
        # metadata (`traceparent`), never of the long-lived call's (None: tracing off).
        span = (
            tracing.start_stream_server_span(
                _METHOD, request.metadata, {"chorus.stream_id": outbox.key}
            )
            if tracing.enabled()
            else None
        )
        put = outbox.put
        try:
            with tracing.use(span):
                async with (
                    asyncio.timeout(self._timeout_s or None),
                    contextlib.aclosing(self._stream(request)) as events,
                ):
                    del request
                    async for event in events:
                        await put(event)
        except TimeoutError:
            error = DeadlineExceeded(
                f"the stream's deadline of {self._timeout_s:g} s was exceeded",
                reason="DEADLINE_EXCEEDED",
            )
            tracing.end_stream_span(span, error.code.name, error.message)
            raise error from None
        except ChorusError as error:
            tracing.end_stream_span(span, error.code.name, error.message)
            raise
        except BaseException as exc:  # cancelled (the client's cancel), or a bug
            cancelled = isinstance(exc, asyncio.CancelledError | GeneratorExit)
            tracing.end_stream_span(span, "CANCELLED" if cancelled else "UNKNOWN", repr(exc))
            raise
        tracing.end_stream_span(span)
