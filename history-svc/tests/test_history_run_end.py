"""AppendRunEvents with `run`: a run's last events and its final record in one transaction
(the orchestrator's run end), on both stores."""

from __future__ import annotations

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from history_helpers import (
    History,
    UserStub,
    cached_run,
    completed_event,
    fields_of,
    new_run,
    rpc_error,
    text_event,
)

from chorus.history.settings import Settings
from chorus.v1 import chat_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

FINAL_PATHS = ["status", "turns", "usage", "last_seq", "end_time", "final_answer"]


def final_record(**fields: object) -> run_pb2.Run:
    values: dict[str, object] = {
        "status": run_pb2.RUN_STATUS_COMPLETED,
        "turns": 1,
        "usage": chat_pb2.Usage(input_tokens=7, output_tokens=3),
        "last_seq": 3,
        "final_answer": "done",
    }
    values.update(fields)
    return run_pb2.Run(**values)  # type: ignore[arg-type]


def end_request(run_id: str, first_seq: int = 2, **fields: object) -> pb.AppendRunEventsRequest:
    return pb.AppendRunEventsRequest(
        run_id=run_id,
        events=[text_event(first_seq), completed_event(first_seq + 1)],
        run=final_record(**fields),
        update_mask=FieldMask(paths=FINAL_PATHS),
    )


async def stored_seqs(stub: UserStub, run_id: str) -> list[int]:
    resp = await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id, page_size=100))
    return [e.seq for e in resp.events]


async def test_the_last_events_and_the_final_record_are_stored_together(
    alice: UserStub, history: History, settings: Settings
) -> None:
    run = await new_run(alice)
    await alice.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1)]))
    resp = await alice.AppendRunEvents(end_request(run.id))
    assert resp.last_seq == 3
    ended = resp.run
    assert ended.status == run_pb2.RUN_STATUS_COMPLETED and ended.final_answer == "done"
    assert ended.usage.output_tokens == 3 and ended.turns == 1 and ended.last_seq == 3
    assert ended.end_time.seconds > 0  # defaulted by the server when not given
    assert await stored_seqs(alice, run.id) == [1, 2, 3]
    got = (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))).run
    assert got == ended
    assert await cached_run(history, settings, run.id) == ended  # written through


async def test_a_repeated_end_is_accepted_and_changes_nothing(alice: UserStub) -> None:
    run = await new_run(alice)
    await alice.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1)]))
    first = (await alice.AppendRunEvents(end_request(run.id))).run
    again = await alice.AppendRunEvents(end_request(run.id))  # a retry after a lost answer
    assert again.last_seq == 3 and again.run.status == run_pb2.RUN_STATUS_COMPLETED
    assert again.run.final_answer == first.final_answer
    assert await stored_seqs(alice, run.id) == [1, 2, 3]


async def test_changing_a_terminal_status_fails_and_stores_none_of_the_events(
    alice: UserStub,
) -> None:
    run = await new_run(alice)
    await alice.RecordRun(
        pb.RecordRunRequest(
            run=run_pb2.Run(id=run.id, status=run_pb2.RUN_STATUS_FAILED),
            update_mask=FieldMask(paths=["status"]),
        )
    )
    err = await rpc_error(alice.AppendRunEvents(end_request(run.id, first_seq=1)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "RUN_TERMINAL"
    assert await stored_seqs(alice, run.id) == []
    got = (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))).run
    assert got.status == run_pb2.RUN_STATUS_FAILED and got.last_seq == 0


async def test_a_seq_gap_stores_neither_the_events_nor_the_record(alice: UserStub) -> None:
    run = await new_run(alice)
    err = await rpc_error(alice.AppendRunEvents(end_request(run.id, first_seq=5)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "SEQ_GAP"
    got = (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))).run
    assert got.status == run_pb2.RUN_STATUS_RUNNING and not got.final_answer


async def test_bad_record_updates_are_invalid_argument_naming_the_field(
    alice: UserStub, bob: UserStub
) -> None:
    run = await new_run(alice)
    other = await new_run(alice)
    cases: list[tuple[pb.AppendRunEventsRequest, str]] = []
    no_mask = end_request(run.id, first_seq=1)
    no_mask.ClearField("update_mask")
    cases.append((no_mask, "update_mask"))
    foreign_id = end_request(run.id, first_seq=1)
    foreign_id.run.id = other.id
    cases.append((foreign_id, "run.id"))
    not_uuid = end_request(run.id, first_seq=1)
    not_uuid.run.id = "run-1"
    cases.append((not_uuid, "run.id"))
    bad_path = end_request(run.id, first_seq=1)
    bad_path.update_mask.paths.append("spec")
    cases.append((bad_path, f"update_mask.paths[{len(FINAL_PATHS)}]"))
    negative = end_request(run.id, first_seq=1, turns=-1)
    cases.append((negative, "run.turns"))
    for request, field in cases:
        err = await rpc_error(alice.AppendRunEvents(request))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in fields_of(err), (field, fields_of(err))
    assert await stored_seqs(alice, run.id) == []
    got = (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))).run
    assert got.status == run_pb2.RUN_STATUS_RUNNING
    # another user's run is not found, and is left as it was
    err = await rpc_error(bob.AppendRunEvents(end_request(run.id, first_seq=1)))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert await stored_seqs(alice, run.id) == []
