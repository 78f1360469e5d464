"""The OpenAI Chat Completions family: `openai`, `azure-openai` and `openai-compatible`.

One backend class for the three. The request is JSON POSTed over aiohttp by
`chorus.provider.backends.http` (no SDK: its request path cost 0.4-0.9 ms of CPU per call),
with the URLs and auth the `openai` SDK (3.x) used: `{base_url}/chat/completions` (default base
`https://api.openai.com/v1`) and `Authorization: Bearer <key>` (openai-compatible servers
without a key get `Bearer not-needed`, as the SDK sent); Azure
`{endpoint}/openai/deployments/{model}/chat/completions?api-version={api_version}` and an
`api-key` header. Retries are `chorus.provider.retry`'s. The SSE body is decoded by
`chorus.provider.sse` (see there why).

Wire facts handled (REFERENCE.md): `data:` lines ending with `data: [DONE]`; a first chunk
with a role and empty content; Azure's first chunk with empty `choices`; tool-call fragments
keyed by `index` (first fragment carries `id` and `name`); usage only with
`stream_options.include_usage`, in a final chunk with `choices: []`, where `prompt_tokens`
includes cached tokens; local servers' reasoning in `delta.reasoning_content` or
`delta.reasoning`; an `{"error": …}` object in the stream after HTTP 200.

Messages: system prompts stay `system` messages in place; an assistant message's tool calls
become `tool_calls`; tool results become `tool` messages with `tool_call_id`.
`openai-compatible` servers get `max_tokens`, the others `max_completion_tokens`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

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
    role_name,
)
from chorus.provider.backends.http import JsonPoster
from chorus.provider.models import ProviderSpec, Usage
from chorus.provider.schemas import tool_schema
from chorus.provider.settings import Settings
from chorus.provider.sse import SSEDecoder
from chorus.provider.toolcalls import ToolCalls
from chorus.v1 import chat_pb2, provider_service_pb2

_TOOL_CHOICE = provider_service_pb2.ToolChoice
_DRAIN_TIMEOUT_S = 0.1


def convert_messages(request: provider_service_pb2.StreamChatRequest) -> list[dict[str, Any]]:
    """The request's messages in Chat Completions shape."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == chat_pb2.ROLE_TOOL:
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
            continue
        msg: dict[str, Any] = {"role": role_name(m.role), "content": m.content}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments or "{}"},
                }
                for c in m.tool_calls
            ]
            if not m.content:
                msg["content"] = None
        out.append(msg)
    return out


def convert_tools(
    request: provider_service_pb2.StreamChatRequest,
) -> tuple[list[dict[str, Any]] | None, Any]:
    """`(tools, tool_choice)` in Chat Completions shape (None when no tools)."""
    if not request.tools:
        return None, None
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": tool_schema(t.parameters),
            },
        }
        for t in request.tools
    ]
    mode = request.tool_choice.mode
    choice: Any = None
    if mode == _TOOL_CHOICE.MODE_NONE:
        choice = "none"
    elif mode == _TOOL_CHOICE.MODE_REQUIRED:
        choice = "required"
    elif mode == _TOOL_CHOICE.MODE_TOOL:
        choice = {"type": "function", "function": {"name": request.tool_choice.tool_name}}
    return tools, choice


def _usage(raw: dict[str, Any]) -> Usage:
    prompt = raw.get("prompt_tokens_details") or {}
    completion = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        cached_input_tokens=int(prompt.get("cached_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        reasoning_tokens=int(completion.get("reasoning_tokens") or 0),
    )


class _ChunkState:
    """Decodes one stream's chunks into events (one `handle` call per SSE event)."""

    __slots__ = ("done", "finish", "provider", "result", "tools")

    def __init__(self, provider: str, result: StreamResult) -> None:
        self.provider = provider
        self.result = result
        self.tools = ToolCalls()
        self.done = False
        self.finish: str | None = None

    def handle(self, data: bytes, out: Deltas) -> bool:
        """Add the events of one chunk to `out`; True at `[DONE]`.

        Raises:
            UpstreamError: a chunk that is not JSON, or an error object in the stream.
        """
        if data[:6] == b"[DONE]":
            self.done = True
            return True
        result = self.result
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.provider}: the upstream sent a chunk that is not JSON",
                reason="UPSTREAM_BAD_STREAM",
            ) from None
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                text = delta.get("content")
                if text:
                    result.output_chars += len(text)
                    out.text(text)
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and isinstance(reasoning, str):
                    result.output_chars += len(reasoning)
                    out.reasoning(reasoning)
                refusal = delta.get("refusal")
                if refusal:
                    out.text(refusal)
                calls = delta.get("tool_calls")
                if calls:
                    for pos, tc in enumerate(calls):
                        fn = tc.get("function") or {}
                        out.add(
                            self.tools.fragment(
                                tc.get("index", pos),
                                tc.get("id") or "",
                                fn.get("name") or "",
                                fn.get("arguments") or "",
                            )
                        )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                out.add(self.tools.end_all())
        elif obj.get("error"):
            error = obj["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.provider}: upstream error mid-stream: {message}",
                reason="UPSTREAM_STREAM_ERROR",
            )
        if not result.response_id and obj.get("id"):
            result.response_id = obj["id"]
        usage = obj.get("usage")
        if usage:
            result.usage = _usage(usage)
        return False


class OpenAIBackend(Backend):
    """Chat Completions over one configured provider of kind `openai`, `azure-openai` or
    `openai-compatible`."""

    def __init__(self, provider: ProviderSpec, settings: Settings) -> None:
        """Raises: ValueError: an `azure-openai` provider without an `api_version` (nor
        `OPENAI_API_VERSION` in the environment, which the SDK read)."""
        self.provider = provider
        self._azure: tuple[str, str] | None = None
        if provider.kind == "azure-openai":
            version = provider.api_version or os.environ.get("OPENAI_API_VERSION")
            if not version:
                raise ValueError(f"{provider.name}: azure-openai needs an api_version")
            endpoint = (provider.base_url or "").rstrip("/")
            self._azure = (
                f"{endpoint}/openai/deployments/",
                f"/chat/completions?api-version={quote(version, safe='')}",
            )
            headers = {"api-key": provider.api_key or ""}
        else:
            base = (provider.base_url or "https://api.openai.com/v1").rstrip("/")
            self._url = URL(f"{base}/chat/completions")
            # OpenAI-compatible servers often want no key; the SDK sent this one.
            headers = {"Authorization": f"Bearer {provider.api_key or 'not-needed'}"}
        self._urls: dict[str, URL] = {}
        self._http = JsonPoster(provider.name, headers, settings)
        self._coalesce = settings.coalesce_deltas
        self._max_tokens_param = (
            "max_tokens" if provider.kind == "openai-compatible" else "max_completion_tokens"
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url_of(self, model: str) -> URL:
        """The chat completions URL for `model` (Azure: its deployment's)."""
        if self._azure is None:
            return self._url
        url = self._urls.get(model)
        if url is None:
            head, tail = self._azure
            url = self._urls[model] = URL(f"{head}{quote(model, safe='')}{tail}")
        return url

    def _params(self, call: Call) -> dict[str, Any]:
        req = call.request
        params: dict[str, Any] = {
            "model": call.model.name,
            "messages": convert_messages(req),
            "stream": True,
            "stream_options": {"include_usage": True},
            self._max_tokens_param: call.max_output_tokens,
        }
        tools, choice = convert_tools(req)
        if tools is not None:
            params["tools"] = tools
            if choice is not None:
                params["tool_choice"] = choice
        if req.HasField("temperature"):
            params["temperature"] = req.temperature
        if req.HasField("top_p"):
            params["top_p"] = req.top_p
        if req.stop:
            params["stop"] = list(req.stop)
        return params

    async def stream(self, call: Call, result: StreamResult) -> AsyncGenerator[Event, None]:
        response = await self._http.post(self._url_of(call.model.name), self._params(call))
        name = self.provider.name
        read = body_reader(response)
        decoder = SSEDecoder()
        state = _ChunkState(name, result)
        deltas = Deltas(self._coalesce)
        # One generator from the socket to the caller: each layer of async generators
        # would cost every token a few µs more.
        try:
            while chunk := await read():
                try:
                    for _, data in decoder.feed(chunk):
                        if state.handle(data, deltas):
                            break
                except (UpstreamError, LookupError, TypeError, ValueError, AttributeError) as exc:
                    for event in deltas.take():  # what came before the error reaches the caller
                        yield event
                    if isinstance(exc, UpstreamError):
                        raise
                    raise bad_shape(name, exc) from exc
                for event in deltas.take():
                    yield event
                if state.done:
                    # Read the end of the body (normally just the chunked terminator) so the
                    # connection goes back to the pool; a server that keeps it open loses it.
                    try:
                        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                            while await read():
                                pass
                    except (TimeoutError, *READ_ERRORS):
                        pass
                    break
        except READ_ERRORS as err:
            raise disconnected(name, err) from None
        finally:
            response.release()
        finish = state.finish
        if finish is None:
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"{name}: the upstream closed the stream before it finished",
                reason="UPSTREAM_DISCONNECTED",
            )
        for event in state.tools.end_all():
            yield event
        result.finish_reason = finish_reason_of(finish)
        result.raw_finish_reason = finish
