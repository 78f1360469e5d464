"""WatchRun resumes exactly: after seq k come k+1, k+2 … to the end, no gap, no duplicate —
for finished runs, for live runs, and through another orchestrator replica."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from orchestrator_helpers import (
    BOTH_BACKENDS,
    RunClient,
    Stack,
    agent,
    assert_well_formed,
    duet,
    fields_of,
    orchestrator_process,
    read_rest,
    read_until,
    rpc_error,
    sim,
    spec,
    team,
)
from prometheus_client import REGISTRY

from chorus.v1 import run_pb2, team_pb2

# ~40 events per turn, 0.3 s per turn: long enough to join while live, short enough to wait.
LIVE = duet(turns=4, simulator=sim(tokens_per_second=120.0, output_tokens=36))


async def test_watch_after_every_seq_of_a_finished_run_returns_exactly_the_rest(
    alice: RunClient,
) -> None:
    events = await alice.stream(spec(team_spec=duet(turns=3)))
    assert_well_formed(events)
    run_id = events[0].run_id
    for k in range(len(events) + 1):
        assert await alice.watch(run_id, after_seq=k) == events[k:], f"after_seq={k}"
    # Nobody was shown a seq past the end (log before show): asking for one is an error.
    err = await rpc_error(alice.watch(run_id, after_seq=len(events) + 1))
    assert err.code == grpc.StatusCode.OUT_OF_RANGE and fields_of(err) == {"after_seq"}


@BOTH_BACKENDS
async def test_watch_after_every_seq_of_a_live_run_returns_exactly_the_rest(
    alice: RunClient,
) -> None:
    run = await alice.create(spec(team_spec=LIVE))
    first = alice.watch_call(run.id)
    head = await read_until(first, lambda e: e.seq >= 25)
    # Join at every seq seen so far and a few not yet emitted, while the run goes on.
    ks = list(range(len(head) + 3))
    tails = await asyncio.gather(*(alice.watch(run.id, after_seq=k) for k in ks))
    rest = await read_rest(first)
    events = head + rest
    assert_well_formed(events)
    assert events[-1].HasField("run_completed")
    for k, tail in zip(ks, tails, strict=True):
        assert tail == events[k:], f"after_seq={k}"


SMALL_BUFFER = {"watcher_buffer_events": 64, "delta_coalesce_s": 0.0}


@pytest.mark.parametrize("orchestrator_values", [SMALL_BUFFER], indirect=True)
async def test_a_watcher_that_reads_nothing_does_not_slow_the_run_and_gets_every_event(
    stack: Stack, alice: RunClient
) -> None:
    run = await alice.create(spec(team_spec=duet(turns=2, simulator=sim(output_tokens=1500))))
    idle = alice.watch_call(run.id)  # opened, never read while the run goes on
    await alice.wait_status(run.id, run_pb2.RUN_STATUS_COMPLETED)
    got = [r.event async for r in idle]
    assert_well_formed(got)
    assert got == await stack.history_client(alice.user).events(run.id)


@pytest.mark.parametrize("orchestrator_values", [SMALL_BUFFER], indirect=True)
async def test_a_watcher_behind_the_in_memory_buffer_catches_up_from_history_then_tails(
    stack: Stack, alice: RunClient
) -> None:
    catchups = REGISTRY.get_sample_value("chorus_orchestrator_run_watcher_catchups_total") or 0.0
    fast_then_slow = team(
        team_pb2.TEAM_KIND_ROUND_ROBIN,
        agent("Ada", simulator=sim(output_tokens=600)),  # far more events than the buffer
        agent("Blaise", simulator=sim(tokens_per_second=60.0, output_tokens=30)),
        max_turns=2,
    )
    run = await alice.create(spec(team_spec=fast_then_slow))
    live = alice.watch_call(run.id)
    await read_until(live, lambda e: e.agent == "Blaise" and e.HasField("text_delta"))
    late = await alice.watch(run.id, after_seq=0)  # starts far behind the buffer
    assert (
        REGISTRY.get_sample_value("chorus_orchestrator_run_watcher_catchups_total") or 0.0
    ) > catchups
    assert_well_formed(late)
    assert late == await stack.history_client(alice.user).events(run.id)


async def test_watch_of_an_unknown_or_foreign_run_is_not_found_and_a_negative_seq_is_invalid(
    alice: RunClient, bob: RunClient
) -> None:
    events = await alice.stream(spec(team_spec=duet(turns=2)))
    run_id = events[0].run_id
    assert (await rpc_error(bob.watch(run_id))).code == grpc.StatusCode.NOT_FOUND
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await rpc_error(alice.watch(unknown))).code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(alice.watch(run_id, after_seq=-1))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await rpc_error(alice.watch("not-a-uuid"))).code == grpc.StatusCode.INVALID_ARGUMENT


@BOTH_BACKENDS
async def test_a_second_orchestrator_process_resumes_live_and_finished_runs_exactly(
    stack: Stack, alice: RunClient
) -> None:
    async with orchestrator_process(stack) as (_, channel):
        other = RunClient(channel, alice.user)
        run = await alice.create(spec(team_spec=LIVE))
        first = alice.watch_call(run.id)
        head = await read_until(first, lambda e: e.seq >= 20)
        # Through the other replica (history-svc's live log), joined mid-run.
        ks = [0, 1, 7, len(head) - 1, len(head), len(head) + 2]
        tails = await asyncio.gather(*(other.watch(run.id, after_seq=k) for k in ks))
        rest = await read_rest(first)
        events = head + rest
        assert_well_formed(events)
        for k, tail in zip(ks, tails, strict=True):
            assert tail == events[k:], f"live, after_seq={k}"
        # And once finished, for every k.
        for k in range(len(events) + 1):
            assert await other.watch(run.id, after_seq=k) == events[k:], f"after_seq={k}"
        assert (await other.get(run.id)).status == run_pb2.RUN_STATUS_COMPLETED
