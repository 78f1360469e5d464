"""Helpers for provider-svc tests (imported by conftest.py and the test modules).

* `upstream` — a real HTTP/1.1 server on 127.0.0.1:0 (plain asyncio sockets, so every byte,
  pause and disconnect is under the test's control). It replays scripted `Reply`s in order,
  records each request (method, path, headers, JSON body, arrival time) and counts the
  connections the client closed while a reply was still streaming (`disconnects`).
* `provider` — a factory: `await provider(**settings)` builds provider-svc with
  `build_app`, serves it from a real `GrpcServer` on port 0 and returns a `Provider` with a
  stub on a real channel. Every provider's credentials point at `upstream`.
* SSE builders for the OpenAI and Anthropic wire formats, and `collect` / `status_details`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chorus.core.server import GrpcServer
from chorus.provider.app import ProviderApp
from chorus.provider.settings import Settings
from chorus.v1 import chat_pb2, provider_service_pb2, provider_service_pb2_grpc

Event = provider_service_pb2.StreamChatResponse

STALL = "stall"
"""A reply step: send nothing more until the client closes the connection."""
DROP = "drop"
"""A reply step: abort the connection (TCP reset) mid-body."""


@dataclass
class Reply:
    """One scripted HTTP response.

    `steps` are sent in order: bytes are written as one chunk each, a float sleeps that many
    seconds, `STALL` waits for the client to go away, `DROP` aborts the connection.
    """

    steps: list[bytes | float | str] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/event-stream"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class FakeUpstream:
    """Scripted HTTP server for the providers' streaming wire formats."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(
                    Recorded(
                        method, path, headers, json.loads(raw) if raw else None, time.monotonic()
                    )
                )
                reply = self.replies.popleft() if self.replies else Reply(status=500, steps=[b"{}"])
                if not await self._reply(reply, reader, writer):
                    return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _reply(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Send `reply`; False when the connection is gone."""
        head = [f"HTTP/1.1 {reply.status} X", f"content-type: {reply.content_type}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            await writer.drain()
            for step in reply.steps:
                if isinstance(step, bytes):
                    writer.write(b"%x\r\n%s\r\n" % (len(step), step))
                    await writer.drain()
                elif isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif step == STALL:
                    while await reader.read(1024):
                        pass
                    self.disconnects += 1
                    return False
                elif step == DROP:
                    writer.transport.abort()
                    return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.disconnects += 1
            return False
        return True


# --- wire-format builders ------------------------------------------------------------------


def sse(obj: Any, event: str | None = None) -> bytes:
    """One SSE event with JSON data (and an `event:` line when given)."""
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> bytes:
    """An OpenAI `chat.completion.chunk` SSE event."""
    obj: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else [],
    }
    if usage is not None:
        obj["usage"] = usage
    return sse(obj)


DONE = b"data: [DONE]\n\n"


def openai_text_reply(*texts: str, finish: str = "stop") -> Reply:
    """A plain OpenAI text stream with a usage chunk."""
    steps: list[bytes | float | str] = [chunk({"role": "assistant", "content": ""})]
    steps += [chunk({"content": t}) for t in texts]
    steps += [
        chunk({}, finish),
        chunk(
            usage={
                "prompt_tokens": 9,
                "completion_tokens": len(texts),
                "total_tokens": 9 + len(texts),
            },
            choices=False,
        ),
        DONE,
    ]
    return Reply(steps=steps)


def error_reply(status: int, message: str = "boom", headers: dict[str, str] | None = None) -> Reply:
    """An OpenAI-style JSON error response."""
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    return Reply(
        status=status, steps=[body], headers=headers or {}, content_type="application/json"
    )


def anthropic(event: str, **data: Any) -> bytes:
    """An Anthropic SSE event (`event:` line and JSON data with `type`)."""
    return sse({"type": event, **data}, event)


# --- provider-svc under test ----------------------------------------------------------------


@dataclass
class Provider:
    app: ProviderApp
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: provider_service_pb2_grpc.ProviderServiceStub

    def stream(self, request: provider_service_pb2.StreamChatRequest, timeout: float = 30) -> Any:
        return self.stub.StreamChat(request, timeout=timeout)

    async def collect(
        self, request: provider_service_pb2.StreamChatRequest, timeout: float = 30
    ) -> list[Event]:
        return [e async for e in self.stub.StreamChat(request, timeout=timeout)]


def make_settings(upstream: FakeUpstream, **overrides: Any) -> Settings:
    """Settings whose every provider points at `upstream`, with fast retries."""
    values: dict[str, Any] = {
        "dev_mode": True,
        "openai_api_key": "sk-test-openai",
        "openai_base_url": f"{upstream.url}/v1",
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": upstream.url,
        "azure_openai_api_key": "azure-test-key",
        "azure_openai_endpoint": upstream.url,
        "azure_openai_deployments": ["chat-deploy"],
        "openai_compatible_base_url": f"{upstream.url}/compat/v1",
        "default_provider": "simulator",
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "simulator_time_to_first_token_s": 0.0,
        "simulator_tokens_per_second": 0.0,
        # event-by-event assertions need one event per upstream chunk, whatever TCP merges
        "coalesce_deltas": False,
    }
    values.update(overrides)
    return Settings(**values)


def user(text: str) -> provider_service_pb2.ChatMessage:
    return provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)


def request(
    *messages: provider_service_pb2.ChatMessage | str,
    provider: str = "simulator",
    model: str = "",
    **fields: Any,
) -> provider_service_pb2.StreamChatRequest:
    """A StreamChatRequest; plain strings are user messages."""
    msgs = [user(m) if isinstance(m, str) else m for m in messages]
    return provider_service_pb2.StreamChatRequest(
        model=chat_pb2.ModelRef(provider=provider, model=model), messages=msgs, **fields
    )


def kinds(events: list[Event]) -> list[str]:
    return [e.WhichOneof("event") or "" for e in events]


@dataclass
class StatusDetails:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo | None
    violations: dict[str, str]
    retry_delay_s: float | None


def status_details(err: grpc.aio.AioRpcError) -> StatusDetails:
    """The code, ErrorInfo, BadRequest violations and RetryInfo of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    info = None
    violations: dict[str, str] = {}
    delay = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = {v.field: v.description for v in bad.field_violations}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return StatusDetails(err.code(), err.details() or "", info, violations, delay)


async def expect_status(call: Awaitable[Any] | Any) -> StatusDetails:
    """Consume a call (unary awaitable or stream) and return its failure's details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return status_details(caught.value)
