"""Run specs and agent updates: checked completely, then resolved, before anything is stored.

`resolve_run_spec` turns a client's `RunSpec` into the frozen spec of a run: the template
expanded into `team`, `model_overrides` applied to the agents, `max_turns` made explicit.
Every problem is collected and reported at once as INVALID_ARGUMENT with `BadRequest` field
violations whose paths name the field (`spec.team.agents[1].name`), per AIP-193. The caps
come from settings (README "Settings"); the field rules come from the proto comments.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence

from chorus.core.errors import Violations
from chorus.orchestrator.catalog import ModelCatalog
from chorus.orchestrator.settings import Settings
from chorus.orchestrator.tools.registry import ToolRegistry
from chorus.v1 import chat_pb2, run_pb2, team_pb2

AGENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
"""Valid agent names (AgentSpec.name)."""
RESERVED_AGENT_NAMES = frozenset({"user", "system", "magenticoneorchestrator"})
"""Names autogen uses for the task's author and its orchestrator (compared case-insensitively)."""
MAX_SYSTEM_PROMPT_BYTES = 32 * 1024
MAX_DESCRIPTION_CHARS = 4096
MAX_TERMINATION_TEXT_CHARS = 1000
MAX_SELECTOR_PROMPT_BYTES = 32 * 1024
MAX_REQUEST_ID_CHARS = 128
MAX_OUTPUT_TOKENS = 1_000_000
MIN_INPUT_TIMEOUT_S = 1
MAX_INPUT_TIMEOUT_S = 30 * 24 * 3600
"""`TeamSpec.input_timeout` bounds (issue 21): 1 s..30 days."""
UPDATABLE_AGENT_FIELDS = ("system_prompt", "temperature", "model")
"""Update-mask paths UpdateRunAgent accepts."""


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def check_model(v: Violations, path: str, ref: chat_pb2.ModelRef, catalog: ModelCatalog) -> None:
    """Record a violation at `path.provider` / `path.model` when provider-svc cannot serve `ref`."""
    problem = catalog.check(ref)
    if problem is not None:
        v.add(f"{path}.{problem[0]}", problem[1])


def check_agent(
    v: Violations,
    path: str,
    agent: team_pb2.AgentSpec,
    *,
    tools: ToolRegistry,
    catalog: ModelCatalog,
) -> None:
    """Record every violation of one agent's spec (name uniqueness is the team's job)."""
    if not agent.name:
        v.add(f"{path}.name", "required")
    elif not AGENT_NAME.match(agent.name):
        v.add(f"{path}.name", "must match ^[A-Za-z][A-Za-z0-9_]{0,63}$")
    elif agent.name.lower() in RESERVED_AGENT_NAMES:
        v.add(f"{path}.name", f"{agent.name!r} is reserved")
    if len(agent.description) > MAX_DESCRIPTION_CHARS:
        v.add(f"{path}.description", f"at most {MAX_DESCRIPTION_CHARS} characters")
    if len(agent.system_prompt.encode()) > MAX_SYSTEM_PROMPT_BYTES:
        v.add(f"{path}.system_prompt", f"at most {MAX_SYSTEM_PROMPT_BYTES} bytes")
    if agent.human:  # a person: no model, no tools (issue 21)
        for name in ("model", "temperature", "max_output_tokens", "simulator"):
            if agent.HasField(name):
                v.add(f"{path}.{name}", "must be unset for a human agent")
        for name in ("tools", "tools_requiring_approval"):
            if getattr(agent, name):
                v.add(f"{path}.{name}", "must be empty for a human agent")
        return
    if not agent.HasField("model"):
        v.add(f"{path}.model", "required")
    else:
        check_model(v, f"{path}.model", agent.model, catalog)
    if agent.HasField("temperature") and not 0 <= agent.temperature <= 2:
        v.add(f"{path}.temperature", "must be 0..2")
    if (
        agent.HasField("max_output_tokens")
        and not 1 <= agent.max_output_tokens <= MAX_OUTPUT_TOKENS
    ):
        v.add(f"{path}.max_output_tokens", f"must be 1..{MAX_OUTPUT_TOKENS}")
    seen: set[str] = set()
    for j, name in enumerate(agent.tools):
        if name not in tools:
            known = ", ".join(tools.names())
            v.add(f"{path}.tools[{j}]", f"unknown tool {name!r}; available: {known}")
        elif name in seen:
            v.add(f"{path}.tools[{j}]", f"duplicate tool {name!r}")
        seen.add(name)
    for j, name in enumerate(agent.tools_requiring_approval):
        if name not in seen:
            v.add(
                f"{path}.tools_requiring_approval[{j}]",
                f"{name!r} is not one of the agent's tools",
            )


def check_team(
    v: Violations,
    path: str,
    team: team_pb2.TeamSpec,
    *,
    tools: ToolRegistry,
    catalog: ModelCatalog,
    settings: Settings,
) -> None:
    """Record every violation of a team spec."""
    kind = team.kind
    if kind == team_pb2.TEAM_KIND_UNSPECIFIED or kind not in team_pb2.TeamKind.values():
        v.add(f"{path}.kind", "required: ROUND_ROBIN, SELECTOR, MAGENTIC_ONE, SEQUENTIAL or SINGLE")
    n = len(team.agents)
    if n == 0:
        v.add(f"{path}.agents", "at least one agent is required")
    elif n > settings.max_agents:
        v.add(f"{path}.agents", f"at most {settings.max_agents} agents")
    elif kind == team_pb2.TEAM_KIND_SINGLE and n != 1:
        v.add(f"{path}.agents", "a SINGLE team has exactly one agent")
    elif kind == team_pb2.TEAM_KIND_SELECTOR and n < 2:
        v.add(f"{path}.agents", "a SELECTOR team needs at least two agents")
    if n and all(agent.human for agent in team.agents):
        v.add(f"{path}.agents", "at least one agent must be a model (not `human`)")
    elif kind == team_pb2.TEAM_KIND_SINGLE and n == 1 and team.agents[0].human:
        v.add(f"{path}.agents[0].human", "a SINGLE team's agent is a model")
    for j, name in enumerate(team.tools_requiring_approval):
        if name not in tools:
            v.add(f"{path}.tools_requiring_approval[{j}]", f"unknown tool {name!r}")
    if team.HasField("input_timeout"):
        timeout_s = team.input_timeout.ToNanoseconds() / 1e9
        if not MIN_INPUT_TIMEOUT_S <= timeout_s <= MAX_INPUT_TIMEOUT_S:
            v.add(f"{path}.input_timeout", "must be 1 s..30 days")
    first: dict[str, int] = {}
    for i, agent in enumerate(team.agents):
        check_agent(v, f"{path}.agents[{i}]", agent, tools=tools, catalog=catalog)
        key = agent.name.lower()
        if agent.name and key in first:
            v.add(
                f"{path}.agents[{i}].name",
                f"duplicate agent name {agent.name!r} (also agents[{first[key]}])",
            )
        first.setdefault(key, i)
    if team.HasField("orchestrator_model"):
        check_model(v, f"{path}.orchestrator_model", team.orchestrator_model, catalog)
    if len(team.termination_text) > MAX_TERMINATION_TEXT_CHARS:
        v.add(f"{path}.termination_text", f"at most {MAX_TERMINATION_TEXT_CHARS} characters")
    if len(team.selector_prompt.encode()) > MAX_SELECTOR_PROMPT_BYTES:
        v.add(f"{path}.selector_prompt", f"at most {MAX_SELECTOR_PROMPT_BYTES} bytes")
    if not 0 <= team.max_turns <= settings.max_turns_cap:
        v.add(
            f"{path}.max_turns",
            f"must be 1..{settings.max_turns_cap} (0 for the server default)",
        )


def resolve_run_spec(
    spec: run_pb2.RunSpec,
    *,
    templates: Mapping[str, team_pb2.TeamTemplate],
    tools: ToolRegistry,
    catalog: ModelCatalog,
    settings: Settings,
) -> run_pb2.RunSpec:
    """The frozen spec of a new run: template expanded, overrides applied, turn limit set.

    Raises:
        chorus.core.errors.InvalidArgument: with a field violation for every problem, e.g.
            `spec.template` (unknown), `spec.team.agents` (empty), `spec.team.agents[1].name`
            (duplicate), `spec.max_turns` (out of 1..cap), `spec.team.agents[0].tools[0]`
            (unknown tool), `spec.team.agents[0].model.provider` (unknown provider).
    """
    v = Violations()
    resolved = run_pb2.RunSpec()
    resolved.CopyFrom(spec)
    team_path = "spec.team"
    if spec.template and spec.HasField("team"):
        v.add("spec.team", "give either `template` or `team`, not both")
    elif spec.template:
        template = templates.get(spec.template)
        if template is None:
            known = ", ".join(sorted(templates))
            v.add("spec.template", f"unknown template {spec.template!r}; available: {known}")
        else:
            resolved.team.CopyFrom(template.spec)
    elif not spec.HasField("team"):
        v.add("spec.template", "required: a template name or an inline `team`")

    input_bytes = len(spec.input.encode())
    if input_bytes == 0:
        v.add("spec.input", "required: the topic, task or message")
    elif input_bytes > settings.max_input_bytes:
        v.add("spec.input", f"at most {settings.max_input_bytes} bytes (got {input_bytes})")
    if spec.conversation_id and not _is_uuid(spec.conversation_id):
        v.add("spec.conversation_id", "must be a UUID")
    if len(spec.request_id) > MAX_REQUEST_ID_CHARS:
        v.add("spec.request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
    if spec.on_disconnect not in run_pb2.OnDisconnect.values():
        v.add("spec.on_disconnect", "must be CONTINUE or CANCEL")
    if spec.HasField("max_turns") and not 1 <= spec.max_turns <= settings.max_turns_cap:
        v.add(
            "spec.max_turns",
            f"must be 1..{settings.max_turns_cap} (leave it unset for the team's default)",
        )

    if resolved.HasField("team"):
        agents = {a.name: a for a in resolved.team.agents}
        for name, ref in spec.model_overrides.items():
            path = f"spec.model_overrides[{name}]"
            if name not in agents:
                v.add(path, f"no agent named {name!r} in the team")
                continue
            if agents[name].human:
                v.add(path, f"agent {name!r} is human: it calls no model")
                continue
            problem = catalog.check(ref)
            if problem is not None:
                v.add(f"{path}.{problem[0]}", problem[1])
                continue
            agents[name].model.CopyFrom(ref)
        # A template's own fields are trusted less than nothing: check them all the same,
        # so a bad template or a bad override is reported rather than failing mid-run.
        check_team(v, team_path, resolved.team, tools=tools, catalog=catalog, settings=settings)
    v.raise_if_any("invalid run spec")

    team = resolved.team
    if team.kind == team_pb2.TEAM_KIND_SINGLE:
        resolved.max_turns = 1  # one reply per run; the conversation carries the rest
    elif not spec.HasField("max_turns"):
        resolved.max_turns = team.max_turns or settings.default_max_turns
    if resolved.on_disconnect == run_pb2.ON_DISCONNECT_UNSPECIFIED:
        resolved.on_disconnect = run_pb2.ON_DISCONNECT_CONTINUE
    return resolved


def resolve_agent_update(
    current: team_pb2.AgentSpec,
    update: team_pb2.AgentSpec,
    paths: Sequence[str],
    *,
    catalog: ModelCatalog | None,
) -> team_pb2.AgentSpec:
    """The agent's spec after UpdateRunAgent applies `update` at `paths`; `catalog` is
    needed (not None) only when `model` is one of them.

    Raises:
        chorus.core.errors.InvalidArgument: empty or unknown mask paths, or an invalid value
            (`agent.temperature` outside 0..2, oversized `agent.system_prompt`, a model
            provider-svc cannot serve).
    """
    v = Violations()
    if not paths:
        v.add("update_mask", f"required: one or more of {', '.join(UPDATABLE_AGENT_FIELDS)}")
    for i, path in enumerate(paths):
        if path not in UPDATABLE_AGENT_FIELDS:
            v.add(
                f"update_mask.paths[{i}]",
                f"cannot update {path!r}; updatable: {', '.join(UPDATABLE_AGENT_FIELDS)}",
            )
    after = team_pb2.AgentSpec()
    after.CopyFrom(current)
    if "system_prompt" in paths:
        if len(update.system_prompt.encode()) > MAX_SYSTEM_PROMPT_BYTES:
            v.add("agent.system_prompt", f"at most {MAX_SYSTEM_PROMPT_BYTES} bytes")
        after.system_prompt = update.system_prompt
    if "temperature" in paths:
        if update.HasField("temperature"):
            if not 0 <= update.temperature <= 2:
                v.add("agent.temperature", "must be 0..2")
            after.temperature = update.temperature
        else:  # masked but unset: back to the provider's default
            after.ClearField("temperature")
    if "model" in paths:
        if not update.HasField("model"):
            v.add("agent.model", "required when `model` is in the update mask")
        else:
            assert catalog is not None, "a model update is checked against the catalog"
            check_model(v, "agent.model", update.model, catalog)
            after.model.CopyFrom(update.model)
    v.raise_if_any("invalid agent update")
    return after
