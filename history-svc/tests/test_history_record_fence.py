"""RecordRun fenced by the writer's lease epoch (issue 18, "Ownership by lease, with
fencing"), on both back ends.

The contract is the comment of RecordRun and `RecordRunRequest.lease_epoch` in
proto/chorus/v1/history_service.proto: an update whose non-zero `lease_epoch` is not the
run's is FAILED_PRECONDITION, reason LEASE_LOST, and changes nothing — so an owner frozen
past its lease cannot overwrite the record (status, usage, end) of a run another replica
claimed. What a call wrote is read back through the service and the cache.
"""

from __future__ import annotations

import uuid

import grpc
from google.protobuf.duration_pb2 import Duration
from history_helpers import (
    History,
    UserStub,
    cached_run,
    fields_of,
    new_conversation,
    new_run,
    rpc_error,
    run_spec,
)

from chorus.history.settings import Settings
from chorus.v1 import chat_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

S = run_pb2
MICROSECOND = Duration(nanos=1000)


async def claimed_away(history: History, run: run_pb2.Run) -> run_pb2.Run:
    """`run` claimed by another replica (its first owner, epoch 1, looks dead)."""
    resp = await history.system().ClaimRun(
        pb.ClaimRunRequest(
            run_id=run.id, owner_instance="orch-b", lease_epoch=run.lease_epoch,
            stale_after=MICROSECOND,
        )
    )  # fmt: skip
    assert resp.run.lease_epoch == run.lease_epoch + 1
    return resp.run


def final_update(run_id: str, epoch: int) -> pb.RecordRunRequest:
    """The end an owner writes into the record: status, answer, usage, end time."""
    return pb.RecordRunRequest(
        run=run_pb2.Run(
            id=run_id,
            status=S.RUN_STATUS_COMPLETED,
            final_answer="stale",
            usage=chat_pb2.Usage(input_tokens=5, output_tokens=7),
        ),
        update_mask={"paths": ["status", "final_answer", "usage", "end_time"]},
        lease_epoch=epoch,
    )


async def get(stub: UserStub, run_id: str) -> run_pb2.Run:
    return (await stub.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))).run


async def test_a_record_update_with_a_stale_epoch_is_lease_lost_and_changes_nothing(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    claimed = await claimed_away(history, run)

    # The old owner (epoch 1) wakes up and writes the run's end into the record.
    err = await rpc_error(alice.RecordRun(final_update(run.id, run.lease_epoch)))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert err.metadata["run_id"] == run.id and err.metadata["lease_epoch"] == "2"
    assert await get(alice, run.id) == claimed
    assert await cached_run(history, settings, run.id) == claimed
    # As the internal service identity too: the fence is not an ownership check.
    err = await rpc_error(history.system().RecordRun(final_update(run.id, run.lease_epoch)))
    assert err.reason == "LEASE_LOST"
    assert await get(alice, run.id) == claimed


async def test_a_record_update_with_the_current_epoch_or_none_is_written(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    claimed = await claimed_away(history, run)
    cancel = pb.RecordRunRequest(  # a cancel forwarded by a replica that holds no lease
        run=run_pb2.Run(
            id=run.id, cancellation=run_pb2.Cancellation(requested_by="bob", reason="stop")
        ),
        update_mask={"paths": ["cancellation"]},
    )
    forwarded = (await alice.RecordRun(cancel)).run
    assert forwarded.cancellation.reason == "stop"
    ended = (await alice.RecordRun(final_update(run.id, claimed.lease_epoch))).run
    assert (ended.status, ended.final_answer, ended.usage.output_tokens) == (
        S.RUN_STATUS_COMPLETED,
        "stale",
        7,
    )
    assert ended.lease_epoch == claimed.lease_epoch and ended.HasField("end_time")
    assert await get(alice, run.id) == ended


async def test_a_create_ignores_the_epoch_and_a_negative_one_is_invalid(alice: UserStub) -> None:
    conversation = await new_conversation(alice)
    created = await alice.RecordRun(
        pb.RecordRunRequest(
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation.id,
                spec=run_spec(),
                status=S.RUN_STATUS_RUNNING,
            ),
            lease_epoch=9,
        )
    )
    assert created.created and created.run.lease_epoch == 1
    err = await rpc_error(alice.RecordRun(final_update(created.run.id, -1)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "lease_epoch" in fields_of(err)
    assert (await get(alice, created.run.id)).status == S.RUN_STATUS_RUNNING
