"""Tracing end to end (issue 22 item 1): the stack started as `make run` starts it
(`python -m chorus.cli.stack`, embedded storage, the simulator), exporting to a real
OTLP/gRPC receiver started by the test (`OTEL_SERVICE_NAME=chorus`, which the launcher
turns into one name per service); one run through the gateway's REST API.

With `OTEL_TRACES_EXPORTER=otlp`: the run is one trace rooted at the gateway's HTTP request,
with spans of all four services, each gRPC hop a client span whose child is the next
service's server span, the run / turn / tool / model-call spans under them, and the model
call's GenAI attributes carrying the simulator's usage. A run started over SSE or the
OpenAI-compatible API (the shared WatchRuns call, `WatchRunsRequest.trace_context`) is one
trace too, from the HTTP request through the orchestrator's watch and run spans to
provider-svc's model call. With it unset:
nothing is exported, whichever way the run was started.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import websockets

from chorus.core.otlp_receiver import OtlpReceiver, ReceivedSpan
from chorus.core.testing import free_port

from .conftest import launch_stack, stop_stack_process

pytestmark = pytest.mark.e2e

SERVICES = ("chorus-gateway", "chorus-orchestrator", "chorus-provider", "chorus-history")
WATCH_SPAN = "chorus.v1.RunService/WatchRuns"
"""The orchestrator's span of one watch on the shared WatchRuns call."""


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    lines: list[str]
    gateway: str


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def start_stack(tmp: str, otel: dict[str, str]) -> Stack:
    ports = {n: free_port() for n in ("provider", "history", "orchestrator", "gateway")}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_")
        and k not in ("CHORUS_INTERNAL_TOKEN", "CHORUS_OPENAI_API_KEY", "CHORUS_ANTHROPIC_API_KEY")
    }
    env.update(
        {
            "CHORUS_DATABASE_URL": "",
            "CHORUS_REDIS_URL": "",
            "CHORUS_DATA_DIR": tmp,
            "CHORUS_GRACE_PERIOD_S": "5",
            "CHORUS_LOG_JSON": "true",
            "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "2000",
            **{f"CHORUS_{n.upper()}_PORT": str(p) for n, p in ports.items()},
            **otel,
        }
    )
    proc, lines = launch_stack(env, 120)
    assert any("all services SERVING" in line for line in lines), "\n".join(lines[-40:])
    return Stack(proc, lines, f"http://127.0.0.1:{ports['gateway']}")


def stop_stack(stack: Stack) -> None:
    stop_stack_process(stack.proc)


@pytest.fixture(scope="module")
def traced_stack(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = start_stack(
        str(tmp_path_factory.mktemp("traced")),
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            # one name for the whole stack: the launcher gives each service its own
            # (`chorus-gateway`, …, as `SERVICES` expects)
            "OTEL_SERVICE_NAME": "chorus",
        },
    )
    try:
        yield stack
    finally:
        stop_stack(stack)


def run_to_completion(gateway: str, spec: dict[str, object]) -> tuple[dict, list[dict]]:
    """Start a run over REST, wait for its end; (the run, its events from the SSE replay)."""
    with httpx.Client(base_url=gateway, timeout=60) as client:
        created = client.post("/api/v1/runs", json=spec)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            run = client.get(f"/api/v1/runs/{run_id}").json()
            if run["status"] not in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING"):
                break
            assert time.monotonic() < deadline, run
            time.sleep(0.1)
        events: list[dict] = []
        with client.stream("GET", f"/api/v1/runs/{run_id}/events") as sse:
            for line in sse.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
    return run, events


def stream_run(
    gateway: str, spec: dict[str, object], headers: dict[str, str] | None = None
) -> list[dict]:
    """Start a run with `POST /api/v1/runs/stream` (SSE) and read it to its end; its events."""
    with (
        httpx.Client(base_url=gateway, timeout=120) as client,
        client.stream("POST", "/api/v1/runs/stream", json=spec, headers=headers) as sse,
    ):
        assert sse.status_code == 200, sse.read()
        return [json.loads(line[5:]) for line in sse.iter_lines() if line.startswith("data:")]


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


BACKGROUND_RPCS = {
    "/chorus.v1.HistoryService/ListRunRecords",
    "/chorus.v1.HistoryService/RecordRunHeartbeats",
}
"""What the orchestrator calls on its own, outside any request."""


def only(spans: list[ReceivedSpan], service: str, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.service == service and s.name == name]


def run_trace(
    spans: list[ReceivedSpan], run_id: str
) -> tuple[ReceivedSpan | None, list[ReceivedSpan]]:
    """The orchestrator's span of the `assistant` run `run_id` and the spans of its trace
    (None and [] until that span was received)."""
    root = next(
        (
            s
            for s in spans
            if s.name == "run assistant" and s.attributes.get("chorus.run.id") == run_id
        ),
        None,
    )
    return root, [] if root is None else [s for s in spans if s.trace_id == root.trace_id]


def http_request_span(trace: list[ReceivedSpan]) -> ReceivedSpan:
    """The gateway's server span of the HTTP request, the root of `trace`."""
    (http,) = [s for s in trace if s.service == "chorus-gateway" and s.kind == "SERVER"]
    assert http.parent_span_id == ""
    return http


def test_one_run_is_one_trace_across_the_four_services(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    run, events = run_to_completion(
        traced_stack.gateway, {"template": "assistant", "input": "What is 17.5% of 2,340?"}
    )
    assert run["status"] == "RUN_STATUS_COMPLETED", run
    run_id = run["id"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        root, trace = run_trace(spans, run_id)
        if root is None:
            return False
        # Each service exports on its own schedule: wait until every model call's client
        # span (orchestrator) has its server span (provider-svc) too.
        calls = only(trace, "chorus-orchestrator", "chorus.v1.ProviderService/StreamChats")
        served = only(trace, "chorus-provider", "chorus.v1.ProviderService/StreamChats")
        return (
            {s.service for s in trace} >= set(SERVICES)
            and any(s.service == "chorus-gateway" and s.kind == "SERVER" for s in trace)
            and len(served) >= len(calls)
        )

    spans = receiver.wait_for(complete, timeout=60)
    root, trace = run_trace(spans, run_id)
    assert root is not None
    ids = by_id(trace)

    # The services' background calls (heartbeats every 1 s, lease sweeps every 0.5 s,
    # catalog refreshes) start no trace: every trace begins at some caller's request (the
    # test's own readiness calls included), never at a client span of a service.
    roots = [s for s in spans if not s.parent_span_id]
    assert {s.kind for s in roots} == {"SERVER"}, [(s.service, s.name) for s in roots]
    assert not [s for s in roots if s.name in BACKGROUND_RPCS]

    # The trace starts at the gateway's HTTP request.
    http = http_request_span(trace)
    assert http.name == "POST /api/v1/runs"
    status = http.attributes.get(
        "http.response.status_code", http.attributes.get("http.status_code")
    )
    assert status == 201, http.attributes

    # gateway → orchestrator: CreateRun's client span, its server span, the run under it.
    (create_client,) = only(trace, "chorus-gateway", "/chorus.v1.RunService/CreateRun")
    assert create_client.kind == "CLIENT" and create_client.parent_span_id == http.span_id
    assert create_client.attributes["rpc.system"] == "grpc"
    assert create_client.attributes["rpc.service"] == "chorus.v1.RunService"
    assert create_client.attributes["rpc.method"] == "CreateRun"
    (create_server,) = only(trace, "chorus-orchestrator", "/chorus.v1.RunService/CreateRun")
    assert create_server.kind == "SERVER"
    assert create_server.parent_span_id == create_client.span_id
    assert create_server.attributes["rpc.grpc.status_code"] == 0
    assert root.parent_span_id == create_server.span_id
    assert root.attributes["chorus.run.status"] == "COMPLETED"
    assert root.attributes["gen_ai.conversation.id"] == run["conversationId"]

    # orchestrator → history-svc: every history server span's parent is an orchestrator
    # client span of the same method, within the run's trace.
    history = [s for s in trace if s.service == "chorus-history"]
    assert any(s.name == "/chorus.v1.HistoryService/RecordRunStart" for s in history)
    for server in history:
        assert server.kind == "SERVER"
        client = ids[server.parent_span_id]
        assert client.service == "chorus-orchestrator" and client.kind == "CLIENT"
        assert client.name == server.name

    # the agent's turn, under the run.
    (turn,) = only(trace, "chorus-orchestrator", "invoke_agent assistant")
    assert turn.parent_span_id == root.span_id
    assert turn.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert turn.attributes["gen_ai.agent.name"] == "assistant"

    # orchestrator → provider-svc: each model call a client span of its own (the calls share
    # one StreamChats call), the provider's server span under it, the GenAI span under that.
    model_clients = only(trace, "chorus-orchestrator", "chorus.v1.ProviderService/StreamChats")
    assert model_clients
    for client in model_clients:
        assert client.kind == "CLIENT"
        assert client.parent_span_id in (root.span_id, turn.span_id)
    provider_servers = only(trace, "chorus-provider", "chorus.v1.ProviderService/StreamChats")
    assert sorted(s.parent_span_id for s in provider_servers) == sorted(
        c.span_id for c in model_clients
    )
    chats = only(trace, "chorus-provider", "chat sim-1")
    assert len(chats) == len(provider_servers)
    for chat in chats:
        assert chat.kind == "CLIENT"
        assert ids[chat.parent_span_id].name == "chorus.v1.ProviderService/StreamChats"
        a = chat.attributes
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "simulator"
        assert a["gen_ai.request.model"] == "sim-1"
        assert a["gen_ai.response.model"] == "sim-1"
        assert a["gen_ai.request.temperature"] == pytest.approx(0.3)
        assert a["gen_ai.response.finish_reasons"]
        assert a["gen_ai.usage.output_tokens"] > 0
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
    usage = run.get("usage", {})
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == int(
        usage.get("inputTokens", 0)
    )
    assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == int(
        usage.get("outputTokens", 0)
    )

    # each tool call, under the turn.
    calls = [e["toolCallStarted"]["call"] for e in events if "toolCallStarted" in e]
    tools = only_prefix(trace, "execute_tool ")
    assert sorted(t.attributes["gen_ai.tool.call.id"] for t in tools) == sorted(
        c["id"] for c in calls
    )
    for tool in tools:
        assert tool.parent_span_id == turn.span_id
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"

    # log lines of the run carry its trace id.
    logged = [
        json.loads(line[line.index("{") :])
        for line in traced_stack.lines
        if '"run_ended"' in line and run_id in line
    ]
    assert logged and logged[0]["trace_id"] == root.trace_id
    assert logged[0]["span_id"] == root.span_id


def only_prefix(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def test_tracing_off_exports_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    with OtlpReceiver() as quiet:
        # The endpoint is set, the exporter is not: tracing stays off.
        stack = start_stack(
            str(tmp_path_factory.mktemp("untraced")),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": quiet.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
        )
        try:
            run, _ = run_to_completion(stack.gateway, {"template": "assistant", "input": "Hi"})
            assert run["status"] == "RUN_STATUS_COMPLETED", run
            # a run started over SSE (the shared WatchRuns call) too
            streamed = stream_run(stack.gateway, {"template": "assistant", "input": "Hi"})
            assert "runCompleted" in streamed[-1], streamed[-1]
            # Ten export periods of the setting above: nothing may arrive.
            time.sleep(1.0)
            assert quiet.requests == 0 and quiet.spans() == []
            text = "\n".join(stack.lines)
            assert "tracing_enabled" not in text and '"trace_id"' not in text
        finally:
            stop_stack(stack)


def test_a_clients_traceparent_continues_into_the_sse_and_websocket_spans(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    run, _ = run_to_completion(traced_stack.gateway, {"template": "assistant", "input": "Hi"})
    sse_trace, ws_trace = "1" * 32, "2" * 32
    caller = "3" * 16
    with (
        httpx.Client(base_url=traced_stack.gateway, timeout=60) as client,
        client.stream(
            "GET",
            f"/api/v1/runs/{run['id']}/events",
            headers={"traceparent": f"00-{sse_trace}-{caller}-01"},
        ) as sse,
    ):
        assert sse.status_code == 200
        assert any(line.startswith("data:") for line in sse.iter_lines())

    async def ping() -> None:
        url = traced_stack.gateway.replace("http://", "ws://") + "/api/v1/ws"
        async with websockets.connect(
            url, additional_headers={"traceparent": f"00-{ws_trace}-{caller}-01"}
        ) as ws:
            await ws.send(json.dumps({"type": "ping", "payload": {"n": 1}}))
            while json.loads(await ws.recv())["type"] != "pong":
                pass

    asyncio.run(ping())

    def served(spans: list[ReceivedSpan]) -> bool:
        traces = {s.trace_id for s in spans if s.service == "chorus-gateway"}
        watched = {s.trace_id for s in spans if s.name == WATCH_SPAN}
        return sse_trace in traces and ws_trace in traces and sse_trace in watched

    spans = receiver.wait_for(served, timeout=60)
    gateway_spans: dict[str, ReceivedSpan] = {}
    for trace_id, name in ((sse_trace, "GET /api/v1/runs/{run_id}/events"), (ws_trace, None)):
        # one span per stream, none per event or frame
        (span,) = [s for s in spans if s.trace_id == trace_id and s.service == "chorus-gateway"]
        assert span.kind == "SERVER" and span.parent_span_id == caller
        if name is not None:
            assert span.name == name
        gateway_spans[trace_id] = span
    # the SSE stream's watch (over the shared WatchRuns call) is served under its span
    (watch,) = [s for s in spans if s.trace_id == sse_trace and s.name == WATCH_SPAN]
    assert watch.service == "chorus-orchestrator" and watch.kind == "SERVER"
    assert watch.parent_span_id == gateway_spans[sse_trace].span_id
    assert watch.attributes["chorus.run.id"] == run["id"]


def ancestors(span: ReceivedSpan, ids: dict[str, ReceivedSpan]) -> list[str]:
    """The span ids above `span`, nearest first, as far as `ids` knows them."""
    out: list[str] = []
    while span.parent_span_id in ids:
        span = ids[span.parent_span_id]
        out.append(span.span_id)
    return out


def test_a_run_started_over_sse_is_one_trace_from_the_http_request_to_the_model_call(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    events = stream_run(
        traced_stack.gateway, {"template": "assistant", "input": "What is 17.5% of 2,340?"}
    )
    assert "runCompleted" in events[-1], events[-1]
    run_id = events[0]["runId"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        root, trace = run_trace(spans, run_id)
        if root is None:
            return False
        return (
            any(s.service == "chorus-gateway" and s.kind == "SERVER" for s in trace)
            and any(s.name == WATCH_SPAN for s in trace)
            and any(s.name == "chat sim-1" for s in trace)
        )

    spans = receiver.wait_for(complete, timeout=60)
    root, trace = run_trace(spans, run_id)
    assert root is not None
    ids = by_id(trace)

    # The trace starts at the gateway's HTTP request (the SSE stream's, which lasts the run).
    http = http_request_span(trace)
    assert http.name == "POST /api/v1/runs/stream"
    # The watch that started the run: the orchestrator's server span of this one stream
    # of the shared WatchRuns call, a child of the HTTP request; the run under it.
    (watch,) = only(trace, "chorus-orchestrator", WATCH_SPAN)
    assert watch.kind == "SERVER" and watch.parent_span_id == http.span_id
    assert watch.attributes["rpc.system"] == "grpc"
    assert watch.attributes["rpc.service"] == "chorus.v1.RunService"
    assert watch.attributes["rpc.method"] == "WatchRuns"
    assert watch.attributes["rpc.grpc.status_code"] == 0
    assert watch.attributes["chorus.run.id"] == run_id
    assert root.parent_span_id == watch.span_id
    assert root.attributes["chorus.run.status"] == "COMPLETED"
    # The shared call itself has no span, in any trace (it serves every stream).
    assert not [s for s in spans if s.name == "/chorus.v1.RunService/WatchRuns"]
    # provider-svc's model calls are in the same trace, under the run and the request.
    chats = only(trace, "chorus-provider", "chat sim-1")
    assert chats
    for chat in chats:
        above = ancestors(chat, ids)
        assert root.span_id in above and watch.span_id in above
        assert above[-1] == http.span_id
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    # history-svc's writes of the run too.
    assert any(s.name == "/chorus.v1.HistoryService/RecordRunStart" for s in trace)


def test_a_run_started_over_the_openai_compatible_api_continues_the_http_requests_trace(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    with httpx.Client(base_url=traced_stack.gateway, timeout=120) as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "chorus/assistant", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": "Bearer dev"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]

    def requests(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.service == "chorus-gateway" and s.name == "POST /v1/chat/completions"
        ]

    def complete(spans: list[ReceivedSpan]) -> bool:
        http = requests(spans)
        if not http:
            return False
        trace = {s.name for s in spans if s.trace_id == http[0].trace_id}
        return {WATCH_SPAN, "run assistant", "chat sim-1"} <= trace

    spans = receiver.wait_for(complete, timeout=60)
    (http,) = requests(spans)
    assert http.kind == "SERVER" and http.parent_span_id == ""
    trace = [s for s in spans if s.trace_id == http.trace_id]
    (watch,) = only(trace, "chorus-orchestrator", WATCH_SPAN)
    assert watch.parent_span_id == http.span_id
    (run,) = only(trace, "chorus-orchestrator", "run assistant")
    assert run.parent_span_id == watch.span_id
    assert watch.attributes["chorus.run.id"] == run.attributes["chorus.run.id"]
    ids = by_id(trace)
    for chat in only(trace, "chorus-provider", "chat sim-1"):
        assert run.span_id in ancestors(chat, ids)
