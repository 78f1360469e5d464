"""Heartbeats: one RecordRunHeartbeats call carries every live run's heartbeat, and its
answer delivers what other replicas recorded (a cancel).

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
