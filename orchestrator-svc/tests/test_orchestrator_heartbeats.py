"""Heartbeats: one RecordRunHeartbeats call carries up to `HEARTBEATS_PER_CALL` live runs'
heartbeats, a round's calls are spread over the interval, and a call's answer delivers
what other replicas recorded (a cancel).

Calls are counted on history-svc's own gRPC server metric (`grpc_server_started_total`;
history-svc runs in this process), not on a mock. The stack's heartbeat loop is slowed
to once a minute, so the only rounds are the ones the test runs."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import field_mask_pb2
from orchestrator_helpers import (
    BOTH_BACKENDS,
    SLOW_DUET,
    RunClient,
    Stack,
    history_calls,
    spec,
)
from prometheus_client import REGISTRY

from chorus.core.testing import wait_for
from chorus.orchestrator import recovery
from chorus.orchestrator.history import HistoryClient
from chorus.orchestrator.recovery import Liveness
from chorus.v1 import history_service_pb2 as hs
from chorus.v1 import run_pb2

# SLOW_DUET replies stream for ~10 s: the runs stay mid-turn (no writes of their own) meanwhile.
QUIET = {"heartbeat_interval_s": 60.0, "lease_duration_s": 120.0}


def heartbeat_failures() -> float:
    return REGISTRY.get_sample_value("chorus_orchestrator_run_heartbeat_failures_total") or 0.0


@BOTH_BACKENDS
@pytest.mark.parametrize("orchestrator_values", [QUIET], indirect=True)
async def test_one_round_is_one_call_for_every_live_run_and_delivers_a_recorded_cancel(
    stack: Stack, alice: RunClient, bob: RunClient
) -> None:
    clients = [alice, alice, bob, bob, bob]  # several owners: the call is made for all
    runs = [await c.create(spec(team_spec=SLOW_DUET)) for c in clients]
    live = stack.orchestrator.manager.live_runs
    await wait_for(lambda: stack.provider.simulator.active_streams == len(runs), timeout=20)
    await wait_for(lambda: all(live[r.id].log.stored_seq >= 3 for r in runs), timeout=20)

    calls, records = history_calls("RecordRunHeartbeats"), history_calls("RecordRun")
    before = time.time()
    await stack.orchestrator.manager.liveness.heartbeat_all()
    assert history_calls("RecordRunHeartbeats") - calls == 1
    assert history_calls("RecordRun") - records == 0  # no heartbeat of its own for any run

    instance = stack.orchestrator.settings.instance_id
    for client, run in zip(clients, runs, strict=True):
        record = await stack.history_client(client.user).record(run.id)
        assert record.heartbeat_time.ToNanoseconds() / 1e9 >= before - 0.001
        assert record.owner_instance == instance and record.turns == 1
        assert record.last_seq >= 3 and record.status == run_pb2.RUN_STATUS_RUNNING

    # Another replica records a cancel of one run; the next round delivers it here.
    cancel = run_pb2.Cancellation(requested_by=bob.user, reason="from replica B")
    await stack.history_client(bob.user).stub.RecordRun(
        hs.RecordRunRequest(
            run=run_pb2.Run(id=runs[2].id, cancellation=cancel),
            update_mask=field_mask_pb2.FieldMask(paths=["cancellation"]),
        ),
        metadata=stack.history_client(bob.user).md,
    )
    calls = history_calls("RecordRunHeartbeats")
    await stack.orchestrator.manager.liveness.heartbeat_all()
    assert history_calls("RecordRunHeartbeats") - calls == 1
    ended = await bob.wait_status(runs[2].id, run_pb2.RUN_STATUS_CANCELLED)
    assert ended.cancellation.reason == "from replica B"
    events = await bob.watch(runs[2].id)
    assert events[-1].run_cancelled.cancellation.reason == "from replica B"
    for client, run in zip(clients, runs, strict=True):
        if run.id != runs[2].id:
            assert (await client.get(run.id)).status == run_pb2.RUN_STATUS_RUNNING

    # history-svc unreachable: the round fails as a whole, counted once per run.
    failures = heartbeat_failures()
    dead = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        unreachable = Liveness(
            stack.orchestrator.settings,
            HistoryClient(dead, retry_s=0),
            lambda: live,
            stack.orchestrator.manager,
        )
        beating = len([r for r in live.values() if not r.log.ended])
        await unreachable.heartbeat_all()
    finally:
        await dead.close()
    assert heartbeat_failures() - failures == beating == len(runs) - 1
    for client, run in zip(clients, runs, strict=True):
        await client.cancel(run.id)


@pytest.mark.parametrize("history_backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("orchestrator_values", [QUIET], indirect=True)
async def test_a_round_spreads_its_calls_over_the_interval(
    stack: Stack, alice: RunClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round of 5 runs at 2 heartbeats per call is 3 calls, started spread_s / 3 apart:
    the runs of the last call are stamped (by history-svc's clock) about 2/3 of spread_s
    after those of the first, and every run beats once."""
    monkeypatch.setattr(recovery, "HEARTBEATS_PER_CALL", 2)
    runs = [await alice.create(spec(team_spec=SLOW_DUET)) for _ in range(5)]
    live = stack.orchestrator.manager.live_runs
    await wait_for(lambda: stack.provider.simulator.active_streams == len(runs), timeout=20)
    await wait_for(lambda: all(live[r.id].log.stored_seq >= 3 for r in runs), timeout=20)
    order = [run_id for run_id in live if run_id in {r.id for r in runs}]

    calls = history_calls("RecordRunHeartbeats")
    await stack.orchestrator.manager.liveness.heartbeat_all(spread_s=1.5)
    assert history_calls("RecordRunHeartbeats") - calls == 3

    client = stack.history_client(alice.user)
    stamps = [(await client.record(r)).heartbeat_time.ToNanoseconds() / 1e9 for r in order]
    assert stamps[1] - stamps[0] < 0.4  # the same call
    assert 0.4 <= stamps[2] - stamps[0] < 1.0  # the next call, 0.5 s later
    assert 0.9 <= stamps[4] - stamps[0] < 1.5  # the last call, 1.0 s later
    for run in runs:
        await alice.cancel(run.id)
