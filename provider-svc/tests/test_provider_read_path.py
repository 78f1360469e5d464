"""The per-token read path: the body read from aiohttp's response directly (decompressed
when it has a Content-Encoding), deltas merged per network read, and the idle timeout
counting only the upstream's time."""

from __future__ import annotations

import asyncio
import gzip

import grpc
import pytest
from provider_helpers import (
    DONE,
    DROP,
    FakeUpstream,
    Reply,
    chunk,
    kinds,
    make_settings,
    request,
)

from chorus.provider.backends.base import Deltas, body_reader, reasoning_event, text_event
from chorus.provider.backends.openai import OpenAIBackend
from chorus.provider.models import Catalog
from chorus.provider.servicer import ProviderServicer
from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)


def _mixed_reply() -> Reply:
    return Reply(
        steps=[
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Hm."}),
            chunk({"content": "Calling"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz":'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "UTC"}'}}]}),
            chunk({}, "tool_calls"),
            chunk(usage={"prompt_tokens": 7, "completion_tokens": 3}, choices=False),
            DONE,
        ]
    )


_MIXED_KINDS = [
    "start",
    "reasoning_delta",
    "text_delta",
    "tool_call_start",
    "tool_call_delta",
    "tool_call_delta",
    "tool_call_end",
    "usage",
    "finish",
]


async def test_a_mixed_stream_is_normalized_event_by_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(_mixed_reply())
    p = await provider()
    events = await p.collect(request("hi", provider="openai-compatible", model="llama3.2"))

    assert kinds(events) == _MIXED_KINDS
    assert events[1].reasoning_delta.text == "Hm."
    assert events[2].text_delta.text == "Calling"
    assert events[6].tool_call_end.call.arguments == '{"tz": "UTC"}'
    assert events[7].usage.input_tokens == 7
    assert events[8].finish.raw_reason == "tool_calls"


async def test_a_connection_dropped_mid_body_is_one_unavailable_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "Hel"}), DROP]))
    p = await provider()
    events = await p.collect(request("hi", provider="openai", model="gpt-4o-mini"))

    assert kinds(events) == ["start", "text_delta", "error"]
    assert events[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "mid-stream" in events[-1].error.message


async def test_a_compressed_body_is_decoded_before_it_is_parsed(
    upstream: FakeUpstream, provider
) -> None:
    body = b"".join(s for s in _mixed_reply().steps if isinstance(s, bytes))
    upstream.queue(Reply(steps=[gzip.compress(body)], headers={"content-encoding": "gzip"}))
    p = await provider()
    events = await p.collect(request("hi", provider="openai-compatible", model="llama3.2"))

    assert kinds(events) == _MIXED_KINDS


async def test_the_body_is_read_from_aiohttps_response_itself(upstream: FakeUpstream) -> None:
    """A performance guard: no async generator (as httpx2's `aiter_bytes` had four) between
    the socket's reads and the SSE decoder."""
    upstream.queue(_mixed_reply())
    settings = make_settings(upstream)
    model = Catalog.from_settings(settings).resolve(chat_pb2.ModelRef(provider="openai"))
    backend = OpenAIBackend(model.provider, settings)
    response = await backend._http.post(
        backend._url_of("gpt-4o-mini"), {"model": "gpt-4o-mini", "messages": [], "stream": True}
    )
    try:
        read = body_reader(response)
        assert read == response.content.readany
        body = b""
        while data := await read():
            body += data
        assert body.endswith(DONE)
    finally:
        response.release()
        await backend.aclose()


def test_deltas_merge_only_consecutive_deltas_of_one_kind_and_keep_the_order() -> None:
    tool = provider_service_pb2.StreamChatResponse()
    tool.tool_call_start.id = "call_a"
    merged = Deltas(coalesce=True)
    merged.text("a")
    merged.text("b")
    merged.reasoning("c")
    merged.reasoning("d")
    merged.text("e")
    merged.add([tool])
    merged.text("f")
    events = merged.take()

    assert events == [
        text_event("ab"),
        reasoning_event("cd"),
        text_event("e"),
        tool,
        text_event("f"),
    ]
    assert merged.take() == []

    separate = Deltas(coalesce=False)
    separate.text("a")
    separate.text("b")
    assert separate.take() == [text_event("a"), text_event("b")]


async def test_time_the_caller_takes_to_read_does_not_count_toward_the_idle_timeout(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        Reply(
            steps=[
                chunk({"content": "one"}),
                chunk({"content": " two"}),
                chunk({"content": " three"}),
                chunk({}, "stop"),
                DONE,
            ]
        )
    )
    p = await provider(idle_timeout_s=0.2)
    servicer = ProviderServicer(p.app.settings, p.app.catalog, p.app.retrier)
    events = []
    async for event in servicer.stream(request("hi", provider="openai", model="gpt-4o-mini")):
        events.append(event)
        await asyncio.sleep(0.35)  # a slow caller: longer than the idle timeout per event

    assert kinds(events) == ["start", "text_delta", "text_delta", "text_delta", "usage", "finish"]
