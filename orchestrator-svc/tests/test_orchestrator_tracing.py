"""Tracing of runs (issue 22 item 1): a run handed over by a stopping replica and resumed by
another continues its trace — the new execution's run span is a child of the interrupted
execution's and linked to it, through the trace context stored in the run's checkpoint.

The first replica is a child process exporting to a real OTLP/gRPC receiver; the stack's
replica (this process) traces into memory."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from orchestrator_helpers import (
    RunClient,
    Stack,
    duet,
    orchestrator_process,
    paced_duet,
    read_until,
    spec,
)
from test_orchestrator_watch_runs import WatchRunsClient

from chorus.core.otlp_receiver import OtlpReceiver
from chorus.core.testing import traced_in_memory, wait_for
from chorus.v1 import run_pb2
from chorus.v1 import run_service_pb2 as rs


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with traced_in_memory() as exporter:
        yield exporter


async def test_a_handed_over_run_continues_its_trace_on_the_replica_that_resumes_it(
    stack: Stack, alice: RunClient, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        async with orchestrator_process(stack, grace_period_s=30) as (proc, channel):
            first = RunClient(channel, alice.user)
            run = await first.create(spec(team_spec=paced_duet()))
            # A delta of the second turn: the first turn's checkpoint is stored by then.
            await read_until(
                first.watch_call(run.id),
                lambda e: e.HasField("text_delta") and e.agent == "Blaise",
            )
            proc.terminate(signal.SIGTERM)  # hands the run over at the turn boundary
            assert await asyncio.to_thread(proc.proc.wait, 30) == 0
        await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)

        # The first execution's run span, exported by the stopped replica.
        def handed_over(got: list) -> bool:
            return any(
                s.attributes.get("chorus.run.id") == run.id
                and s.attributes.get("chorus.run.status") == "HANDED_OFF"
                for s in got
            )

        old = next(
            s
            for s in receiver.wait_for(handed_over, timeout=30)
            if s.attributes.get("chorus.run.id") == run.id
        )
    assert old.service == "chorus-orchestrator"
    assert old.attributes["chorus.run.attempt"] == 1

    def resumed_span() -> trace.Span | None:
        return next(
            (s for s in spans.get_finished_spans() if s.attributes.get("chorus.run.id") == run.id),
            None,
        )

    new = await wait_for(resumed_span, timeout=10)
    assert new.attributes["chorus.run.attempt"] == 2
    assert new.attributes["chorus.run.resume_reason"] == "HANDOFF"
    assert new.attributes["chorus.run.status"] == "COMPLETED"
    # Same trace, child of the interrupted execution's span, and linked to it.
    assert format(new.context.trace_id, "032x") == old.trace_id
    assert format(new.parent.span_id, "016x") == old.span_id
    assert [format(link.context.span_id, "016x") for link in new.links] == [old.span_id]
    # The resumed execution's turns are its children.
    turns = [s for s in spans.get_finished_spans() if s.name.startswith("invoke_agent ")]
    assert turns and all(t.parent.span_id == new.context.span_id for t in turns)


WATCH_SPAN = "chorus.v1.RunService/WatchRuns"


async def test_a_watch_carrying_a_trace_context_is_served_under_a_span_of_its_own(
    stack: Stack, alice: RunClient, spans: InMemorySpanExporter
) -> None:
    """WatchRunsRequest.trace_context: the watch's SERVER span is a child of the context it
    names and the run its `start` begins is under it; a watch that fails ends its span with
    its status; a watch without the field gets no span (its run's trace starts at the run)."""
    caller_trace, caller_span = "a" * 32, "b" * 16
    carrier = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
    watches = WatchRunsClient(stack)
    try:
        await watches.send(
            1, user=alice.user, start=spec(team_spec=duet(turns=1)), trace_context=carrier
        )
        await watches.send(
            2,
            user=alice.user,
            watch=rs.WatchRunRequest(run_id=str(uuid.uuid4())),
            trace_context=carrier,
        )
        await watches.send(3, user=alice.user, start=spec(team_spec=duet(turns=1)))
        await watches.until_ended(1, 2, 3)
    finally:
        watches.call.cancel()
    assert [watches.status[w].code for w in (1, 2, 3)] == [0, 5, 0]
    traced_run, untraced_run = watches.events[1][0].run_id, watches.events[3][0].run_id

    def run_span(run_id: str) -> ReadableSpan | None:
        return next(
            (
                s
                for s in spans.get_finished_spans()
                if s.name.startswith("run ") and s.attributes["chorus.run.id"] == run_id
            ),
            None,
        )

    def finished() -> bool:
        names = [s.name for s in spans.get_finished_spans()]
        return names.count(WATCH_SPAN) >= 2 and bool(run_span(traced_run))

    await wait_for(lambda: finished() and run_span(untraced_run), timeout=30)
    watch_spans = sorted(
        (s for s in spans.get_finished_spans() if s.name == WATCH_SPAN),
        key=lambda s: s.attributes["chorus.watch_id"],
    )
    assert [s.attributes["chorus.watch_id"] for s in watch_spans] == [1, 2]  # none for 3
    ok, missing = watch_spans
    for span in watch_spans:
        assert span.kind == trace.SpanKind.SERVER
        assert span.parent is not None
        assert format(span.parent.trace_id, "032x") == caller_trace
        assert format(span.parent.span_id, "016x") == caller_span
        assert span.attributes["rpc.service"] == "chorus.v1.RunService"
        assert span.attributes["rpc.method"] == "WatchRuns"
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert ok.attributes["chorus.run.id"] == traced_run
    assert ok.status.status_code == trace.StatusCode.UNSET
    assert missing.attributes["rpc.grpc.status_code"] == 5
    assert missing.attributes["error.type"] == "NOT_FOUND"
    assert missing.status.status_code == trace.StatusCode.ERROR
    traced = run_span(traced_run)
    assert traced is not None and traced.parent is not None
    assert traced.parent.span_id == ok.context.span_id
    untraced = run_span(untraced_run)
    assert untraced is not None and untraced.parent is None
    assert format(untraced.context.trace_id, "032x") != caller_trace


async def test_a_run_lost_before_its_first_checkpoint_continues_its_first_trace(
    stack: Stack, alice: RunClient, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22: the run record carries the first execution's trace context
    (`Run.trace_context`), so a replica resuming a run that never reached a checkpoint
    continues its trace instead of starting a new one."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with orchestrator_process(stack) as (proc, channel):
            first = RunClient(channel, alice.user)
            run = await first.create(spec(team_spec=paced_duet()))
            # The first turn under way: no checkpoint stored yet.
            await read_until(first.watch_call(run.id), lambda e: e.HasField("text_delta"))
            proc.terminate(signal.SIGKILL)
            await asyncio.to_thread(proc.proc.wait, 30)
    traceparent = run.trace_context["traceparent"]
    trace_id = traceparent.split("-")[1]
    done = await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    assert done.trace_context["traceparent"] == traceparent

    def resumed_span() -> trace.Span | None:
        return next(
            (s for s in spans.get_finished_spans() if s.attributes.get("chorus.run.id") == run.id),
            None,
        )

    new = await wait_for(resumed_span, timeout=10)
    assert new.attributes["chorus.run.resume_reason"] == "OWNER_LOST"
    assert format(new.context.trace_id, "032x") == trace_id
    assert format(new.parent.span_id, "016x") == traceparent.split("-")[2]
