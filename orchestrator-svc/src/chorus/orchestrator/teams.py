"""TeamSpec → a fresh autogen-agentchat team for one run (docs/architecture.md §5).

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

Durable runs (issue 18) drive the team through a `TeamRunner` (`build_runner`): one agent
turn per `step()`, the team stopped between steps, where `save_state()` gives a JSON
checkpoint that `load_state()` puts into a freshly built runner (another process) whose next
step continues with the turn that was due — no completed model call repeated, MagenticOne not
re-planning (`ResumableMagenticOneOrchestrator`), the turn limit counted across steps and
loads. `build_team` (the team in one `run_stream`) stays for callers that need no checkpoints.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from autogen_agentchat.agents import AssistantAgent, UserProxyAgent
from autogen_agentchat.base import (
    ChatAgent,
    Response,
    TaskResult,
    TaskRunner,
    Team,
    TerminatedException,
    TerminationCondition,
)
from autogen_agentchat.conditions import TextMentionTermination
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    MessageFactory,
    StopMessage,
    TextMessage,
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
from autogen_agentchat.teams._group_chat._events import GroupChatStart, GroupChatTermination
from autogen_agentchat.teams._group_chat._magentic_one._magentic_one_orchestrator import (
    MagenticOneOrchestrator,
)
from autogen_core import CancellationToken, FunctionCall, MessageContext, rpc
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import (
    ChatCompletionClient,
    FunctionExecutionResult,
    LLMMessage,
    SystemMessage,
)
from autogen_core.tools import BaseTool
from pydantic_core import to_jsonable_python

from chorus.core import tracing
from chorus.orchestrator.tools.registry import BoundedWorkbench, ToolGate
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

    async def approve_tool_calls(self, agent: str, calls: Sequence[FunctionCall]) -> None:
        """The agent's tool calls are about to run: returns once every call that needs a
        person's approval has an answer (the run may park meanwhile — issue 21: then this
        never returns and the step is cancelled)."""

    def tool_result_instead(self, call_id: str | None) -> tuple[str, bool] | None:
        """`(text, is_error)` a tool call returns instead of running — a denied or expired
        approval, or the recorded result of a call that already ran in a step being redone
        — or None to run it."""

    async def human_input(self, agent: str) -> str:
        """A human agent's turn: the person's text (the run may park meanwhile, as in
        `approve_tool_calls`).

        Raises:
            InputExpired: nobody answered before the request expired.
        """


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
        self.reported: set[str] = set()
        """Ids of messages reported before a checkpoint this agent was loaded from; it does
        not pass them to `messages_seen` again (`TeamRunner.load_state`)."""

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        if self._state.apply_pending():
            self._system_messages = system_messages(self._state.spec)
        self._state.turn_usage = chat_pb2.Usage()
        # The instruction that gave this agent the turn comes before its turn's events.
        await self._hooks.messages_seen(
            [m for m in messages if m.id not in self.reported] if self.reported else messages
        )
        turn = await self._hooks.begin_turn(self.name)
        span = (  # the turn's span; its model and tool calls are its children
            tracing.start_span(
                f"invoke_agent {self.name}",
                attributes={
                    tracing.GEN_AI_OPERATION_NAME: "invoke_agent",
                    tracing.GEN_AI_AGENT_NAME: self.name,
                    "chorus.turn": turn,
                },
            )
            if tracing.enabled()
            else None
        )
        requested: dict[str, FunctionCall] = {}
        replied = False
        try:
            async for item in tracing.iterate_with(
                span, super().on_messages_stream(messages, cancellation_token)
            ):
                with tracing.use(span):
                    if isinstance(item, ToolCallRequestEvent):
                        requested.update((call.id, call) for call in item.content)
                        await self._hooks.tool_calls_started(self.name, item.content)
                        # autogen runs the calls once this item is consumed: ask first.
                        await self._hooks.approve_tool_calls(self.name, item.content)
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
                with tracing.use(span):
                    await self._hooks.end_turn(self.name, turn)
        except BaseException as exc:
            if span is not None and not isinstance(exc, GeneratorExit):
                tracing.record_error(span, exc)
            raise
        finally:
            if span is not None:
                span.end()


class InputExpired(Exception):
    """Nobody answered a human agent's request for input before it expired."""


class HumanAgent(UserProxyAgent):
    """A person in the team (`AgentSpec.human`, issue 21): autogen's `UserProxyAgent` whose
    input function is the run's `RunHooks.human_input` — the turn asks for text, the run
    parks until someone answers, and the answer is the agent's message. Reports its turns
    like a `TurnAgent`.

    Args:
        hooks: the run.
        name: the agent's name.
        description: shown to selectors and orchestrators.
    """

    def __init__(self, *, hooks: RunHooks, name: str, description: str) -> None:
        async def ask(prompt: str, cancellation_token: CancellationToken | None = None) -> str:
            return await hooks.human_input(name)

        super().__init__(name, description=description, input_func=ask)
        self._hooks = hooks
        self.reported: set[str] = set()
        """As `TurnAgent.reported`."""

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        await self._hooks.messages_seen(
            [m for m in messages if m.id not in self.reported] if self.reported else messages
        )
        turn = await self._hooks.begin_turn(self.name)
        async for item in super().on_messages_stream(messages, cancellation_token):
            if isinstance(item, Response):
                await self._hooks.turn_completed(self.name, turn, item.chat_message)
            yield item


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
        tool_gate: decides per call whether a tool runs (denied approvals and calls that
            already ran do not); None: every call runs.
    """

    hooks: RunHooks
    states: dict[str, AgentState]
    agent_client: Callable[[AgentState], ChatCompletionClient]
    orchestrator_client: Callable[[], ChatCompletionClient]
    tools: Callable[[team_pb2.AgentSpec], list[BaseTool[Any, Any]]]
    tool_timeout_s: float
    max_tool_iterations: int
    context: list[LLMMessage] = field(default_factory=list)
    tool_gate: ToolGate | None = None


def _agent(
    spec: team_pb2.AgentSpec, parts: TeamParts, context: list[LLMMessage]
) -> TurnAgent | HumanAgent:
    if spec.human:
        return HumanAgent(
            hooks=parts.hooks, name=spec.name, description=spec.description or "A person."
        )
    state = parts.states[spec.name]
    tools = parts.tools(spec)
    return TurnAgent(
        hooks=parts.hooks,
        state=state,
        name=spec.name,
        model_client=parts.agent_client(state),
        workbench=(
            BoundedWorkbench(tools, timeout_s=parts.tool_timeout_s, gate=parts.tool_gate)
            if tools
            else None
        ),
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


STEP_END = "Agent turn ended."
"""The stop message of a step that ended only because its agent turn ended (`_StepEnd`)."""


class _StepEnd(TerminationCondition):
    """Stops a group chat at the end of each agent turn — after the team's own condition.

    Every group chat manager (BaseGroupChatManager.handle_agent_response, and
    MagenticOneOrchestrator.handle_agent_response) calls its termination condition with the
    delta of the turn that just ended, before it selects the next speaker (or, MagenticOne,
    makes its next progress-ledger call): stopping there leaves the team between turns, its
    next speaker not yet chosen, so `run_stream()` with no task continues with that choice.
    The team's own condition (`termination_text`) is asked first, so its stop message wins.
    GraphFlow checks "graph done" before any condition, and RoundRobin / Selector check
    their `max_turns` only when the condition did not fire (which it always does after a
    turn): the turn limit of those is therefore counted by `TeamRunner`.

    Args:
        agents: the participants' names; a chat message from one of them ends a turn.
        inner: the team's own termination condition, if any.
    """

    def __init__(self, agents: Sequence[str], inner: TerminationCondition | None) -> None:
        self._agents = frozenset(agents)
        self._inner = inner
        self._terminated = False

    @property
    def terminated(self) -> bool:
        return self._terminated

    async def __call__(
        self, messages: Sequence[BaseAgentEvent | BaseChatMessage]
    ) -> StopMessage | None:
        if self._terminated:
            raise TerminatedException("Termination condition has already been reached")
        if self._inner is not None:
            stop = await self._inner(messages)
            if stop is not None:
                self._terminated = True
                return stop
        if any(isinstance(m, BaseChatMessage) and m.source in self._agents for m in messages):
            self._terminated = True
            return StopMessage(content=STEP_END, source="TeamRunner")
        return None

    async def reset(self) -> None:
        self._terminated = False
        if self._inner is not None:
            await self._inner.reset()


class ResumableMagenticOneOrchestrator(MagenticOneOrchestrator):
    """A MagenticOne orchestrator that continues a task it already has instead of re-planning.

    autogen's `handle_start` asserts the start message has messages and always gathers facts
    and plans (two model calls) before its first round. Started with no messages while a task
    is in its state — the next step of a live run, or after `load_state` — this one goes
    straight to the inner loop (`_orchestrate_step`: the round limit, the progress ledger,
    the next instruction and speaker, or the final answer), as autogen would have done right
    after the turn that ended the previous step. A start with messages is autogen's.
    """

    # autogen's types: an @rpc handler is a MessageHandler[its class, ...] (invariant in the
    # class, so no override fits) and not a descriptor (a bound call seems to lack
    # `agent_instance`).
    @rpc
    async def handle_start(self, message: GroupChatStart, ctx: MessageContext) -> None:  # type: ignore[override]  # MessageHandler[cls]
        if message.messages or not self._task:
            await super().handle_start(message, ctx)  # type: ignore[call-arg]  # bound call
            return
        if self._termination_condition is not None and self._termination_condition.terminated:
            stop = StopMessage(content="The group chat has already terminated.", source=self._name)
            await self._signal_termination(stop)
            return
        await self._orchestrate_step(ctx.cancellation_token)


class ResumableMagenticOneGroupChat(MagenticOneGroupChat):
    """`MagenticOneGroupChat` whose orchestrator is a `ResumableMagenticOneOrchestrator`."""

    def _create_group_chat_manager_factory(
        self,
        name: str,
        group_topic_type: str,
        output_topic_type: str,
        participant_topic_types: list[str],
        participant_names: list[str],
        participant_descriptions: list[str],
        output_message_queue: asyncio.Queue[
            BaseAgentEvent | BaseChatMessage | GroupChatTermination
        ],
        termination_condition: TerminationCondition | None,
        max_turns: int | None,
        message_factory: MessageFactory,
    ) -> Callable[[], MagenticOneOrchestrator]:
        return lambda: ResumableMagenticOneOrchestrator(
            name,
            group_topic_type,
            output_topic_type,
            participant_topic_types,
            participant_names,
            participant_descriptions,
            max_turns,
            message_factory,
            self._model_client,
            self._max_stalls,
            self._final_answer_prompt,
            output_message_queue,
            termination_condition,
            self._emit_team_events,
        )


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
    return _build(team, max_turns, parts, _agents(team, parts), step_end=False)


def _agents(team: team_pb2.TeamSpec, parts: TeamParts) -> list[TurnAgent | HumanAgent]:
    context = parts.context if team.kind == team_pb2.TEAM_KIND_SINGLE else []
    return [_agent(spec, parts, context) for spec in team.agents]


def _build(
    team: team_pb2.TeamSpec,
    max_turns: int,
    parts: TeamParts,
    agents: list[Any],
    *,
    step_end: bool,
) -> TaskRunner:
    """`build_team` over `agents`; with `step_end`, a group chat also stops at the end of each
    agent turn (`_StepEnd`, after the team's own termination text)."""
    kind = team.kind
    names = [a.name for a in agents]
    termination: TerminationCondition | None = (
        TextMentionTermination(team.termination_text, sources=names)
        if team.termination_text
        else None
    )
    if step_end:
        termination = _StepEnd(names, termination)
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
        return ResumableMagenticOneGroupChat(
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


_STATE_FORMAT = "chorus.team_runner/1"


class TeamRunner:
    """Drives a fresh autogen team one agent turn per step; checkpointable between steps.

    Group chats (ROUND_ROBIN, SELECTOR, SEQUENTIAL, MAGENTIC_ONE) are built with `_StepEnd`,
    so each `run_stream()` stops when an agent's turn ends; the next step is `run_stream()`
    with no task, which continues with the speaker that was due (REFERENCE.md, "Resuming
    teams from a checkpoint"). Between steps the team is stopped (its runtime idle), so
    `save_state()` is consistent. SINGLE runs its one agent for its one turn.

    The turn limit: RoundRobin / Selector / GraphFlow managers reset their turn counter
    whenever their termination condition fires (BaseGroupChatManager
    `_apply_termination_condition`), i.e. after every step, so the runner counts the agent
    turns itself (`turns`, kept in the saved state) and ends the run with autogen's own
    "Maximum number of turns N reached." after the `max_turns`-th. MagenticOne counts its
    rounds itself (`_n_rounds`, in its saved state) and at the limit writes its final answer,
    as in one uninterrupted run.

    Not thread-safe; one step at a time. A step that raised or was abandoned before its
    TaskResult leaves the team unusable (REFERENCE.md): build a new runner and load the last
    state saved.
    """

    def __init__(
        self,
        kind: int,
        max_turns: int,
        team: Team | ChatAgent,
        agents: Sequence[TurnAgent | HumanAgent],
    ) -> None:
        self._kind = kind
        self._max_turns = max_turns
        self._team = team
        self._turn_agents = list(agents)
        self._agents = [a.name for a in agents]
        self._names = frozenset(self._agents)
        self._turns = 0
        self._ended = False
        self._started = False  # a step ran or a state was loaded
        self._stepping = False
        self._broken = False

    @property
    def kind(self) -> int:
        """The team kind (`team_pb2.TeamKind`)."""
        return self._kind

    @property
    def turns(self) -> int:
        """Agent turns completed so far, including those before the state loaded."""
        return self._turns

    @property
    def started(self) -> bool:
        """True once a step ran or a state was loaded (the next step takes no task)."""
        return self._started

    @property
    def done(self) -> bool:
        """True once a step ended the team (then no further step may run)."""
        return self._ended

    async def step(
        self, task: str | None, cancellation_token: CancellationToken
    ) -> AsyncIterator[BaseChatMessage | TaskResult]:
        """Run the team until the end of the next agent turn, or until the team itself ends.

        Yields the chat messages that are not agents' turns nor the task (a MagenticOne
        orchestrator's ledger, instructions and final answer), as they come, then last the
        step's `TaskResult`: autogen's messages of this step and its stop message —
        `STEP_END` when only the turn ended (`ended()` is False), else the team's own
        (termination text, "Digraph execution is complete", MagenticOne's reason or
        "Max rounds reached.", "Maximum number of turns N reached." when the run's
        `max_turns`-th turn ended, None for SINGLE).

        Args:
            task: the run input on the very first step; None on every later step and after
                `load_state`. SINGLE: always the input — its one turn is the whole run, and a
                resumed SINGLE run restarts that turn.
            cancellation_token: cancels the step's model calls; a cancelled step leaves the
                runner unusable.

        Raises:
            RuntimeError: the team already ended, a step is under way, or an earlier step
                failed; or autogen's error of a failed turn.
            ValueError: `task` given where it must be None, or missing where it is needed.
        """
        self._check_idle("step")
        if self._ended:
            raise RuntimeError("the team has ended; there is no next step")
        if self._kind == team_pb2.TEAM_KIND_SINGLE:
            if task is None:
                raise ValueError("a SINGLE team's step needs the task (its one turn restarts)")
        elif not self._started and task is None:
            raise ValueError("the first step needs the task")
        elif self._started and task is not None:
            raise ValueError("only the first step takes the task")
        message = TextMessage(content=task, source="user") if task is not None else None
        self._started = True
        self._stepping = True
        result: TaskResult | None = None
        try:
            async for item in self._team.run_stream(
                task=message, cancellation_token=cancellation_token, output_task_messages=False
            ):
                if isinstance(item, TaskResult):
                    result = item
                elif (
                    isinstance(item, BaseChatMessage)
                    and item.source not in self._names
                    and (message is None or item.id != message.id)
                ):
                    yield item
            if result is None:
                raise RuntimeError("the team ended without a result")
        except BaseException:
            self._broken = True
            raise
        finally:
            self._stepping = False
        self._turns += sum(
            1 for m in result.messages if isinstance(m, BaseChatMessage) and m.source in self._names
        )
        stop = result.stop_reason
        if (
            stop == STEP_END
            and self._kind != team_pb2.TEAM_KIND_MAGENTIC_ONE
            and self._turns >= self._max_turns
        ):
            stop = f"Maximum number of turns {self._max_turns} reached."
        self._ended = self._kind == team_pb2.TEAM_KIND_SINGLE or stop != STEP_END
        yield TaskResult(messages=result.messages, stop_reason=stop)

    def ended(self, result: TaskResult) -> bool:
        """True when the team itself ended in the step that gave `result` (termination text,
        graph done, MagenticOne done or its final answer, the run's `max_turns` reached,
        SINGLE after its one turn); False when only the step's turn ended."""
        return self._kind == team_pb2.TEAM_KIND_SINGLE or result.stop_reason != STEP_END

    def stop_reason(self, result: TaskResult) -> str:
        """`RunCompleted.stop_reason` of an ended step's result (see `stop_reason()`: max_turns,
        termination_text, completed, or autogen's text); "" for a step that only ended its
        turn."""
        if not self.ended(result):
            return ""
        return stop_reason(self._kind, result.stop_reason)

    async def save_state(self) -> dict[str, Any]:
        """The runner's state, JSON-serializable (`json.dumps` works), between steps only.

        Shape: `{"format": "chorus.team_runner/1", "kind": "TEAM_KIND_…", "agents": [names],
        "turns": agent turns completed, "ended": bool, "team": autogen's state}` — for a group
        chat autogen's `TeamState` (per participant its container's message buffer and its
        agent's model context; the manager's thread, turn, next speaker / graph queue /
        MagenticOne task, facts, plan, rounds and stalls), for SINGLE the agent's state.

        Raises:
            RuntimeError: a step is under way or an earlier one failed.
        """
        self._check_idle("save_state")
        team_state = await self._team.save_state()
        return {
            "format": _STATE_FORMAT,
            "kind": team_pb2.TeamKind.Name(self._kind),
            "agents": list(self._agents),
            "turns": self._turns,
            "ended": self._ended,
            "team": to_jsonable_python(team_state),
        }

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Load a `save_state()` (possibly JSON round-tripped) into this freshly built runner,
        before its first step; the next step continues with the turn that was due.

        Raises:
            RuntimeError: the runner already stepped or loaded (autogen's SelectorGroupChat,
                for one, would add the thread to its context twice).
            ValueError: not a runner state, or one of another kind or other agents.
        """
        self._check_idle("load_state")
        if self._started:
            raise RuntimeError("load_state goes into a fresh runner, before its first step")
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a team runner state (format {state.get('format')!r})")
        kind = team_pb2.TeamKind.Name(self._kind)
        if state.get("kind") != kind:
            raise ValueError(f"state of a {state.get('kind')} team, not {kind}")
        if list(state.get("agents", [])) != self._agents:
            raise ValueError(f"state of agents {state.get('agents')}, not {self._agents}")
        await self._team.load_state(state["team"])
        # Everything in the state was reported before it was saved: an agent hearing it again
        # (a MagenticOne instruction to another agent, still in its buffer) must not pass it
        # to `messages_seen` a second time — the new run's dedup set starts empty.
        reported = _message_ids(state["team"])
        for agent in self._turn_agents:
            agent.reported.update(reported)
        self._turns = int(state["turns"])
        self._ended = bool(state["ended"])
        self._started = True

    def _check_idle(self, what: str) -> None:
        if self._stepping:
            raise RuntimeError(f"{what} while a step is under way")
        if self._broken:
            raise RuntimeError(
                f"{what} after a failed or abandoned step; build a new runner and load the "
                "last saved state"
            )


def _message_ids(state: Any) -> set[str]:
    """The ids of the messages anywhere in an autogen team state (as `message.dump()`s: dicts
    with `id`, `source` and `type`)."""
    ids: set[str] = set()
    if isinstance(state, Mapping):
        if isinstance(state.get("id"), str) and "source" in state and "type" in state:
            ids.add(state["id"])
        for value in state.values():
            ids |= _message_ids(value)
    elif isinstance(state, list):
        for value in state:
            ids |= _message_ids(value)
    return ids


def build_runner(team: team_pb2.TeamSpec, max_turns: int, parts: TeamParts) -> TeamRunner:
    """A `TeamRunner` over a new team for one run (or for resuming one: then `load_state`).

    Args:
        team: the resolved, validated team.
        max_turns: the run's turn limit (MagenticOne: orchestrator rounds), ≥ 1; ignored by
            SINGLE (one turn).
        parts: hooks, clients and tools.

    Raises:
        ValueError: an unsupported team kind, or `max_turns` < 1 for a group chat.
    """
    if max_turns < 1 and team.kind != team_pb2.TEAM_KIND_SINGLE:
        raise ValueError(f"max_turns must be at least 1, not {max_turns}")
    agents = _agents(team, parts)
    built = _build(team, max_turns, parts, agents, step_end=True)
    assert isinstance(built, Team | ChatAgent)
    return TeamRunner(team.kind, max_turns, built, agents)
