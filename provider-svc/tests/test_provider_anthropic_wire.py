"""Anthropic Messages over a real socket: thinking, text, tool use, pings, cumulative usage, errors."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2
from provider_helpers import FakeUpstream, Reply, anthropic, kinds, request, user

from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)


def _message_start(**usage: int) -> bytes:
    return anthropic(
        "message_start",
        message={
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1, **usage},
        },
    )


def _text_reply(text: str) -> Reply:
    return Reply(
        steps=[
            _message_start(),
            anthropic("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            anthropic("content_block_delta", index=0, delta={"type": "text_delta", "text": text}),
            anthropic("content_block_stop", index=0),
            anthropic(
                "message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3}
            ),
            anthropic("message_stop"),
        ]
    )


async def test_anthropic_stream_is_normalized_with_thinking_tool_use_and_cumulative_usage(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                _message_start(cache_read_input_tokens=1000, cache_creation_input_tokens=200),
                anthropic(
                    "content_block_start",
                    index=0,
                    content_block={"type": "thinking", "thinking": "", "signature": ""},
                ),
                anthropic(
                    "content_block_delta",
                    index=0,
                    delta={"type": "thinking_delta", "thinking": "Paris is"},
                ),
                anthropic("ping"),
                anthropic(
                    "content_block_delta",
                    index=0,
                    delta={"type": "thinking_delta", "thinking": " in France."},
                ),
                anthropic(
                    "content_block_delta",
                    index=0,
                    delta={"type": "signature_delta", "signature": "EqQB"},
                ),
                anthropic("content_block_stop", index=0),
                anthropic(
                    "content_block_start", index=1, content_block={"type": "text", "text": ""}
                ),
                anthropic(
                    "content_block_delta",
                    index=1,
                    delta={"type": "text_delta", "text": "Let me check."},
                ),
                anthropic("content_block_stop", index=1),
                anthropic(
                    "content_block_start",
                    index=2,
                    content_block={
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {},
                    },
                ),
                anthropic(
                    "content_block_delta",
                    index=2,
                    delta={"type": "input_json_delta", "partial_json": ""},
                ),
                anthropic(
                    "content_block_delta",
                    index=2,
                    delta={"type": "input_json_delta", "partial_json": '{"city": '},
                ),
                anthropic("ping"),
                anthropic(
                    "content_block_delta",
                    index=2,
                    delta={"type": "input_json_delta", "partial_json": '"Paris"}'},
                ),
                anthropic("content_block_stop", index=2),
                anthropic(
                    "message_delta",
                    delta={"stop_reason": "tool_use", "stop_sequence": None},
                    usage={"output_tokens": 15},
                ),
                anthropic("message_delta", delta={}, usage={"output_tokens": 42}),  # cumulative
                anthropic("message_stop"),
            ]
        )
    )
    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": {"city": {"type": "string"}}})
    p = await provider()
    req = request(
        provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content="You are terse."),
        user("Weather in Paris?"),
        provider_service_pb2.ChatMessage(
            role=chat_pb2.ROLE_ASSISTANT,
            content="Checking.",
            tool_calls=[
                chat_pb2.ToolCall(id="toolu_00", name="get_weather", arguments='{"city": "Lyon"}')
            ],
        ),
        provider_service_pb2.ChatMessage(
            role=chat_pb2.ROLE_TOOL, tool_call_id="toolu_00", content="no data", is_error=True
        ),
        provider="anthropic",
        model="claude-haiku-4-5",
        tools=[
            provider_service_pb2.ToolDefinition(
                name="get_weather", description="Weather", parameters=params
            )
        ],
        tool_choice=provider_service_pb2.ToolChoice(
            mode=provider_service_pb2.ToolChoice.MODE_REQUIRED
        ),
        temperature=0.5,
    )
    events = await p.collect(req)

    assert kinds(events) == [
        "start",
        "reasoning_delta",
        "reasoning_delta",
        "text_delta",
        "tool_call_start",
        "tool_call_delta",
        "tool_call_delta",
        "tool_call_end",
        "usage",
        "finish",
    ]
    assert events[0].start.response_id == "msg_01"
    assert [e.reasoning_delta.text for e in events[1:3]] == ["Paris is", " in France."]
    assert events[3].text_delta.text == "Let me check."
    start = events[4].tool_call_start
    assert (start.index, start.id, start.name) == (
        0,
        "toolu_01",
        "get_weather",
    )  # index 0: first call
    end = events[7].tool_call_end
    assert (end.index, end.call.id) == (0, "toolu_01")
    assert json.loads(end.call.arguments) == {"city": "Paris"}
    usage = events[8].usage
    # input = input_tokens + cache reads + cache writes; output is the last cumulative count
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        1210,
        1000,
        200,
    )
    assert (usage.output_tokens, usage.estimated) == (42, False)
    # claude-haiku-4-5: 1 $/Mtok input, 0.10 cache read, 1.25 cache write, 5 output
    assert usage.cost_usd == pytest.approx((10 * 1 + 1000 * 0.10 + 200 * 1.25 + 42 * 5) / 1e6)
    assert (events[9].finish.reason, events[9].finish.raw_reason) == (
        provider_service_pb2.FINISH_REASON_TOOL_CALLS,
        "tool_use",
    )

    (sent,) = upstream.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == "Bearer sk-ant-test"
    body = sent.body
    assert body["system"] == "You are terse."
    assert body["max_tokens"] == 64_000 and body["temperature"] == 0.5
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_00",
                    "name": "get_weather",
                    "input": {"city": "Lyon"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_00",
                    "content": "no data",
                    "is_error": True,
                }
            ],
        },
    ]


async def test_overloaded_error_after_http_200_before_any_delta_is_retried(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                _message_start(),
                anthropic("ping"),
                anthropic("error", error={"type": "overloaded_error", "message": "Overloaded"}),
            ]
        ),
        _text_reply("Hello"),
    )
    p = await provider()
    events = await p.collect(request("hi", provider="anthropic", model="claude-haiku-4-5"))

    assert kinds(events) == ["start", "text_delta", "usage", "finish"]
    assert events[0].start.retries == 1
    assert len(upstream.requests) == 2


async def test_overloaded_error_after_a_delta_ends_with_one_retryable_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                _message_start(),
                anthropic(
                    "content_block_start", index=0, content_block={"type": "text", "text": ""}
                ),
                anthropic(
                    "content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}
                ),
                anthropic("error", error={"type": "overloaded_error", "message": "Overloaded"}),
            ]
        )
    )
    p = await provider()
    events = await p.collect(request("hi", provider="anthropic", model="claude-haiku-4-5"))

    assert kinds(events) == ["start", "text_delta", "error"]
    error = events[-1].error
    assert (error.code, error.retryable) == (grpc.StatusCode.UNAVAILABLE.value[0], True)
    assert "overloaded_error" in error.message
    assert len(upstream.requests) == 1


async def test_only_system_messages_are_sent_as_a_user_turn(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(_text_reply("Alice"))
    p = await provider()
    events = await p.collect(
        request(
            provider_service_pb2.ChatMessage(
                role=chat_pb2.ROLE_SYSTEM, content="Pick the next speaker."
            ),
            provider="anthropic",
            model="claude-haiku-4-5",
        )
    )
    assert kinds(events)[-1] == "finish"
    body = upstream.requests[0].body
    assert "system" not in body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Pick the next speaker."}]}
    ]


async def test_an_event_of_unknown_shape_mid_stream_ends_with_an_internal_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                _message_start(),
                anthropic(
                    "content_block_start", index=0, content_block={"type": "text", "text": ""}
                ),
                anthropic(
                    "content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"}
                ),
                anthropic("content_block_delta", index=0),  # no "delta"
            ]
        ),
        _text_reply("again"),
    )
    p = await provider()
    events = await p.collect(request("hi", provider="anthropic", model="claude-haiku-4-5"))

    assert kinds(events) == ["start", "text_delta", "error"]
    assert events[-1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "unexpected shape" in events[-1].error.message
    assert (
        kinds(await p.collect(request("hi", provider="anthropic", model="claude-haiku-4-5")))[-1]
        == "finish"
    )
