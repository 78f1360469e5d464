"""Run records: RecordRun create-or-update, GetRunRecord, ListRunRecords."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2
from history_helpers import (
    History,
    UserStub,
    fields_of,
    new_conversation,
    new_run,
    rpc_error,
    run_spec,
)

from chorus.v1 import history_service_pb2 as pb
from chorus.v1 import run_pb2

Run = run_pb2.Run
S = run_pb2


def ts(dt: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(dt)
    return out


async def record(stub: UserStub, run: Run, *paths: str) -> pb.RecordRunResponse:
    return await stub.RecordRun(pb.RecordRunRequest(run=run, update_mask=FieldMask(paths=paths)))


async def test_create_stores_the_run_and_says_it_created_it(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    run_id = str(uuid.uuid4())
    resp = await record(alice, Run(id=run_id, conversation_id=conv.id, spec=run_spec()))
    assert resp.created
    run = resp.run
    assert (run.id, run.owner, run.conversation_id) == (run_id, alice.user, conv.id)
    assert run.status == S.RUN_STATUS_QUEUED and run.spec.template == "duet"
    assert run.create_time.seconds and run.update_time.seconds and run.last_seq == 0
    got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))
    assert got.run == run
    again = await record(alice, Run(id=run_id, conversation_id=conv.id, spec=run_spec()))
    assert not again.created and again.run.id == run_id


async def test_same_request_id_returns_the_existing_run(alice: UserStub) -> None:
    first = await new_run(alice, request_id="start-1")
    resp = await record(
        alice,
        Run(
            id=str(uuid.uuid4()),
            conversation_id=first.conversation_id,
            spec=run_spec(request_id="start-1"),
        ),
    )
    assert not resp.created and resp.run == first


async def test_heartbeat_updates_only_the_heartbeat_and_returns_the_full_run(
    alice: UserStub, history: History
) -> None:
    run = await new_run(alice)
    # another replica records a cancel request…
    cancel = S.Cancellation(
        requested_by=alice.user, reason="enough", request_time=ts(datetime.now(UTC))
    )
    await record(alice, Run(id=run.id, cancellation=cancel), "cancellation")
    # …and the owner's heartbeat learns about it from the response
    beat = ts(datetime.now(UTC))
    resp = await record(alice, Run(id=run.id, heartbeat_time=beat, turns=99), "heartbeat_time")
    assert not resp.created
    assert resp.run.heartbeat_time == beat and resp.run.turns == 0
    assert resp.run.cancellation == cancel and resp.run.status == S.RUN_STATUS_RUNNING
    assert resp.run.update_time.ToMicroseconds() > run.update_time.ToMicroseconds()


async def test_the_first_cancellation_is_kept(alice: UserStub) -> None:
    run = await new_run(alice)
    await record(
        alice,
        Run(id=run.id, cancellation=S.Cancellation(requested_by="a", reason="1")),
        "cancellation",
    )
    resp = await record(
        alice,
        Run(id=run.id, cancellation=S.Cancellation(requested_by="b", reason="2")),
        "cancellation",
    )
    assert resp.run.cancellation.requested_by == "a"


async def test_terminal_status_is_final(alice: UserStub) -> None:
    run = await new_run(alice)
    done = await record(
        alice,
        Run(id=run.id, status=S.RUN_STATUS_COMPLETED, final_answer="42", turns=3),
        "status", "final_answer", "turns",
    )  # fmt: skip
    assert done.run.status == S.RUN_STATUS_COMPLETED and done.run.end_time.seconds
    same = await record(alice, Run(id=run.id, status=S.RUN_STATUS_COMPLETED), "status")
    assert same.run.final_answer == "42"
    for status in (S.RUN_STATUS_RUNNING, S.RUN_STATUS_FAILED):
        err = await rpc_error(record(alice, Run(id=run.id, status=status), "status"))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "RUN_TERMINAL"
    got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert got.run.status == S.RUN_STATUS_COMPLETED


async def test_a_second_active_run_in_a_conversation_is_aborted_busy(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    first = await new_run(alice, conv.id, status=S.RUN_STATUS_RUNNING)
    err = await rpc_error(new_run(alice, conv.id, status=S.RUN_STATUS_QUEUED))
    assert err.code == grpc.StatusCode.ABORTED and err.reason == "CONVERSATION_BUSY"
    assert err.metadata["active_run_id"] == first.id
    # a finished run can be recorded at any time; and once the first ends, a new one starts
    await new_run(alice, conv.id, status=S.RUN_STATUS_FAILED)
    await record(
        alice,
        Run(id=first.id, status=S.RUN_STATUS_FAILED, error=S.RunError(code=code_pb2.INTERNAL, message="x")),
        "status", "error",
    )  # fmt: skip
    second = await new_run(alice, conv.id, status=S.RUN_STATUS_QUEUED)
    listed = await alice.ListRunRecords(pb.ListRunRecordsRequest(conversation_id=conv.id))
    assert listed.runs[0].id == second.id and len(listed.runs) == 3


async def test_bad_record_requests_are_rejected_and_write_nothing(alice: UserStub) -> None:
    run = await new_run(alice)
    err = await rpc_error(
        record(
            alice,
            Run(id=run.id, status=S.RUN_STATUS_UNSPECIFIED, turns=-1),
            "status", "turns", "spec", "nope",
        )
    )  # fmt: skip
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {
        "update_mask.paths[2]",
        "update_mask.paths[3]",
        "run.status",
        "run.turns",
    }
    err = await rpc_error(
        record(alice, Run(id="x", conversation_id="y", spec=run_spec(input="i" * 65537)))
    )
    assert fields_of(err) == {"run.id", "run.conversation_id", "run.spec.input"}
    # an unknown id without spec is not a create
    err = await rpc_error(record(alice, Run(id=str(uuid.uuid4()), turns=1), "turns"))
    assert err.code == grpc.StatusCode.NOT_FOUND
    # a create in a conversation that does not exist
    err = await rpc_error(
        record(alice, Run(id=str(uuid.uuid4()), conversation_id=str(uuid.uuid4()), spec=run_spec()))
    )
    assert err.code == grpc.StatusCode.NOT_FOUND and "conversation" in err.message
    got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert got.run == run


async def test_list_is_newest_first_filtered_and_paged(alice: UserStub) -> None:
    convs = [await new_conversation(alice) for _ in range(2)]
    made = []
    for i in range(5):
        status = S.RUN_STATUS_COMPLETED if i % 2 else S.RUN_STATUS_FAILED
        made.append(await new_run(alice, convs[i % 2].id, status=status))
    ids: list[str] = []
    token = ""
    while True:
        page = await alice.ListRunRecords(pb.ListRunRecordsRequest(page_size=2, page_token=token))
        ids += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert ids == [r.id for r in reversed(made)]
    by_conv = await alice.ListRunRecords(pb.ListRunRecordsRequest(conversation_id=convs[1].id))
    assert [r.id for r in by_conv.runs] == [made[3].id, made[1].id]
    failed = await alice.ListRunRecords(pb.ListRunRecordsRequest(status=S.RUN_STATUS_FAILED))
    assert [r.id for r in failed.runs] == [made[4].id, made[2].id, made[0].id]
    err = await rpc_error(
        alice.ListRunRecords(
            pb.ListRunRecordsRequest(
                status=S.RUN_STATUS_FAILED, page_token=page.next_page_token or "e30"
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    err = await rpc_error(alice.ListRunRecords(pb.ListRunRecordsRequest(page_size=-5, status=99)))  # type: ignore[arg-type]
    assert fields_of(err) == {"page_size", "status"}


async def test_recovery_sweep_lists_stale_runs_of_every_owner(
    history: History, alice: UserStub, bob: UserStub
) -> None:
    now = datetime.now(UTC)
    stale_a = await new_run(alice, status=S.RUN_STATUS_RUNNING)
    stale_b = await new_run(bob, status=S.RUN_STATUS_RUNNING)
    fresh = await new_run(alice, status=S.RUN_STATUS_RUNNING)
    await record(
        alice, Run(id=stale_a.id, heartbeat_time=ts(now - timedelta(minutes=5))), "heartbeat_time"
    )
    await record(
        bob, Run(id=stale_b.id, heartbeat_time=ts(now - timedelta(minutes=3))), "heartbeat_time"
    )
    await record(
        alice, Run(id=fresh.id, heartbeat_time=ts(now + timedelta(minutes=1))), "heartbeat_time"
    )
    sweep = pb.ListRunRecordsRequest(
        all_owners=True,
        status=S.RUN_STATUS_RUNNING,
        heartbeat_before=ts(now - timedelta(minutes=1)),
    )
    err = await rpc_error(alice.ListRunRecords(sweep))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    found = await history.system().ListRunRecords(sweep)
    mine = {r.id for r in found.runs} & {stale_a.id, stale_b.id, fresh.id}
    assert mine == {stale_a.id, stale_b.id}
    # the service identity may fail another owner's run
    resp = await history.system().RecordRun(
        pb.RecordRunRequest(
            run=Run(
                id=stale_b.id,
                status=S.RUN_STATUS_FAILED,
                error=S.RunError(code=code_pb2.UNAVAILABLE, reason="ORCHESTRATOR_STOPPED"),
            ),
            update_mask=FieldMask(paths=["status", "error"]),
        )
    )
    assert resp.run.owner == bob.user and resp.run.status == S.RUN_STATUS_FAILED
