"""TeamRunner (teams.py): one agent turn per step, state saved between steps and loaded into a
fresh runner — issue 18, durable runs.

Pure in-process: scripted model clients whose replies are a function of the request only (so a
fresh client after a resume answers exactly as the first would have), and hooks that record
the turns. The reference for every kind is the same team run in one `run_stream` (what runs.py
did before): stepping must give the same speakers, stop reason and model calls; a resume after
turn k must continue with the speaker that was due, with what the agents heard, and repeat no
completed model call (MagenticOne: no re-planning).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]
    ModelInfo,
    RequestUsage,
    UserMessage,
)
from autogen_core.tools import FunctionTool

from chorus.orchestrator.teams import (
    STEP_END,
    AgentState,
    TeamParts,
    TeamRunner,
    build_runner,
    build_team,
    stop_reason,
)
from chorus.v1 import chat_pb2, team_pb2

RR = team_pb2.TEAM_KIND_ROUND_ROBIN
SELECTOR = team_pb2.TEAM_KIND_SELECTOR
SEQUENTIAL = team_pb2.TEAM_KIND_SEQUENTIAL
MAGENTIC_ONE = team_pb2.TEAM_KIND_MAGENTIC_ONE
SINGLE = team_pb2.TEAM_KIND_SINGLE
TASK = "Is remote work here to stay?"


def _text(message: LLMMessage) -> str:
    content = getattr(message, "content", "")
    return content if isinstance(content, str) else repr(content)


@dataclass
class Calls:
    """Every model call of a run, in order: (client, the request's message texts)."""

    log: list[tuple[str, list[str]]] = field(default_factory=list)

    def of(self, client: str) -> list[list[str]]:
        return [texts for name, texts in self.log if name == client]


class ScriptedModel(ChatCompletionClient):
    """A zero-latency model whose reply is `reply(messages)`; it logs every call in `calls`."""

    def __init__(
        self,
        name: str,
        reply: Callable[[Sequence[LLMMessage]], str | list[FunctionCall]],
        calls: Calls,
    ) -> None:
        self._name = name
        self._reply = reply
        self._calls = calls

    async def create(self, messages: Sequence[LLMMessage], **_: Any) -> CreateResult:
        self._calls.log.append((self._name, [_text(m) for m in messages]))
        content = self._reply(messages)
        return CreateResult(
            finish_reason="stop" if isinstance(content, str) else "function_calls",
            content=content,
            usage=RequestUsage(prompt_tokens=1, completion_tokens=1),
            cached=False,
        )

    async def create_stream(  # type: ignore[override]
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(messages, **kwargs)

    async def close(self) -> None:
        pass

    def actual_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def total_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)

    def count_tokens(self, messages: Sequence[LLMMessage], **_: Any) -> int:
        return 0

    def remaining_tokens(self, messages: Sequence[LLMMessage], **_: Any) -> int:
        return 1_000_000

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        return {"vision": False, "function_calling": True, "json_output": False}  # type: ignore[typeddict-item]

    @property
    def model_info(self) -> ModelInfo:
        return {
            "vision": False,
            "function_calling": True,
            "json_output": False,
            "family": "unknown",
            "structured_output": False,
        }


class RecordingHooks:
    """`RunHooks` that record the turns and the orchestrator messages seen."""

    def __init__(self) -> None:
        self.turns: list[str] = []
        self.completed: list[tuple[str, int, str]] = []
        self.seen: list[str] = []  # what runs.py reports: neither the input nor an agent's

    async def messages_seen(self, messages: Sequence[BaseChatMessage]) -> None:
        self.seen.extend(m.to_text() for m in messages if m.source == "MagenticOneOrchestrator")

    async def begin_turn(self, agent: str) -> int:
        self.turns.append(agent)
        return len(self.turns)

    async def tool_calls_started(self, agent: str, calls: Sequence[FunctionCall]) -> None:
        pass

    async def tool_calls_finished(
        self, agent: str, calls: Sequence[FunctionCall], results: Sequence[FunctionExecutionResult]
    ) -> None:
        pass

    async def turn_completed(self, agent: str, turn: int, message: BaseChatMessage) -> None:
        self.completed.append((agent, turn, message.to_text()))

    async def end_turn(self, agent: str, turn: int) -> None:
        pass

    async def approve_tool_calls(self, agent: str, calls: Sequence[FunctionCall]) -> None:
        pass

    def tool_result_instead(self, call_id: str | None) -> tuple[str, bool] | None:
        return None

    async def human_input(self, agent: str) -> str:
        raise AssertionError("no human agents here")


# ---------------------------------------------------------------- scripted replies
def agent_reply(stop_word: str = "", stop_at: int = 0) -> Callable[[str], Callable[..., str]]:
    """Agents answer `<name> reply <context size>`; with `stop_word`, the reply whose context
    holds `stop_at` messages or more also says it."""

    def for_agent(name: str) -> Callable[[Sequence[LLMMessage]], str]:
        def reply(messages: Sequence[LLMMessage]) -> str:
            text = f"{name} reply {len(messages)}"
            if stop_word and len(messages) >= stop_at:
                text += f" {stop_word}"
            return text

        return reply

    return for_agent


def selector_reply(messages: Sequence[LLMMessage]) -> str:
    """Picks candidates[replies so far % len(candidates)] from autogen's selector prompt."""
    prompt = _text(messages[-1])
    found = re.findall(r"select the next role from (\[[^\]]*\])", prompt)
    candidates = json.loads(found[-1].replace("'", '"'))
    return str(candidates[prompt.count(" reply ") % len(candidates)])


def magentic_reply(
    agents: Sequence[str], done_after: int, stalls: bool = False
) -> Callable[..., str]:
    """MagenticOne's orchestrator: facts, plan, a progress ledger (satisfied once the thread
    holds `done_after` agent replies; next speaker by rotation; with `stalls` no progress, so
    it re-plans every third round), updated facts and plan, and a final answer."""

    def reply(messages: Sequence[LLMMessage]) -> str:
        prompt = _text(messages[-1])
        if prompt.startswith("Below I will present you a request"):
            return "FACTS"
        if prompt.startswith("Fantastic. To address this request"):
            return "PLAN"
        if prompt.startswith("As a reminder, we are working to solve the following task"):
            return "NEW FACTS"
        if prompt.startswith("Please briefly explain what went wrong"):
            return "NEW PLAN"
        if prompt.lstrip().startswith("Recall we are working on the following request"):
            replies = sum(1 for m in messages if getattr(m, "source", "") in agents)
            speaker = agents[replies % len(agents)]

            def entry(answer: Any) -> dict[str, Any]:
                return {"reason": "scripted", "answer": answer}

            return json.dumps(
                {
                    "is_request_satisfied": entry(replies >= done_after),
                    "is_in_loop": entry(False),
                    "is_progress_being_made": entry(not stalls),
                    "next_speaker": entry(speaker),
                    "instruction_or_question": entry(f"{speaker}, do step {replies + 1}"),
                }
            )
        if prompt.lstrip().startswith("We are working on the following task"):
            return "FINAL ANSWER"
        raise AssertionError(f"unexpected orchestrator prompt {prompt[:80]!r}")

    return reply


def kind_of(prompt_texts: list[str]) -> str:
    last = prompt_texts[-1].lstrip()
    for prefix, name in (
        ("Below I will present you a request", "facts"),
        ("Fantastic. To address this request", "plan"),
        ("Recall we are working", "ledger"),
        ("We are working on the following task", "final"),
    ):
        if last.startswith(prefix):
            return name
    return "other"


# ---------------------------------------------------------------- building and driving
@dataclass
class Case:
    kind: int
    agents: list[str]
    max_turns: int
    termination_text: str = ""
    replies: Callable[[str], Callable[..., str]] = field(default_factory=agent_reply)
    done_after: int = 1000  # MagenticOne: agent replies before it is satisfied
    tools: dict[str, list[Any]] = field(default_factory=dict)  # agent → its tools
    stalls: bool = False  # MagenticOne: no progress, re-plans

    def spec(self) -> team_pb2.TeamSpec:
        return team_pb2.TeamSpec(
            kind=self.kind,
            agents=[
                team_pb2.AgentSpec(
                    name=name,
                    system_prompt=f"You are {name}.",
                    model=chat_pb2.ModelRef(provider="simulator", model="sim-1"),
                )
                for name in self.agents
            ],
            termination_text=self.termination_text,
        )

    def parts(self, calls: Calls, context: list[LLMMessage] | None = None) -> TeamParts:
        hooks = RecordingHooks()
        orchestrator: Callable[..., str] = (
            selector_reply
            if self.kind == SELECTOR
            else magentic_reply(self.agents, self.done_after, self.stalls)
        )
        return TeamParts(
            hooks=hooks,
            states={a.name: AgentState(spec=a) for a in self.spec().agents},
            agent_client=lambda state: ScriptedModel(
                state.spec.name, self.replies(state.spec.name), calls
            ),
            orchestrator_client=lambda: ScriptedModel("orchestrator", orchestrator, calls),
            tools=lambda spec: list(self.tools.get(spec.name, [])),
            tool_timeout_s=5.0,
            max_tool_iterations=1,
            context=list(context or []),
        )

    def runner(self, calls: Calls, context: list[LLMMessage] | None = None) -> TeamRunner:
        return build_runner(self.spec(), self.max_turns, self.parts(calls, context))


def hooks_of(runner: TeamRunner) -> RecordingHooks:
    team: Any = runner._team  # the agents hold the hooks
    agents = team._participants if hasattr(team, "_participants") else [team]
    hooks: RecordingHooks = agents[0]._hooks
    return hooks


@dataclass
class Outcome:
    speakers: list[str]
    stop_reason: str
    orchestrator_messages: list[str]
    final: str
    steps: int = 0


async def run_in_one_go(case: Case, calls: Calls) -> Outcome:
    """The team built by `build_team` and run in one `run_stream`, as runs.py did."""
    parts = case.parts(calls)
    team = build_team(case.spec(), case.max_turns, parts)
    result: TaskResult | None = None
    seen: list[str] = []
    async for item in team.run_stream(
        task=TextMessage(content=TASK, source="user"), output_task_messages=False
    ):
        if isinstance(item, TaskResult):
            result = item
        elif isinstance(item, BaseChatMessage) and item.source not in {*case.agents, "user"}:
            seen.append(item.to_text())
    assert result is not None
    hooks = parts.hooks
    assert isinstance(hooks, RecordingHooks)
    return Outcome(
        speakers=hooks.turns,
        stop_reason=stop_reason(case.kind, result.stop_reason),
        orchestrator_messages=seen,
        final=result.messages[-1].to_text() if result.messages else "",
    )


async def drive(
    runner: TeamRunner, *, fresh: bool, steps: int | None = None
) -> tuple[Outcome, list[TaskResult]]:
    """Step `runner` until the team ends (or `steps` steps); `fresh`: its first step gets the
    task (SINGLE: every step)."""
    results: list[TaskResult] = []
    seen: list[str] = []
    first = True
    while not runner.done and (steps is None or len(results) < steps):
        task = TASK if (fresh and first) or runner.kind == SINGLE else None
        async for item in runner.step(task, CancellationToken()):
            if isinstance(item, TaskResult):
                results.append(item)
            else:
                assert isinstance(item, BaseChatMessage)
                seen.append(item.to_text())
        first = False
    last = results[-1]
    return (
        Outcome(
            speakers=hooks_of(runner).turns,
            stop_reason=runner.stop_reason(last),
            orchestrator_messages=seen,
            final=last.messages[-1].to_text() if last.messages else "",
            steps=len(results),
        ),
        results,
    )


CASES: dict[str, tuple[Case, list[str], str]] = {
    # case, expected speakers, expected stop reason
    "round_robin": (Case(RR, ["A", "B"], 5), ["A", "B", "A", "B", "A"], "max_turns"),
    "selector": (Case(SELECTOR, ["A", "B", "C"], 4), ["A", "C", "A", "C"], "max_turns"),
    "sequential": (Case(SEQUENTIAL, ["A", "B", "C"], 10), ["A", "B", "C"], "completed"),
    "sequential_limit": (Case(SEQUENTIAL, ["A", "B", "C"], 2), ["A", "B"], "max_turns"),
    "magentic_one": (
        Case(MAGENTIC_ONE, ["A", "B"], 10, done_after=3),
        ["A", "B", "A"],
        "completed",
    ),
    # MagenticOne's max_turns counts rounds: round max_turns + 1 still runs, then the final
    # answer ("Max rounds reached.") — as in one run_stream.
    "magentic_one_limit": (Case(MAGENTIC_ONE, ["A", "B"], 2), ["A", "B", "A"], "max_turns"),
    # no progress: rounds 1, 2 are turns, round 3 re-plans (facts and plan again, new ledger),
    # and so does every round after, until the round limit's final answer
    "magentic_one_stalls": (
        Case(MAGENTIC_ONE, ["A", "B"], 4, stalls=True),
        ["A", "B"],
        "max_turns",
    ),
    "single": (Case(SINGLE, ["A"], 5), ["A"], "completed"),
}


# ---------------------------------------------------------------- (a) stepping = one go
@pytest.mark.parametrize("name", list(CASES))
async def test_stepping_to_the_end_matches_one_run_stream(name: str) -> None:
    case, speakers, reason = CASES[name]
    whole_calls, step_calls = Calls(), Calls()
    whole = await run_in_one_go(case, whole_calls)
    stepped, results = await drive(case.runner(step_calls), fresh=True)

    assert whole.speakers == speakers
    assert whole.stop_reason == reason
    assert stepped.speakers == speakers
    assert stepped.stop_reason == reason
    # one agent turn per step (MagenticOne's final answer may take a step of its own)
    assert all(len([m for m in r.messages if m.source in case.agents]) <= 1 for r in results)
    assert [r.stop_reason == STEP_END for r in results[:-1]] == [True] * (len(results) - 1)
    assert stepped.steps in (len(speakers), len(speakers) + 1)
    # the very same model calls, in the same order
    assert step_calls.log == whole_calls.log
    assert stepped.orchestrator_messages == whole.orchestrator_messages
    assert stepped.final == whole.final


# ---------------------------------------------------------------- (b) save, load, continue
RESUMES = [
    (name, k)
    for name, (case, speakers, _) in CASES.items()
    if case.kind != SINGLE
    for k in range(1, len(speakers))
]


@pytest.mark.parametrize(("name", "k"), RESUMES)
async def test_resume_after_turn_k_in_a_fresh_runner(name: str, k: int) -> None:
    case, speakers, reason = CASES[name]
    whole_calls = Calls()
    whole = await run_in_one_go(case, whole_calls)

    calls = Calls()
    first = case.runner(calls)
    before, _ = await drive(first, fresh=True, steps=k)
    assert before.speakers == speakers[:k]
    assert first.turns == k and not first.done
    state = json.loads(json.dumps(await first.save_state()))
    assert state["turns"] == k and state["ended"] is False
    calls_before = len(calls.log)

    second = case.runner(calls)  # fresh team, fresh clients, fresh hooks
    await second.load_state(state)
    assert second.turns == k
    after, _ = await drive(second, fresh=False)

    # the speaker that was due, then exactly the remaining turns, and the same end
    assert after.speakers == speakers[k:]
    assert second.turns == len(speakers)
    assert after.stop_reason == reason
    # what the resumed speaker heard: every earlier agent message, through the checkpoint
    due = speakers[k]
    heard = calls.of(due)[-len([s for s in speakers[k:] if s == due])]
    earlier = [text for _, _, text in hooks_of(first).completed]
    assert all(any(e in h for h in heard) for e in earlier)
    # no completed model call repeated, none lost: both runners together made exactly the
    # calls of the uninterrupted run, in the same order
    assert calls.log == whole_calls.log
    if case.kind == MAGENTIC_ONE:
        after_load = [kind_of(texts) for _, texts in calls.log[calls_before:]]
        assert "facts" not in after_load and "plan" not in after_load
        # what the first process reported is not reported again by the second (an agent
        # still holding another's instruction in its buffer hears it after the load)
        reported = set(hooks_of(first).seen) | set(before.orchestrator_messages)
        again = set(hooks_of(second).seen) | set(after.orchestrator_messages)
        assert not reported & again
        assert reported | again == set(whole.orchestrator_messages)


async def test_resume_twice_across_three_runners() -> None:
    case, speakers, reason = CASES["round_robin"]
    whole_calls, calls = Calls(), Calls()
    await run_in_one_go(case, whole_calls)
    runner = case.runner(calls)
    await drive(runner, fresh=True, steps=1)
    for _ in range(2):
        state = json.loads(json.dumps(await runner.save_state()))
        runner = case.runner(calls)
        await runner.load_state(state)
        await drive(runner, fresh=False, steps=1)
    outcome, _ = await drive(runner, fresh=False)
    assert outcome.speakers == speakers[2:]  # this runner: turns 3, 4, 5
    assert outcome.stop_reason == reason
    assert calls.log == whole_calls.log


async def test_single_resumed_restarts_its_one_turn_with_its_context() -> None:
    case = Case(SINGLE, ["A"], 5)
    earlier: list[LLMMessage] = [
        UserMessage(content="earlier question", source="user"),
        UserMessage(content="earlier answer", source="A"),
    ]
    calls = Calls()
    first = case.runner(calls, context=earlier)
    state = json.loads(json.dumps(await first.save_state()))
    assert state["turns"] == 0 and calls.log == []

    second = case.runner(calls, context=[])  # the context comes back from the state
    await second.load_state(state)
    with pytest.raises(ValueError, match="needs the task"):
        async for _ in second.step(None, CancellationToken()):
            pass
    outcome, results = await drive(second, fresh=True)
    assert outcome.speakers == ["A"] and outcome.stop_reason == "completed"
    assert second.ended(results[-1]) and second.done
    assert len(calls.log) == 1
    assert calls.log[0][1][-3:] == ["earlier question", "earlier answer", TASK]


# ---------------------------------------------------------------- (c) termination text
TERMINATIONS = {
    # an agent's context: its system prompt, the task, then the replies so far; B's second
    # reply (system, task, A, B, A) says DONE
    "round_robin": (Case(RR, ["A", "B"], 10, "DONE", agent_reply("DONE", 5)), ["A", "B", "A", "B"]),
    "selector": (
        Case(SELECTOR, ["A", "B", "C"], 10, "DONE", agent_reply("DONE", 4)),
        ["A", "C", "A"],
    ),
    "sequential": (
        Case(SEQUENTIAL, ["A", "B", "C"], 10, "DONE", agent_reply("DONE", 3)),
        ["A", "B"],
    ),
    "magentic_one": (
        Case(MAGENTIC_ONE, ["A", "B"], 10, "DONE", agent_reply("DONE", 5)),
        ["A", "B"],
    ),
}


@pytest.mark.parametrize("name", list(TERMINATIONS))
async def test_termination_text_ends_the_team(name: str) -> None:
    case, speakers = TERMINATIONS[name]
    whole_calls, calls = Calls(), Calls()
    whole = await run_in_one_go(case, whole_calls)
    assert whole.speakers == speakers and whole.stop_reason == "termination_text"

    stepped, results = await drive(case.runner(calls), fresh=True)
    assert stepped.speakers == speakers
    assert stepped.stop_reason == "termination_text"
    assert calls.log == whole_calls.log

    # and after a resume one turn before it
    calls = Calls()
    first = case.runner(calls)
    await drive(first, fresh=True, steps=len(speakers) - 1)
    second = case.runner(calls)
    await second.load_state(json.loads(json.dumps(await first.save_state())))
    after, results = await drive(second, fresh=False)
    assert after.speakers == speakers[-1:]
    assert after.stop_reason == "termination_text" and second.ended(results[-1])
    assert calls.log == whole_calls.log


# ---------------------------------------------------------------- the runner's rules
async def test_runner_rules() -> None:
    case = CASES["round_robin"][0]
    calls = Calls()
    runner = case.runner(calls)
    with pytest.raises(ValueError, match="first step needs the task"):
        async for _ in runner.step(None, CancellationToken()):
            pass
    await drive(runner, fresh=True, steps=1)
    with pytest.raises(ValueError, match="only the first step"):
        async for _ in runner.step(TASK, CancellationToken()):
            pass
    state = await runner.save_state()
    with pytest.raises(RuntimeError, match="fresh runner"):
        await runner.load_state(state)
    other = CASES["sequential"][0].runner(Calls())
    with pytest.raises(ValueError, match="TEAM_KIND_ROUND_ROBIN"):
        await other.load_state(state)
    bad: Mapping[str, Any] = {**state, "format": "x"}
    with pytest.raises(ValueError, match="not a team runner state"):
        await case.runner(Calls()).load_state(bad)
    await drive(runner, fresh=False)
    assert runner.done
    with pytest.raises(RuntimeError, match="has ended"):
        async for _ in runner.step(None, CancellationToken()):
            pass
    with pytest.raises(ValueError, match="at least 1"):
        build_runner(case.spec(), 0, case.parts(Calls()))
    single = Case(SINGLE, ["A"], 1)
    build_runner(single.spec(), 0, single.parts(Calls()))  # SINGLE has no turn limit to check


async def test_a_cancelled_step_leaves_the_runner_unusable() -> None:
    case = CASES["round_robin"][0]
    runner = case.runner(Calls())
    token = CancellationToken()
    token.cancel()
    with pytest.raises(BaseException):  # noqa: B017 - autogen raises CancelledError
        async for _ in runner.step(TASK, token):
            pass
    with pytest.raises(RuntimeError, match="failed or abandoned"):
        await runner.save_state()


# ---------------------------------------------------------------- a turn with tool calls
def lookup(query: str) -> str:
    """Looks something up."""
    return f"found {query}"


def tool_user(name: str) -> Callable[[Sequence[LLMMessage]], str | list[FunctionCall]]:
    """Calls `lookup` when its turn starts, then answers from the result (two model calls)."""

    def reply(messages: Sequence[LLMMessage]) -> str | list[FunctionCall]:
        if isinstance(messages[-1], FunctionExecutionResultMessage):
            return f"{name} reply {len(messages)} from {messages[-1].content[0].content}"
        return [FunctionCall(id=f"call{len(messages)}", name="lookup", arguments='{"query": "x"}')]

    return reply


async def test_a_turn_with_tool_calls_is_one_step_and_survives_a_resume() -> None:
    case = Case(
        RR,
        ["A", "B"],
        4,
        replies=lambda name: tool_user(name) if name == "A" else agent_reply()(name),
        tools={"A": [FunctionTool(lookup, description="Looks something up.")]},
    )
    whole_calls = Calls()
    whole = await run_in_one_go(case, whole_calls)
    assert whole.speakers == ["A", "B", "A", "B"]
    assert len(whole_calls.log) == 6  # A: call + reflection, B: one call

    calls = Calls()
    first = case.runner(calls)
    await drive(first, fresh=True, steps=1)
    assert len(calls.log) == 2  # the whole of A's turn, tool call included
    state = json.loads(json.dumps(await first.save_state()))
    second = case.runner(calls)
    await second.load_state(state)
    after, _ = await drive(second, fresh=False)
    assert after.speakers == ["B", "A", "B"] and after.stop_reason == "max_turns"
    assert calls.log == whole_calls.log  # A's context kept its tool call and result
