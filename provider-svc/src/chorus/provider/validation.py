"""Checks a StreamChatRequest before anything is sent upstream, and resolves its models.

Every field problem is collected and raised together as INVALID_ARGUMENT with one
`BadRequest` field violation each (field paths as in the proto, e.g. `messages[2].role`,
`tools[0].parameters`). Only then are the models resolved: NOT_FOUND for an unknown provider
or model (reasons UNKNOWN_PROVIDER / UNKNOWN_MODEL), FAILED_PRECONDITION for a provider
without credentials (MISSING_CREDENTIALS). Limits come from the proto comments and settings.
"""

from __future__ import annotations

import re

import orjson

from chorus.core.errors import InvalidArgument, Violations
from chorus.provider.models import Catalog, ModelSpec
from chorus.provider.schemas import schema_problem, struct_to_dict
from chorus.provider.settings import Settings
from chorus.v1 import chat_pb2, provider_service_pb2

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_STOP = 4
MAX_FALLBACKS = 8
MAX_METADATA = 64
MAX_SIMULATED_OUTPUT = 100_000
MAX_SIMULATED_DELAY_S = 3600

_Mode = provider_service_pb2.ToolChoice.Mode
_Fault = chat_pb2.SimulatorFault
_ROLES = (chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT, chat_pb2.ROLE_TOOL)


def _json_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def _check_messages(
    request: provider_service_pb2.StreamChatRequest, settings: Settings, v: Violations
) -> None:
    if not request.messages:
        v.add("messages", "at least one message is required")
        return
    size = 0
    call_ids: set[str] = set()
    for i, m in enumerate(request.messages):
        f = f"messages[{i}]"
        size += m.ByteSize()
        if m.role not in _ROLES:
            v.add(f"{f}.role", "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
            continue
        if m.role in (chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_USER) and not m.content:
            v.add(f"{f}.content", "must not be empty")
        if m.tool_calls and m.role != chat_pb2.ROLE_ASSISTANT:
            v.add(f"{f}.tool_calls", "only assistant messages carry tool calls")
        if m.role == chat_pb2.ROLE_ASSISTANT and not m.content and not m.tool_calls:
            v.add(f"{f}.content", "an assistant message needs content or tool calls")
        for j, c in enumerate(m.tool_calls):
            cf = f"{f}.tool_calls[{j}]"
            if not c.id:
                v.add(f"{cf}.id", "is required")
            call_ids.add(c.id)
            if not TOOL_NAME.match(c.name):
                v.add(f"{cf}.name", "must match ^[a-zA-Z0-9_-]{1,64}$")
            if c.arguments and not _json_object(c.arguments):
                v.add(f"{cf}.arguments", "must be a JSON object text")
        if m.role == chat_pb2.ROLE_TOOL:
            if not m.tool_call_id:
                v.add(f"{f}.tool_call_id", "is required for ROLE_TOOL")
            elif m.tool_call_id not in call_ids:
                v.add(f"{f}.tool_call_id", "does not answer a tool call of an earlier message")
    if size > settings.max_input_bytes:
        v.add(
            "messages",
            f"total size {size} bytes exceeds the limit of {settings.max_input_bytes} bytes",
        )


def _check_tools(request: provider_service_pb2.StreamChatRequest, v: Violations) -> None:
    names: set[str] = set()
    for i, t in enumerate(request.tools):
        f = f"tools[{i}]"
        if not TOOL_NAME.match(t.name):
            v.add(f"{f}.name", "must match ^[a-zA-Z0-9_-]{1,64}$")
        elif t.name in names:
            v.add(f"{f}.name", f"duplicate tool name {t.name!r}")
        names.add(t.name)
        if t.parameters.fields:
            problem = schema_problem(struct_to_dict(t.parameters))
            if problem:
                v.add(f"{f}.parameters", problem)
    mode = request.tool_choice.mode
    if mode not in _Mode.values():
        v.add("tool_choice.mode", "unknown mode")
    if mode in (_Mode.MODE_REQUIRED, _Mode.MODE_TOOL) and not request.tools:
        v.add("tool_choice.mode", "requires at least one tool")
    if mode == _Mode.MODE_TOOL and request.tool_choice.tool_name not in names:
        v.add("tool_choice.tool_name", "must name one of the request's tools")


def _check_sampling(request: provider_service_pb2.StreamChatRequest, v: Violations) -> None:
    if request.HasField("temperature") and not 0 <= request.temperature <= 2:
        v.add("temperature", "must be between 0 and 2")
    if request.HasField("top_p") and not 0 < request.top_p <= 1:
        v.add("top_p", "must be greater than 0 and at most 1")
    if request.HasField("max_output_tokens") and not 1 <= request.max_output_tokens <= 1_000_000:
        v.add("max_output_tokens", "must be between 1 and 1000000")
    if len(request.stop) > MAX_STOP:
        v.add("stop", f"at most {MAX_STOP} stop sequences")
    for i, s in enumerate(request.stop):
        if not s:
            v.add(f"stop[{i}]", "must not be empty")
    if len(request.fallbacks) > MAX_FALLBACKS:
        v.add("fallbacks", f"at most {MAX_FALLBACKS} fallback models")
    if len(request.metadata) > MAX_METADATA:
        v.add("metadata", f"at most {MAX_METADATA} entries")
    for key, value in request.metadata.items():
        if not 0 < len(key) <= 128 or len(value) > 1024:
            v.add(f"metadata[{key[:32]!r}]", "keys are 1..128 and values at most 1024 characters")


def _check_simulator(request: provider_service_pb2.StreamChatRequest, v: Violations) -> None:
    if not request.HasField("simulator"):
        return
    s = request.simulator
    if s.HasField("tokens_per_second") and s.tokens_per_second < 0:
        v.add("simulator.tokens_per_second", "must not be negative (0 = as fast as possible)")
    if not 0 <= s.output_tokens <= MAX_SIMULATED_OUTPUT:
        v.add("simulator.output_tokens", f"must be between 0 and {MAX_SIMULATED_OUTPUT}")
    if s.HasField("time_to_first_token"):
        seconds = s.time_to_first_token.ToNanoseconds() / 1e9
        if not 0 <= seconds <= MAX_SIMULATED_DELAY_S:
            v.add("simulator.time_to_first_token", f"must be 0..{MAX_SIMULATED_DELAY_S} s")
    fault = s.fault
    if fault.kind not in _Fault.Kind.values():
        v.add("simulator.fault.kind", "unknown fault kind")
    if fault.after_tokens < 0:
        v.add("simulator.fault.after_tokens", "must not be negative")
    if fault.attempts < 0:
        v.add("simulator.fault.attempts", "must not be negative")
    if fault.retry_after.ToNanoseconds() < 0:
        v.add("simulator.fault.retry_after", "must not be negative")


def resolve_models(
    request: provider_service_pb2.StreamChatRequest, catalog: Catalog, settings: Settings
) -> list[ModelSpec]:
    """Validate `request`; return the models to try (the request's, then its fallbacks).

    Raises:
        InvalidArgument: with a BadRequest violation per bad field.
        NotFound: unknown provider or model (the request's or a fallback's).
        FailedPrecondition: a provider without credentials.
    """
    v = Violations()
    _check_messages(request, settings, v)
    _check_tools(request, v)
    _check_sampling(request, v)
    _check_simulator(request, v)
    v.raise_if_any()
    models = [catalog.resolve(request.model, field="model")]
    for i, ref in enumerate(request.fallbacks):
        spec = catalog.resolve(ref, field=f"fallbacks[{i}]")
        if all(spec.key != m.key for m in models):
            models.append(spec)
    if request.tools and not models[0].capabilities.tools:
        raise InvalidArgument(
            f"model {models[0].provider.name}/{models[0].name} does not support tools",
            [("tools", "the model does not accept tool definitions")],
            reason="TOOLS_NOT_SUPPORTED",
        )
    return models


def max_output_tokens(
    request: provider_service_pb2.StreamChatRequest, model: ModelSpec, settings: Settings
) -> int:
    """The output limit sent upstream: the request's, else the model's, else the default."""
    if request.HasField("max_output_tokens"):
        return request.max_output_tokens
    return model.max_output_tokens or settings.default_max_output_tokens
