"""Run rules: idempotent creation, one active run per conversation, server caps, spec
validation naming the field, overrides, lookups scoped to their owner."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from orchestrator_helpers import (
    BOTH_BACKENDS,
    SLOW_DUET,
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    duet,
    fields_of,
    kinds,
    read_rest,
    read_until,
    rpc_error,
    sim,
    spec,
    team,
)
from prometheus_client import REGISTRY

from chorus.core.testing import wait_for
from chorus.v1 import chat_pb2, run_pb2, team_pb2
from chorus.v1 import run_service_pb2 as rs

RR = team_pb2.TEAM_KIND_ROUND_ROBIN


@BOTH_BACKENDS
async def test_the_same_request_id_returns_the_same_run_and_starts_nothing_new(
    stack: Stack, alice: RunClient
) -> None:
    first = await alice.create(spec(team_spec=duet(turns=2), request_id="req-1"))
    again = await alice.create(spec(team_spec=duet(turns=2), request_id="req-1"))
    assert again.id == first.id and again.conversation_id == first.conversation_id
    streamed = await alice.stream(spec(team_spec=duet(turns=2), request_id="req-1"))
    assert streamed[0].run_id == first.id
    assert_well_formed(streamed)
    assert len((await alice.list()).runs) == 1
    assert len(await stack.history_client(alice.user).conversations()) == 1
    other = await alice.create(spec(team_spec=duet(turns=2), request_id="req-2"))
    assert other.id != first.id


async def test_concurrent_creates_with_one_request_id_give_one_run(alice: RunClient) -> None:
    runs = await asyncio.gather(
        *(alice.create(spec(team_spec=duet(turns=2), request_id="same")) for _ in range(5))
    )
    assert len({r.id for r in runs}) == 1


@BOTH_BACKENDS
async def test_a_second_active_run_in_a_conversation_is_aborted_as_busy(
    stack: Stack, alice: RunClient
) -> None:
    first = await alice.create(spec(team_spec=SLOW_DUET))
    err = await rpc_error(
        alice.create(spec(team_spec=duet(turns=2), conversation_id=first.conversation_id))
    )
    assert err.code == grpc.StatusCode.ABORTED and err.reason == "CONVERSATION_BUSY"
    assert len((await alice.list(conversation_id=first.conversation_id)).runs) == 1
    await alice.cancel(first.id)
    second = await alice.create(
        spec(team_spec=duet(turns=2), conversation_id=first.conversation_id)
    )
    assert second.conversation_id == first.conversation_id


def _team(**fields: Any) -> team_pb2.TeamSpec:
    return team_pb2.TeamSpec(**fields)


def _with_agents(*agents: team_pb2.AgentSpec, kind: int = RR) -> team_pb2.TeamSpec:
    return team(kind, *agents)


BAD_SPECS: list[tuple[str, run_pb2.RunSpec, set[str]]] = [
    ("unknown template", spec(template="nope"), {"spec.template"}),
    ("no team", spec(), {"spec.template"}),
    ("template and team", spec(template="duet", team_spec=duet()), {"spec.team"}),
    ("empty agents", spec(team_spec=_team(kind=RR)), {"spec.team.agents"}),
    (
        "duplicate agent names",
        spec(team_spec=_with_agents(agent("Ada"), agent("Ada"))),
        {"spec.team.agents[1].name"},
    ),
    ("max_turns 0", spec(team_spec=duet(), max_turns=0), {"spec.max_turns"}),
    ("max_turns negative", spec(team_spec=duet(), max_turns=-1), {"spec.max_turns"}),
    ("max_turns 10^6", spec(team_spec=duet(), max_turns=10**6), {"spec.max_turns"}),
    ("team max_turns 10^6", spec(team_spec=duet(turns=10**6)), {"spec.team.max_turns"}),
    (
        "unknown tool",
        spec(team_spec=_with_agents(agent("Ada", tools=["rm_rf"]))),
        {"spec.team.agents[0].tools[0]"},
    ),
    (
        "unknown provider",
        spec(team_spec=_with_agents(agent("Ada", provider="nope"))),
        {"spec.team.agents[0].model.provider"},
    ),
    (
        "provider without credentials",
        spec(team_spec=_with_agents(agent("Ada", provider="openai", model="gpt-4o-mini"))),
        {"spec.team.agents[0].model.provider"},
    ),
    (
        "unknown simulator model",
        spec(team_spec=_with_agents(agent("Ada", model="sim-99"))),
        {"spec.team.agents[0].model.model"},
    ),
    ("no kind", spec(team_spec=_team(agents=[agent("Ada")])), {"spec.team.kind"}),
    (
        "single with two agents",
        spec(team_spec=_with_agents(agent("A"), agent("B"), kind=team_pb2.TEAM_KIND_SINGLE)),
        {"spec.team.agents"},
    ),
    (
        "selector with one agent",
        spec(team_spec=_with_agents(agent("A"), kind=team_pb2.TEAM_KIND_SELECTOR)),
        {"spec.team.agents"},
    ),
    ("bad agent name", spec(team_spec=_with_agents(agent("9lives"))), {"spec.team.agents[0].name"}),
    (
        "reserved agent name",
        spec(team_spec=_with_agents(agent("user"))),
        {"spec.team.agents[0].name"},
    ),
    ("empty input", spec(team_spec=duet(), input=""), {"spec.input"}),
    ("input too large", spec(team_spec=duet(), input="x" * (64 * 1024 + 1)), {"spec.input"}),
    ("conversation id", spec(team_spec=duet(), conversation_id="c-1"), {"spec.conversation_id"}),
    (
        "override of a missing agent",
        spec(template="duet", model_overrides={"Zed": chat_pb2.ModelRef(provider="simulator")}),
        {"spec.model_overrides[Zed]"},
    ),
    (
        "override to an unknown provider",
        spec(template="duet", model_overrides={"Ada": chat_pb2.ModelRef(provider="nope")}),
        {"spec.model_overrides[Ada].provider"},
    ),
    (
        "several problems at once",
        spec(team_spec=_with_agents(agent("Ada", tools=["nope"]), agent("Ada")), max_turns=-5),
        {"spec.max_turns", "spec.team.agents[0].tools[0]", "spec.team.agents[1].name"},
    ),
]


@pytest.mark.parametrize(("case", "bad", "fields"), BAD_SPECS, ids=[c for c, _, _ in BAD_SPECS])
async def test_a_bad_spec_is_invalid_argument_naming_the_field_and_stores_nothing(
    stack: Stack, alice: RunClient, case: str, bad: run_pb2.RunSpec, fields: set[str]
) -> None:
    err = await rpc_error(alice.create(bad))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, case
    assert fields_of(err) == fields
    err = await rpc_error(alice.stream(bad))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await alice.list()).runs
    assert not await stack.history_client(alice.user).conversations()


async def test_a_request_without_spec_is_invalid(alice: RunClient) -> None:
    err = await rpc_error(alice.stub.CreateRun(rs.CreateRunRequest(), metadata=alice.md))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"spec"}


@pytest.mark.parametrize(
    "orchestrator_values",
    [{"max_agents": 2, "max_input_bytes": 100, "max_turns_cap": 5, "default_max_turns": 3}],
    indirect=True,
)
async def test_server_caps_come_from_settings(alice: RunClient) -> None:
    three = _with_agents(agent("A"), agent("B"), agent("C"))
    assert fields_of(await rpc_error(alice.create(spec(team_spec=three)))) == {"spec.team.agents"}
    err = await rpc_error(alice.create(spec(team_spec=duet(turns=2), input="x" * 101)))
    assert fields_of(err) == {"spec.input"}
    err = await rpc_error(alice.create(spec(team_spec=duet(turns=2), max_turns=6)))
    assert fields_of(err) == {"spec.max_turns"}
    events = await alice.stream(spec(team_spec=duet(turns=0)))  # no limit given: the default
    assert events[0].run_started.run.spec.max_turns == 3
    assert sum(e.HasField("agent_started") for e in events) == 3


@pytest.mark.parametrize("orchestrator_values", [{"max_active_runs": 1}], indirect=True)
async def test_more_active_runs_than_the_cap_is_resource_exhausted(alice: RunClient) -> None:
    first = await alice.create(spec(team_spec=SLOW_DUET))
    err = await rpc_error(alice.create(spec(team_spec=duet(turns=2))))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "TOO_MANY_ACTIVE_RUNS"
    await alice.cancel(first.id)


async def test_max_turns_zero_takes_the_teams_limit_and_a_given_one_is_obeyed(
    alice: RunClient,
) -> None:
    events = await alice.stream(spec(team_spec=duet(turns=3)))
    assert events[0].run_started.run.spec.max_turns == 3
    assert [e.progress.turn for e in events if e.HasField("progress")] == [1, 2, 3]
    assert all(e.progress.max_turns == 3 for e in events if e.HasField("progress"))
    events = await alice.stream(spec(team_spec=duet(turns=3), max_turns=1))
    assert sum(e.HasField("agent_started") for e in events) == 1
    assert events[-1].run_completed.stop_reason == "max_turns"


async def test_model_overrides_change_the_agents_model_and_are_frozen_in_the_run(
    stack: Stack, alice: RunClient
) -> None:
    override = chat_pb2.ModelRef(provider="simulator", model="sim-reasoning")
    events = await alice.stream(
        spec(template="duet", max_turns=2, model_overrides={"Blaise": override})
    )
    run = events[0].run_started.run
    agents = {a.name: a for a in run.spec.team.agents}
    assert agents["Blaise"].model == override and agents["Ada"].model.model == "sim-1"
    models = {
        r.metadata["agent"]: r.model.model
        for r in stack.received
        if r.metadata.get("run_id") == run.id
    }
    assert models == {"Ada": "sim-1", "Blaise": "sim-reasoning"}


async def test_get_and_list_are_scoped_to_the_owner_and_filter_by_status_and_conversation(
    alice: RunClient, bob: RunClient
) -> None:
    done = await alice.stream(spec(team_spec=duet(turns=2)))
    done_id = done[0].run_id
    live = await alice.create(spec(team_spec=SLOW_DUET))
    assert (await alice.get(done_id)).status == run_pb2.RUN_STATUS_COMPLETED
    got = await alice.get(live.id)
    assert got.status == run_pb2.RUN_STATUS_RUNNING and got.owner == alice.user
    assert (await rpc_error(bob.get(live.id))).code == grpc.StatusCode.NOT_FOUND
    assert (await rpc_error(alice.get("nope"))).code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await bob.list()).runs

    assert [r.id for r in (await alice.list()).runs] == [live.id, done_id]  # newest first
    running = await alice.list(status=run_pb2.RUN_STATUS_RUNNING)
    assert [r.id for r in running.runs] == [live.id]
    by_conversation = await alice.list(conversation_id=live.conversation_id)
    assert [r.id for r in by_conversation.runs] == [live.id]
    page = await alice.list(page_size=1)
    assert len(page.runs) == 1 and page.next_page_token
    err = await rpc_error(alice.list(page_size=-1))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    await alice.cancel(live.id)


@BOTH_BACKENDS
async def test_a_single_team_answers_with_the_conversations_history_as_context(
    stack: Stack, alice: RunClient
) -> None:
    first = await alice.stream(spec(template="assistant", input="My name is Ada Lovelace."))
    conversation = first[0].run_started.run.conversation_id
    reply = first[-1].run_completed.final_answer
    second = await alice.stream(
        spec(template="assistant", input="What is my name?", conversation_id=conversation)
    )
    assert_well_formed(second)
    run_id = second[0].run_id
    request = next(r for r in stack.received if r.metadata.get("run_id") == run_id)
    sent = [(m.role, m.content) for m in request.messages]
    assert sent[0][0] == chat_pb2.ROLE_SYSTEM
    assert (chat_pb2.ROLE_USER, "My name is Ada Lovelace.") in sent
    assert (chat_pb2.ROLE_ASSISTANT, reply) in sent
    assert sent[-1] == (chat_pb2.ROLE_USER, "What is my name?")
    messages = await stack.history_client(alice.user).messages(conversation)
    assert [m.content for m in messages][-2:] == [
        "What is my name?",
        second[-1].run_completed.final_answer,
    ]


@pytest.mark.parametrize("orchestrator_values", [{"max_starting_runs": 1}], indirect=True)
async def test_starts_beyond_max_starting_runs_wait_their_turn_and_all_run(
    alice: RunClient,
) -> None:
    def waiting() -> float:
        return REGISTRY.get_sample_value("chorus_orchestrator_run_starts_waiting") or 0.0

    assert waiting() == 0
    creates = [asyncio.ensure_future(alice.create(spec(team_spec=duet(turns=1)))) for _ in range(8)]
    # One start holds the only slot while its opening write is in flight; the rest queue.
    await wait_for(lambda: waiting() >= 3, timeout=10)
    runs = await asyncio.gather(*creates)
    assert waiting() == 0
    assert len({r.id for r in runs}) == 8
    for run in runs:
        done = await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED)
        assert done.status == run_pb2.RUN_STATUS_COMPLETED


@pytest.mark.parametrize("orchestrator_values", [{"max_ending_runs": 2}], indirect=True)
@pytest.mark.parametrize(
    "team_spec",
    [
        team(team_pb2.TEAM_KIND_SINGLE, agent("writer", simulator=sim(output_tokens=30))),
        duet(turns=2, simulator=sim(output_tokens=30)),
    ],
    ids=["single", "duet"],
)
async def test_run_ends_beyond_max_ending_runs_wait_their_turn(
    stack: Stack, alice: RunClient, team_spec: team_pb2.TeamSpec
) -> None:
    def waiting() -> float:
        return REGISTRY.get_sample_value("chorus_orchestrator_run_ends_waiting") or 0.0

    slots = stack.orchestrator.manager._deps.end_slots
    await slots.acquire()
    await slots.acquire()  # every end slot is held
    try:
        run = await alice.create(spec(team_spec=team_spec))
        call = alice.watch_call(run.id)
        await wait_for(lambda: waiting() == 1, timeout=10)
        # the run streamed everything and waits to make its closing writes: no end yet
        assert (await alice.get(run.id)).status == run_pb2.RUN_STATUS_RUNNING
        head = await read_until(call, lambda e: e.HasField("text_delta"))
        assert not any(k in kinds(head) for k in ("run_completed", "run_failed"))
    finally:
        slots.release()
        slots.release()
    await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED)
    events = head + await read_rest(call)
    assert_well_formed(events)
    assert events[-1].HasField("run_completed")
    assert waiting() == 0
