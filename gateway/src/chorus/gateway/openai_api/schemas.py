"""Request bodies of the OpenAI-compatible API (pydantic), as the `openai` SDK sends them.

Fields Chorus does not use are accepted and ignored (clients send many: `top_p`, `user`,
`include`, …) unless they would change what the caller gets; those are refused with a 400
naming the field (`unsupported`). Chorus's own controls travel in the `chorus` object
(`extra_body={"chorus": {...}}` in the SDK).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chorus.core.errors import InvalidArgument
from chorus.gateway.errors import validation_error

MAX_METADATA = 16
"""OpenAI's metadata limits: 16 pairs, keys ≤ 64 and values ≤ 512 characters."""


class ChorusOptions(BaseModel):
    """Chorus-specific controls (`extra_body={"chorus": {...}}`).

    Attributes:
        max_turns: the run's turn limit (1..the server's cap); default: the team's.
        model_overrides: agent name → `provider/model` for that agent, e.g.
            `{"Ada": "openai/gpt-4o-mini"}`.
    """

    model_config = ConfigDict(extra="forbid")

    max_turns: int | None = Field(None, ge=1, le=1000)
    model_overrides: dict[str, str] = Field(default_factory=dict, max_length=16)


class CreateResponseBody(BaseModel):
    """`POST /v1/responses` (openai `responses.create`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=96)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool | None = False
    background: bool | None = False
    previous_response_id: str | None = Field(None, max_length=100)
    conversation: str | dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    store: bool | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    prompt: Any = None
    chorus: ChorusOptions | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} pairs")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("keys are at most 64 and values at most 512 characters")
        return value


class StreamOptions(BaseModel):
    """`stream_options` of a chat completion."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = False


class ChatCompletionBody(BaseModel):
    """`POST /v1/chat/completions` (openai `chat.completions.create`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=96)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    chorus: ChorusOptions | None = None


def parse(model: type[BaseModel], data: dict[str, object]) -> Any:
    """`data` validated as `model`.

    Raises:
        InvalidArgument: one field violation per problem (HTTP 400, `param` = the first).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False, include_input=False)) from None


def unsupported(param: str, message: str) -> InvalidArgument:
    """400 for a parameter Chorus cannot honour (reason UNSUPPORTED_PARAMETER)."""
    return InvalidArgument(message, [(param, message)], reason="UNSUPPORTED_PARAMETER")


def reject_client_tools(tools: Any, tool_choice: Any) -> None:
    """400 UNSUPPORTED_PARAMETER for client-defined tools (param `tools`) and for a
    `tool_choice` other than `auto` / `none`: a team's agents call the server's tools."""
    if tools:
        raise unsupported(
            "tools",
            "client-defined tools are not supported: a team's agents call the server's tools, "
            "which run on the server",
        )
    if tool_choice not in (None, "auto", "none"):
        raise unsupported("tool_choice", "only 'auto' and 'none' are supported")


def openapi_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The `openapi_extra` of a route whose JSON body is `model` (parsed by hand, so
    FastAPI does not document it): a required `application/json` body with its schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
