"""The OpenAI family over a real socket: OpenAI, Azure OpenAI and OpenAI-compatible wire formats."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2
from provider_helpers import (
    DONE,
    FakeUpstream,
    Reply,
    chunk,
    kinds,
    request,
    user,
)

from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)


def _tools() -> list[provider_service_pb2.ToolDefinition]:
    params = struct_pb2.Struct()
    params.update(
        {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        }
    )
    return [
        provider_service_pb2.ToolDefinition(
            name="get_weather", description="Weather in a city", parameters=params
        ),
        provider_service_pb2.ToolDefinition(name="get_time", description="Local time"),
    ]


def _conversation() -> list[provider_service_pb2.ChatMessage]:
    return [
        provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content="Be brief."),
        user("Weather and time in Paris?"),
        provider_service_pb2.ChatMessage(
            role=chat_pb2.ROLE_ASSISTANT,
            tool_calls=[chat_pb2.ToolCall(id="call_0", name="get_time", arguments="{}")],
        ),
        provider_service_pb2.ChatMessage(
            role=chat_pb2.ROLE_TOOL, tool_call_id="call_0", content="14:00"
        ),
    ]


async def test_openai_stream_is_normalized_event_by_event_with_usage_and_cost(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Checking"}),
                chunk({"content": " now."}),
                # two parallel calls, fragments interleaved and split across chunks
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    }
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "call_b",
                                "type": "function",
                                "function": {"name": "get_time", "arguments": "{}"},
                            }
                        ]
                    }
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
                chunk({}, "tool_calls"),
                chunk(
                    usage={
                        "prompt_tokens": 1200,
                        "completion_tokens": 40,
                        "total_tokens": 1240,
                        "prompt_tokens_details": {"cached_tokens": 1000},
                        "completion_tokens_details": {"reasoning_tokens": 12},
                    },
                    choices=False,
                ),
                DONE,
            ]
        )
    )
    p = await provider()
    req = request(
        *_conversation(),
        provider="openai",
        model="gpt-4o-mini",
        tools=_tools(),
        temperature=0.3,
        max_output_tokens=256,
        stop=["END"],
    )
    events = await p.collect(req)

    assert kinds(events) == [
        "start",
        "text_delta",
        "text_delta",
        "tool_call_start",
        "tool_call_delta",
        "tool_call_start",
        "tool_call_delta",
        "tool_call_delta",
        "tool_call_end",
        "tool_call_end",
        "usage",
        "finish",
    ]
    start = events[0].start
    assert (start.model.provider, start.model.model) == ("openai", "gpt-4o-mini")
    assert (start.retries, start.fallback, start.response_id) == (0, False, "chatcmpl-123")
    assert [e.text_delta.text for e in events[1:3]] == ["Checking", " now."]
    assert (events[3].tool_call_start.index, events[3].tool_call_start.id) == (0, "call_a")
    assert events[3].tool_call_start.name == "get_weather"
    assert events[4].tool_call_delta.arguments_delta == '{"ci'
    assert (events[5].tool_call_start.index, events[5].tool_call_start.name) == (1, "get_time")
    assert (events[6].tool_call_delta.index, events[7].tool_call_delta.index) == (1, 0)
    end_a, end_b = events[8].tool_call_end, events[9].tool_call_end
    assert (end_a.index, end_a.call.id, end_a.call.name) == (0, "call_a", "get_weather")
    assert json.loads(end_a.call.arguments) == {"city": "Paris"}
    assert (end_b.index, end_b.call.arguments) == (1, "{}")
    usage = events[10].usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        1200,
        1000,
        0,
    )
    assert (usage.output_tokens, usage.reasoning_tokens, usage.estimated) == (40, 12, False)
    # gpt-4o-mini: 0.15 $/Mtok uncached input, 0.075 cached, 0.60 output
    assert usage.cost_usd == pytest.approx((200 * 0.15 + 1000 * 0.075 + 40 * 0.60) / 1e6)
    finish = events[11].finish
    assert (finish.reason, finish.raw_reason) == (
        provider_service_pb2.FINISH_REASON_TOOL_CALLS,
        "tool_calls",
    )

    (sent,) = upstream.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-test-openai"
    body = sent.body
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 256
    assert (body["temperature"], body["stop"]) == (0.3, ["END"])
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "14:00"},
    ]
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
            },
        },
    }
    assert body["tools"][1]["function"]["parameters"] == {"type": "object", "properties": {}}


async def test_azure_skips_the_empty_first_chunk_and_calls_the_deployment_url(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                # Azure's first chunk: prompt filter results, no choices, no id
                b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
                b'"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}\n\n',
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hi"}),
                chunk({}, "stop"),
                chunk(
                    usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                    choices=False,
                ),
                DONE,
            ]
        )
    )
    p = await provider()
    events = await p.collect(request("hello", provider="azure-openai", model="chat-deploy"))

    assert kinds(events) == ["start", "text_delta", "usage", "finish"]
    assert events[0].start.response_id == "chatcmpl-123"
    assert events[1].text_delta.text == "Hi"
    assert events[2].usage.input_tokens == 5
    assert not events[2].usage.HasField("cost_usd")  # no price configured for the deployment
    (sent,) = upstream.requests
    assert sent.path == "/openai/deployments/chat-deploy/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == "azure-test-key"
    assert "authorization" not in sent.headers


async def test_openai_compatible_reasoning_fields_become_reasoning_and_usage_is_estimated(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                chunk({"role": "assistant", "reasoning_content": "Think"}),  # vLLM / DeepSeek
                chunk({"reasoning": "ing..."}),  # Ollama / OpenRouter
                b": keep-alive comment\r\n\r\n",
                chunk({"content": "Done", "reasoning_content": None}),
                chunk({}, "length"),
                DONE,  # no usage chunk: the server does not support include_usage
            ]
        )
    )
    p = await provider()
    events = await p.collect(request("hi", provider="openai-compatible", model="llama3.2"))

    assert kinds(events) == [
        "start",
        "reasoning_delta",
        "reasoning_delta",
        "text_delta",
        "usage",
        "finish",
    ]
    assert [e.reasoning_delta.text for e in events[1:3]] == ["Think", "ing..."]
    assert events[3].text_delta.text == "Done"
    usage = events[4].usage
    assert usage.estimated
    assert usage.output_tokens == 4  # ceil(len("Thinking...Done") / 4)
    assert usage.input_tokens > 0
    assert events[5].finish.reason == provider_service_pb2.FINISH_REASON_LENGTH
    (sent,) = upstream.requests
    assert sent.path == "/compat/v1/chat/completions"
    assert "max_tokens" in sent.body and "max_completion_tokens" not in sent.body


async def test_tool_arguments_that_are_not_json_end_the_stream_with_an_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "function": {"name": "get_time", "arguments": "{oops"},
                            }
                        ]
                    }
                ),
                chunk({}, "tool_calls"),
                DONE,
            ]
        )
    )
    p = await provider()
    events = await p.collect(
        request("time?", provider="openai", model="gpt-4o-mini", tools=_tools())
    )

    assert kinds(events) == ["start", "tool_call_start", "tool_call_delta", "error"]
    assert events[-1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "not a JSON object" in events[-1].error.message


async def test_error_object_in_the_stream_after_http_200_ends_with_an_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                chunk({"content": "Par"}),
                b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n',
            ]
        )
    )
    p = await provider()
    events = await p.collect(request("hi", provider="openai", model="gpt-4o-mini"))

    assert kinds(events) == ["start", "text_delta", "error"]
    error = events[-1].error
    assert error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert error.retryable
    assert "The server had an error" in error.message


async def test_deltas_that_arrive_in_one_read_are_merged_into_one_event(
    upstream: FakeUpstream, provider
) -> None:
    pieces = ["The", " quick", " brown", " fox", " jumps"]
    burst = b"".join(chunk({"content": p}) for p in pieces)  # one write, one read
    upstream.queue(
        Reply(steps=[chunk({"role": "assistant", "content": ""}), burst, chunk({}, "stop"), DONE])
    )
    p = await provider(coalesce_deltas=True)
    events = await p.collect(request("hi", provider="openai", model="gpt-4o-mini"))

    deltas = [e.text_delta.text for e in events if e.HasField("text_delta")]
    assert "".join(deltas) == "The quick brown fox jumps"
    assert len(deltas) < len(pieces)
    assert kinds(events)[-2:] == ["usage", "finish"]
