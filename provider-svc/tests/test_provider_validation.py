"""Bad input gets its status and details before anything is sent upstream; the service keeps serving."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from provider_helpers import FakeUpstream, expect_status, kinds, request

from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)


def _tool(schema: dict[str, Any], name: str = "lookup") -> provider_service_pb2.ToolDefinition:
    params = struct_pb2.Struct()
    params.update(schema)
    return provider_service_pb2.ToolDefinition(name=name, description="d", parameters=params)


BAD_REQUESTS: dict[
    str, tuple[provider_service_pb2.StreamChatRequest, grpc.StatusCode, str, str]
] = {
    "no messages": (
        provider_service_pb2.StreamChatRequest(model=chat_pb2.ModelRef(provider="simulator")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "messages",
    ),
    "unknown provider": (
        request("hi", provider="nope"),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_PROVIDER",
        "",
    ),
    "unknown model": (
        request("hi", provider="simulator", model="sim-999"),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_MODEL",
        "",
    ),
    "unknown fallback model": (
        request("hi", fallbacks=[chat_pb2.ModelRef(provider="openai", model="gpt-0")]),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_MODEL",
        "",
    ),
    "schema with an invalid type": (
        request("hi", tools=[_tool({"type": "object", "properties": {"x": {"type": "banana"}}})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "tools[0].parameters",
    ),
    "schema that is not an object schema": (
        request("hi", tools=[_tool({"type": "string"})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "tools[0].parameters",
    ),
    "negative max output tokens": (
        request("hi", max_output_tokens=-5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "max_output_tokens",
    ),
    "a 5 MB message": (
        request("x" * (5 * 1024 * 1024)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "messages",
    ),
    "tool result without a call": (
        request(
            "hi",
            provider_service_pb2.ChatMessage(
                role=chat_pb2.ROLE_TOOL, tool_call_id="c9", content="1"
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "messages[1].tool_call_id",
    ),
    "message without a role": (
        request(provider_service_pb2.ChatMessage(content="hi")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "messages[0].role",
    ),
    "negative simulator speed": (
        request("hi", simulator=chat_pb2.SimulatorOptions(tokens_per_second=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "simulator.tokens_per_second",
    ),
    "forced tool that is not offered": (
        request(
            "hi",
            tools=[_tool({"type": "object"})],
            tool_choice=provider_service_pb2.ToolChoice(
                mode=provider_service_pb2.ToolChoice.MODE_TOOL, tool_name="other"
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "tool_choice.tool_name",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_gets_its_status_and_details_and_the_service_keeps_serving(
    case: str, provider, upstream: FakeUpstream
) -> None:
    bad, code, reason, field = BAD_REQUESTS[case]
    p = await provider()
    status = await expect_status(p.stream(bad))

    assert status.code == code
    assert status.info is not None and status.info.reason == reason
    if field:
        assert field in status.violations, status.violations
    assert len(p.app.simulator.received) == 0  # nothing reached a backend
    assert upstream.requests == []
    events = await p.collect(request("still serving?"))
    assert kinds(events)[-1] == "finish"


async def test_every_violation_is_reported_at_once(provider) -> None:
    p = await provider()
    status = await expect_status(
        p.stream(request("hi", temperature=3.0, top_p=0.0, stop=["a", "b", "c", "d", "e"]))
    )
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(status.violations) == {"temperature", "top_p", "stop"}


async def test_provider_without_credentials_is_failed_precondition(provider) -> None:
    p = await provider(openai_api_key=None)
    status = await expect_status(p.stream(request("hi", provider="openai", model="gpt-4o-mini")))

    assert status.code == grpc.StatusCode.FAILED_PRECONDITION
    assert status.info is not None and status.info.reason == "MISSING_CREDENTIALS"
    assert status.info.metadata["provider"] == "openai"
