"""HTTP failures of the OpenAI, Azure OpenAI and Anthropic backends over real sockets: each
error status, an error body that is not JSON, a refused connection, a connect timeout and an
upstream that never answers map to one gRPC status, ErrorInfo reason and retry behaviour
(the table in `chorus.provider.backends.base`). The backends build their requests without
the SDKs since session 13; these pin what the SDK-based code produced (they pass on it too,
except a response that is not HTTP, which the openai SDK's path let through as INTERNAL)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from provider_helpers import (
    FakeUpstream,
    Reply,
    error_reply,
    expect_status,
    kinds,
    openai_text_reply,
    request,
)

from chorus.core.testing import free_port

pytestmark = pytest.mark.timeout(60)

_MODELS = {
    "openai": "gpt-4o-mini",
    "azure-openai": "chat-deploy",
    "anthropic": "claude-haiku-4-5",
}
_BASE_URL_SETTING = {
    "openai": ("openai_base_url", "/v1"),
    "azure-openai": ("azure_openai_endpoint", ""),
    "anthropic": ("anthropic_base_url", ""),
}
C = grpc.StatusCode

_STATUSES = [
    # status, code, reason, retried
    (300, C.UNKNOWN, "UPSTREAM_ERROR", False),  # final, neither 2xx nor an error (no Location)
    (400, C.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST", False),
    (401, C.FAILED_PRECONDITION, "UPSTREAM_UNAUTHENTICATED", False),
    (403, C.FAILED_PRECONDITION, "UPSTREAM_PERMISSION_DENIED", False),
    (404, C.NOT_FOUND, "UPSTREAM_NOT_FOUND", False),
    (408, C.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", True),
    (409, C.ABORTED, "UPSTREAM_CONFLICT", True),
    (413, C.INVALID_ARGUMENT, "UPSTREAM_REQUEST_TOO_LARGE", False),
    (422, C.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST", False),
    (429, C.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", True),
    (500, C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", True),
    (502, C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", True),
    (503, C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", True),
    (529, C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", True),
]


def _request(kind: str):  # type: ignore[no-untyped-def]
    return request("hi", provider=kind, model=_MODELS[kind])


def _base_url(kind: str, url: str) -> dict[str, str]:
    name, suffix = _BASE_URL_SETTING[kind]
    return {name: url + suffix}


@pytest.mark.parametrize("kind", list(_MODELS))
@pytest.mark.parametrize(("status", "code", "reason", "retried"), _STATUSES)
async def test_an_error_status_maps_to_its_code_reason_and_retry_behaviour(
    upstream: FakeUpstream,
    provider,
    kind: str,
    status: int,
    code: grpc.StatusCode,
    reason: str,
    retried: bool,
) -> None:
    upstream.queue(*(error_reply(status, f"boom {status}") for _ in range(2)))
    p = await provider(max_attempts=2)
    details = await expect_status(p.stream(_request(kind)))

    assert details.code == code
    assert details.info is not None
    assert details.info.reason == reason
    assert details.info.metadata["http_status"] == str(status)
    assert f"upstream HTTP {status}: boom {status}" in details.message
    assert len(upstream.requests) == (2 if retried else 1)


@pytest.mark.parametrize("kind", list(_MODELS))
@pytest.mark.parametrize(
    ("header", "value", "seconds"), [("retry-after", "0.3", 0.3), ("retry-after-ms", "300", 0.3)]
)
async def test_a_429_is_retried_after_its_retry_after(
    upstream: FakeUpstream, provider, kind: str, header: str, value: str, seconds: float
) -> None:
    second = openai_text_reply("ok")
    if kind == "anthropic":
        second = Reply(
            steps=[
                b'event: message_start\ndata: {"type":"message_start","message":{"id":"m"}}\n\n',
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"ok"}}\n\n',
                b'event: message_delta\ndata: {"type":"message_delta",'
                b'"delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n',
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
            ]
        )
    upstream.queue(error_reply(429, "slow down", {header: value}), second)
    p = await provider(backoff_initial_s=0.001, backoff_max_s=0.001)
    events = await p.collect(_request(kind))

    assert kinds(events)[:2] == ["start", "text_delta"]
    assert events[0].start.retries == 1
    first, again = upstream.requests
    assert again.at - first.at >= seconds


@pytest.mark.parametrize("kind", list(_MODELS))
@pytest.mark.parametrize(
    "body",
    [b"<html><body>502 Bad Gateway</body></html>", b'{"error": "upstream', b"", b'{"detail": 1}'],
)
async def test_an_error_body_that_is_not_the_apis_json_still_maps_by_status(
    upstream: FakeUpstream, provider, kind: str, body: bytes
) -> None:
    upstream.queue(
        *(Reply(status=502, steps=[body] if body else [], content_type="text/html") for _ in "12")
    )
    p = await provider(max_attempts=2)
    details = await expect_status(p.stream(_request(kind)))

    assert details.code == C.UNAVAILABLE
    assert details.info is not None and details.info.reason == "UPSTREAM_UNAVAILABLE"
    assert "upstream HTTP 502" in details.message
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("kind", list(_MODELS))
async def test_a_refused_connection_is_unreachable_and_retried(provider, kind: str) -> None:
    p = await provider(max_attempts=2, **_base_url(kind, f"http://127.0.0.1:{free_port()}"))
    details = await expect_status(p.stream(_request(kind)))

    assert details.code == C.UNAVAILABLE
    assert details.info is not None and details.info.reason == "UPSTREAM_UNREACHABLE"
    assert details.info.metadata["attempts"] == "2"
    assert "ConnectionRefusedError" in details.message


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen queue is full: a connect's SYN gets no answer (Linux drops it)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):  # more than the queue holds; later connects stay pending
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    server.close()


@pytest.mark.parametrize("kind", list(_MODELS))
async def test_a_connect_timeout_is_unreachable_after_connect_timeout_s(
    provider, unanswered_port: int, kind: str
) -> None:
    p = await provider(
        max_attempts=2,
        connect_timeout_s=0.3,
        **_base_url(kind, f"http://127.0.0.1:{unanswered_port}"),
    )
    started = time.monotonic()
    details = await expect_status(p.stream(_request(kind)))

    assert details.code == C.UNAVAILABLE
    assert details.info is not None and details.info.reason == "UPSTREAM_UNREACHABLE"
    assert details.info.metadata["attempts"] == "2"
    assert 0.6 <= time.monotonic() - started < 10


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """An HTTP server that reads requests and never answers; yields its URL."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for writer in writers:
        writer.transport.abort()
    await server.wait_closed()


@pytest.mark.parametrize("kind", list(_MODELS))
async def test_an_upstream_that_never_answers_hits_the_first_event_timeout(
    provider, silent_upstream: str, kind: str
) -> None:
    p = await provider(
        max_attempts=2, first_event_timeout_s=0.3, **_base_url(kind, silent_upstream)
    )
    details = await expect_status(p.stream(_request(kind)))

    assert details.code == C.DEADLINE_EXCEEDED
    assert details.info is not None
    assert details.info.reason == "UPSTREAM_FIRST_EVENT_TIMEOUT"
    assert details.info.metadata["attempts"] == "2"


@pytest.fixture
async def garbage_upstream() -> AsyncIterator[str]:
    """A server that answers every request with bytes that are not HTTP; yields its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HELLO THERE\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("kind", list(_MODELS))
async def test_a_response_that_is_not_http_is_unavailable_and_retried(
    provider, garbage_upstream: str, kind: str
) -> None:
    """Under the openai SDK, aiohttp's ClientResponseError got through its transport
    (INTERNAL, not retried); the anthropic SDK's path gave this already."""
    p = await provider(max_attempts=2, **_base_url(kind, garbage_upstream))
    details = await expect_status(p.stream(_request(kind)))

    assert details.code == C.UNAVAILABLE
    assert details.info is not None and details.info.reason == "UPSTREAM_UNREACHABLE"
    assert details.info.metadata["attempts"] == "2"
