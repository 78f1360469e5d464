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
* when the call fails (orchestrator restarted, network) every sink on it ends with that
  error — as each stream's own call would have — and the next `open` makes a new call.

The call is made as the system identity (internal token): each request names the user the
gateway authenticated, and the orchestrator checks that user's access to the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import Counter, Gauge

from chorus.core.flag import Flag
from chorus.core.multiplex import MultiplexClient, Stream, StreamSink, Update
from chorus.v1 import run_pb2, run_service_pb2_grpc
from chorus.v1 import run_service_pb2 as rs

_PAUSE = rs.WatchRunsRequest.Pause()
_RESUME = rs.WatchRunsRequest.Resume()
_STOP = rs.WatchRunsRequest.Stop()


def _updates(response: rs.WatchRunsResponse) -> Iterable[Update]:
    for update in response.updates:
        yield (
            update.watch_id,
            update.events,
            update.status if update.HasField("status") else None,
        )


class Watch:
    """A handle on one watch: pause, resume or stop it (no-ops once it ended)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream[rs.WatchRunsRequest]) -> None:
        self._stream = stream

    @property
    def id(self) -> int:
        """The watch's id on its call."""
        return self._stream.key

    def pause(self) -> None:
        """Stop sending this watch's events until `resume` (its sink is full)."""
        self._stream.send(rs.WatchRunsRequest(watch_id=self._stream.key, pause=_PAUSE))

    def resume(self) -> None:
        """Send this watch's events again, from where they stopped."""
        self._stream.send(rs.WatchRunsRequest(watch_id=self._stream.key, resume=_RESUME))

    def stop(self) -> None:
        """The client left: no more news; a started run follows `spec.on_disconnect`."""
        self._stream.stop(rs.WatchRunsRequest(watch_id=self._stream.key, stop=_STOP))


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
        self._ready = Flag()

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
    """The process's WatchRuns call to the orchestrator, opened on first use.

    Args:
        stub: RunService on the orchestrator's channel.
        metadata: the call's metadata: the system identity and the internal token
            (`ChannelPool.system_metadata`).
    """

    def __init__(
        self, stub: run_service_pb2_grpc.RunServiceStub, metadata: Sequence[tuple[str, str]]
    ) -> None:
        md = list(metadata)
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
        goes to `sink`. Errors (a bad spec, an unknown run, …) come to `sink.end`."""

        def request(watch_id: int) -> rs.WatchRunsRequest:
            out = rs.WatchRunsRequest(watch_id=watch_id, user=user, request_id=request_id or "")
            if start is not None:
                out.start.CopyFrom(start)
            else:
                out.watch.run_id = run_id
                out.watch.after_seq = after_seq
            return out

        return Watch(self._client.open(sink, request))

    def close(self) -> None:
        """Cancel the call (on shutdown; the streams on it end with its error)."""
        self._client.close()


WATCHES = Gauge("chorus_gateway_run_watches", "Runs watched over the WatchRuns call.")
WATCH_CALLS = Counter(
    "chorus_gateway_watch_runs_calls_total",
    "WatchRuns calls opened to the orchestrator (one serves every stream; more than one: "
    "a call failed and was replaced).",
)
