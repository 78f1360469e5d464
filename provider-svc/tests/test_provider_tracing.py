"""The model call's span (issue 22 item 1): GenAI semantic conventions on a real provider-svc
(GrpcServer on port 0) calling a real local HTTP upstream; message content only when
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT is on; each StreamChats stream a server
span under the span its request names."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from provider_helpers import Reply, anthropic, error_reply, openai_text_reply, request

from chorus.core import tracing
from chorus.core.testing import traced_in_memory
from chorus.v1 import chat_pb2
from chorus.v1 import provider_service_pb2 as ps


def traced(capture: bool) -> Iterator[InMemorySpanExporter]:
    with traced_in_memory(capture=capture) as exporter:
        yield exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    yield from traced(capture=False)


@pytest.fixture
def spans_with_content() -> Iterator[InMemorySpanExporter]:
    yield from traced(capture=True)


def chat_request() -> ps.StreamChatRequest:
    return request(
        ps.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content="Be brief."),
        "Say hello.",
        provider="openai",
        model="gpt-4o-mini",
        temperature=0.5,
        metadata={"run_id": "run-1", "agent": "writer"},
    )


def the(spans: InMemorySpanExporter, name: str) -> trace.Span:
    (found,) = [s for s in spans.get_finished_spans() if s.name == name]
    return found


async def test_a_model_call_is_a_genai_client_span_under_the_rpc_span(provider, upstream, spans):
    upstream.queue(openai_text_reply("Hel", "lo"))
    p = await provider()
    events = await p.collect(chat_request())
    assert events[-1].WhichOneof("event") == "finish"
    chat = the(spans, "chat gpt-4o-mini")
    server = the(spans, "/chorus.v1.ProviderService/StreamChat")
    assert chat.kind == trace.SpanKind.CLIENT and server.kind == trace.SpanKind.SERVER
    assert chat.parent.span_id == server.context.span_id
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.id"] == "chatcmpl-123"
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] == 9
    assert a["gen_ai.usage.output_tokens"] == 2
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["chorus.run_id"] == "run-1" and a["chorus.agent"] == "writer"
    for key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"):
        assert key not in a
    assert chat.status.status_code == trace.StatusCode.UNSET


async def test_message_content_only_when_capture_is_on(provider, upstream, spans_with_content):
    upstream.queue(openai_text_reply("Hel", "lo"))
    p = await provider()
    await p.collect(chat_request())
    a = the(spans_with_content, "chat gpt-4o-mini").attributes
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Say hello."}]}
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello"}],
            "finish_reason": "stop",
        }
    ]


async def test_a_failed_model_call_marks_its_span_with_the_error(provider, upstream, spans):
    upstream.queue(error_reply(400, "bad request"))
    p = await provider()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await p.collect(chat_request())
    chat = the(spans, "chat gpt-4o-mini")
    assert chat.status.status_code == trace.StatusCode.ERROR
    assert chat.attributes["error.type"] == err.value.code().name


async def test_each_streamchats_stream_is_a_server_span_under_its_requests_span(provider, spans):
    p = await provider()
    carrier: dict[str, str] = {}
    caller = tracing.start_stream_client_span("/chorus.v1.ProviderService/StreamChats", carrier)
    assert caller is not None
    opened = request("Say hello.", metadata=carrier)
    requests = [ps.StreamChatsRequest(stream_id=1, open=opened)]
    responses = [r async for r in p.stub.StreamChats(iter(requests), timeout=30)]
    tracing.end_stream_span(caller)
    assert responses and responses[-1].updates[-1].status.code == 0
    servers = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    # the long-lived call has no span of its own: only its stream's
    assert [s.name for s in servers] == ["chorus.v1.ProviderService/StreamChats"]
    (server,) = servers
    assert server.parent.span_id == caller.get_span_context().span_id
    assert server.attributes["chorus.stream_id"] == 1
    assert server.attributes["rpc.grpc.status_code"] == 0
    (chat,) = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]
    assert chat.parent.span_id == server.context.span_id
    assert chat.attributes["gen_ai.provider.name"] == "simulator"
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0


async def test_a_call_without_an_upstream_finish_reason_names_the_normalized_one(
    provider, upstream, spans
):
    # An Anthropic stream that stops without a `stop_reason`: the span's finish reason is the
    # normalized one (`FinishReason` of chorus.v1.provider_service), not an empty string.
    start = anthropic(
        "message_start",
        message={"id": "msg_01", "model": "claude-haiku-4-5", "usage": {"input_tokens": 3}},
    )
    text = {"type": "text_delta", "text": "Hi"}
    upstream.queue(
        Reply(
            steps=[
                start,
                anthropic("content_block_start", index=0, content_block={"type": "text"}),
                anthropic("content_block_delta", index=0, delta=text),
                anthropic("content_block_stop", index=0),
                anthropic("message_stop"),
            ]
        )
    )
    p = await provider()
    events = await p.collect(request("Say hi.", provider="anthropic", model="claude-haiku-4-5"))
    assert events[-1].WhichOneof("event") == "finish"
    chat = the(spans, "chat claude-haiku-4-5")
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("unspecified",)
    assert chat.status.status_code == trace.StatusCode.UNSET
