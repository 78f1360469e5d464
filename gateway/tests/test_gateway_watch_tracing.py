"""The trace context a watch carries over the shared WatchRuns call
(`WatchRunsRequest.trace_context`, issue 22 item 1): with tracing on, the opening request
(`start` or `watch`) names the span current where the watch was opened — the client
request's — and a reattach sends the same context again; pause / resume / stop and flow
control carry none; with tracing off, or no span current, the field stays empty.

The orchestrator side is `FakeRuns` of `test_gateway_sse.py` on a real grpc.aio server,
recording every request; the whole path through real services: `tests/test_tracing_e2e.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_gateway_reattach import Sink, abort
from test_gateway_sse import FakeRuns, serving

from chorus.core import tracing
from chorus.core.testing import traced_in_memory, wait_for
from chorus.gateway.watches import RunWatches
from chorus.v1 import run_pb2


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, into memory (off again after it)."""
    with traced_in_memory() as exporter:
        yield exporter


@contextlib.asynccontextmanager
async def watching(servicer: FakeRuns) -> AsyncIterator[RunWatches]:
    """`RunWatches` over a WatchRuns call to `servicer` on a real server; all closed after."""
    server, channel, watches = await serving(servicer)
    try:
        yield watches
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


def opening(servicer: FakeRuns) -> list[str]:
    return [
        str(r.WhichOneof("action"))
        for r in servicer.requests
        if r.WhichOneof("action") in ("start", "watch")
    ]


async def test_with_tracing_off_no_request_carries_a_trace_context() -> None:
    assert not tracing.enabled()
    servicer = FakeRuns(count=5)
    async with watching(servicer) as watches:
        started, followed = Sink(), Sink()
        watches.open(
            started, user="alice", request_id="r1", start=run_pb2.RunSpec(template="assistant")
        )
        watches.open(followed, user="alice", request_id="r2", run_id="r9", after_seq=2)
        await asyncio.wait_for(started.ended.wait(), 20)
        await asyncio.wait_for(followed.ended.wait(), 20)
        assert started.error is None and followed.error is None
        assert sorted(opening(servicer)) == ["start", "watch"]
        assert all(not r.trace_context for r in servicer.requests)


async def test_the_opening_request_names_the_client_requests_span_and_a_reattach_sends_it_again(
    traced: InMemorySpanExporter,
) -> None:
    servicer = FakeRuns(count=40, interval_s=0.01)
    async with watching(servicer) as watches:
        sink = Sink()
        with tracing.span("POST /api/v1/runs/stream", kind=tracing.SPAN_KIND_SERVER) as span:
            assert span is not None
            watches.open(
                sink, user="alice", request_id="req", start=run_pb2.RunSpec(template="duet")
            )
            ctx = span.get_span_context()
        traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        await wait_for(lambda: len(sink.events) >= 3, timeout=20)
        sink_events = len(sink.events)
        # the call breaks: the watch is opened again, outside the request's span
        await abort(servicer, 0, grpc.StatusCode.UNAVAILABLE, "replica going away")
        await asyncio.wait_for(sink.ended.wait(), 20)
        assert sink.error is None and len(sink.events) > sink_events
        assert opening(servicer) == ["start", "watch"]
        for request in servicer.requests:
            if request.WhichOneof("action") in ("start", "watch"):
                assert dict(request.trace_context) == {"traceparent": traceparent}
            else:  # flow control, pause, resume, stop
                assert not request.trace_context, request
        # the gateway itself starts no span for the watch (the orchestrator's is the child)
        assert [s.name for s in traced.get_finished_spans()] == ["POST /api/v1/runs/stream"]


async def test_a_watch_opened_with_no_span_current_carries_no_context(
    traced: InMemorySpanExporter,
) -> None:
    servicer = FakeRuns(count=3)
    async with watching(servicer) as watches:
        sink = Sink()
        watches.open(sink, user="alice", request_id="req", run_id="r1")
        await asyncio.wait_for(sink.ended.wait(), 20)
        assert sink.error is None
        assert opening(servicer) == ["watch"]
        assert all(not r.trace_context for r in servicer.requests)
