"""chorus.core.tracing: off by default at no cost, configured by OTEL_* only; RPC spans on
real grpc.aio servers and channels; per-stream spans; trace ids on log lines."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chorus.core import identity, tracing
from chorus.core.channels import ChannelPool
from chorus.core.server import GrpcServer
from chorus.core.testing import traced_in_memory
from chorus.v1 import provider_service_pb2 as pb
from chorus.v1 import provider_service_pb2_grpc as pbg

from .conftest import AUTH, TOKEN

PROBE = """
import json, sys, threading
from chorus.core import tracing
import chorus.core.server, chorus.core.channels
on = tracing.configure("probe", instance_id="probe-1")
provider = tracing.provider()
print(json.dumps({
    "enabled": on,
    "sdk_loaded": any(m.startswith("opentelemetry.sdk") for m in sys.modules),
    "threads": [t.name for t in threading.enumerate()],
    "server_interceptors": len(tracing.server_interceptors()),
    "client_interceptors": len(tracing.client_interceptors()),
    "resource": dict(provider.resource.attributes) if provider else None,
}))
"""


def probe(**otel: str) -> dict:
    """`tracing.configure` in a fresh process whose only OTEL_* variables are `otel`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "otel",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SERVICE_NAME": "x"},
    ],
)
def test_off_unless_an_exporter_is_named_no_sdk_no_thread_no_interceptor(otel):
    state = probe(**otel)
    assert state["enabled"] is False
    assert state["sdk_loaded"] is False
    assert not [t for t in state["threads"] if "Otel" in t]
    assert state["server_interceptors"] == 0 and state["client_interceptors"] == 0


def test_on_with_otlp_one_batch_exporter_thread_and_the_chorus_service_name():
    state = probe(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert state["enabled"] is True
    assert len([t for t in state["threads"] if t.startswith("OtelBatchSpan")]) == 1
    assert state["server_interceptors"] == 1 and state["client_interceptors"] == 2
    resource = state["resource"]
    assert resource["service.name"] == "chorus-probe"
    assert resource["service.namespace"] == "chorus"
    assert resource["service.instance.id"] == "probe-1"


def test_otel_service_name_and_resource_attributes_win():
    state = probe(
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="my-orchestrator",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=staging",
    )
    assert state["resource"]["service.name"] == "my-orchestrator"
    assert state["resource"]["deployment.environment.name"] == "staging"


def test_exporter_names_follow_otel_traces_exporter():
    assert tracing.exporter_names({}) == []
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": " OTLP , console "}) == [
        "otlp",
        "console",
    ]
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp,none"}) == []
    assert (
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}) == []
    )


@pytest.mark.parametrize(
    "otel, message",
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "no span exporter 'zipkin' installed"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            "unsupported OTLP protocol",
        ),
    ],
)
def test_a_service_with_an_unusable_exporter_exits_2_with_one_clear_line(otel, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHORUS_"))}
    env.update(otel, CHORUS_DEV_MODE="true", CHORUS_PROVIDER_PORT="0", CHORUS_LOG_JSON="true")
    done = subprocess.run(
        [sys.executable, "-m", "chorus.provider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "configuration_error" in done.stderr and message in done.stderr
    assert "listening" not in done.stderr


# ------------------------------------------------------------------------- in process
@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, into memory (off again after it)."""
    with traced_in_memory() as exporter:
        yield exporter


@pytest.fixture
async def traced_chain(
    spans: InMemorySpanExporter, settings
) -> AsyncIterator[tuple[grpc.aio.Channel, RecordingServer]]:
    """client → front (GrpcServer) → back (GrpcServer), every piece built with tracing on."""
    from .conftest import RecordingProvider, Relay, provider_grpc_server

    back = provider_grpc_server(RecordingProvider(), settings)
    await back.start()
    pool = ChannelPool(settings)
    front = provider_grpc_server(Relay(pool, back.address), settings)
    await front.start()
    channel = grpc.aio.insecure_channel(front.address, interceptors=tracing.client_interceptors())
    try:
        yield channel, front
    finally:
        await channel.close()
        await front.stop(0)
        await back.stop(0)
        await pool.close()


RecordingServer = GrpcServer


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


async def test_each_hop_is_a_client_span_with_the_next_server_span_as_its_child(
    traced_chain, spans
):
    channel, _ = traced_chain
    with tracing.span("caller") as caller:
        assert caller is not None
        await pbg.ProviderServiceStub(channel).ListModels(
            pb.ListModelsRequest(provider="ok"), metadata=AUTH, timeout=10
        )
    got = spans.get_finished_spans()
    names = [(s.name, s.kind) for s in got]
    method = "/chorus.v1.ProviderService/ListModels"
    assert names.count((method, trace.SpanKind.CLIENT)) == 2  # test → front, front → back
    assert names.count((method, trace.SpanKind.SERVER)) == 2
    assert len({s.context.trace_id for s in got}) == 1
    by_id = {s.context.span_id: s for s in got}
    # caller → client → front server → front's client → back server
    chain = [s for s in got if s.name == method]
    back_server = next(
        s
        for s in chain
        if s.kind == trace.SpanKind.SERVER
        and by_id[s.parent.span_id].parent.span_id != caller.get_span_context().span_id
    )
    front_client = by_id[back_server.parent.span_id]
    front_server = by_id[front_client.parent.span_id]
    test_client = by_id[front_server.parent.span_id]
    assert (front_client.kind, front_server.kind, test_client.kind) == (
        trace.SpanKind.CLIENT,
        trace.SpanKind.SERVER,
        trace.SpanKind.CLIENT,
    )
    assert test_client.parent.span_id == caller.get_span_context().span_id
    for s in chain:
        assert s.attributes["rpc.system"] == "grpc"
        assert s.attributes["rpc.service"] == "chorus.v1.ProviderService"
        assert s.attributes["rpc.method"] == "ListModels"
        assert s.attributes["rpc.grpc.status_code"] == 0


async def test_a_failed_rpc_marks_its_spans_failed_with_the_grpc_code(traced_chain, spans):
    channel, _ = traced_chain
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pbg.ProviderServiceStub(channel).ListModels(
            pb.ListModelsRequest(provider="missing"), metadata=AUTH, timeout=10
        )
    # The back service answers NOT_FOUND; the relay does not map it, so the front's is INTERNAL.
    assert err.value.code() == grpc.StatusCode.INTERNAL
    servers = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert sorted(s.attributes["rpc.grpc.status_code"] for s in servers) == [
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INTERNAL.value[0],
    ]
    # The semantic conventions: a server span is an error for server faults only.
    status = {s.attributes["rpc.grpc.status_code"]: s.status.status_code for s in servers}
    assert status[grpc.StatusCode.INTERNAL.value[0]] == trace.StatusCode.ERROR
    assert status[grpc.StatusCode.NOT_FOUND.value[0]] == trace.StatusCode.UNSET


async def test_server_streaming_calls_are_traced_through_the_pool(traced_chain, spans):
    channel, _ = traced_chain
    items = [
        r
        async for r in pbg.ProviderServiceStub(channel).StreamChat(
            pb.StreamChatRequest(), metadata=AUTH
        )
    ]
    assert [i.text_delta.text for i in items] == ["0", "1", "2"]
    method = "/chorus.v1.ProviderService/StreamChat"
    got = [s for s in spans.get_finished_spans() if s.name == method]
    assert sorted(s.kind.name for s in got) == ["CLIENT", "CLIENT", "SERVER", "SERVER"]
    assert len({s.context.trace_id for s in got}) == 1


async def test_health_checks_are_not_traced(traced_chain, spans):
    channel, _ = traced_chain
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert spans.get_finished_spans() == ()


async def test_background_calls_are_traced_only_inside_a_trace(traced_chain, spans):
    """The services' own calls outside any request (heartbeats, lease sweeps: identity
    `system`, no current span) start no trace on any hop; inside a trace they are traced."""
    channel, _ = traced_chain
    stub = pbg.ProviderServiceStub(channel)
    system = ((identity.USER_KEY, identity.SYSTEM_USER), (identity.TOKEN_KEY, TOKEN))
    request = pb.ListModelsRequest(provider="ok")
    await stub.ListModels(request, metadata=system, timeout=10)
    assert spans.get_finished_spans() == ()
    await stub.ListModels(request, metadata=AUTH, timeout=10)  # a user's: traced
    assert len(spans.get_finished_spans()) == 4
    spans.clear()
    with tracing.span("sweep"):
        await stub.ListModels(request, metadata=system, timeout=10)
    kinds = sorted(s.kind.name for s in spans.get_finished_spans() if s.name != "sweep")
    assert kinds == ["CLIENT", "CLIENT", "SERVER", "SERVER"]


async def test_nothing_is_intercepted_when_off(settings):
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    assert tracing.start_span("x") is None
    assert tracing.start_stream_client_span("/a.B/C", {}) is None
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    assert carrier == {}


def test_stream_spans_carry_the_context_in_the_request_not_the_call(spans):
    carrier: dict[str, str] = {}
    with tracing.span("turn") as turn:
        client = tracing.start_stream_client_span("/chorus.v1.ProviderService/StreamChats", carrier)
    assert client is not None and turn is not None
    assert carrier["traceparent"].split("-")[2] == _hex(client.get_span_context().span_id)
    with tracing.span("the long-lived call"):  # must not become the stream's parent
        server = tracing.start_stream_server_span(
            "/chorus.v1.ProviderService/StreamChats", carrier, {"chorus.stream_id": 7}
        )
        orphan = tracing.start_stream_server_span("/chorus.v1.ProviderService/StreamChats", {})
    tracing.end_stream_span(server)
    tracing.end_stream_span(orphan, "CANCELLED", "client cancelled")
    tracing.end_stream_span(client)
    got = {s.context.span_id: s for s in spans.get_finished_spans()}
    server_span = got[server.get_span_context().span_id]
    assert server_span.parent.span_id == client.get_span_context().span_id
    assert server_span.kind == trace.SpanKind.SERVER
    assert server_span.attributes["rpc.service"] == "chorus.v1.ProviderService"
    assert server_span.attributes["rpc.method"] == "StreamChats"
    assert server_span.attributes["chorus.stream_id"] == 7
    orphan_span = got[orphan.get_span_context().span_id]
    assert orphan_span.parent is None  # a new trace, not the call's
    assert orphan_span.status.status_code == trace.StatusCode.ERROR
    assert orphan_span.attributes["error.type"] == "CANCELLED"


def test_log_lines_carry_the_current_trace_and_span_ids(spans):
    assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with tracing.span("work") as work:
        assert work is not None
        line = tracing.add_trace_ids(None, "info", {"event": "x"})
    ctx = work.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == _hex(ctx.span_id)


def test_log_lines_carry_no_ids_when_off():
    with trace.use_span(trace.NonRecordingSpan(trace.SpanContext(1, 2, False))):
        assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


async def test_iterate_with_makes_the_span_current_for_the_producer_only(spans):
    seen: list[str] = []

    async def produce() -> AsyncIterator[int]:
        for i in range(2):
            seen.append(f"producer {trace.get_current_span().is_recording()}")
            yield i

    outer = tracing.start_span("turn")
    got = []
    async for item in tracing.iterate_with(outer, produce()):
        seen.append(f"consumer {trace.get_current_span().is_recording()}")
        got.append(item)
    tracing.end_span(outer)
    assert got == [0, 1]
    assert seen == ["producer True", "consumer False"] * 2


def test_an_exception_leaving_a_span_marks_it_failed(spans):
    with pytest.raises(ValueError), tracing.span("tool"):
        raise ValueError("bad arguments")
    with pytest.raises(asyncio.CancelledError), tracing.span("cancelled"):
        raise asyncio.CancelledError()
    failed, cancelled = spans.get_finished_spans()
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.attributes["error.type"] == "ValueError"
    assert [e.name for e in failed.events] == ["exception"]
    assert cancelled.attributes["error.type"] == "cancelled" and not cancelled.events


def test_a_link_to_a_stored_context(spans):
    with tracing.span("first execution") as first:
        carrier = tracing.carrier_of()
    links = tracing.link_to(carrier, **{"chorus.link": "resumed_from"})
    assert [link.context.span_id for link in links] == [first.get_span_context().span_id]
    assert tracing.link_to({}) == []
    assert tracing.link_to({"traceparent": "garbage"}) == []
