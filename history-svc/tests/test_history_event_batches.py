"""AppendRunEventBatches: many runs' batches in one call, each accepted or rejected alone
(on both back ends, through the contract suite's fixtures)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2
from history_helpers import (
    History,
    UserStub,
    completed_event,
    fields_of,
    new_run,
    rpc_error,
    text_event,
)

from chorus.v1 import history_service_pb2 as pb
from chorus.v1 import run_pb2

RunEvent = run_pb2.RunEvent
Batch = pb.AppendRunEventsRequest


async def append_batches(stub: UserStub, *batches: Batch) -> list[pb.AppendRunEventBatchResult]:
    resp = await stub.AppendRunEventBatches(pb.AppendRunEventBatchesRequest(batches=batches))
    assert len(resp.results) == len(batches)
    return list(resp.results)


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def fields_in(status: status_pb2.Status) -> set[str]:
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field for v in bad.field_violations}
    return set()


async def stored_seqs(stub: UserStub, run_id: str) -> list[int]:
    resp = await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id, page_size=5000))
    return [e.seq for e in resp.events]


async def test_every_runs_batch_is_stored_and_each_result_is_its_runs_last_seq(
    alice: UserStub,
) -> None:
    a, b = await new_run(alice), await new_run(alice)
    results = await append_batches(
        alice,
        Batch(run_id=a.id, events=[text_event(1), text_event(2)]),
        Batch(run_id=b.id, events=[text_event(1)]),
    )
    assert [r.last_seq for r in results] == [2, 1]
    assert [r.WhichOneof("result") for r in results] == ["last_seq", "last_seq"]
    assert await stored_seqs(alice, a.id) == [1, 2]
    assert await stored_seqs(alice, b.id) == [1]
    record = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=a.id))
    assert record.run.last_seq == 2


async def test_a_bad_batch_is_rejected_with_its_status_and_the_others_are_stored(
    alice: UserStub,
) -> None:
    good, gap, conflict, ended, malformed, with_record = [await new_run(alice) for _ in range(6)]
    await append_batches(
        alice,
        Batch(run_id=conflict.id, events=[text_event(1, "stored")]),
        Batch(run_id=ended.id, events=[completed_event(1)]),
    )
    results = await append_batches(
        alice,
        Batch(run_id=good.id, events=[text_event(1), text_event(2)]),
        Batch(run_id=gap.id, events=[text_event(3)]),
        Batch(run_id=conflict.id, events=[text_event(1, "different"), text_event(2)]),
        Batch(run_id=ended.id, events=[text_event(2)]),
        Batch(run_id=malformed.id, events=[text_event(1), text_event(3)]),
        Batch(run_id="not-a-uuid", events=[text_event(1)]),
        Batch(run_id=good.id, events=[text_event(3)]),  # a second batch of one run
        Batch(  # record fields belong to AppendRunEvents
            run_id=with_record.id,
            events=[completed_event(1)],
            run=run_pb2.Run(status=run_pb2.RUN_STATUS_COMPLETED),
            update_mask=FieldMask(paths=["status"]),
        ),
    )
    assert results[0].last_seq == 2
    codes = [grpc.StatusCode.FAILED_PRECONDITION.value[0]] * 3
    assert [r.error.code for r in results[1:4]] == codes
    assert [reason_of(r.error) for r in results[1:4]] == ["SEQ_GAP", "SEQ_CONFLICT", "RUN_ENDED"]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [r.error.code for r in results[4:]] == [invalid] * 4
    assert [fields_in(r.error) for r in results[4:]] == [
        {"events[1].seq"},
        {"run_id"},
        {"run_id"},
        {"run"},
    ]
    assert await stored_seqs(alice, good.id) == [1, 2]
    assert await stored_seqs(alice, gap.id) == []
    assert await stored_seqs(alice, conflict.id) == [1]
    assert await stored_seqs(alice, ended.id) == [1]
    assert await stored_seqs(alice, malformed.id) == []
    assert await stored_seqs(alice, with_record.id) == []


async def test_an_exact_repeat_is_accepted_and_an_overlap_stores_only_new_events(
    alice: UserStub,
) -> None:
    a, b = await new_run(alice), await new_run(alice)
    first = [Batch(run_id=a.id, events=[text_event(1), text_event(2)])]
    first.append(Batch(run_id=b.id, events=[text_event(1)]))
    assert [r.last_seq for r in await append_batches(alice, *first)] == [2, 1]
    assert [r.last_seq for r in await append_batches(alice, *first)] == [2, 1]
    results = await append_batches(
        alice,
        Batch(run_id=a.id, events=[text_event(2), text_event(3)]),
        Batch(run_id=b.id, events=[text_event(1)]),
    )
    assert [r.last_seq for r in results] == [3, 1]
    assert await stored_seqs(alice, a.id) == [1, 2, 3]
    assert await stored_seqs(alice, b.id) == [1]


async def test_another_users_run_is_not_found_for_that_batch_only(
    alice: UserStub, bob: UserStub, history: History
) -> None:
    mine, theirs = await new_run(alice), await new_run(bob)
    missing = str(uuid.uuid4())
    results = await append_batches(
        alice,
        Batch(run_id=mine.id, events=[text_event(1)]),
        Batch(run_id=theirs.id, events=[text_event(1)]),
        Batch(run_id=missing, events=[text_event(1)]),
    )
    assert results[0].last_seq == 1
    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    assert [r.error.code for r in results[1:]] == [not_found, not_found]
    assert await stored_seqs(bob, theirs.id) == []
    # the service identity writes to any owner's run
    system = await append_batches(history.system(), Batch(run_id=theirs.id, events=[text_event(1)]))
    assert system[0].last_seq == 1


async def test_live_watchers_see_events_appended_in_batches(alice: UserStub) -> None:
    runs = [await new_run(alice) for _ in range(3)]

    async def watch(run_id: str) -> list[int]:
        call = alice.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run_id))
        return [item.event.seq async for item in call]

    watchers = [asyncio.create_task(watch(r.id)) for r in runs]
    for seq in range(1, 4):
        await append_batches(alice, *(Batch(run_id=r.id, events=[text_event(seq)]) for r in runs))
    await append_batches(alice, *(Batch(run_id=r.id, events=[completed_event(4)]) for r in runs))
    for watcher in watchers:
        assert await asyncio.wait_for(watcher, 20) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("batches", "why"),
    [
        (0, "at least one batch"),
        (1001, "at most 1000 batches"),
    ],
)
async def test_a_call_with_too_few_or_too_many_batches_is_invalid(
    alice: UserStub, batches: int, why: str
) -> None:
    run_id = str(uuid.uuid4())
    request = pb.AppendRunEventBatchesRequest(
        batches=[Batch(run_id=run_id, events=[text_event(1)]) for _ in range(batches)]
    )
    err = await rpc_error(alice.AppendRunEventBatches(request))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"batches"}
    assert why in str(err.violations)  # type: ignore[attr-defined]


async def test_a_call_with_too_many_events_in_all_is_invalid_and_stores_nothing(
    alice: UserStub,
) -> None:
    runs = [await new_run(alice) for _ in range(11)]
    request = pb.AppendRunEventBatchesRequest(
        batches=[Batch(run_id=r.id, events=[text_event(s) for s in range(1, 1001)]) for r in runs]
    )
    err = await rpc_error(alice.AppendRunEventBatches(request))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"batches"}
    assert await stored_seqs(alice, runs[0].id) == []
