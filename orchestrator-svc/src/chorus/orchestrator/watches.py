"""RunService.WatchRuns: many runs' events over one bidirectional call.

A relay of many runs (the gateway) would otherwise hold one StreamRun / WatchRun call per
run and receive one gRPC message per event. Here one call carries every watch of its
client (`chorus.core.multiplex.MultiplexServer`):

* each request opens a watch (`start`: a run started as by StreamRun; `watch`: an existing
  run followed as by WatchRun), or pauses, resumes or stops one, by the client's `watch_id`;
* a follower task per watch reads `RunManager.watch` (the same per-run stream StreamRun
  and WatchRun serve: memory, history-svc catch-up, the terminal event last) into the
  watch's outbox;
* one sender gathers every watch with news into one response each time it runs, at most
  one per tick on a busy call; a turn's first token goes at once when no other watch's
  news waits for the tick (`_TOKENS`).

Flow control: a watch holds at most `WATCH_BUFFER_EVENTS` unsent events, then its
follower waits (the run's log keeps the rest, history-svc beyond it); the client pauses a
watch whose consumer is slow and resumes it later, and gRPC's own flow control slows the
whole call when the client reads slowly. A client that announces a `response_window`
acknowledges what it read and gets at most that many responses ahead of it, news
gathered meanwhile (the gateway: 1), so a reader whose event loop is busy gets few large
responses instead of a backlog of small ones.

A watch ends with an update whose `status` is OK after its terminal event, or the error
StreamRun / WatchRun would have returned (`ChorusError.to_status`); that error ends the
watch only. Requests that break the protocol (no `watch_id`, no action, an id already
open) end the call with INVALID_ARGUMENT. A started run whose watch is stopped, or whose
call ends before its terminal event, follows `spec.on_disconnect`, as with StreamRun.

Tracing: the call has no span (it lives as long as its client and serves every watch).
A watch whose opening request carries `trace_context` (the W3C context of the client
request it serves, from a tracing gateway) gets a SERVER span of its own,
`chorus.v1.RunService/WatchRuns`, a child of that context, current while it is served and
ended with the watch's status: the run a `start` begins (its `run …` span) and the
history-svc reads of a `watch` are under it, so a run started over SSE, the WebSocket or
the OpenAI-compatible API is one trace from the gateway's HTTP request on. Without the
field (or with tracing off here) nothing is traced per watch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from chorus.core import identity, tracing
from chorus.core.errors import ChorusError, InvalidArgument, ResourceExhausted
from chorus.core.multiplex import MultiplexServer, Outbox, Update, acting_user
from chorus.orchestrator.manager import RunManager
from chorus.v1 import run_pb2
from chorus.v1 import run_service_pb2 as rs

if TYPE_CHECKING:
    from opentelemetry.trace import Span

WATCH_BUFFER_EVENTS = 256
"""Unsent events one watch may hold before its follower waits for the sender."""
MAX_EVENTS_PER_RESPONSE = 4096
"""Most events in one response (~0.5–1 MB); the rest go in the next one."""
MAX_WATCHES_PER_CALL = 100_000
"""Most watches open at once on one call; more end at once with RESOURCE_EXHAUSTED."""

_TOKENS = frozenset({"text_delta", "reasoning_delta"})
"""The per-token events. The first after any other event (a turn's first token, which
comes within a tick of its `agent_started`) is put as urgent: it does not wait for the
call's tick unless other watches' news does (`chorus.core.multiplex`), so time to first
token is not taxed; the ones after it share responses."""

_Update = rs.WatchRunsResponse.Update
_METHOD = "/chorus.v1.RunService/WatchRuns"


def _response(updates: list[Update]) -> rs.WatchRunsResponse:
    return rs.WatchRunsResponse(
        updates=[
            _Update(watch_id=key, events=events, status=status) for key, events, status in updates
        ]
    )


class WatchRunsCall:
    """The server side of one RunService.WatchRuns call.

    Args:
        manager: the replica's runs.
        caller: the call's identity; only the system identity may act for `request.user`.
    """

    def __init__(self, manager: RunManager, caller: identity.Identity) -> None:
        self._manager = manager
        self._caller = caller
        self._request_id = identity.current_request_id()
        self._mux: MultiplexServer[run_pb2.RunEvent, rs.WatchRunsResponse] = MultiplexServer(
            _response, buffer_items=WATCH_BUFFER_EVENTS, max_items=MAX_EVENTS_PER_RESPONSE
        )

    def serve(
        self, requests: AsyncIterator[rs.WatchRunsRequest]
    ) -> AsyncIterator[rs.WatchRunsResponse]:
        """The call's responses until the client half-closed and every watch ended.

        Raises:
            InvalidArgument: a request broke the protocol (the call ends).
        """
        return self._mux.serve(requests, self._handle)

    def _handle(self, request: rs.WatchRunsRequest) -> None:
        watch_id = request.watch_id
        action = request.WhichOneof("action")
        mux = self._mux
        if mux.flow(request.response_window, request.acknowledged) and not (watch_id or action):
            return  # flow control only
        if watch_id <= 0:
            raise InvalidArgument("watch_id must be greater than 0", [("watch_id", "must be > 0")])
        if action is None:
            raise InvalidArgument(
                "one of start, watch, pause, resume, stop is required", [("action", "required")]
            )
        if action == "stop":
            mux.stop(watch_id)
        elif action == "pause":
            mux.pause(watch_id)
        elif action == "resume":
            mux.resume(watch_id)
        elif mux.is_open(watch_id):
            raise InvalidArgument(
                f"watch {watch_id} is already open on this call", [("watch_id", "already open")]
            )
        else:
            self._open(watch_id, request)

    def _open(self, watch_id: int, request: rs.WatchRunsRequest) -> None:
        caller = self._caller
        request_id = request.request_id or self._request_id
        try:
            user = acting_user(caller, request.user)
            if self._mux.open_count >= MAX_WATCHES_PER_CALL:
                raise ResourceExhausted(
                    f"at most {MAX_WATCHES_PER_CALL} watches may be open on one call"
                )
        except ChorusError as error:
            self._mux.end(watch_id, error.to_status(request_id))
            return
        # The follower's task inherits this context: the watch's identity and request id.
        identity.set_request_id(request_id)
        identity.set_identity(identity.Identity(user, caller.authenticated_by))
        structlog.contextvars.bind_contextvars(request_id=request_id, user=user)
        follower = _Follower(self._manager, user, request)
        self._mux.open(watch_id, follower.follow, on_stop=follower.disconnected)


class _Follower:
    """Reads one run's events into its watch's outbox."""

    __slots__ = ("_manager", "_request", "cancel_on_disconnect", "run_id", "user")

    def __init__(self, manager: RunManager, user: str, request: rs.WatchRunsRequest) -> None:
        self._manager = manager
        self._request = request
        self.user = user
        self.run_id = ""
        self.cancel_on_disconnect = False

    async def follow(self, outbox: Outbox[run_pb2.RunEvent]) -> None:
        carrier = self._request.trace_context if tracing.enabled() else None
        if not carrier:
            await self._follow(outbox)
            return
        # The watch's server span: a child of the client request named in `trace_context`,
        # never of the long-lived call's context.
        span = tracing.start_stream_server_span(
            _METHOD, dict(carrier), {"chorus.watch_id": outbox.key}
        )
        del carrier
        try:
            with tracing.use(span):
                await self._follow(outbox)
        except ChorusError as error:
            self._end_span(span, error.code.name, error.message)
            raise
        except BaseException as exc:  # stopped (the client let it go), or a bug
            cancelled = isinstance(exc, asyncio.CancelledError)
            self._end_span(span, "CANCELLED" if cancelled else "UNKNOWN", repr(exc))
            raise
        self._end_span(span)

    def _end_span(self, span: Span | None, code: str = "OK", message: str = "") -> None:
        if span is not None and self.run_id:
            span.set_attribute("chorus.run.id", self.run_id)
        tracing.end_stream_span(span, code, message)

    async def _follow(self, outbox: Outbox[run_pb2.RunEvent]) -> None:
        request, self._request = self._request, rs.WatchRunsRequest()
        if request.HasField("start"):
            run, _ = await self._manager.create(self.user, request.start)
            self.run_id, after_seq = run.id, 0
            self.cancel_on_disconnect = run.spec.on_disconnect == run_pb2.ON_DISCONNECT_CANCEL
            del run
        else:
            self.run_id, after_seq = request.watch.run_id, request.watch.after_seq
        del request
        put = outbox.put
        first = True  # the next token is the first after other events: it does not wait
        async for event in self._manager.watch(self.user, self.run_id, after_seq):
            if event.WhichOneof("payload") in _TOKENS:
                await put(event, urgent=first)
                first = False
            else:
                await put(event)
                first = True

    def disconnected(self) -> None:
        """The watch was stopped (or its call ended) before the run's end."""
        if self.cancel_on_disconnect:
            self._manager.cancel_on_disconnect(self.user, self.run_id)
