"""TeamSpec → a fresh autogen-agentchat team for one run (DESIGN.md §5).

| kind         | autogen                                               |
|--------------|-------------------------------------------------------|
| ROUND_ROBIN  | RoundRobinGroupChat                                    |
| SELECTOR     | SelectorGroupChat (orchestrator model picks speakers)  |
| MAGENTIC_ONE | MagenticOneGroupChat (orchestrator model plans)        |
| SEQUENTIAL   | GraphFlow over a DiGraphBuilder chain a → b → c        |
| SINGLE       | the AssistantAgent itself (no group chat, no runtime)  |

A team object is unusable after a cancel or an error (REFERENCE.md), so every run builds its
own. Agents are `TurnAgent`s: autogen `AssistantAgent`s that report their turns, tool calls
and messages to the run (`RunHooks`) as they happen and take staged configuration changes
(UpdateRunAgent) at the start of their next turn.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import Response, TaskRunner
from autogen_agentchat.conditions import TextMentionTermination
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    ToolCallExecutionEvent,
    ToolCallRequestEvent,
)
from autogen_agentchat.teams import (
    DiGraphBuilder,
    GraphFlow,
    MagenticOneGroupChat,
    RoundRobinGroupChat,
    SelectorGroupChat,
)
from autogen_core import CancellationToken, FunctionCall
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import (
    ChatCompletionClient,
    FunctionExecutionResult,
    LLMMessage,
    SystemMessage,
)
from autogen_core.tools import BaseTool

from chorus.orchestrator.tools.registry import BoundedWorkbench
from chorus.v1 import chat_pb2, team_pb2

DEFAULT_SELECTOR_PROMPT = (
    "You are in a role play game. The following roles are available:\n{roles}.\n"
    "Read the following conversation. Then select the next role from {participants} to "
    "play. Only return the role.\n\n{history}\n\n"
    "Read the above conversation. Then select the next role from {participants} to play. "
    "Only return the role.\n"
)
"""autogen's own speaker-selection prompt; `TeamSpec.selector_prompt` is appended to it."""


class RunHooks(Protocol):
    """What a run does when its agents act (implemented by the live run)."""

    async def messages_seen(self, messages: Sequence[BaseChatMessage]) -> None:
        """Messages the team produced outside the agents' turns (a MagenticOne
        orchestrator's plan and instructions), seen by an agent before its turn or by the
        run's stream; each is reported once, in the order first seen."""

    async def begin_turn(self, agent: str) -> int:
        """An agent's turn starts; returns its turn number (emits `agent_started`)."""

    async def tool_calls_started(self, agent: str, calls: Sequence[FunctionCall]) -> None:
        """The agent asked for tool calls (emits `tool_call_started` per call)."""

    async def tool_calls_finished(
        self,
        agent: str,
        calls: Sequence[FunctionCall],
        results: Sequence[FunctionExecutionResult],
    ) -> None:
        """The tool calls returned (emits `tool_call_finished` per call)."""

    async def turn_completed(self, agent: str, turn: int, message: BaseChatMessage) -> None:
        """The agent's reply ends its turn (emits `message_completed`, `agent_finished` and
        `progress`)."""

    async def end_turn(self, agent: str, turn: int) -> None:
        """The turn ended without a reply (emits `agent_finished` and `progress`)."""


@dataclass
class AgentState:
    """An agent's configuration during a run.

    Attributes:
        spec: what its calls use now.
        pending: a change staged by UpdateRunAgent, applied at the start of its next turn.
        turn_usage: usage of its model calls in the current turn.
    """

    spec: team_pb2.AgentSpec
    pending: team_pb2.AgentSpec | None = None
    turn_usage: chat_pb2.Usage = field(default_factory=chat_pb2.Usage)

    @property
    def latest(self) -> team_pb2.AgentSpec:
        """The configuration including a staged change (what UpdateRunAgent answers)."""
        return self.pending if self.pending is not None else self.spec

    def apply_pending(self) -> bool:
        """Make a staged change current; True when there was one."""
        if self.pending is None:
            return False
        self.spec, self.pending = self.pending, None
        return True


def system_messages(spec: team_pb2.AgentSpec) -> list[SystemMessage]:
    """The agent's system messages (none for an empty prompt)."""
    return [SystemMessage(content=spec.system_prompt)] if spec.system_prompt else []


class TurnAgent(AssistantAgent):
    """An `AssistantAgent` that reports its turns to the run and takes staged changes.

    Args:
        hooks: the run.
        state: the agent's configuration; its model client reads `state.spec` at each call.
        kwargs: `AssistantAgent` arguments.
    """

    def __init__(self, *, hooks: RunHooks, state: AgentState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hooks = hooks
        self._state = state

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        if self._state.apply_pending():
            self._system_messages = system_messages(self._state.spec)
        self._state.turn_usage = chat_pb2.Usage()
        # The instruction that gave this agent the turn comes before its turn's events.
        await self._hooks.messages_seen(messages)
        turn = await self._hooks.begin_turn(self.name)
        requested: dict[str, FunctionCall] = {}
        replied = False
        async for item in super().on_messages_stream(messages, cancellation_token):
            if isinstance(item, ToolCallRequestEvent):
                requested.update((call.id, call) for call in item.content)
                await self._hooks.tool_calls_started(self.name, item.content)
            elif isinstance(item, ToolCallExecutionEvent):
                calls = [
                    requested.get(r.call_id)
                    or FunctionCall(id=r.call_id, name=r.name, arguments="")
                    for r in item.content
                ]
                await self._hooks.tool_calls_finished(self.name, calls, item.content)
            elif isinstance(item, Response):
                await self._hooks.turn_completed(self.name, turn, item.chat_message)
                replied = True
            yield item
        if not replied:
            await self._hooks.end_turn(self.name, turn)


@dataclass
class TeamParts:
    """What `build_team` needs besides the spec.

    Attributes:
        hooks: the run.
        states: agent name → configuration state.
        agent_client: builds the model client of an agent.
        orchestrator_client: builds the model client of a selector / MagenticOne orchestrator.
        tools: builds the tool instances of an agent.
        tool_timeout_s: deadline of one tool call.
        max_tool_iterations: model calls an agent may spend on tool calls per turn.
        context: earlier conversation messages (SINGLE teams only).
    """

    hooks: RunHooks
    states: dict[str, AgentState]
    agent_client: Callable[[AgentState], ChatCompletionClient]
    orchestrator_client: Callable[[], ChatCompletionClient]
    tools: Callable[[team_pb2.AgentSpec], list[BaseTool[Any, Any]]]
    tool_timeout_s: float
    max_tool_iterations: int
    context: list[LLMMessage] = field(default_factory=list)


def _agent(spec: team_pb2.AgentSpec, parts: TeamParts, context: list[LLMMessage]) -> TurnAgent:
    state = parts.states[spec.name]
    tools = parts.tools(spec)
    return TurnAgent(
        hooks=parts.hooks,
        state=state,
        name=spec.name,
        model_client=parts.agent_client(state),
        workbench=BoundedWorkbench(tools, timeout_s=parts.tool_timeout_s) if tools else None,
        model_context=UnboundedChatCompletionContext(initial_messages=context or None),
        description=spec.description or f"Agent {spec.name}.",
        system_message=spec.system_prompt or None,
        model_client_stream=False,
        reflect_on_tool_use=bool(tools),
        max_tool_iterations=parts.max_tool_iterations,
    )


def _selector_prompt(extra: str) -> str:
    if not extra:
        return DEFAULT_SELECTOR_PROMPT
    escaped = extra.replace("{", "{{").replace("}", "}}")  # the prompt is a format string
    return f"{DEFAULT_SELECTOR_PROMPT}\n{escaped}\n"


def build_team(team: team_pb2.TeamSpec, max_turns: int, parts: TeamParts) -> TaskRunner:
    """A new autogen team for one run: a group chat or graph, or for a SINGLE team its one
    agent, run directly (one turn; no agent runtime, group chat manager or message routing
    to build and drive).

    Args:
        team: the resolved, validated team.
        max_turns: the run's turn limit (MagenticOne: orchestrator rounds).
        parts: hooks, clients and tools.

    Raises:
        ValueError: an unsupported team kind (specs are validated before, so a bug).
    """
    kind = team.kind
    context = parts.context if kind == team_pb2.TEAM_KIND_SINGLE else []
    agents: list[Any] = [_agent(spec, parts, context) for spec in team.agents]
    names = [a.name for a in agents]
    termination = (
        TextMentionTermination(team.termination_text, sources=names)
        if team.termination_text
        else None
    )
    if kind == team_pb2.TEAM_KIND_ROUND_ROBIN:
        return RoundRobinGroupChat(
            agents,
            termination_condition=termination,
            max_turns=max_turns,
        )
    if kind == team_pb2.TEAM_KIND_SINGLE:
        single: TaskRunner = agents[0]
        return single
    if kind == team_pb2.TEAM_KIND_SELECTOR:
        return SelectorGroupChat(
            agents,
            model_client=parts.orchestrator_client(),
            termination_condition=termination,
            max_turns=max_turns,
            selector_prompt=_selector_prompt(team.selector_prompt),
        )
    if kind == team_pb2.TEAM_KIND_MAGENTIC_ONE:
        return MagenticOneGroupChat(
            agents,
            model_client=parts.orchestrator_client(),
            termination_condition=termination,
            max_turns=max_turns,
        )
    if kind == team_pb2.TEAM_KIND_SEQUENTIAL:
        builder = DiGraphBuilder()
        for agent in agents:
            builder.add_node(agent)
        for source, target in itertools.pairwise(agents):
            builder.add_edge(source, target)
        return GraphFlow(
            agents,
            graph=builder.build(),
            termination_condition=termination,
            max_turns=min(max_turns, len(agents)),
        )
    raise ValueError(f"unsupported team kind {team_pb2.TeamKind.Name(kind)}")


_GRAPH_DONE = "Digraph execution is complete"


def stop_reason(kind: int, raw: str | None) -> str:
    """autogen's stop message → `RunCompleted.stop_reason` (`max_turns`, `termination_text`,
    `completed`, or autogen's text for anything else)."""
    if kind == team_pb2.TEAM_KIND_SINGLE or not raw or raw.startswith(_GRAPH_DONE):
        return "completed"
    if raw.startswith("Maximum number of turns") or raw == "Max rounds reached.":
        return "max_turns"
    if raw.startswith("Text '") and raw.endswith("mentioned"):
        return "termination_text"
    if kind == team_pb2.TEAM_KIND_MAGENTIC_ONE:
        return "completed"  # the orchestrator judged the task done (its reason is free text)
    return raw[:1000]
