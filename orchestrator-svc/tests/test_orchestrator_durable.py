"""Durable runs (issue 18): a run survives the loss or restart of its orchestrator.

Each test runs one orchestrator replica as a child process (`python -m chorus.orchestrator`)
beside the stack's own replica (in this process; lease 1 s, sweep every 0.2 s), kills,
stops, freezes or cuts the child at a chosen point, and checks what the issue promises:

* every run still ends `run_completed` (or as asked: cancelled, RESUME_LIMIT);
* the stored log is gapless with one terminal event, and whatever a watcher was shown
  equals the stored events at those seqs (log before show);
* the run continues from its last checkpoint after a `run_resumed` event, and no completed
  model call is made twice (the simulator records every request it received).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter

import grpc
import pytest
from orchestrator_helpers import (
    BOTH_BACKENDS,
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    history_calls,
    orchestrator_process,
    read_rest,
    read_until,
    sim,
    spec,
    team,
)

from chorus.core.testing import wait_for
from chorus.v1 import history_service_pb2 as hs
from chorus.v1 import run_pb2, team_pb2

ROUND_ROBIN = team_pb2.TEAM_KIND_ROUND_ROBIN
TURNS = 4


def paced_duet(tokens_per_second: float = 150.0, output_tokens: int = 150) -> team_pb2.TeamSpec:
    """Two agents, 4 turns, each reply streaming for about a second."""
    options = sim(tokens_per_second=tokens_per_second, output_tokens=output_tokens)
    return team(
        ROUND_ROBIN,
        agent("Ada", simulator=options),
        agent("Blaise", simulator=options),
        max_turns=TURNS,
    )


def in_second_turn(event: run_pb2.RunEvent) -> bool:
    """A delta of the second turn: the first turn's checkpoint is written by then."""
    return event.HasField("text_delta") and event.agent == "Blaise"


def payload(event: run_pb2.RunEvent) -> str:
    return str(event.WhichOneof("payload"))


def completed_turns(events: list[run_pb2.RunEvent]) -> list[run_pb2.RunEvent]:
    """The events a client keeps: those of interrupted turns (after a `run_resumed`'s
    `from_seq`, before it) dropped, as the page and the CLI do."""
    kept: list[run_pb2.RunEvent] = []
    for event in events:
        if event.HasField("run_resumed"):
            kept = [e for e in kept if e.seq <= event.run_resumed.from_seq]
        kept.append(event)
    return kept


def assert_no_completed_call_repeated(stack: Stack, interrupted: int) -> None:
    """Every model request reached the simulator once, but for at most `interrupted` repeats
    (the calls of turns that were under way when their owner was lost)."""
    seen = Counter(request.SerializeToString(deterministic=True) for request in stack.received)
    repeats = sum(n - 1 for n in seen.values())
    assert repeats <= interrupted, f"{repeats} model calls repeated"


async def start_and_watch(
    client: RunClient, team_spec: team_pb2.TeamSpec, until=in_second_turn
) -> tuple[str, list[run_pb2.RunEvent]]:
    run = await client.create(spec(team_spec=team_spec))
    seen = await read_until(client.watch_call(run.id), until)
    return run.id, seen


async def check_resumed_and_completed(
    stack: Stack, alice: RunClient, run_id: str, seen: list[run_pb2.RunEvent], reason: str
) -> list[run_pb2.RunEvent]:
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert events[-1].HasField("run_completed") and run.last_seq == events[-1].seq
    # Log before show: the watcher of the lost replica saw only stored events.
    assert events[: len(seen)] == seen
    (resumed,) = [e.run_resumed for e in events if e.HasField("run_resumed")]
    assert resumed.attempt == 2 and resumed.reason == reason and resumed.from_seq > 0
    checkpointed = events[resumed.from_seq - 1]
    assert payload(checkpointed) == "progress"  # a turn boundary
    kept = completed_turns(events)
    assert [e.progress.turn for e in kept if e.HasField("progress")] == list(range(1, TURNS + 1))
    assert len([e for e in kept if e.HasField("message_completed")]) == TURNS
    assert run.attempt == 2
    return events


@BOTH_BACKENDS
async def test_a_killed_replicas_run_is_resumed_by_another_from_its_checkpoint(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run_id, seen = await start_and_watch(RunClient(channel, alice.user), paced_duet())
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    await check_resumed_and_completed(stack, alice, run_id, seen, "OWNER_LOST")
    assert_no_completed_call_repeated(stack, interrupted=1)


async def test_a_watcher_of_the_surviving_replica_sees_one_gapless_stream_through_the_kill(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run = await RunClient(channel, alice.user).create(spec(team_spec=paced_duet()))
        watch = alice.watch_call(run.id)  # on the stack's replica: it tails history-svc
        head = await read_until(watch, in_second_turn)
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
        rest = await read_rest(watch)
    watched = head + rest
    assert [e.seq for e in watched] == list(range(1, len(watched) + 1))
    assert watched == await stack.history_client(alice.user).events(run.id)
    assert payload(watched[-1]) == "run_completed"


async def test_a_sigterm_hands_the_run_over_at_the_next_turn_boundary(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack, grace_period_s=30) as (proc, channel):
        run_id, seen = await start_and_watch(RunClient(channel, alice.user), paced_duet())
        proc.terminate(signal.SIGTERM)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
    events = await check_resumed_and_completed(stack, alice, run_id, seen, "HANDOFF")
    (resumed,) = [e for e in events if e.HasField("run_resumed")]
    # The turn under way finished on the stopping replica: nothing was interrupted.
    assert resumed.seq == resumed.run_resumed.from_seq + 1
    boundary = events[resumed.run_resumed.from_seq - 1]
    took_s = (resumed.time.ToNanoseconds() - boundary.time.ToNanoseconds()) / 1e9
    assert took_s < 1.5, f"the other replica continued {took_s:.2f} s after the boundary"
    assert_no_completed_call_repeated(stack, interrupted=0)


async def test_a_frozen_owner_that_wakes_after_losing_its_lease_cannot_write(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run_id, seen = await start_and_watch(RunClient(channel, alice.user), paced_duet())
        proc.terminate(signal.SIGSTOP)
        try:

            async def resumed() -> bool:
                events = await stack.history_client(alice.user).events(run_id)
                return any(e.HasField("run_resumed") for e in events)

            await wait_for(resumed, timeout=20, interval=0.1)
        finally:
            proc.terminate(signal.SIGCONT)
        await check_resumed_and_completed(stack, alice, run_id, seen, "OWNER_LOST")

        def let_go() -> bool:
            return any("run_lease_lost" in line or "run_abandoned" in line for line in proc.lines)

        await wait_for(let_go, timeout=20, interval=0.1)
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)


async def test_a_cancel_recorded_while_a_run_has_no_owner_ends_it_cancelled(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run_id, _ = await start_and_watch(RunClient(channel, alice.user), paced_duet())
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    response = await alice.cancel(run_id, reason="owner gone")
    assert response.cancelled
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_CANCELLED)
    events = await alice.watch(run_id)
    assert_well_formed(events)
    assert events[-1].run_cancelled.cancellation.reason == "owner gone"
    assert run.cancellation.requested_by == alice.user


@pytest.mark.parametrize("orchestrator_values", [{"max_run_resumes": 0}], indirect=True)
async def test_a_run_past_its_resume_limit_fails_retryable(stack: Stack, alice: RunClient) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run_id, seen = await start_and_watch(RunClient(channel, alice.user), paced_duet())
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_FAILED)
    assert run.error.reason == "RESUME_LIMIT" and run.error.retryable
    assert run.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    events = await alice.watch(run_id)
    assert_well_formed(events)
    assert events[: len(seen)] == seen


async def test_an_agent_update_made_before_the_crash_applies_after_the_resume(
    stack: Stack, alice: RunClient
) -> None:
    prompt = f"Answer in French ({uuid.uuid4().hex[:6]})."
    async with orchestrator_process(stack) as (proc, channel):
        child = RunClient(channel, alice.user)
        run_id, _ = await start_and_watch(
            child, paced_duet(), until=lambda e: e.HasField("text_delta") and e.agent == "Ada"
        )
        await child.update_agent(
            run_id, "Blaise", team_pb2.AgentSpec(system_prompt=prompt), ["system_prompt"]
        )
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    blaise = [
        r
        for r in stack.received
        if r.messages and r.messages[0].content == prompt  # the system prompt comes first
    ]
    assert blaise, "Blaise's calls after the resume do not carry the updated prompt"


@pytest.mark.parametrize(
    "orchestrator_values", [{"sweep_interval_s": 60.0, "lease_duration_s": 60.0}], indirect=True
)
async def test_the_startup_sweep_resumes_earlier_runs_of_its_instance_from_their_input(
    stack: Stack, alice: RunClient
) -> None:
    history = stack.history_client(alice.user)
    instance = stack.orchestrator.settings.instance_id

    async def recorded(create_s: int | None) -> str:
        """A RUNNING run recorded under this instance id, created at `create_s` (None: now),
        with nothing but `run_started` stored."""
        conversation = await history.stub.CreateConversation(
            hs.CreateConversationRequest(), metadata=history.md
        )
        run = run_pb2.Run(
            id=str(uuid.uuid4()),
            conversation_id=conversation.conversation.id,
            spec=spec(team_spec=paced_duet(tokens_per_second=0, output_tokens=10), max_turns=TURNS),
            status=run_pb2.RUN_STATUS_RUNNING,
            owner_instance=instance,
        )
        if create_s is not None:
            run.create_time.seconds = create_s
        await history.stub.RecordRun(hs.RecordRunRequest(run=run), metadata=history.md)
        started = run_pb2.RunEvent(
            run_id=run.id, seq=1, run_started=run_pb2.RunEvent.RunStarted(run=run)
        )
        await history.stub.AppendRunEvents(
            hs.AppendRunEventsRequest(run_id=run.id, events=[started]), metadata=history.md
        )
        return run.id

    # An earlier process with this instance id recorded one (nothing runs it now); this
    # process recorded the other just now (as a start does, before the run is live).
    earlier, new = await recorded(int(time.time()) - 3600), await recorded(None)
    # (The replica's own startup sweep may still be under way and take it first.)
    assert await stack.orchestrator.manager.liveness.sweep(startup=True) <= 1
    run = await alice.wait_status(earlier, run_pb2.RUN_STATUS_COMPLETED)
    events = await alice.watch(earlier)
    assert_well_formed(events)
    assert events[1].run_resumed.from_seq == 0 and events[1].run_resumed.attempt == 2
    assert run.attempt == 2
    assert (await alice.get(new)).status == run_pb2.RUN_STATUS_RUNNING


async def test_watching_past_the_end_of_an_ended_run_is_out_of_range(
    stack: Stack, alice: RunClient
) -> None:
    events = await alice.stream(spec(team_spec=paced_duet(tokens_per_second=0, output_tokens=5)))
    last = events[-1].seq
    assert await alice.watch(events[0].run_id, after_seq=last) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await alice.watch(events[0].run_id, after_seq=last + 1)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def _watch_with_reattach(
    first: RunClient, then: RunClient, run_id: str, started: asyncio.Event
) -> list[run_pb2.RunEvent]:
    """Watch on `first`; when its replica goes away, resume on `then` after the last seq
    seen — what the gateway and the CLI do."""
    seen: list[run_pb2.RunEvent] = []
    try:
        async for response in first.watch_call(run_id):
            seen.append(response.event)
            started.set()
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
    if seen and payload(seen[-1]) in ("run_completed", "run_failed", "run_cancelled"):
        return seen
    after = seen[-1].seq if seen else 0
    return seen + await then.watch(run_id, after_seq=after)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_twenty_live_runs_survive_the_loss_of_their_replica(
    stack: Stack, alice: RunClient, sig: int
) -> None:
    async with orchestrator_process(stack, grace_period_s=10) as (proc, channel):
        child = RunClient(channel, alice.user)
        runs = [(await child.create(spec(team_spec=paced_duet()))).id for _ in range(20)]
        started = [asyncio.Event() for _ in runs]
        watchers = [
            asyncio.create_task(_watch_with_reattach(child, alice, run_id, flag))
            for run_id, flag in zip(runs, started, strict=True)
        ]
        other_side = [asyncio.create_task(alice.watch(run_id)) for run_id in runs]
        async with asyncio.timeout(20):
            await asyncio.gather(*(flag.wait() for flag in started))
        proc.terminate(sig)
        await asyncio.to_thread(proc.proc.wait, 30)
        async with asyncio.timeout(60):
            seen = await asyncio.gather(*watchers)
            tails = await asyncio.gather(*other_side)
    history = stack.history_client(alice.user)
    for run_id, watched, tailed in zip(runs, seen, tails, strict=True):
        stored = await history.events(run_id)
        assert_well_formed(stored)
        assert stored[-1].HasField("run_completed"), payload(stored[-1])
        assert watched == stored and tailed == stored


@pytest.mark.parametrize(
    "kind",
    [
        team_pb2.TEAM_KIND_SELECTOR,
        team_pb2.TEAM_KIND_SEQUENTIAL,
        team_pb2.TEAM_KIND_MAGENTIC_ONE,
    ],
    ids=["selector", "sequential", "magentic-one"],
)
async def test_every_team_kind_resumes_from_its_checkpoint_after_a_kill(
    stack: Stack, alice: RunClient, kind: int
) -> None:
    options = sim(tokens_per_second=200.0, output_tokens=100)
    names = ("Ada", "Blaise", "Carl")
    team_spec = team(kind, *(agent(n, simulator=options) for n in names), max_turns=3)

    def second_agent_turn(event: run_pb2.RunEvent) -> bool:
        return event.HasField("text_delta") and event.agent in names and event.seq > 0

    async with orchestrator_process(stack) as (proc, channel):
        child = RunClient(channel, alice.user)
        run = await child.create(spec(team_spec=team_spec))
        seen = await read_until(
            child.watch_call(run.id), lambda e: e.HasField("progress") and e.progress.turn >= 1
        )
        seen += await read_until(child.watch_call(run.id, seen[-1].seq), second_agent_turn)
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    run = await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=60)
    events = await stack.history_client(alice.user).events(run.id)
    assert_well_formed(events)
    assert events[: len(seen)] == seen
    (resumed,) = [e.run_resumed for e in events if e.HasField("run_resumed")]
    assert resumed.from_seq > 0 and resumed.attempt == 2
    kept = completed_turns(events)
    turns = [e.progress.turn for e in kept if e.HasField("progress")]
    assert turns == list(range(1, len(turns) + 1))  # no turn counted twice
    # Only the interrupted turn's agent call is made again: a SELECTOR's or MAGENTIC_ONE's
    # orchestrator calls that chose its speaker (made after the checkpoint) were stored with
    # the turn's `agent_started` and are answered from there.
    assert_no_completed_call_repeated(stack, interrupted=1)
    orchestrator = Counter(
        r.SerializeToString(deterministic=True)
        for r in stack.received
        if r.metadata["run_id"] == run.id and r.metadata["agent"] == "orchestrator"
    )
    assert all(n == 1 for n in orchestrator.values()), "an orchestrator call was repeated"
    if kind in (team_pb2.TEAM_KIND_SELECTOR, team_pb2.TEAM_KIND_MAGENTIC_ONE):
        assert orchestrator


def _kill_point(name: str):
    """When to kill: the first delta (before the first checkpoint), the first turn's
    `progress` (right after its checkpoint was stored with it), or a delta of the last turn
    (its end — closing events, terminal event and final record in one write — follows)."""
    state = {"last_turn": False}

    def before_first_checkpoint(event: run_pb2.RunEvent) -> bool:
        return event.HasField("text_delta")

    def after_checkpoint(event: run_pb2.RunEvent) -> bool:
        return event.HasField("progress")

    def in_the_last_turn(event: run_pb2.RunEvent) -> bool:
        if event.HasField("progress") and event.progress.turn == TURNS - 1:
            state["last_turn"] = True
        return state["last_turn"] and event.HasField("text_delta")

    return {
        "before-first-checkpoint": before_first_checkpoint,
        "after-checkpoint": after_checkpoint,
        "in-the-last-turn": in_the_last_turn,
    }[name]


@pytest.mark.parametrize(
    "point", ["before-first-checkpoint", "after-checkpoint", "in-the-last-turn"]
)
async def test_a_kill_at_any_point_of_the_run_loses_nothing(
    stack: Stack, alice: RunClient, point: str
) -> None:
    async with orchestrator_process(stack) as (proc, channel):
        run_id, seen = await start_and_watch(
            RunClient(channel, alice.user), paced_duet(), until=_kill_point(point)
        )
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    run = await alice.wait_status(run_id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    events = await stack.history_client(alice.user).events(run_id)
    assert_well_formed(events)
    assert events[: len(seen)] == seen and run.last_seq == events[-1].seq
    (resumed,) = [e.run_resumed for e in events if e.HasField("run_resumed")]
    if point == "before-first-checkpoint":
        assert resumed.from_seq == 0  # restarted from its input
    else:
        assert payload(events[resumed.from_seq - 1]) == "progress"
    kept = completed_turns(events)
    assert [e.progress.turn for e in kept if e.HasField("progress")] == list(range(1, TURNS + 1))
    # At most the call under way at the kill is made again (after a checkpoint: the next
    # turn's, if it had begun).
    assert_no_completed_call_repeated(stack, interrupted=1)


@BOTH_BACKENDS
async def test_a_single_run_killed_as_its_first_deltas_are_written_restarts_from_its_input(
    stack: Stack, alice: RunClient
) -> None:
    # The prefetched call's first deltas are written once the opening write is stored,
    # while the team is being built: a kill then (their write under way or not) leaves a
    # log that a resume continues exactly, from the input.
    writer = agent("writer", simulator=sim(tokens_per_second=200.0, output_tokens=100))
    async with orchestrator_process(stack) as (proc, channel):
        run = await RunClient(channel, alice.user).create(
            spec(team_spec=team(team_pb2.TEAM_KIND_SINGLE, writer))
        )
        proc.terminate(signal.SIGKILL)
        await asyncio.to_thread(proc.proc.wait)
    done = await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    events = await stack.history_client(alice.user).events(run.id)
    assert_well_formed(events)
    assert done.last_seq == events[-1].seq and done.attempt == 2
    (at,) = [i for i, e in enumerate(events) if e.HasField("run_resumed")]
    assert events[at].run_resumed.from_seq == 0  # restarted from its input
    first, second = events[:at], events[at + 1 :]
    assert [payload(e) for e in first[:2]] == ["run_started", "agent_started"]
    assert {payload(e) for e in first[2:]} <= {"text_delta"}
    assert payload(second[0]) == "agent_started" and second[0].agent_started.turn == 1
    kinds = [payload(e) for e in second[1:]]
    assert kinds[-4:] == ["message_completed", "agent_finished", "progress", "run_completed"]
    assert set(kinds[:-4]) == {"text_delta"}
    text = "".join(e.text_delta.text for e in second if e.HasField("text_delta"))
    assert text == second[-1].run_completed.final_answer
    assert_no_completed_call_repeated(stack, interrupted=1)


@pytest.mark.parametrize("kind", [ROUND_ROBIN, team_pb2.TEAM_KIND_SEQUENTIAL])
async def test_a_teams_known_first_turn_starts_in_the_opening_write(
    stack: Stack, alice: RunClient, kind: int
) -> None:
    # The first speaker of a round robin or a sequence is its first agent: that turn's
    # agent_started is stored with run_started (no write of its own before the turn's
    # first delta); the next turn's has its own write.
    options = sim(output_tokens=3)
    two = team(kind, agent("Ada", simulator=options), agent("Blaise", simulator=options))
    two.max_turns = 2
    before = history_calls("AppendRunEvents"), history_calls("RecordRunStart")
    events = await alice.stream(spec(team_spec=two))
    writes = (
        history_calls("AppendRunEvents") - before[0],
        history_calls("RecordRunStart") - before[1],
    )
    assert_well_formed(events)
    assert [payload(e) for e in events[:3]] == ["run_started", "agent_started", "text_delta"]
    assert events[1].agent == "Ada" and events[1].agent_started.turn == 1
    started = [e for e in events if e.HasField("agent_started")]
    assert [(e.agent, e.agent_started.turn) for e in started] == [("Ada", 1), ("Blaise", 2)]
    # the opening; then turn 1's boundary (with its checkpoint), Blaise's agent_started, the end
    assert writes == (3, 1)
    assert await stack.history_client(alice.user).events(events[0].run_id) == events
