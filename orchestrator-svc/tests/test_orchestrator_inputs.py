"""Human in the loop (issue 21): runs that ask a person — a tool call's approval, a human
agent's text — park without holding anything, and continue on any replica once answered.

What is checked, on real services (history-svc on SQLite and PostgreSQL + Redis):

* a waiting run is RUN_STATUS_AWAITING_INPUT with `pending_input`, no replica executes it,
  and it holds no lease;
* approve → the tool runs; deny → `tool_call_finished` success = false with the reason, the
  agent carries on; a human agent's text becomes its message;
* the answer continues the run without paying any completed model call again (the simulator
  records every request), and watchers see one gapless log with no `run_resumed`;
* first answer wins; a repeated `request_id` returns the first result; cancel while waiting;
  expiry of both kinds; the orchestrator that parked the run stopped (SIGTERM) or another
  replica answering; bad input.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from orchestrator_helpers import (
    BOTH_BACKENDS,
    TIMEOUT_S,
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    fields_of,
    kinds,
    orchestrator_process,
    read_rest,
    read_until,
    rpc_error,
    spec,
    team,
)

from chorus.orchestrator.tools.registry import ToolRegistry
from chorus.v1 import run_pb2, team_pb2

APPROVAL = run_pb2.INPUT_KIND_APPROVAL
TEXT = run_pb2.INPUT_KIND_TEXT
QUESTION = "What is 17.5% of 2,340?"


def asks(event: run_pb2.RunEvent) -> bool:
    return event.HasField("input_requested")


def approval_spec(**fields: object) -> run_pb2.RunSpec:
    return spec(template="assistant-approval", input=QUESTION, **fields)  # type: ignore[arg-type]


def reviewed_team(timeout_s: int = 0) -> team_pb2.TeamSpec:
    """A writer and a human editor, round robin, ending when the editor says APPROVE."""
    editor = team_pb2.AgentSpec(
        name="editor", human=True, system_prompt="Answer APPROVE or write notes."
    )
    out = team(team_pb2.TEAM_KIND_ROUND_ROBIN, agent("writer"), editor, max_turns=8)
    out.termination_text = "APPROVE"
    if timeout_s:
        out.input_timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
    return out


async def park(client: RunClient, run_spec: run_pb2.RunSpec) -> tuple[str, list[run_pb2.RunEvent]]:
    """Start a run and watch it until it asks; returns its id and the events seen."""
    run = await client.create(run_spec)
    seen = await read_until(client.watch_call(run.id), asks)
    await client.wait_status(run.id, run_pb2.RUN_STATUS_AWAITING_INPUT)
    return run.id, seen


def model_calls(stack: Stack, run_id: str) -> Counter[bytes]:
    """How often the simulator received each distinct model request of the run."""
    return Counter(
        r.SerializeToString(deterministic=True)
        for r in stack.received
        if r.metadata.get("run_id") == run_id
    )


@BOTH_BACKENDS
async def test_an_approved_tool_call_runs_after_the_run_waited_holding_nothing(
    stack: Stack, alice: RunClient
) -> None:
    run_id, seen = await park(alice, approval_spec())
    asked = seen[-1]
    request = asked.input_requested
    assert request.kind == APPROVAL and request.tool_call.name == "calculator"
    assert request.input_id == "turn1-1" and asked.agent == "assistant"
    assert request.expire_time.seconds > asked.time.seconds + 3600
    assert kinds(seen)[-2] == "tool_call_started"
    run = await alice.get(run_id)
    assert run.pending_input == request and run.last_seq == asked.seq
    assert run.owner_instance == "" and run.heartbeat_time.ToNanoseconds() == 0  # no lease
    assert run_id not in stack.orchestrator.manager.live_runs  # nothing held while waiting

    watch = alice.watch_call(run_id, after_seq=asked.seq)  # a watcher across the wait
    answered = await alice.submit_input(run_id, request.input_id, approve=True)
    assert answered.event.input_received.decision.approved
    assert answered.event.input_received.by == alice.user
    assert answered.event.seq == asked.seq + 1
    rest = await read_rest(watch)
    done = await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)

    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert events == seen + rest
    assert "run_resumed" not in kinds(events)  # it paused, it was not lost
    (finished,) = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
    assert finished.success and "409.5" in finished.result
    assert "409.5" in done.final_answer
    # The model call that asked for the tool was not paid twice.
    assert max(model_calls(stack, run_id).values()) == 1
    assert not done.HasField("pending_input")


async def test_a_denied_tool_call_does_not_run_and_the_agent_carries_on(
    stack: Stack, alice: RunClient
) -> None:
    run_id, seen = await park(alice, approval_spec())
    await alice.submit_input(run_id, seen[-1].input_requested.input_id, approve=False, reason="no")
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    (finished,) = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
    assert not finished.success
    assert finished.result == f"not run: denied by {alice.user}: no"
    assert run.final_answer  # the agent answered without the tool


@BOTH_BACKENDS
async def test_a_human_editor_answers_with_text_until_it_approves(
    stack: Stack, alice: RunClient
) -> None:
    run_id, seen = await park(alice, spec(team_spec=reviewed_team(), input="Heat pumps"))
    first = seen[-1]
    assert first.input_requested.kind == TEXT and first.agent == "editor"
    assert first.input_requested.prompt == "Answer APPROVE or write notes."
    assert first.input_requested.input_id == "turn2-1"
    await alice.submit_input(run_id, "turn2-1", text="Shorter, please.")
    second = await read_until(alice.watch_call(run_id, after_seq=first.seq), asks)
    assert second[-1].input_requested.input_id == "turn4-1"
    await alice.submit_input(run_id, "turn4-1", text="APPROVE")
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    said = [
        (e.agent, e.message_completed.message.content)
        for e in events
        if e.HasField("message_completed")
    ]
    assert [a for a, _ in said] == ["writer", "editor", "writer", "editor"]
    assert said[1][1] == "Shorter, please." and said[3][1] == "APPROVE"
    assert events[-1].run_completed.stop_reason == "termination_text"
    assert run.final_answer == said[2][1]  # the writer's last draft, not the editor's APPROVE
    assert run.turns == 4
    assert max(model_calls(stack, run_id).values()) == 1
    messages = await stack.history_client(alice.user).messages(run.conversation_id)
    assert [m.content for m in messages if m.agent == "editor"] == ["Shorter, please.", "APPROVE"]


async def test_first_answer_wins_and_a_repeated_request_id_returns_the_first_result(
    stack: Stack, alice: RunClient
) -> None:
    run_id, seen = await park(alice, approval_spec())
    input_id = seen[-1].input_requested.input_id
    outcomes = await asyncio.gather(
        alice.submit_input(run_id, input_id, approve=True, request_id="click-a"),
        alice.submit_input(run_id, input_id, approve=False, request_id="click-b"),
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    winner = won[0].event
    again = await alice.submit_input(
        run_id,
        input_id,
        approve=winner.input_received.decision.approved,
        request_id=winner.input_received.request_id,
    )
    assert again.event == winner  # the double click: the same answer, once
    await alice.wait_status(
        run_id, run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, timeout=TIMEOUT_S
    )
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert kinds(events).count("input_received") == 1
    err = await rpc_error(alice.submit_input(run_id, input_id, approve=True, request_id="late"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "INPUT_NOT_PENDING"
    assert err.metadata["run_id"] == run_id  # history-svc's ErrorInfo reaches the client


@BOTH_BACKENDS
async def test_cancel_while_waiting_ends_the_run_cancelled(stack: Stack, alice: RunClient) -> None:
    run_id, _ = await park(alice, approval_spec())
    answer = await alice.cancel(run_id, "not needed")
    assert answer.cancelled and answer.run.status == run_pb2.RUN_STATUS_CANCELLED
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert kinds(events)[-2:] == ["input_requested", "run_cancelled"]
    assert events[-1].run_cancelled.cancellation.reason == "not needed"
    run = await alice.get(run_id)
    assert run.status == run_pb2.RUN_STATUS_CANCELLED and not run.HasField("pending_input")
    err = await rpc_error(alice.submit_input(run_id, "turn1-1", approve=True))
    assert err.reason == "INPUT_NOT_PENDING"


@pytest.mark.parametrize("orchestrator_values", [{"input_expiry_interval_s": 0.1}], indirect=True)
async def test_an_expired_approval_is_denied_and_an_expired_text_fails_the_run(
    stack: Stack, alice: RunClient
) -> None:
    approval = approval_spec()
    approval.template = ""
    template = {t.name: t for t in await alice.templates()}["assistant-approval"]
    approval.team.CopyFrom(template.spec)
    approval.team.input_timeout.CopyFrom(duration_pb2.Duration(seconds=1))
    tool_run, _ = await park(alice, approval)
    text_run, _ = await park(alice, spec(team_spec=reviewed_team(timeout_s=1), input="Tea"))

    run = await alice.wait_status(tool_run, run_pb2.RUN_STATUS_COMPLETED, timeout=TIMEOUT_S)
    events = await stack.history_client(alice.user).events(tool_run)
    assert_well_formed(events)
    (received,) = [e.input_received for e in events if e.HasField("input_received")]
    assert received.expired and not received.decision.approved
    assert received.decision.reason == "EXPIRED" and received.by == ""
    (finished,) = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
    assert not finished.success and "EXPIRED" in finished.result
    assert run.final_answer

    run = await alice.wait_status(text_run, run_pb2.RUN_STATUS_FAILED, timeout=TIMEOUT_S)
    assert run.error.reason == "INPUT_EXPIRED"
    assert run.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    events = await stack.history_client(alice.user).events(text_run)
    assert_well_formed(events)
    assert kinds(events)[-2:] == ["input_received", "run_failed"]


@BOTH_BACKENDS
async def test_the_answer_reaches_a_run_whose_orchestrator_was_stopped_while_it_waited(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack, grace_period_s=10) as (proc, channel):
        other = RunClient(channel, alice.user)
        run_id, seen = await park(other, approval_spec())
        proc.terminate(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
    # The stack's replica takes the answer and continues the run.
    await alice.submit_input(run_id, seen[-1].input_requested.input_id, approve=True)
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert events[: len(seen)] == seen
    assert "run_resumed" not in kinds(events)
    assert "409.5" in run.final_answer
    assert max(model_calls(stack, run_id).values()) == 1


async def test_another_replica_takes_the_answer_while_the_first_is_alive(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (_proc, channel):
        run_id, seen = await park(alice, approval_spec())  # parked by the stack's replica
        other = RunClient(channel, alice.user)
        await other.submit_input(run_id, seen[-1].input_requested.input_id, approve=True)
        await other.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED)
        assert run_id not in stack.orchestrator.manager.live_runs
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert max(model_calls(stack, run_id).values()) == 1


async def test_bad_input_is_refused_and_changes_nothing(
    stack: Stack, alice: RunClient, bob: RunClient
) -> None:
    run_id, seen = await park(alice, spec(team_spec=reviewed_team(), input="Tea"))
    input_id = seen[-1].input_requested.input_id
    err = await rpc_error(bob.submit_input(run_id, input_id, text="mine now"))
    assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(alice.submit_input(run_id, input_id, text="  "))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "text" in fields_of(err)
    err = await rpc_error(alice.submit_input(run_id, input_id, approve=True))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT  # a decision for a text request
    err = await rpc_error(alice.submit_input(run_id, input_id))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "text" in fields_of(err)
    err = await rpc_error(alice.submit_input(run_id, "", text="x"))
    assert "input_id" in fields_of(err)
    err = await rpc_error(alice.submit_input(run_id, "x" * 129, text="x"))
    assert "input_id" in fields_of(err)
    err = await rpc_error(alice.submit_input(run_id, input_id, text="x" * (64 * 1024 + 1)))
    assert "text" in fields_of(err)
    err = await rpc_error(alice.submit_input(run_id, input_id, text="x", request_id="r" * 129))
    assert "request_id" in fields_of(err)
    err = await rpc_error(alice.submit_input("not-a-uuid", input_id, text="x"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "run_id" in fields_of(err)
    err = await rpc_error(alice.submit_input(run_id, "turn9-1", text="x"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "INPUT_NOT_PENDING"
    # UpdateRunAgent needs a replica that holds the run: none does while it waits.
    err = await rpc_error(
        alice.update_agent(
            run_id, "writer", team_pb2.AgentSpec(system_prompt="x"), ["system_prompt"]
        )
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "RUN_AWAITING_INPUT"
    run = await alice.get(run_id)
    assert run.status == run_pb2.RUN_STATUS_AWAITING_INPUT and run.last_seq == seen[-1].seq


def test_run_python_always_needs_approval() -> None:
    registry = ToolRegistry.load(entry_points=False, code_execution=True)
    needs = {name for name in registry.names() if registry.get(name).requires_approval}
    assert needs == {"run_python"}


async def test_bad_team_specs_for_people_and_approvals_are_invalid(alice: RunClient) -> None:
    human = team_pb2.AgentSpec(name="boss", human=True)
    bad = team(team_pb2.TEAM_KIND_ROUND_ROBIN, human)
    err = await rpc_error(alice.create(spec(team_spec=bad)))
    assert "spec.team.agents" in fields_of(err)
    with_model = team_pb2.AgentSpec(name="boss", human=True, tools=["calculator"])
    with_model.model.provider = "simulator"
    bad = team(team_pb2.TEAM_KIND_ROUND_ROBIN, agent("a"), with_model)
    bad.input_timeout.CopyFrom(duration_pb2.Duration(seconds=0, nanos=5))
    bad.tools_requiring_approval.append("no_such_tool")
    helper = bad.agents[0]
    helper.tools_requiring_approval.append("calculator")  # not among its tools
    err = await rpc_error(alice.create(spec(team_spec=bad)))
    assert fields_of(err) >= {
        "spec.team.agents[1].model",
        "spec.team.agents[1].tools",
        "spec.team.input_timeout",
        "spec.team.tools_requiring_approval[0]",
        "spec.team.agents[0].tools_requiring_approval[0]",
    }


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _statuses(history: Any, run_ids: list[str]) -> Counter[int]:
    """The runs' statuses, read from history-svc (not through the orchestrator measured)."""
    records = await asyncio.gather(*(history.record(r) for r in run_ids))
    return Counter(record.status for record in records)


async def _until_all(history: Any, run_ids: list[str], status: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while (await _statuses(history, run_ids))[status] < len(run_ids):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def _park_many(stack: Stack, client: RunClient, n: int, wave: int = 50) -> list[str]:
    """Start `n` assistant-approval runs, `wave` at a time, each wave waited for until all
    of its runs wait for their approval."""
    history = stack.history_client(client.user)
    ids: list[str] = []
    for start in range(0, n, wave):
        runs = await asyncio.gather(
            *(client.create(approval_spec()) for _ in range(min(wave, n - start)))
        )
        ids.extend(run.id for run in runs)
        await _until_all(history, [r.id for r in runs], run_pb2.RUN_STATUS_AWAITING_INPUT, 60)
    return ids


async def _answer_all(stack: Stack, client: RunClient, run_ids: list[str]) -> None:
    """Approve every run's first request, 50 at a time, each 50 waited for until completed."""
    history = stack.history_client(client.user)
    for start in range(0, len(run_ids), 50):
        chunk = run_ids[start : start + 50]
        await asyncio.gather(*(client.submit_input(r, "turn1-1", approve=True) for r in chunk))
        await _until_all(history, chunk, run_pb2.RUN_STATUS_COMPLETED, 60)


@pytest.mark.timeout(600)
async def test_a_thousand_waiting_runs_cost_the_orchestrator_no_memory(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        client = RunClient(channel, alice.user)
        # Warm-up: runs through the same paths (parked, answered, completed), at most 50
        # at once as below, bring the process's native heap to its high-water mark (a few
        # MB above the start, the same for runs that never wait: allocator fragmentation,
        # not objects kept), so what follows measures waiting alone.
        await _answer_all(stack, client, await _park_many(stack, client, 600))
        before = _rss_kib(proc.proc.pid)
        waiting = await _park_many(stack, client, 1000)
        grown_kib = _rss_kib(proc.proc.pid) - before
        print(f"orchestrator RSS {before} KiB, +{grown_kib} KiB with 1000 runs waiting")
        assert grown_kib < 5 * 1024
        await _answer_all(stack, client, waiting)  # answering them all completes them all
