"""CHORUS_MAX_RUN_RESUMES counts losses of the owner only, and a claimer's writes are fenced
(issue 18, "Resume" and "Ownership by lease, with fencing").

A handoff (the owner releases the lease: SIGTERM, a rolling deploy) is a planned move: a run
handed over more times than the limit still completes. A lost owner (its lease expired)
counts, handoffs before or not. The stack's one replica plays both sides here: a live run
is asked to hand over (`LiveRun.request_handoff`, at its next turn boundary, as on SIGTERM;
`handoff_now`, at the deadline, losing the turn) or is lost (`abandon`: it stops without a
word and its lease expires), and the replica's own sweep claims it again (lease 1 s, sweep
every 0.2 s). SIGKILL past the limit (`test_orchestrator_durable.py`) still ends the run
RESUME_LIMIT. Also here: a claimer's record write is fenced by its epoch, and a turn lost
after a selector or MagenticOne chose its speaker is redone without choosing again.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
from orchestrator_helpers import (
    BOTH_BACKENDS,
    TOKEN,
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    is_delta,
    read_until,
    sim,
    spec,
    team,
)

from chorus.core.testing import wait_for
from chorus.orchestrator.auth import CallAuth
from chorus.orchestrator.history import HistoryClient
from chorus.orchestrator.recovery import end_orphan
from chorus.orchestrator.runs import LiveRun
from chorus.v1 import history_service_pb2 as hs
from chorus.v1 import run_pb2, team_pb2

TURNS = 4


def paced_duet() -> team_pb2.TeamSpec:
    """Two agents, 4 turns, each reply streaming for about a second."""
    options = sim(tokens_per_second=150.0, output_tokens=150)
    return team(
        team_pb2.TEAM_KIND_ROUND_ROBIN,
        agent("Ada", simulator=options),
        agent("Blaise", simulator=options),
        max_turns=TURNS,
    )


async def live_attempt(stack: Stack, run_id: str, attempt: int) -> LiveRun:
    """The run executing on the stack's replica in its execution `attempt`."""

    def found() -> LiveRun | None:
        live = stack.orchestrator.manager.live_runs.get(run_id)
        return live if live is not None and live.record.attempt == attempt else None

    result: LiveRun = await wait_for(found, timeout=20)
    return result


def resumed_as(attempt: int) -> Any:
    return lambda e: e.HasField("run_resumed") and e.run_resumed.attempt == attempt


def resumes(events: list[run_pb2.RunEvent]) -> list[tuple[int, str]]:
    return [
        (e.run_resumed.attempt, e.run_resumed.reason) for e in events if e.HasField("run_resumed")
    ]


def repeated_calls(stack: Stack) -> int:
    seen = Counter(r.SerializeToString(deterministic=True) for r in stack.received)
    return sum(n - 1 for n in seen.values())


@BOTH_BACKENDS
@pytest.mark.parametrize("orchestrator_values", [{"max_run_resumes": 1}], indirect=True)
async def test_a_run_handed_over_more_times_than_the_limit_completes(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=paced_duet()))
    watch = alice.watch_call(run.id)
    for attempt in (1, 2, 3):  # three handoffs at turn boundaries, the limit is 1
        if attempt > 1:
            await read_until(watch, resumed_as(attempt))
        (await live_attempt(stack, run.id, attempt)).request_handoff()
    done = await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    events = await stack.history_client(alice.user).events(run.id)
    assert_well_formed(events)
    assert resumes(events) == [(2, "HANDOFF"), (3, "HANDOFF"), (4, "HANDOFF")]
    assert done.attempt == 4
    # Each handoff waited for its turn boundary: nothing was interrupted or paid twice.
    assert [e.progress.turn for e in events if e.HasField("progress")] == list(range(1, 5))
    assert repeated_calls(stack) == 0


@pytest.mark.parametrize("orchestrator_values", [{"max_run_resumes": 0}], indirect=True)
async def test_a_run_handed_over_at_the_deadline_before_any_checkpoint_completes(
    stack: Stack, alice: RunClient
) -> None:
    slow = sim(tokens_per_second=100.0, output_tokens=300)  # one turn of 3 s: no checkpoint
    single = team(team_pb2.TEAM_KIND_SINGLE, agent("Ada", simulator=slow))
    run = await alice.create(spec(team_spec=single))
    watch = alice.watch_call(run.id)
    for attempt in (1, 2):  # the turn under way is lost twice, the limit is 0
        if attempt > 1:
            await read_until(watch, resumed_as(attempt))
        live = await live_attempt(stack, run.id, attempt)
        await read_until(watch, is_delta)
        live.handoff_now()
    done = await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    events = await stack.history_client(alice.user).events(run.id)
    assert_well_formed(events)
    assert resumes(events) == [(2, "HANDOFF"), (3, "HANDOFF")]
    assert all(e.run_resumed.from_seq == 0 for e in events if e.HasField("run_resumed"))
    assert done.attempt == 3 and done.final_answer


@BOTH_BACKENDS
@pytest.mark.parametrize("orchestrator_values", [{"max_run_resumes": 1}], indirect=True)
async def test_lost_owners_past_the_limit_end_the_run_whatever_the_handoffs(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=paced_duet()))
    watch = alice.watch_call(run.id)
    (await live_attempt(stack, run.id, 1)).request_handoff()  # planned: not counted
    for attempt in (2, 3):  # lost twice mid-turn: the second loss is past the limit
        await read_until(watch, resumed_as(attempt))
        live = await live_attempt(stack, run.id, attempt)
        await read_until(watch, is_delta)
        live.abandon()
    done = await alice.wait_status(run.id, run_pb2.RUN_STATUS_FAILED, timeout=30)
    assert (done.error.reason, done.error.retryable) == ("RESUME_LIMIT", True)
    assert done.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "after 1 resumes" in done.error.message
    events = await stack.history_client(alice.user).events(run.id)
    assert_well_formed(events)
    assert resumes(events) == [(2, "HANDOFF"), (3, "OWNER_LOST")]
    assert done.attempt == 4


@BOTH_BACKENDS
async def test_a_claimer_whose_record_write_is_refused_lease_lost_lets_the_run_go(
    stack: Stack, alice: RunClient
) -> None:
    """A claimer frozen past its lease wakes up to end a run (an orphan's end: terminal
    event, then the record) that another replica claimed meanwhile and is ending — its
    terminal event stored, its record not yet: the stale claimer finds the log ended and
    writes the record, fenced by its epoch; RecordRun refuses it (LEASE_LOST) and it lets
    the run go, having written nothing."""
    raw = stack.history_client(alice.user)
    conversation = await raw.stub.CreateConversation(
        hs.CreateConversationRequest(), metadata=raw.md
    )
    created = await raw.stub.RecordRun(
        hs.RecordRunRequest(
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation.conversation.id,
                spec=spec(team_spec=paced_duet()),
                status=run_pb2.RUN_STATUS_RUNNING,
            )
        ),
        metadata=raw.md,
    )
    run_id = created.run.id
    history = HistoryClient(stack.history_channel, retry_s=1.0, auth=CallAuth(TOKEN))
    stale, _ = await history.claim_run(run_id, "orch-stale", 1, 1e-6)
    # The stale claimer freezes; another replica claims the run and stores its end's
    # first half (the terminal event, under its epoch).
    current, _ = await history.claim_run(run_id, "orch-new", stale.lease_epoch, 1e-6)
    terminal = run_pb2.RunEvent(
        run_completed=run_pb2.RunEvent.RunCompleted(final_answer="from the new owner")
    )
    stored = run_pb2.RunEvent(run_id=run_id, seq=1)
    stored.MergeFrom(terminal)
    await history.append_events(alice.user, run_id, [stored], lease_epoch=current.lease_epoch)
    assert await end_orphan(history, stale, terminal) is None
    after = await raw.record(run_id)
    assert after.status == run_pb2.RUN_STATUS_RUNNING and not after.final_answer
    assert not after.HasField("end_time")
    assert (after.owner_instance, after.lease_epoch) == ("orch-new", current.lease_epoch)


@BOTH_BACKENDS
@pytest.mark.parametrize(
    "kind", [team_pb2.TEAM_KIND_SELECTOR, team_pb2.TEAM_KIND_MAGENTIC_ONE], ids=["selector", "m1"]
)
async def test_a_turn_lost_after_its_speaker_was_chosen_is_redone_without_choosing_again(
    stack: Stack, alice: RunClient, kind: int
) -> None:
    """The orchestrator's calls that chose the lost turn's speaker (after the checkpoint)
    are answered from the checkpoint stored with `agent_started`: only the interrupted
    agent's call is made twice, by the same agent."""
    options = sim(tokens_per_second=150.0, output_tokens=150)
    names = ("Ada", "Blaise", "Carl")
    team_spec = team(kind, *(agent(n, simulator=options) for n in names), max_turns=3)
    run = await alice.create(spec(team_spec=team_spec))
    watch = alice.watch_call(run.id)
    await read_until(watch, lambda e: e.HasField("progress"))  # the first turn's boundary
    started = await read_until(watch, lambda e: e.HasField("agent_started"))
    await read_until(watch, is_delta)
    (await live_attempt(stack, run.id, 1)).abandon()  # lost mid-turn: its lease expires
    resumed = await read_until(watch, resumed_as(2))
    redone = await read_until(watch, lambda e: e.HasField("agent_started"))
    assert redone[-1].agent == started[-1].agent  # the same speaker, not chosen again
    await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED, timeout=30)
    assert resumed[-1].run_resumed.reason == "OWNER_LOST"
    mine = [r for r in stack.received if r.metadata["run_id"] == run.id]
    calls = Counter(r.SerializeToString(deterministic=True) for r in mine)
    twice = [
        r.metadata["agent"] for r in mine if calls[r.SerializeToString(deterministic=True)] > 1
    ]
    assert sum(n - 1 for n in calls.values()) == 1, twice  # the interrupted agent's call only
    repeated = next(r for r in mine if calls[r.SerializeToString(deterministic=True)] > 1)
    assert repeated.metadata["agent"] == started[-1].agent
