"""Run leases (issue 18, "Durable runs"): ClaimRun, ReleaseRun and the fencing of appends
and heartbeats by `lease_epoch`, on both back ends.

The contract is the comment of ClaimRun, ReleaseRun, `Run.lease_epoch` and
`AppendRunEventsRequest.lease_epoch` in proto/chorus/v1. What a call wrote is read back
through the service, the cache (Redis or in-process) and the database directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from history_helpers import (
    History,
    UserStub,
    cached_run,
    completed_event,
    fields_of,
    new_run,
    rpc_error,
    run_spec,
    text_event,
)

from chorus.history.cache import RunWrites
from chorus.history.settings import Settings
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

S = run_pb2
Batch = pb.AppendRunEventsRequest
MINUTE = Duration(seconds=60)
MICROSECOND = Duration(nanos=1000)


def claim_request(
    run: run_pb2.Run | str,
    instance: str = "orch-b",
    epoch: int | None = None,
    stale_after: Duration | None = MINUTE,
) -> pb.ClaimRunRequest:
    run_id = run if isinstance(run, str) else run.id
    if epoch is None:
        assert not isinstance(run, str)
        epoch = run.lease_epoch
    req = pb.ClaimRunRequest(run_id=run_id, owner_instance=instance, lease_epoch=epoch)
    if stale_after is not None:
        req.stale_after.CopyFrom(stale_after)
    return req


async def claim(system: UserStub, run: run_pb2.Run, instance: str = "orch-b", **kw: Any) -> Any:
    return await system.ClaimRun(claim_request(run, instance, **kw))


async def beat(
    stub: UserStub, run_id: str, instance: str = "orch-a", epoch: int = 0, turns: int = 0
) -> run_pb2.Run:
    resp = await stub.RecordRunHeartbeats(
        pb.RecordRunHeartbeatsRequest(
            heartbeats=[
                pb.RunHeartbeat(
                    run_id=run_id, owner_instance=instance, lease_epoch=epoch, turns=turns
                )
            ]
        )
    )
    assert len(resp.runs) == 1
    return resp.runs[0]


async def get(stub: UserStub, run_id: str) -> run_pb2.Run:
    return (await stub.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))).run


async def seqs(stub: UserStub, run_id: str) -> list[int]:
    resp = await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id, page_size=5000))
    return [e.seq for e in resp.events]


async def stored_record(settings: Settings, run_id: str) -> tuple[run_pb2.Run, int | None]:
    """The run's `record` and its `heartbeat_time` column (µs), read from the database."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT record, last_seq, (extract(epoch FROM heartbeat_time) * 1000000)::bigint "
                "FROM runs WHERE id = $1",
                run_id,
            )
        finally:
            await conn.close()
    else:
        with sqlite3.connect(settings.sqlite_path) as db:
            row = db.execute(
                "SELECT record, last_seq, heartbeat_time FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
    record = run_pb2.Run.FromString(row[0])
    record.last_seq = row[1]
    return record, row[2]


def reason_of(status: status_pb2.Status) -> str:
    """The ErrorInfo reason of a per-batch status."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


class PublishRecorder:
    """Records what the servicer hands the live event log (patched on the app's log)."""

    def __init__(self, history: History) -> None:
        self.published: list[tuple[str, int, int]] = []
        log = history.app.event_log
        publish, publish_many = log.publish, log.publish_many

        async def recorded_publish(run_id: str, first_seq: int, payloads: Sequence[bytes]) -> None:
            self.published.append((run_id, first_seq, len(payloads)))
            await publish(run_id, first_seq, payloads)

        async def recorded_many(
            batches: Sequence[tuple[str, int, Sequence[bytes]]], writes: RunWrites | None = None
        ) -> None:
            self.published.extend((r, f, len(p)) for r, f, p in batches)
            await publish_many(batches, writes)

        log.publish = recorded_publish  # type: ignore[method-assign]
        log.publish_many = recorded_many  # type: ignore[method-assign]

    def of(self, run_id: str) -> list[tuple[int, int]]:
        # once each: the in-process log's publish_many calls publish
        return list(dict.fromkeys((first, n) for r, first, n in self.published if r == run_id))


# Epoch and attempt of new runs


async def test_a_run_created_running_has_lease_epoch_1_and_attempt_1(alice: UserStub) -> None:
    run = await new_run(alice)
    assert (run.lease_epoch, run.attempt) == (1, 1)
    assert (await get(alice, run.id)).lease_epoch == 1


async def test_a_run_started_with_record_run_start_has_lease_epoch_1_and_attempt_1(
    alice: UserStub,
) -> None:
    conversation_id = str(uuid.uuid4())
    # In a new conversation (PostgreSQL: one statement), then joining it with a request id
    # (the transaction).
    for spec in (run_spec(), run_spec(request_id="start-1")):
        resp = await alice.RecordRunStart(
            pb.RecordRunStartRequest(
                conversation=None
                if spec.request_id
                else conversation_pb2.Conversation(id=conversation_id),
                run=run_pb2.Run(
                    id=str(uuid.uuid4()),
                    conversation_id=conversation_id,
                    spec=spec,
                    status=S.RUN_STATUS_RUNNING,
                ),
                events=[run_pb2.RunEvent(seq=1, run_started=run_pb2.RunEvent.RunStarted())],
            )
        )
        assert (resp.run.lease_epoch, resp.run.attempt) == (1, 1)
        await alice.RecordRun(
            pb.RecordRunRequest(
                run=run_pb2.Run(id=resp.run.id, status=S.RUN_STATUS_COMPLETED),
                update_mask={"paths": ["status"]},
            )
        )


async def test_a_queued_run_gets_its_first_lease_when_it_starts_running(alice: UserStub) -> None:
    run = await new_run(alice, status=S.RUN_STATUS_QUEUED)
    assert (run.lease_epoch, run.attempt) == (0, 0)
    resp = await alice.RecordRun(
        pb.RecordRunRequest(
            run=run_pb2.Run(id=run.id, status=S.RUN_STATUS_RUNNING, lease_epoch=7),
            update_mask={"paths": ["status"]},
        )
    )
    assert (resp.run.lease_epoch, resp.run.attempt) == (1, 1)  # not updatable: 7 ignored


# ClaimRun


async def test_two_concurrent_claims_with_the_same_epoch_exactly_one_wins(
    history: History, alice: UserStub
) -> None:
    system = history.system()
    runs = [await new_run(alice) for _ in range(5)]
    for run in runs:
        calls = [
            system.ClaimRun(claim_request(run, f"orch-{i}", stale_after=MICROSECOND))
            for i in range(3)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, pb.ClaimRunResponse)]
        lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 2, outcomes
        assert (won[0].run.lease_epoch, won[0].run.attempt) == (2, 2)
        for error in lost:
            err = await rpc_error(_raise(error))
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION
            assert err.reason == "LEASE_LOST"
            assert err.metadata["lease_epoch"] == "2"
            assert err.metadata["run_id"] == run.id
        stored = await get(alice, run.id)
        assert stored == won[0].run
        assert stored.owner_instance == won[0].run.owner_instance


async def _raise(error: BaseException) -> None:
    raise error


async def test_a_claim_sets_owner_heartbeat_epoch_attempt_and_is_written_through(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    await beat(alice, run.id, "orch-a", epoch=1)
    before = time.time_ns() // 1000
    resp = await claim(history.system(), run, "orch-b", stale_after=MICROSECOND)
    after = time.time_ns() // 1000
    claimed = resp.run
    assert (claimed.owner_instance, claimed.lease_epoch, claimed.attempt) == ("orch-b", 2, 2)
    assert before <= claimed.heartbeat_time.ToMicroseconds() <= after
    assert claimed.update_time.ToMicroseconds() > run.update_time.ToMicroseconds()
    assert not resp.HasField("checkpoint")  # none written yet: restart from the input
    assert (claimed.status, claimed.spec, claimed.owner) == (run.status, run.spec, run.owner)
    assert await cached_run(history, settings, run.id) == claimed
    assert await get(alice, run.id) == claimed
    record, heartbeat_us = await stored_record(settings, run.id)
    assert record == claimed
    assert heartbeat_us == claimed.heartbeat_time.ToMicroseconds()


async def test_a_fresh_heartbeat_of_another_instance_is_lease_held(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    await beat(alice, run.id, "orch-a", epoch=1)
    err = await rpc_error(claim(history.system(), run, "orch-b", stale_after=MINUTE))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "LEASE_HELD"
    assert err.metadata["owner_instance"] == "orch-a"
    assert err.metadata["run_id"] == run.id
    stored = await get(alice, run.id)
    assert (stored.owner_instance, stored.lease_epoch, stored.attempt) == ("orch-a", 1, 1)


async def test_a_run_that_never_sent_a_heartbeat_is_judged_by_its_creation_time(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)  # no owner, no heartbeat: created just now
    err = await rpc_error(claim(history.system(), run, "orch-b", stale_after=MINUTE))
    assert err.reason == "LEASE_HELD"
    resp = await claim(history.system(), run, "orch-b", stale_after=MICROSECOND)
    assert resp.run.lease_epoch == 2


async def test_the_owning_instance_claims_its_own_run_at_once(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    await beat(alice, run.id, "orch-a", epoch=1)
    resp = await claim(history.system(), run, "orch-a", stale_after=Duration(seconds=3600))
    assert (resp.run.owner_instance, resp.run.lease_epoch, resp.run.attempt) == ("orch-a", 2, 2)


async def test_a_claim_with_an_old_epoch_is_lease_lost_even_when_the_lease_is_free(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    await claim(history.system(), run, "orch-b", stale_after=MICROSECOND)  # epoch 2
    err = await rpc_error(claim(history.system(), run, "orch-b", epoch=1))  # own instance
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert err.metadata["lease_epoch"] == "2"
    err = await rpc_error(claim(history.system(), run, "orch-b", epoch=3))
    assert err.reason == "LEASE_LOST"


async def test_an_ended_run_is_run_ended(history: History, alice: UserStub) -> None:
    system = history.system()
    by_status = await new_run(alice)
    await alice.RecordRun(
        pb.RecordRunRequest(
            run=run_pb2.Run(id=by_status.id, status=S.RUN_STATUS_FAILED),
            update_mask={"paths": ["status"]},
        )
    )
    # Its terminal event is stored, the record still says RUNNING: ended all the same.
    by_event = await new_run(alice)
    await alice.AppendRunEvents(Batch(run_id=by_event.id, events=[completed_event(1)]))
    for run in (by_status, by_event):
        before = await get(alice, run.id)
        err = await rpc_error(claim(system, run, "orch-b", stale_after=MICROSECOND))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_ENDED")
        assert err.metadata["run_id"] == run.id
        assert await get(alice, run.id) == before


async def test_a_missing_run_is_not_found(history: History) -> None:
    missing = str(uuid.uuid4())
    err = await rpc_error(history.system().ClaimRun(claim_request(missing, epoch=1)))
    assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(
        history.system().ReleaseRun(pb.ReleaseRunRequest(run_id=missing, lease_epoch=1))
    )
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_a_run_recorded_before_leases_is_claimed_with_epoch_0(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice, status=S.RUN_STATUS_QUEUED)  # lease_epoch 0, attempt 0
    resp = await claim(history.system(), run, "orch-b", epoch=0, stale_after=MICROSECOND)
    assert (resp.run.lease_epoch, resp.run.attempt) == (1, 2)  # attempt 0 counts as 1


async def test_claim_and_release_are_only_for_the_internal_identity(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    for call in (
        alice.ClaimRun(claim_request(run, stale_after=MICROSECOND)),
        alice.ClaimRun(pb.ClaimRunRequest()),  # even a bad request
        alice.ReleaseRun(pb.ReleaseRunRequest(run_id=run.id, lease_epoch=1)),
        alice.ReleaseRun(pb.ReleaseRunRequest()),
    ):
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert await get(alice, run.id) == run


@pytest.mark.parametrize(
    ("request_fields", "bad_fields"),
    [
        ({}, {"run_id", "owner_instance", "stale_after"}),
        ({"run_id": "not-a-uuid"}, {"run_id"}),
        ({"owner_instance": ""}, {"owner_instance"}),
        ({"owner_instance": "x" * 129}, {"owner_instance"}),
        ({"lease_epoch": -1}, {"lease_epoch"}),
        ({"stale_after": None}, {"stale_after"}),
        ({"stale_after": Duration()}, {"stale_after"}),
        ({"stale_after": Duration(seconds=-5)}, {"stale_after"}),
        ({"stale_after": Duration(nanos=999)}, {"stale_after"}),  # under 1 µs
        ({"stale_after": Duration(seconds=86_401)}, {"stale_after"}),
        ({"stale_after": Duration(seconds=10**15)}, {"stale_after"}),
        ({"stale_after": Duration(seconds=1, nanos=-1)}, {"stale_after"}),
        ({"stale_after": Duration(seconds=1, nanos=2_000_000_000)}, {"stale_after"}),
    ],
)
async def test_every_bad_claim_is_invalid_argument_naming_its_fields(
    history: History, alice: UserStub, request_fields: dict[str, Any], bad_fields: set[str]
) -> None:
    run = await new_run(alice)
    if request_fields:
        values: dict[str, Any] = {
            "run_id": run.id,
            "owner_instance": "orch-b",
            "lease_epoch": 1,
            "stale_after": MICROSECOND,
            **request_fields,
        }
    else:
        values = {}
    stale_after = values.pop("stale_after", None)
    req = pb.ClaimRunRequest(**values)
    if stale_after is not None:
        req.stale_after.CopyFrom(stale_after)
    err = await rpc_error(history.system().ClaimRun(req))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == bad_fields
    assert await get(alice, run.id) == run  # nothing written


@pytest.mark.parametrize(
    ("request_fields", "bad_fields"),
    [
        ({}, {"run_id", "lease_epoch"}),
        ({"run_id": "nope", "lease_epoch": 1}, {"run_id"}),
        ({"lease_epoch": 0}, {"lease_epoch"}),
        ({"lease_epoch": -3}, {"lease_epoch"}),
    ],
)
async def test_every_bad_release_is_invalid_argument_naming_its_fields(
    history: History, alice: UserStub, request_fields: dict[str, Any], bad_fields: set[str]
) -> None:
    run = await new_run(alice)
    values = {"run_id": run.id, **request_fields} if request_fields else {}
    err = await rpc_error(history.system().ReleaseRun(pb.ReleaseRunRequest(**values)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == bad_fields
    assert await get(alice, run.id) == run


# ReleaseRun


async def test_a_released_run_is_claimed_at_once_by_another_instance(
    history: History, settings: Settings, alice: UserStub
) -> None:
    system = history.system()
    run = await new_run(alice)
    await beat(alice, run.id, "orch-a", epoch=1)
    released = (await system.ReleaseRun(pb.ReleaseRunRequest(run_id=run.id, lease_epoch=1))).run
    assert released.owner_instance == ""
    assert released.HasField("heartbeat_time")
    assert released.heartbeat_time == Timestamp()  # 1970-01-01T00:00:00Z
    assert released.lease_epoch == 1  # the next claimer compares it
    assert await cached_run(history, settings, run.id) == released
    record, heartbeat_us = await stored_record(settings, run.id)
    assert record == released and heartbeat_us == 0

    # Every sweep finds it at once: its heartbeat is older than any time.
    listed = await system.ListRunRecords(
        pb.ListRunRecordsRequest(
            all_owners=True,
            status=S.RUN_STATUS_RUNNING,
            heartbeat_before=Timestamp(seconds=int(time.time()) - 3600),
            page_size=1000,
        )
    )
    assert run.id in {r.id for r in listed.runs}

    resp = await claim(system, released, "orch-c", stale_after=Duration(seconds=3600))
    assert (resp.run.owner_instance, resp.run.lease_epoch, resp.run.attempt) == ("orch-c", 2, 2)
    assert await cached_run(history, settings, run.id) == resp.run


async def test_a_late_heartbeat_of_the_releasing_owner_does_not_take_the_run_back(
    history: History, alice: UserStub
) -> None:
    system = history.system()
    run = await new_run(alice)
    await beat(alice, run.id, "orch-a", epoch=1)
    released = (await system.ReleaseRun(pb.ReleaseRunRequest(run_id=run.id, lease_epoch=1))).run
    assert await beat(alice, run.id, "orch-a", epoch=1, turns=3) == released  # wrote nothing
    resp = await claim(system, released, "orch-c", stale_after=Duration(seconds=3600))
    assert resp.run.owner_instance == "orch-c"


async def test_a_release_with_another_epoch_is_lease_lost_and_writes_nothing(
    history: History, alice: UserStub
) -> None:
    system = history.system()
    run = await new_run(alice)
    await claim(system, run, "orch-b", stale_after=MICROSECOND)  # epoch 2
    before = await get(alice, run.id)
    err = await rpc_error(system.ReleaseRun(pb.ReleaseRunRequest(run_id=run.id, lease_epoch=1)))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert (err.metadata["run_id"], err.metadata["lease_epoch"]) == (run.id, "2")
    assert await get(alice, run.id) == before


async def test_releasing_an_ended_or_released_run_returns_it_unchanged(
    history: History, alice: UserStub
) -> None:
    system = history.system()
    ended = await new_run(alice)
    await alice.AppendRunEvents(Batch(run_id=ended.id, events=[completed_event(1)]))
    ended = await get(alice, ended.id)
    resp = await system.ReleaseRun(pb.ReleaseRunRequest(run_id=ended.id, lease_epoch=1))
    assert resp.run == ended
    resp = await system.ReleaseRun(pb.ReleaseRunRequest(run_id=ended.id, lease_epoch=9))
    assert resp.run == ended  # ended: nothing to release, whatever the epoch

    run = await new_run(alice)
    first = (await system.ReleaseRun(pb.ReleaseRunRequest(run_id=run.id, lease_epoch=1))).run
    again = (await system.ReleaseRun(pb.ReleaseRunRequest(run_id=run.id, lease_epoch=1))).run
    assert again == first


# Fencing of appends


async def test_an_append_with_a_stale_epoch_is_lease_lost_and_stores_nothing(
    history: History, settings: Settings, alice: UserStub
) -> None:
    recorder = PublishRecorder(history)
    run = await new_run(alice)
    await alice.AppendRunEvents(Batch(run_id=run.id, events=[text_event(1)], lease_epoch=1))
    claimed = (await claim(history.system(), run, "orch-b", stale_after=MICROSECOND)).run
    published = list(recorder.published)

    # The old owner (epoch 1) wakes up: events, a record update and a checkpoint, all refused.
    err = await rpc_error(
        alice.AppendRunEvents(
            Batch(
                run_id=run.id,
                events=[text_event(2), completed_event(3)],
                lease_epoch=1,
                run=run_pb2.Run(status=S.RUN_STATUS_COMPLETED, final_answer="stale"),
                update_mask={"paths": ["status", "final_answer"]},
                checkpoint=run_pb2.RunCheckpoint(seq=3, team_state=b"{}"),
            )
        )
    )
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert err.metadata["run_id"] == run.id and err.metadata["lease_epoch"] == "2"
    assert await seqs(alice, run.id) == [1]
    assert recorder.published == published  # nothing reached the live log
    assert await get(alice, run.id) == claimed
    assert await cached_run(history, settings, run.id) == claimed
    assert not (await claim(history.system(), claimed, "orch-b")).HasField("checkpoint")

    # The new owner writes under epoch 3 now (its claim above moved it); 0 skips the check.
    await alice.AppendRunEvents(Batch(run_id=run.id, events=[text_event(2)], lease_epoch=3))
    await alice.AppendRunEvents(Batch(run_id=run.id, events=[text_event(3)]))
    assert await seqs(alice, run.id) == [1, 2, 3]
    await history.app.servicer.drain()  # events alone: their publish follows the answer
    assert recorder.of(run.id)[-2:] == [(2, 1), (3, 1)]


async def test_only_the_batch_with_a_stale_epoch_is_rejected(
    history: History, alice: UserStub
) -> None:
    recorder = PublishRecorder(history)
    stale, current, unfenced = [await new_run(alice) for _ in range(3)]
    await claim(history.system(), stale, "orch-b", stale_after=MICROSECOND)  # epoch 2
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[
                Batch(run_id=stale.id, events=[text_event(1)], lease_epoch=1),
                Batch(run_id=current.id, events=[text_event(1)], lease_epoch=1),
                Batch(run_id=unfenced.id, events=[text_event(1)]),
            ]
        )
    )
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == ["error", "last_seq", "last_seq"]
    assert resp.results[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason_of(resp.results[0].error) == "LEASE_LOST"
    assert await seqs(alice, stale.id) == []
    assert await seqs(alice, current.id) == [1]
    assert await seqs(alice, unfenced.id) == [1]
    assert recorder.of(stale.id) == []


async def test_a_negative_lease_epoch_is_invalid_argument(alice: UserStub) -> None:
    run = await new_run(alice)
    err = await rpc_error(
        alice.AppendRunEvents(Batch(run_id=run.id, events=[text_event(1)], lease_epoch=-1))
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"lease_epoch"}
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[Batch(run_id=run.id, events=[text_event(1)], lease_epoch=-1)]
        )
    )
    assert resp.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    err = await rpc_error(
        alice.RecordRunHeartbeats(
            pb.RecordRunHeartbeatsRequest(
                heartbeats=[pb.RunHeartbeat(run_id=run.id, lease_epoch=-1)]
            )
        )
    )
    assert fields_of(err) == {"heartbeats[0].lease_epoch"}
    assert await seqs(alice, run.id) == []


# Fencing of heartbeats


async def test_a_heartbeat_with_a_stale_epoch_writes_nothing_and_returns_the_record(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    await beat(alice, run.id, "orch-a", epoch=1)
    claimed = (await claim(history.system(), run, "orch-b", stale_after=MICROSECOND)).run
    stored_before = await stored_record(settings, run.id)

    answer = await beat(alice, run.id, "orch-a", epoch=1, turns=5)
    assert answer == claimed  # unchanged: its lease_epoch tells the sender it lost the run
    assert await stored_record(settings, run.id) == stored_before
    assert await cached_run(history, settings, run.id) == claimed

    # The new owner's heartbeat (epoch 2) and an unfenced one (0) are written.
    assert (await beat(alice, run.id, "orch-b", epoch=2, turns=1)).turns == 1
    assert (await beat(alice, run.id, "orch-b", epoch=0, turns=2)).turns == 2


async def test_a_stale_owner_frozen_while_a_claim_commits_cannot_write_after_it(
    history: History, alice: UserStub
) -> None:
    """The fence is where the write lands: appends racing a claim either commit before it
    (under the old epoch) or are refused; none is stored after the claim."""
    system = history.system()
    run = await new_run(alice)

    async def old_owner() -> list[int]:
        stored: list[int] = []
        for seq in range(1, 40):
            try:
                await alice.AppendRunEvents(
                    Batch(run_id=run.id, events=[text_event(seq)], lease_epoch=1)
                )
            except grpc.aio.AioRpcError as exc:
                err = await rpc_error(_raise(exc))
                assert err.reason == "LEASE_LOST"
                return stored
            stored.append(seq)
        return stored

    async def new_owner() -> run_pb2.Run:
        await asyncio.sleep(0)  # let the old owner start
        return (await claim(system, run, "orch-b", stale_after=MICROSECOND)).run

    stored, claimed = await asyncio.gather(old_owner(), new_owner())
    assert claimed.lease_epoch == 2
    assert await seqs(alice, run.id) == stored
    # Whatever the interleaving, everything stored was stored before the claim.
    assert claimed.last_seq == len(stored)
