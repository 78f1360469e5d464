"""UpdateRunAgent changes an agent's prompt, temperature or model from its next turn on —
observed in the requests the simulator receives — and emits `agent_updated`."""

from __future__ import annotations

import grpc
from orchestrator_helpers import (
    BOTH_BACKENDS,
    RunClient,
    Stack,
    assert_well_formed,
    duet,
    fields_of,
    orchestrator_process,
    read_rest,
    read_until,
    rpc_error,
    sim,
    spec,
)

from chorus.v1 import chat_pb2, team_pb2

# ~0.5 s per reply: time to change an agent while another speaks.
PACED = duet(turns=3, simulator=sim(tokens_per_second=60.0, output_tokens=30))


def requests_of(stack: Stack, run_id: str, agent: str) -> list:
    return [
        r
        for r in stack.received
        if r.metadata.get("run_id") == run_id and r.metadata.get("agent") == agent
    ]


@BOTH_BACKENDS
async def test_update_applies_from_each_agents_next_turn_and_is_announced(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=PACED))
    call = alice.watch_call(run.id)
    head = await read_until(call, lambda e: e.agent == "Ada" and e.HasField("text_delta"))

    # Ada is mid-turn: her change waits for her next turn; Blaise's applies to his first.
    ada = await alice.update_agent(
        run.id, "Ada", team_pb2.AgentSpec(temperature=1.7), ["temperature"]
    )
    assert ada.temperature == 1.7 and ada.model.model == "sim-1"
    blaise = await alice.update_agent(
        run.id,
        "Blaise",
        team_pb2.AgentSpec(
            system_prompt="You are terse.",
            model=chat_pb2.ModelRef(provider="simulator", model="sim-reasoning"),
        ),
        ["system_prompt", "model"],
    )
    assert blaise.system_prompt == "You are terse." and blaise.model.model == "sim-reasoning"

    events = head + await read_rest(call)
    assert_well_formed(events)
    assert events[-1].HasField("run_completed")
    updates = [e for e in events if e.HasField("agent_updated")]
    assert [(e.agent, list(e.agent_updated.fields)) for e in updates] == [
        ("Ada", ["temperature"]),
        ("Blaise", ["system_prompt", "model"]),
    ]
    assert all(e.agent_updated.updated_by == alice.user for e in updates)
    assert updates[0].agent_updated.agent.temperature == 1.7

    ada_requests = requests_of(stack, run.id, "Ada")
    assert len(ada_requests) == 2  # turns 1 and 3
    assert not ada_requests[0].HasField("temperature")
    assert ada_requests[1].temperature == 1.7
    (blaise_request,) = requests_of(stack, run.id, "Blaise")
    assert blaise_request.model.model == "sim-reasoning"
    assert blaise_request.messages[0].role == chat_pb2.ROLE_SYSTEM
    assert blaise_request.messages[0].content == "You are terse."
    # The model change shows: sim-reasoning streams reasoning, kept apart from the text.
    assert any(e.agent == "Blaise" and e.HasField("reasoning_delta") for e in events)


async def test_bad_updates_are_refused_with_the_field_or_reason_and_change_nothing(
    stack: Stack, alice: RunClient, bob: RunClient
) -> None:
    run = await alice.create(spec(team_spec=PACED))
    await read_until(alice.watch_call(run.id), lambda e: e.HasField("agent_started"))

    err = await rpc_error(
        alice.update_agent(run.id, "Nobody", team_pb2.AgentSpec(), ["temperature"])
    )
    assert err.code == grpc.StatusCode.NOT_FOUND and err.reason == "AGENT_NOT_FOUND"
    err = await rpc_error(alice.update_agent(run.id, "Ada", team_pb2.AgentSpec(), []))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"update_mask"}
    err = await rpc_error(alice.update_agent(run.id, "Ada", team_pb2.AgentSpec(), ["tools"]))
    assert fields_of(err) == {"update_mask.paths[0]"}
    err = await rpc_error(
        alice.update_agent(run.id, "Ada", team_pb2.AgentSpec(temperature=3.0), ["temperature"])
    )
    assert fields_of(err) == {"agent.temperature"}
    bad_model = team_pb2.AgentSpec(model=chat_pb2.ModelRef(provider="nope", model="x"))
    err = await rpc_error(alice.update_agent(run.id, "Ada", bad_model, ["model"]))
    assert fields_of(err) == {"agent.model.provider"}
    err = await rpc_error(bob.update_agent(run.id, "Ada", team_pb2.AgentSpec(), ["temperature"]))
    assert err.code == grpc.StatusCode.NOT_FOUND

    events = await alice.watch(run.id)
    assert not any(e.HasField("agent_updated") for e in events)
    assert all(not r.HasField("temperature") for r in requests_of(stack, run.id, "Ada"))
    err = await rpc_error(
        alice.update_agent(run.id, "Ada", team_pb2.AgentSpec(temperature=1.0), ["temperature"])
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "RUN_ENDED"


async def test_update_sent_to_a_replica_that_does_not_run_the_run_says_where_it_runs(
    stack: Stack, alice: RunClient
) -> None:
    long_run = duet(turns=4, simulator=sim(tokens_per_second=50.0, output_tokens=500))
    run = await alice.create(spec(team_spec=long_run))
    async with orchestrator_process(stack) as (_, channel):
        other = RunClient(channel, alice.user)
        err = await rpc_error(
            other.update_agent(run.id, "Ada", team_pb2.AgentSpec(temperature=1.0), ["temperature"])
        )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "RUN_ON_OTHER_REPLICA"
    assert err.metadata["owner_instance"] == stack.orchestrator.settings.instance_id
    assert (await alice.cancel(run.id)).cancelled
