"""Anthropic Messages, JSON POSTed over aiohttp by `chorus.provider.backends.http` (no SDK:
its request path cost 0.4-0.9 ms of CPU per call).

Wire as the `anthropic` SDK (2.17) sent it: `{base_url}/v1/messages` (`base_url` without
`/v1`, default `https://api.anthropic.com`), `Authorization: Bearer <key>`,
`anthropic-version: 2026-10-21`. Retries are `chorus.provider.retry`'s; the SSE body is
decoded by `chorus.provider.sse`.

Messages: every system message goes to the top-level `system` (joined by blank lines;
Anthropic has no system role in `messages`); tool calls become `tool_use` blocks with parsed
`input`; tool results become `tool_result` blocks in a user turn (consecutive ones share a
turn, as the API requires); consecutive messages of one role are merged. A conversation of
system messages only sends its last one as the user turn. `temperature` and `top_p` are sent
in the body when set.

Stream: `message_start` (id, input usage) → per block `content_block_start` →
`content_block_delta` (`text_delta`, `thinking_delta`, `input_json_delta`,
`signature_delta` ignored) → `content_block_stop`, then `message_delta` (stop reason,
cumulative usage) and `message_stop`; `ping` anywhere (not an event for the idle timeout);
`error` after HTTP 200 (e.g. `overloaded_error`) is an UpstreamError. Usage: input tokens =
`input_tokens + cache_read_input_tokens + cache_creation_input_tokens`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc
import orjson
from yarl import URL

from chorus.provider.backends.base import (
    READ_ERRORS,
    Backend,
    Call,
    Deltas,
    Event,
    StreamResult,
    UpstreamError,
    bad_shape,
    body_reader,
    disconnected,
    finish_reason_of,
)
from chorus.provider.backends.http import JsonPoster
from chorus.provider.models import ProviderSpec, Usage
from chorus.provider.schemas import tool_schema
from chorus.provider.settings import Settings
from chorus.provider.sse import SSEDecoder
from chorus.provider.toolcalls import ToolCalls
from chorus.v1 import chat_pb2, provider_service_pb2

_TOOL_CHOICE = provider_service_pb2.ToolChoice
ANTHROPIC_VERSION = "2026-10-21"
"""The `anthropic-version` header: the one the anthropic SDK 2.17 sent."""

_ERROR_TYPES: dict[str, tuple[grpc.StatusCode, bool]] = {
    "overloaded_error": (grpc.StatusCode.UNAVAILABLE, True),
    "api_error": (grpc.StatusCode.UNAVAILABLE, True),
    "rate_limit_error": (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    "timeout_error": (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    "invalid_request_error": (grpc.StatusCode.INVALID_ARGUMENT, False),
    "request_too_large": (grpc.StatusCode.INVALID_ARGUMENT, False),
    "authentication_error": (grpc.StatusCode.FAILED_PRECONDITION, False),
    "permission_error": (grpc.StatusCode.FAILED_PRECONDITION, False),
    "not_found_error": (grpc.StatusCode.NOT_FOUND, False),
}


def convert_messages(
    request: provider_service_pb2.StreamChatRequest,
) -> tuple[str, list[dict[str, Any]]]:
    """`(system, messages)` in Messages API shape."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in request.messages:
        if m.role == chat_pb2.ROLE_SYSTEM:
            system.append(m.content)
        elif m.role == chat_pb2.ROLE_TOOL:
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.content,
            }
            if m.is_error:
                block["is_error"] = True
            add("user", [block])
        elif m.role == chat_pb2.ROLE_ASSISTANT:
            blocks: list[dict[str, Any]] = []
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for c in m.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": c.id,
                        "name": c.name,
                        "input": orjson.loads(c.arguments or "{}"),
                    }
                )
            if blocks:
                add("assistant", blocks)
        else:
            add("user", [{"type": "text", "text": m.content or "(empty)"}])
    if not turns and system:
        turns.append({"role": "user", "content": [{"type": "text", "text": system.pop()}]})
    return "\n\n".join(s for s in system if s), turns


def convert_tools(
    request: provider_service_pb2.StreamChatRequest,
) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """`(tools, tool_choice)` in Messages API shape (None when no tools)."""
    if not request.tools:
        return None, None
    tools = [
        {"name": t.name, "description": t.description, "input_schema": tool_schema(t.parameters)}
        for t in request.tools
    ]
    mode = request.tool_choice.mode
    choice: dict[str, Any] | None = None
    if mode == _TOOL_CHOICE.MODE_NONE:
        choice = {"type": "none"}
    elif mode == _TOOL_CHOICE.MODE_REQUIRED:
        choice = {"type": "any"}
    elif mode == _TOOL_CHOICE.MODE_TOOL:
        choice = {"type": "tool", "name": request.tool_choice.tool_name}
    return tools, choice


class _EventState:
    """Decodes one stream's events (one `handle` call per SSE event)."""

    __slots__ = ("kinds", "provider", "result", "stop_reason", "stopped", "tools", "usage")

    def __init__(self, provider: str, result: StreamResult) -> None:
        self.provider = provider
        self.result = result
        self.tools = ToolCalls()
        self.kinds: dict[int, str] = {}
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.stopped = False

    def handle(self, name: str, data: bytes, out: Deltas) -> None:
        """Add the events of one SSE event to `out`.

        Raises:
            UpstreamError: an event that is not JSON, or an `error` event.
        """
        result = self.result
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.provider}: the upstream sent an event that is not JSON",
                reason="UPSTREAM_BAD_STREAM",
            ) from None
        if name == "content_block_delta":
            delta = obj["delta"]
            kind = delta.get("type")
            if kind == "text_delta":
                text = delta.get("text")
                if text:
                    result.output_chars += len(text)
                    out.text(text)
            elif kind == "thinking_delta":
                thinking = delta.get("thinking")
                if thinking:
                    result.output_chars += len(thinking)
                    out.reasoning(thinking)
            elif kind == "input_json_delta":
                out.add(self.tools.fragment(obj["index"], "", "", delta.get("partial_json") or ""))
        elif name == "content_block_start":
            block = obj["content_block"]
            index = obj["index"]
            self.kinds[index] = block.get("type", "")
            if self.kinds[index] == "tool_use":
                out.add(self.tools.fragment(index, block.get("id", ""), block["name"], ""))
        elif name == "content_block_stop":
            if self.kinds.get(obj["index"]) == "tool_use":
                end = self.tools.end(obj["index"])
                if end is not None:
                    out.add([end])
        elif name == "message_start":
            message = obj.get("message") or {}
            result.response_id = message.get("id") or ""
            self.usage.update(message.get("usage") or {})
        elif name == "message_delta":
            self.stop_reason = (obj.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update({k: v for k, v in (obj.get("usage") or {}).items() if v is not None})
        elif name == "message_stop":
            self.stopped = True
        elif name == "error":
            error = obj.get("error") or {}
            code, retryable = _ERROR_TYPES.get(
                error.get("type", ""), (grpc.StatusCode.UNAVAILABLE, True)
            )
            raise UpstreamError(
                code,
                f"{self.provider}: {error.get('type', 'error')}: {error.get('message', '')}",
                retryable=retryable,
                reason=f"UPSTREAM_{str(error.get('type', 'error')).upper()}",
            )


class AnthropicBackend(Backend):
    """Messages API of one configured provider of kind `anthropic`."""

    def __init__(self, provider: ProviderSpec, settings: Settings) -> None:
        self.provider = provider
        self._coalesce = settings.coalesce_deltas
        base = (provider.base_url or "https://api.anthropic.com").rstrip("/")
        self._url = URL(f"{base}/v1/messages")
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        self._http = JsonPoster(provider.name, headers, settings)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _params(self, call: Call) -> dict[str, Any]:
        req = call.request
        system, messages = convert_messages(req)
        params: dict[str, Any] = {
            "model": call.model.name,
            "max_tokens": call.max_output_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            params["system"] = system
        tools, choice = convert_tools(req)
        if tools is not None:
            params["tools"] = tools
            if choice is not None:
                params["tool_choice"] = choice
        if req.stop:
            params["stop_sequences"] = list(req.stop)
        if req.HasField("temperature"):
            params["temperature"] = req.temperature
        if req.HasField("top_p"):
            params["top_p"] = req.top_p
        return params

    async def stream(self, call: Call, result: StreamResult) -> AsyncGenerator[Event, None]:
        response = await self._http.post(self._url, self._params(call))
        name = self.provider.name
        read = body_reader(response)
        decoder = SSEDecoder()
        state = _EventState(name, result)
        deltas = Deltas(self._coalesce)
        # One generator from the socket to the caller (see the OpenAI backend).
        try:
            while chunk := await read():
                try:
                    for kind, data in decoder.feed(chunk):
                        # The SDK drops frames without an `event:` line; so do we (and pings).
                        if kind and kind != "ping" and data:
                            state.handle(kind, data, deltas)
                except (UpstreamError, LookupError, TypeError, ValueError, AttributeError) as exc:
                    for event in deltas.take():  # what came before the error reaches the caller
                        yield event
                    if isinstance(exc, UpstreamError):
                        raise
                    raise bad_shape(name, exc) from exc
                for event in deltas.take():
                    yield event
        except READ_ERRORS as err:
            raise disconnected(name, err) from None
        finally:
            response.release()
        stopped, stop_reason, usage, tools = (
            state.stopped,
            state.stop_reason,
            state.usage,
            state.tools,
        )
        if not stopped and stop_reason is None:
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"{name}: the upstream closed the stream before it finished",
                reason="UPSTREAM_DISCONNECTED",
            )
        for event in tools.end_all():
            yield event
        if usage:
            cache_read = int(usage.get("cache_read_input_tokens") or 0)
            cache_write = int(usage.get("cache_creation_input_tokens") or 0)
            result.usage = Usage(
                input_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
                cached_input_tokens=cache_read,
                cache_write_tokens=cache_write,
                output_tokens=int(usage.get("output_tokens") or 0),
            )
        result.raw_finish_reason = stop_reason or ""
        result.finish_reason = finish_reason_of(stop_reason)
