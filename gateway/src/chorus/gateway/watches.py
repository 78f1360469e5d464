"""Every SSE stream of the gateway over one RunService.WatchRuns call to the orchestrator.

One gRPC call per SSE stream costs ~48 KB of memory per live stream and one gRPC message
(~170 µs of CPU, both sides) per event (`bench/bench_grpc_costs.py`); over WatchRuns a
response carries the news of many runs at once and one call serves them all.

* `RunWatches.open` starts a run (as StreamRun) or follows one (as WatchRun) for a sink —
  the SSE stream's buffer (`chorus.gateway.sse`) — under a new watch id, and returns a
  `Watch` handle to pause, resume or stop it;
* one reader task per call hands each update's events to its sink and ends the sink with
  the update's status: None for OK, else `chorus.core.errors.StatusError` carrying the
  orchestrator's `google.rpc.Status` as is (the same error StreamRun / WatchRun returned);
* when the call fails (orchestrator restarted, network) every sink on it ends with that
  error — as each stream's own call would have — and the next `open` makes a new call.

The call is made as the system identity (internal token): each request names the user the
gateway authenticated, and the orchestrator checks that user's access to the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc
from prometheus_client import Counter, Gauge

from chorus.core.errors import StatusError, Unavailable
from chorus.core.logging import get_logger
from chorus.v1 import run_pb2, run_service_pb2_grpc
from chorus.v1 import run_service_pb2 as rs

log = get_logger("chorus.gateway.watches")

WATCH_CALLS = Counter(
    "chorus_gateway_watch_runs_calls_total",
    "WatchRuns calls opened to the orchestrator (one serves every SSE stream; a new one "
    "after a failure).",
)
WATCHES = Gauge("chorus_gateway_run_watches", "Runs watched over WatchRuns calls.")

_PAUSE = rs.WatchRunsRequest.Pause()
_RESUME = rs.WatchRunsRequest.Resume()
_STOP = rs.WatchRunsRequest.Stop()


class WatchSink(Protocol):
    """Where a watch's news goes (the SSE stream's buffer)."""

    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        """The watch's next events, in seq order."""

    def end(self, error: BaseException | None) -> None:
        """The watch ended: None after the terminal event (or nothing left to send), else
        why (`StatusError`, `grpc.aio.AioRpcError`, `Unavailable`)."""


class _Call:
    """One WatchRuns call and the watches opened on it."""

    def __init__(
        self, stub: run_service_pb2_grpc.RunServiceStub, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self.sinks: dict[int, WatchSink] = {}
        self.broken = False
        self._requests: asyncio.Queue[rs.WatchRunsRequest | None] = asyncio.Queue()
        self._call = stub.WatchRuns(self._outgoing(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())
        WATCH_CALLS.inc()

    def send(self, request: rs.WatchRunsRequest) -> None:
        if not self.broken:
            self._requests.put_nowait(request)

    def stop(self, watch_id: int) -> None:
        if self.sinks.pop(watch_id, None) is not None:
            WATCHES.dec()
            self.send(rs.WatchRunsRequest(watch_id=watch_id, stop=_STOP))

    async def _outgoing(self) -> AsyncIterator[rs.WatchRunsRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        error: BaseException = Unavailable(
            "the orchestrator ended the run event stream", reason="WATCH_STREAM_ENDED"
        )
        sinks = self.sinks
        try:
            async for response in self._call:
                for update in response.updates:
                    sink = sinks.get(update.watch_id)
                    if sink is None:  # stopped meanwhile
                        continue
                    if update.events:
                        sink.deliver(update.events)
                    if update.HasField("status"):
                        del sinks[update.watch_id]
                        WATCHES.dec()
                        sink.end(StatusError(update.status) if update.status.code else None)
        except grpc.aio.AioRpcError as exc:
            error = exc
        finally:
            self.broken = True
            if sinks:
                code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
                log.warning(
                    "watch_runs_call_ended",
                    code=getattr(code, "name", "OK"),
                    watches=len(sinks),
                )
                WATCHES.dec(len(sinks))
            ended, self.sinks = list(sinks.values()), {}
            for sink in ended:
                sink.end(error)

    def close(self) -> None:
        self.broken = True
        self._requests.put_nowait(None)
        self._call.cancel()


class Watch:
    """A handle on one watch: pause, resume or stop it (no-ops once it ended)."""

    __slots__ = ("_call", "id")

    def __init__(self, call: _Call, watch_id: int) -> None:
        self._call = call
        self.id = watch_id

    def pause(self) -> None:
        """Stop sending this watch's events until `resume` (its sink is full)."""
        if self.id in self._call.sinks:
            self._call.send(rs.WatchRunsRequest(watch_id=self.id, pause=_PAUSE))

    def resume(self) -> None:
        """Send this watch's events again, from where they stopped."""
        if self.id in self._call.sinks:
            self._call.send(rs.WatchRunsRequest(watch_id=self.id, resume=_RESUME))

    def stop(self) -> None:
        """The client left: no more news; a started run follows `spec.on_disconnect`."""
        self._call.stop(self.id)


class RunWatches:
    """The process's WatchRuns call to the orchestrator, opened on first use.

    Args:
        stub: RunService on the orchestrator's channel.
        metadata: the call's metadata: the system identity and the internal token
            (`ChannelPool.system_metadata`).
    """

    def __init__(
        self, stub: run_service_pb2_grpc.RunServiceStub, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self._stub = stub
        self._metadata = list(metadata)
        self._call: _Call | None = None
        self._last_id = 0

    def open(
        self,
        sink: WatchSink,
        *,
        user: str,
        request_id: str | None,
        start: run_pb2.RunSpec | None = None,
        run_id: str = "",
        after_seq: int = 0,
    ) -> Watch:
        """Start a run (`start`) or follow `run_id` after `after_seq` for `user`; the news
        goes to `sink`. Errors (a bad spec, an unknown run, …) come to `sink.end`."""
        call = self._call
        if call is None or call.broken:
            call = self._call = _Call(self._stub, self._metadata)
        self._last_id += 1
        watch_id = self._last_id
        call.sinks[watch_id] = sink
        WATCHES.inc()
        request = rs.WatchRunsRequest(watch_id=watch_id, user=user, request_id=request_id or "")
        if start is not None:
            request.start.CopyFrom(start)
        else:
            request.watch.run_id = run_id
            request.watch.after_seq = after_seq
        call.send(request)
        return Watch(call, watch_id)

    def close(self) -> None:
        """Cancel the call (on shutdown; the streams on it end with its error)."""
        if self._call is not None:
            self._call.close()
            self._call = None
