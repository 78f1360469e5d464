"""RunService.WatchRuns: many runs' events over one bidirectional call.

A relay of many runs (the gateway) would otherwise hold one StreamRun / WatchRun call per
run and receive one gRPC message per event — at ~170 µs of CPU per grpc.aio message
(`bench/bench_grpc_costs.py`) and ~48 KB per live call, the largest cost of many slow
streams. Here one call carries every watch of its client:

* each request opens a watch (`start`: a run started as by StreamRun; `watch`: an existing
  run followed as by WatchRun), or pauses, resumes or stops one, by the client's `watch_id`;
* a follower task per watch reads `RunManager.watch` (the same per-run stream StreamRun
  and WatchRun serve: memory, history-svc catch-up, the terminal event last) into the
  watch's outbox;
* one sender gathers the outboxes of every watch with news into one response each time it
  runs: under load the event loop runs many followers between two sends, so messages carry
  many runs' events; when idle, an event goes out in a response of its own at once (no
  added wait).

Flow control: a watch holds at most `WATCH_BUFFER_EVENTS` unsent events, then its
follower waits (the run's log keeps the rest, history-svc beyond it); the client pauses a
watch whose consumer is slow and resumes it later, and gRPC's own flow control slows the
whole call when the client reads slowly.

A watch ends with an update whose `status` is OK after its terminal event, or the error
StreamRun / WatchRun would have returned (`ChorusError.to_status`); that error ends the
watch only. Requests that break the protocol (no `watch_id`, no action, an id already
open) end the call with INVALID_ARGUMENT. A started run whose watch is stopped, or whose
call ends before its terminal event, follows `spec.on_disconnect`, as with StreamRun.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import structlog
from google.rpc import status_pb2

from chorus.core import identity
from chorus.core.errors import (
    ChorusError,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from chorus.core.logging import get_logger
from chorus.orchestrator.manager import RunManager
from chorus.v1 import run_pb2
from chorus.v1 import run_service_pb2 as rs

log = get_logger("chorus.orchestrator.watches")

WATCH_BUFFER_EVENTS = 256
"""Unsent events one watch may hold before its follower waits for the sender."""
MAX_EVENTS_PER_RESPONSE = 4096
"""Most events in one response (~0.5–1 MB); the rest go in the next one."""
MAX_WATCHES_PER_CALL = 100_000
"""Most watches open at once on one call; more end at once with RESOURCE_EXHAUSTED."""

_OK = status_pb2.Status(code=0)
_Update = rs.WatchRunsResponse.Update


class _Watch:
    """One watch of a call: its follower task and the events not yet sent."""

    __slots__ = ("cancel_on_disconnect", "events", "id", "paused", "run_id", "status", "user")

    def __init__(self, watch_id: int, user: str) -> None:
        self.id = watch_id
        self.user = user
        self.run_id = ""
        self.cancel_on_disconnect = False
        self.events: list[run_pb2.RunEvent] = []
        self.status: status_pb2.Status | None = None
        """Set when the watch ended: its last update carries it."""
        self.paused = False


class WatchRunsCall:
    """The server side of one RunService.WatchRuns call.

    Args:
        manager: the replica's runs.
        caller: the call's identity; only the system identity may act for `request.user`.
    """

    def __init__(self, manager: RunManager, caller: identity.Identity) -> None:
        self._manager = manager
        self._caller = caller
        self._watches: dict[int, _Watch] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._news: dict[int, _Watch] = {}  # watches with unsent events or status, in order
        self._space: dict[int, asyncio.Future[None]] = {}  # followers waiting to append
        self._wake = asyncio.Event()
        self._requests_done = False
        self._fatal: ChorusError | None = None

    async def serve(
        self, requests: AsyncIterator[rs.WatchRunsRequest]
    ) -> AsyncIterator[rs.WatchRunsResponse]:
        """The call's responses until the client half-closed and every watch ended.

        Raises:
            InvalidArgument: a request broke the protocol (the call ends).
        """
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._news:
                    yield self._response()
                    continue
                if self._requests_done and not self._watches:
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            reader.cancel()
            for watch_id in list(self._tasks):
                self._stop(watch_id)

    # ------------------------------------------------------------------ requests
    async def _read(self, requests: AsyncIterator[rs.WatchRunsRequest]) -> None:
        try:
            async for request in requests:
                self._handle(request)
        except ChorusError as exc:
            self._fatal = exc
        except Exception as exc:  # the client went away mid-request; the call is ending
            log.debug("watch_runs_requests_ended", error_type=type(exc).__name__)
        finally:
            self._requests_done = True
            self._wake.set()

    def _handle(self, request: rs.WatchRunsRequest) -> None:
        watch_id = request.watch_id
        action = request.WhichOneof("action")
        if watch_id <= 0:
            raise InvalidArgument("watch_id must be greater than 0", [("watch_id", "must be > 0")])
        if action is None:
            raise InvalidArgument(
                "one of start, watch, pause, resume, stop is required", [("action", "required")]
            )
        if action == "stop":
            self._stop(watch_id)
        elif action == "pause":
            watch = self._watches.get(watch_id)
            if watch is not None:
                watch.paused = True
                self._news.pop(watch_id, None)  # held until resumed
        elif action == "resume":
            watch = self._watches.get(watch_id)
            if watch is not None and watch.paused:
                watch.paused = False
                if watch.events or watch.status is not None:
                    self._news[watch_id] = watch
                    self._wake.set()
                self._release(watch_id)
        else:
            if watch_id in self._watches:
                raise InvalidArgument(
                    f"watch {watch_id} is already open on this call",
                    [("watch_id", "already open")],
                )
            self._open(watch_id, request)

    def _open(self, watch_id: int, request: rs.WatchRunsRequest) -> None:
        caller = self._caller
        watch = _Watch(watch_id, request.user or caller.user)
        self._watches[watch_id] = watch
        error: ChorusError | None = None
        if caller.is_system and not request.user:
            error = InvalidArgument(
                "user is required on a call made as the system identity",
                [("user", "required")],
            )
        elif not caller.is_system and request.user not in ("", caller.user):
            error = PermissionDenied("only the system identity may watch for another user")
        elif len(self._tasks) >= MAX_WATCHES_PER_CALL:
            error = ResourceExhausted(
                f"at most {MAX_WATCHES_PER_CALL} watches may be open on one call"
            )
        if error is not None:
            self._end(watch, error.to_status(request.request_id or None))
            return
        task = asyncio.create_task(self._follow(watch, request))
        self._tasks[watch_id] = task
        task.add_done_callback(functools.partial(self._followed, watch_id))

    def _followed(self, watch_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(watch_id) is task:
            del self._tasks[watch_id]

    def _stop(self, watch_id: int) -> None:
        """The client let the watch go (or the call ended): no more updates for it."""
        watch = self._watches.pop(watch_id, None)
        self._news.pop(watch_id, None)
        task = self._tasks.pop(watch_id, None)
        if task is not None and not task.done():
            task.cancel()
        if watch is not None and watch.status is None and watch.cancel_on_disconnect:
            self._manager.cancel_on_disconnect(watch.user, watch.run_id)

    # ------------------------------------------------------------------ followers
    async def _follow(self, watch: _Watch, request: rs.WatchRunsRequest) -> None:
        request_id = request.request_id or identity.current_request_id()
        identity.set_request_id(request_id)
        identity.set_identity(identity.Identity(watch.user, self._caller.authenticated_by))
        structlog.contextvars.bind_contextvars(request_id=request_id, user=watch.user)
        try:
            if request.HasField("start"):
                run, _ = await self._manager.create(watch.user, request.start)
                watch.run_id, after_seq = run.id, 0
                watch.cancel_on_disconnect = run.spec.on_disconnect == run_pb2.ON_DISCONNECT_CANCEL
                del run
            else:
                watch.run_id, after_seq = request.watch.run_id, request.watch.after_seq
            events = watch.events
            async for event in self._manager.watch(watch.user, watch.run_id, after_seq):
                events.append(event)
                if not watch.paused and watch.id not in self._news:
                    self._news[watch.id] = watch
                    self._wake.set()
                if watch.paused or len(events) >= WATCH_BUFFER_EVENTS:
                    await self._wait_space(watch)
            self._end(watch, _OK)
        except asyncio.CancelledError:
            raise
        except ChorusError as exc:
            self._end(watch, exc.to_status(request_id))
        except Exception as exc:
            log.exception("watch_failed", run_id=watch.run_id, error_type=type(exc).__name__)
            self._end(watch, Internal(f"internal error (request id {request_id})").to_status())

    async def _wait_space(self, watch: _Watch) -> None:
        """Until the watch is resumed and its outbox was sent."""
        while watch.paused or len(watch.events) >= WATCH_BUFFER_EVENTS:
            waiter = asyncio.get_running_loop().create_future()
            self._space[watch.id] = waiter
            try:
                await waiter
            finally:
                self._space.pop(watch.id, None)

    def _release(self, watch_id: int) -> None:
        waiter = self._space.get(watch_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, watch: _Watch, status: status_pb2.Status) -> None:
        watch.status = status
        if not watch.paused:
            self._news[watch.id] = watch
            self._wake.set()

    # ------------------------------------------------------------------ sending
    def _response(self) -> rs.WatchRunsResponse:
        """One response of the news gathered so far (at most MAX_EVENTS_PER_RESPONSE events);
        watches left with events stay in the news for the next one."""
        updates = []
        budget = MAX_EVENTS_PER_RESPONSE
        news = self._news
        while news and budget > 0:
            watch_id = next(iter(news))
            watch = news[watch_id]
            events = watch.events
            if len(events) > budget:
                update = _Update(watch_id=watch_id, events=events[:budget])
                del events[:budget]  # the list stays the follower's: emptied, never replaced
                budget = 0
            else:
                update = _Update(watch_id=watch_id, events=events)
                budget -= len(events)
                events.clear()
                del news[watch_id]
                if watch.status is not None:
                    update.status.CopyFrom(watch.status)
                    self._watches.pop(watch_id, None)
            updates.append(update)
            self._release(watch_id)
        return rs.WatchRunsResponse(updates=updates)
