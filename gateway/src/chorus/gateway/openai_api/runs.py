"""From an OpenAI request to a Chorus run: the model, the input, the team's overrides.

* model `chorus/<template>` runs that team template; `<provider>/<model>` (a model whose
  credentials are configured) runs the SINGLE `assistant` template on that model.
* `instructions` (and `system` / `developer` messages) are appended to every agent's
  system prompt after `mapping.INSTRUCTIONS_MARKER`; `temperature` and the output-token
  limit apply to every agent.
* The run's input is the last user message; earlier messages of the request come before it
  as a transcript (`role: text` lines), so every kind of team sees them.
* The run's `request_id` carries the model and flags (`mapping.request_id`): a response is
  rebuilt from its run record alone, on any replica. An `Idempotency-Key` header makes a
  retried create return the same run.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chorus.core.errors import InvalidArgument, NotFound
from chorus.gateway.api.deps import check_text
from chorus.gateway.openai_api import mapping
from chorus.gateway.openai_api.schemas import ChorusOptions, unsupported
from chorus.gateway.settings import GatewaySettings
from chorus.v1 import (
    chat_pb2,
    provider_service_pb2,
    provider_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    team_pb2,
)

TEAM_PREFIX = "chorus/"
ASSISTANT_TEMPLATE = "assistant"
_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = ("user", "assistant", "system", "developer")


@dataclass(frozen=True)
class Model:
    """An OpenAI model id and what it runs.

    Attributes:
        id: `chorus/<template>` or `<provider>/<model>`.
        owned_by: `chorus` or the provider.
        template: the team template it runs.
        ref: for a provider model, the model every agent of the template runs on.
    """

    id: str
    owned_by: str
    template: team_pb2.TeamTemplate
    ref: chat_pb2.ModelRef | None = None


async def list_models(
    runs: run_service_pb2_grpc.RunServiceStub,
    provider: provider_service_pb2_grpc.ProviderServiceStub,
    timeout: float,
) -> list[Model]:
    """Every team template as `chorus/<name>`, then every provider model whose credentials
    are present as `<provider>/<model>` (when the `assistant` template exists)."""
    templates = (
        await runs.ListTeamTemplates(run_service_pb2.ListTeamTemplatesRequest(), timeout=timeout)
    ).templates
    out = [Model(TEAM_PREFIX + t.name, "chorus", t) for t in templates]
    assistant = next((t for t in templates if t.name == ASSISTANT_TEMPLATE), None)
    if assistant is None:
        return out
    models = (
        await provider.ListModels(provider_service_pb2.ListModelsRequest(), timeout=timeout)
    ).models
    for model in models:
        if model.credentials_present:
            name = f"{model.ref.provider}/{model.ref.model}"
            out.append(Model(name, model.ref.provider, assistant, model.ref))
    return out


def model_not_found(model: str, param: str = "model") -> NotFound:
    """404 for an unknown model id (OpenAI's `model_not_found`)."""
    return NotFound(
        f"The model '{model[:100]}' does not exist or you do not have access to it; "
        "GET /v1/models lists them.",
        reason="MODEL_NOT_FOUND",
        metadata={"param": param},
    )


async def find_model(
    model: str,
    runs: run_service_pb2_grpc.RunServiceStub,
    provider: provider_service_pb2_grpc.ProviderServiceStub,
    timeout: float,
    param: str = "model",
) -> Model:
    """The model named `model`; `param` is the request field that named it.

    Raises:
        NotFound: no such model (reason MODEL_NOT_FOUND, metadata `param`).
    """
    if "/" not in model:
        raise model_not_found(model, param)
    for candidate in await list_models(runs, provider, timeout):
        if candidate.id == model:
            return candidate
    raise model_not_found(model, param)


ModelFinder = Callable[..., Awaitable[Model]]
"""`find(model_id, param="model")`: the model, or 404 MODEL_NOT_FOUND naming `param`."""


def model_finder(
    runs: run_service_pb2_grpc.RunServiceStub,
    provider: provider_service_pb2_grpc.ProviderServiceStub,
    timeout: float,
) -> ModelFinder:
    """`find_model` bound to the request's stubs and timeout (the `find` of `build_spec`)."""

    async def find(model_id: str, param: str = "model") -> Model:
        return await find_model(model_id, runs, provider, timeout, param)

    return find


def _parts_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidArgument("content must be a string or a list of parts", [(param, "invalid")])
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise unsupported(
                f"{param}[{j}]",
                f"only text content is supported (got {str(kind)[:40]!r}); images, files and "
                "audio are not",
            )
        texts.append(part["text"])
    return "".join(texts)


@dataclass
class Conversation:
    """The messages of a request: instructions, earlier turns, the new user message."""

    instructions: list[str]
    earlier: list[tuple[str, str]]
    last: str


def split_messages(items: Sequence[Any], param: str, *, chat: bool) -> Conversation:
    """System / developer messages, the earlier turns and the last user message of a list
    of input items (Responses) or messages (Chat Completions).

    Raises:
        InvalidArgument: a non-message item (tool outputs, item references …), an unknown
            role, non-text content, or no user message last.
    """
    instructions: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        path = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument("each item must be an object", [(path, "must be an object")])
        kind = item.get("type", "message")
        role = item.get("role")
        if (
            kind != "message"
            or role not in _ROLES
            or (chat and role not in ("user", "assistant", "system", "developer"))
        ):
            what = str(role if kind == "message" else kind)[:40]
            raise unsupported(
                path,
                f"unsupported {'message role' if kind == 'message' else 'input item type'} "
                f"{what!r}: Chorus takes text messages (user, assistant, system, developer); "
                "tools run on the server, so tool outputs and function calls cannot be sent",
            )
        text = _parts_text(item.get("content", ""), f"{path}.content")
        if role in ("system", "developer"):
            if text.strip():
                instructions.append(text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise InvalidArgument(
            "the last message must be the user's", [(param, "end with a user message")]
        )
    return Conversation(instructions, turns[:-1], turns[-1][1])


def run_input(conversation: Conversation) -> str:
    """The run's input: the last user message, after a transcript of earlier turns."""
    if not conversation.earlier:
        return conversation.last
    lines = [f"{role}: {text}" for role, text in conversation.earlier]
    return "Conversation so far:\n" + "\n".join(lines) + "\n\nuser: " + conversation.last


def idempotency_key(header: str | None) -> str:
    """22 characters keying the run's `request_id`: a digest of the `Idempotency-Key`
    header, or random."""
    if header and header.strip():
        return hashlib.sha256(header.strip().encode()).hexdigest()[:22]
    return uuid.uuid4().hex[:22]


async def build_spec(
    *,
    model: Model,
    input_text: str,
    instructions: str | None,
    temperature: float | None,
    max_output_tokens: int | None,
    options: ChorusOptions | None,
    conversation_id: str,
    background: bool,
    key: str,
    on_disconnect: run_pb2.OnDisconnect,
    store: bool = True,
    previous_run: str = "",
    settings: GatewaySettings,
    find: ModelFinder,
) -> run_pb2.RunSpec:
    """The RunSpec of a request (`find(model_id)` resolves model overrides). `store` and
    `previous_run` (the run of the request's `previous_response_id`) travel in the
    spec's `request_id` (`mapping.request_id`).

    Raises:
        InvalidArgument: an empty or oversized input or instructions, a bad override.
    """
    check_text(input_text, "input", settings)
    if instructions is not None:
        check_text(instructions, "instructions", settings, required=False)
    spec = run_pb2.RunSpec(
        input=input_text,
        conversation_id=conversation_id,
        request_id=mapping.request_id(
            model.id, key, background=background, store=store, previous_run=previous_run
        ),
        on_disconnect=on_disconnect,
    )
    team = team_pb2.TeamSpec()
    team.CopyFrom(model.template.spec)
    changed = False
    for agent in team.agents:
        if model.ref is not None:
            agent.model.CopyFrom(model.ref)
            changed = True
        if instructions:
            agent.system_prompt += mapping.INSTRUCTIONS_MARKER + instructions
            changed = True
        if temperature is not None:
            agent.temperature = temperature
            changed = True
        if max_output_tokens is not None:
            agent.max_output_tokens = max_output_tokens
            changed = True
    if options is not None:
        if options.max_turns is not None:
            spec.max_turns = options.max_turns
        names = {a.name for a in team.agents}
        for agent_name, model_id in options.model_overrides.items():
            param = f"chorus.model_overrides.{agent_name}"
            if agent_name not in names:
                raise InvalidArgument(
                    f"no agent named {agent_name[:64]!r} in {model.id}",
                    [(param, f"one of {', '.join(sorted(names))}")],
                )
            target = await find(model_id, param)
            if target.ref is None:
                raise InvalidArgument(
                    "a model override names a provider model", [(param, "e.g. openai/gpt-4o-mini")]
                )
            spec.model_overrides[agent_name].CopyFrom(target.ref)
    if changed:
        spec.team.CopyFrom(team)
    else:
        spec.template = model.template.name
    return spec
