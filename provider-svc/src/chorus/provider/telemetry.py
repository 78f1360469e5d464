"""The span of one model call, after the OpenTelemetry GenAI semantic conventions.

`ModelCallSpan.start` opens a CLIENT span `chat {model}` (provider-svc calls the upstream
LLM API) as a child of the current span — the RPC server span of StreamChat, or of one
StreamChats stream — with `gen_ai.operation.name=chat`, `gen_ai.provider.name`,
`gen_ai.request.model` and the sampling parameters; `finish` adds the answering model
(`gen_ai.response.model`, a fallback's when one answered), `gen_ai.response.id`,
`gen_ai.usage.input_tokens` / `output_tokens` (and cache reads / writes) and
`gen_ai.response.finish_reasons`; `fail` marks it failed (`error.type` = the gRPC code
name). With `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` it also carries
`gen_ai.system_instructions`, `gen_ai.input.messages` and `gen_ai.output.messages` (JSON,
the conventions' parts format); never otherwise.

Everything is a no-op when tracing is off (`start` returns None and nothing is built).
"""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.trace import Status, StatusCode

from chorus.core import tracing
from chorus.provider.models import ModelSpec, Usage
from chorus.v1 import chat_pb2, provider_service_pb2

_PROVIDER_NAMES = {
    "openai": "openai",
    "azure-openai": "azure.ai.openai",
    "anthropic": "anthropic",
}
"""Provider kind → the conventions' well-known `gen_ai.provider.name`; other kinds
(openai-compatible servers, the simulator) use the configured provider's name."""

_ROLES = {
    chat_pb2.ROLE_SYSTEM: "system",
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
    chat_pb2.ROLE_TOOL: "tool",
}


def provider_name(model: ModelSpec) -> str:
    """`gen_ai.provider.name` of a model's provider."""
    return _PROVIDER_NAMES.get(model.provider.kind, model.provider.name)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return text


def input_messages(
    request: provider_service_pb2.StreamChatRequest,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system instructions, input messages) of a request in the conventions' parts format."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == chat_pb2.ROLE_SYSTEM:
            system.append({"type": "text", "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        if m.role == chat_pb2.ROLE_TOOL:
            parts.append(
                {"type": "tool_call_response", "id": m.tool_call_id, "response": m.content}
            )
        elif m.content:
            parts.append({"type": "text", "content": m.content})
        for call in m.tool_calls:
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": _arguments(call.arguments),
                }
            )
        message: dict[str, Any] = {"role": _ROLES.get(m.role, "user"), "parts": parts}
        if m.name:
            message["name"] = m.name
        messages.append(message)
    return system, messages


class ModelCallSpan:
    """The span of one model call (see the module docstring). Build it with `start`."""

    __slots__ = ("_span", "_text", "_tool_calls")

    def __init__(self, span: Any, capture: bool) -> None:
        self._span = span
        self._text: list[str] | None = [] if capture else None
        self._tool_calls: list[dict[str, Any]] = []

    @classmethod
    def start(
        cls,
        request: provider_service_pb2.StreamChatRequest,
        model: ModelSpec,
        max_tokens: int | None,
    ) -> ModelCallSpan | None:
        """The span of `request` to `model` (the first model to try), started now; None
        when tracing is off."""
        if not tracing.enabled():
            return None
        attributes: dict[str, Any] = {
            tracing.GEN_AI_OPERATION_NAME: "chat",
            tracing.GEN_AI_PROVIDER_NAME: provider_name(model),
            tracing.GEN_AI_REQUEST_MODEL: model.name,
            "chorus.provider": model.provider.name,
        }
        if request.HasField("temperature"):
            attributes[tracing.GEN_AI_REQUEST_TEMPERATURE] = request.temperature
        if request.HasField("top_p"):
            attributes[tracing.GEN_AI_REQUEST_TOP_P] = request.top_p
        if max_tokens is not None:
            attributes[tracing.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
        if request.stop:
            attributes[tracing.GEN_AI_REQUEST_STOP_SEQUENCES] = list(request.stop)
        for key in ("run_id", "agent"):
            if key in request.metadata:
                attributes[f"chorus.{key}"] = request.metadata[key]
        capture = tracing.capture_content()
        if capture:
            system, messages = input_messages(request)
            if system:
                attributes[tracing.GEN_AI_SYSTEM_INSTRUCTIONS] = _json(system)
            attributes[tracing.GEN_AI_INPUT_MESSAGES] = _json(messages)
        span = tracing.start_span(
            f"chat {model.name}", kind=tracing.SPAN_KIND_CLIENT, attributes=attributes
        )
        return cls(span, capture) if span is not None else None

    @property
    def captures(self) -> bool:
        """Whether `observe` must see every event (message content is captured)."""
        return self._text is not None

    def observe(self, event: provider_service_pb2.StreamChatResponse) -> None:
        """Collect the output's text and tool calls (only when `captures`)."""
        if self._text is None:
            return
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            self._text.append(event.text_delta.text)
        elif kind == "tool_call_end":
            call = event.tool_call_end.call
            self._tool_calls.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": _arguments(call.arguments),
                }
            )

    def finish(self, model: ModelSpec, usage: Usage, response_id: str, finish_reason: str) -> None:
        """The call ended normally: response attributes and usage; the span ends."""
        span = self._span
        span.set_attribute(tracing.GEN_AI_RESPONSE_MODEL, model.name)
        if response_id:
            span.set_attribute(tracing.GEN_AI_RESPONSE_ID, response_id)
        span.set_attribute(tracing.GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens)
        span.set_attribute(tracing.GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens)
        if usage.cached_input_tokens:
            span.set_attribute(
                tracing.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, usage.cached_input_tokens
            )
        if usage.cache_write_tokens:
            span.set_attribute(
                tracing.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, usage.cache_write_tokens
            )
        if usage.estimated:
            span.set_attribute("chorus.usage.estimated", True)
        span.set_attribute(tracing.GEN_AI_RESPONSE_FINISH_REASONS, [finish_reason or "unknown"])
        if self._text is not None:
            parts: list[dict[str, Any]] = []
            if self._text:
                parts.append({"type": "text", "content": "".join(self._text)})
            parts.extend(self._tool_calls)
            span.set_attribute(
                tracing.GEN_AI_OUTPUT_MESSAGES,
                _json([{"role": "assistant", "parts": parts, "finish_reason": finish_reason}]),
            )
        span.end()

    def fail(self, error: BaseException, model: ModelSpec | None = None) -> None:
        """The call failed (or was cancelled): `error.type`, status ERROR; the span ends."""
        if model is not None:
            self._span.set_attribute(tracing.GEN_AI_RESPONSE_MODEL, model.name)
        tracing.end_span(self._span, error)

    def fail_upstream(self, code_name: str, message: str, model: ModelSpec) -> None:
        """The stream failed after `start` (an `error` event): `error.type` = the code."""
        span = self._span
        span.set_attribute(tracing.GEN_AI_RESPONSE_MODEL, model.name)
        span.set_attribute(tracing.ERROR_TYPE, code_name)
        span.set_status(Status(StatusCode.ERROR, message[:500]))
        span.end()
