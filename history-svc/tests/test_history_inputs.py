"""Human in the loop (issue 21) in history-svc, on both back ends: a run parked
AWAITING_INPUT (AppendRunEvents with `input_requested`, `pending_input` and a checkpoint)
holds no lease, keeps its conversation busy and its watchers following it; RecordRunInput
records the first answer (`input_received`) and makes the run claimable again.

The contract is the comment of RecordRunInput, AppendRunEvents and ClaimRun in
proto/chorus/v1/history_service.proto and of RUN_STATUS_AWAITING_INPUT, `Run.pending_input`,
`InputRequested` and `InputReceived` in run.proto. What a call wrote is read back through
the service, the cache (Redis or in-process) and the database directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import asyncpg
import grpc
import orjson
import redis.asyncio as redis
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from history_helpers import (
    History,
    UserStub,
    cached_run,
    completed_event,
    fields_of,
    make_settings,
    new_conversation,
    new_run,
    rpc_error,
    run_spec,
    running_history,
    text_event,
)

from chorus.core.errors import from_rpc_error
from chorus.core.testing import wait_for
from chorus.history.settings import Settings
from chorus.v1 import chat_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

S = run_pb2
RunEvent = run_pb2.RunEvent
Answer = run_pb2.RunEvent.InputReceived
Batch = pb.AppendRunEventsRequest
MICROSECOND = Duration(nanos=1000)
TEXT, APPROVAL = run_pb2.INPUT_KIND_TEXT, run_pb2.INPUT_KIND_APPROVAL


def request(input_id: str = "turn1-1", kind: int = APPROVAL) -> RunEvent.InputRequested:
    req = RunEvent.InputRequested(
        input_id=input_id, kind=kind, prompt="Run calculator(17.5% of 2,340)?", agent="assistant"
    )
    if kind == APPROVAL:
        req.tool_call.CopyFrom(
            chat_pb2.ToolCall(id="C", name="calculator", arguments='{"expression": "0.175*2340"}')
        )
    req.expire_time.FromSeconds(4_000_000_000)
    return req


async def started(stub: UserStub, conversation_id: str | None = None, events: int = 2) -> S.Run:
    """A RUNNING run owned by `orch-a` (epoch 1) with `events` text deltas stored."""
    run = await new_run(stub, conversation_id)
    await stub.RecordRunHeartbeats(
        pb.RecordRunHeartbeatsRequest(
            heartbeats=[pb.RunHeartbeat(run_id=run.id, owner_instance="orch-a", lease_epoch=1)]
        )
    )
    await stub.AppendRunEvents(
        Batch(run_id=run.id, events=[text_event(s) for s in range(1, events + 1)], lease_epoch=1)
    )
    return run


async def park(
    stub: UserStub, run_id: str, seq: int, req: RunEvent.InputRequested, epoch: int = 1
) -> S.Run:
    """What the orchestrator does to wait for a person: `input_requested`, status
    AWAITING_INPUT with `pending_input`, and the checkpoint, in one AppendRunEvents."""
    resp = await stub.AppendRunEvents(
        Batch(
            run_id=run_id,
            events=[RunEvent(seq=seq, agent=req.agent, input_requested=req)],
            run=S.Run(status=S.RUN_STATUS_AWAITING_INPUT, pending_input=req, last_seq=seq),
            update_mask={"paths": ["status", "pending_input", "last_seq"]},
            checkpoint=S.RunCheckpoint(seq=seq, team_state=b'{"type": "TeamState"}', turns=1),
            lease_epoch=epoch,
        )
    )
    return resp.run


async def answer(stub: UserStub, run_id: str, **kw: Any) -> pb.RecordRunInputResponse:
    values: dict[str, Any] = {"input_id": "turn1-1", "by": stub.user}
    values.update(kw)
    return await stub.RecordRunInput(
        pb.RecordRunInputRequest(run_id=run_id, answer=Answer(**values))
    )


def approve(reason: str = "") -> S.ApprovalDecision:
    return S.ApprovalDecision(approved=True, reason=reason)


def claim_request(run_id: str, epoch: int, instance: str = "orch-b") -> pb.ClaimRunRequest:
    return pb.ClaimRunRequest(
        run_id=run_id, owner_instance=instance, lease_epoch=epoch, stale_after=MICROSECOND
    )


async def events_of(stub: UserStub, run_id: str) -> list[RunEvent]:
    return list((await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id))).events)


async def run_of(stub: UserStub, run_id: str) -> S.Run:
    return (await stub.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))).run


async def stored_columns(settings: Settings, run_id: str) -> tuple[int, dict[str, Any] | None]:
    """`(status, pending_input JSON)` of the run's row, read from the database directly."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT status, pending_input FROM runs WHERE id = $1", run_id
            )
        finally:
            await conn.close()
    else:
        with sqlite3.connect(settings.sqlite_path) as db:
            row = db.execute(
                "SELECT status, pending_input FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
    return row[0], None if row[1] is None else orjson.loads(row[1])


def released(run: S.Run) -> bool:
    return (
        not run.owner_instance
        and run.HasField("heartbeat_time")
        and run.heartbeat_time.ToMicroseconds() == 0
    )


async def test_parking_releases_the_lease_and_heartbeats_do_not_take_it_back(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await started(alice)
    assert (await run_of(alice, run.id)).owner_instance == "orch-a"
    parked = await park(alice, run.id, 3, request())
    assert parked.status == S.RUN_STATUS_AWAITING_INPUT
    assert parked.pending_input == request()
    assert released(parked) and parked.lease_epoch == 1 and parked.last_seq == 3
    for seen in (await run_of(alice, run.id), await cached_run(history, settings, run.id)):
        assert seen == parked
    assert await stored_columns(settings, run.id) == (
        S.RUN_STATUS_AWAITING_INPUT,
        {
            "input_id": "turn1-1",
            "kind": "INPUT_KIND_APPROVAL",
            "prompt": request().prompt,
            "tool_call": {
                "id": "C",
                "name": "calculator",
                "arguments": '{"expression": "0.175*2340"}',
            },
            "expire_time": "2096-10-02T07:06:40Z",
            "agent": "assistant",
        },
    )
    # A late heartbeat of the owner that parked it (its epoch is still the run's) and one
    # without an epoch: both leave the run as stored.
    for epoch in (1, 0):
        beats = await alice.RecordRunHeartbeats(
            pb.RecordRunHeartbeatsRequest(
                heartbeats=[
                    pb.RunHeartbeat(run_id=run.id, owner_instance="orch-a", lease_epoch=epoch)
                ]
            )
        )
        assert list(beats.runs) == [parked]
    assert await run_of(alice, run.id) == parked
    # Listed as waiting (the caller's and across owners).
    mine = await alice.ListRunRecords(pb.ListRunRecordsRequest(status=S.RUN_STATUS_AWAITING_INPUT))
    assert [r.id for r in mine.runs] == [run.id]
    everyone = await history.system().ListRunRecords(
        pb.ListRunRecordsRequest(status=S.RUN_STATUS_AWAITING_INPUT, all_owners=True)
    )
    assert run.id in [r.id for r in everyone.runs]
    running = await alice.ListRunRecords(pb.ListRunRecordsRequest(status=S.RUN_STATUS_RUNNING))
    assert run.id not in [r.id for r in running.runs]


async def test_a_waiting_run_is_claimed_only_after_its_answer(
    history: History, settings: Settings, alice: UserStub
) -> None:
    system = history.system()
    run = await started(alice)
    await park(alice, run.id, 3, request())
    err = await rpc_error(system.ClaimRun(claim_request(run.id, 1)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "INPUT_PENDING"
    assert err.metadata["input_id"] == "turn1-1" and err.metadata["run_id"] == run.id

    resp = await answer(alice, run.id, decision=approve("fine"), request_id="r-1")
    event = resp.event
    assert (event.run_id, event.seq, event.agent) == (run.id, 4, "assistant")
    assert event.time.ToMicroseconds() > 0
    assert event.input_received == Answer(
        input_id="turn1-1", by=alice.user, decision=approve("fine"), request_id="r-1"
    )
    after = resp.run
    assert after.status == S.RUN_STATUS_RUNNING and not after.HasField("pending_input")
    assert released(after) and after.lease_epoch == 1 and after.last_seq == 4
    assert after.update_time.ToMicroseconds() > 0
    assert await run_of(alice, run.id) == after
    assert await cached_run(history, settings, run.id) == after
    assert await stored_columns(settings, run.id) == (S.RUN_STATUS_RUNNING, None)
    assert (await events_of(alice, run.id))[-1] == event
    # A heartbeat after the answer (the parked owner's epoch) does not take the lease either.
    beats = await alice.RecordRunHeartbeats(
        pb.RecordRunHeartbeatsRequest(
            heartbeats=[pb.RunHeartbeat(run_id=run.id, owner_instance="orch-a", lease_epoch=1)]
        )
    )
    assert released(beats.runs[0])

    claimed = await system.ClaimRun(claim_request(run.id, 1))
    assert claimed.run.owner_instance == "orch-b" and claimed.run.lease_epoch == 2
    assert claimed.checkpoint.seq == 4  # moved to the input_received event
    assert claimed.checkpoint.team_state == b'{"type": "TeamState"}'
    assert claimed.checkpoint.turns == 1


async def test_two_concurrent_answers_one_wins(alice: UserStub) -> None:
    run = await started(alice)
    await park(alice, run.id, 3, request("turn2-1", TEXT))
    results = await asyncio.gather(
        *(
            alice.RecordRunInput(
                pb.RecordRunInputRequest(
                    run_id=run.id,
                    answer=Answer(input_id="turn2-1", text=f"answer {i}", request_id=f"r-{i}"),
                )
            )
            for i in range(4)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, pb.RecordRunInputResponse)]
    lost = [from_rpc_error(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 3
    assert {(e.code, e.reason) for e in lost} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "INPUT_NOT_PENDING")
    }
    events = await events_of(alice, run.id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    answers = [e for e in events if e.WhichOneof("payload") == "input_received"]
    assert answers == [won[0].event]


async def test_the_same_request_id_returns_the_same_answer(alice: UserStub) -> None:
    run = await started(alice)
    await park(alice, run.id, 3, request())
    first = await answer(alice, run.id, decision=approve(), request_id="click-1")
    # The run went on meanwhile: the repeat still returns the first event (and the record
    # as it is now).
    await alice.AppendRunEvents(Batch(run_id=run.id, events=[text_event(5)], lease_epoch=1))
    again = await answer(alice, run.id, decision=approve(), request_id="click-1")
    assert again.event == first.event and again.run.last_seq == 5
    stored = [e for e in await events_of(alice, run.id) if e.HasField("input_received")]
    assert stored == [first.event]
    # Another request id, or none, for an answered input: not pending any more.
    for request_id in ("click-2", ""):
        err = await rpc_error(answer(alice, run.id, decision=approve(), request_id=request_id))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.reason == "INPUT_NOT_PENDING"
        assert err.metadata["status"] == "RUN_STATUS_RUNNING"
        assert err.metadata["pending_input_id"] == ""


async def test_stale_or_unknown_inputs_are_not_pending(alice: UserStub) -> None:
    running = await started(alice)
    err = await rpc_error(answer(alice, running.id, decision=approve()))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "INPUT_NOT_PENDING"
    assert err.metadata["status"] == "RUN_STATUS_RUNNING"

    run = await started(alice)
    await park(alice, run.id, 3, request("turn1-2"))
    for input_id in ("turn1-1", "turn9-9"):
        err = await rpc_error(answer(alice, run.id, input_id=input_id, decision=approve()))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.reason == "INPUT_NOT_PENDING"
        assert err.metadata["status"] == "RUN_STATUS_AWAITING_INPUT"
        assert err.metadata["pending_input_id"] == "turn1-2"
    assert (await run_of(alice, run.id)).status == S.RUN_STATUS_AWAITING_INPUT
    assert [e.seq for e in await events_of(alice, run.id)] == [1, 2, 3]

    err = await rpc_error(answer(alice, str(uuid.uuid4()), decision=approve()))
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_another_users_run_is_not_found_and_the_system_answers_expiry(
    history: History, alice: UserStub, bob: UserStub
) -> None:
    run = await started(alice)
    await park(alice, run.id, 3, request())
    err = await rpc_error(answer(bob, run.id, decision=approve()))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert (await run_of(alice, run.id)).status == S.RUN_STATUS_AWAITING_INPUT
    # The internal service identity answers any run: an expired approval is a denial.
    resp = await history.system().RecordRunInput(
        pb.RecordRunInputRequest(run_id=run.id, answer=Answer(input_id="turn1-1", expired=True))
    )
    assert resp.event.input_received == Answer(
        input_id="turn1-1",
        expired=True,
        decision=S.ApprovalDecision(approved=False, reason="EXPIRED"),
    )
    assert resp.run.status == S.RUN_STATUS_RUNNING


async def test_an_expired_text_request_has_no_answer(alice: UserStub) -> None:
    run = await started(alice)
    await park(alice, run.id, 3, request("turn2-1", TEXT))
    # An expired text request carries no answer: a decision is of the wrong kind.
    err = await rpc_error(
        answer(alice, run.id, input_id="turn2-1", expired=True, decision=approve())
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"answer.decision"}
    resp = await answer(alice, run.id, input_id="turn2-1", expired=True, by="")
    received = resp.event.input_received
    assert received.expired and received.WhichOneof("answer") is None
    assert received.input_id == "turn2-1"


async def test_bad_answers_are_invalid_and_write_nothing(alice: UserStub) -> None:
    run = await started(alice)
    await park(alice, run.id, 3, request("turn1-1", TEXT))
    cases: list[tuple[pb.RecordRunInputRequest, set[str]]] = [
        (
            pb.RecordRunInputRequest(run_id="nope", answer=Answer(input_id="x", text="t")),
            {"run_id"},
        ),
        (pb.RecordRunInputRequest(answer=Answer(input_id="x", text="t")), {"run_id"}),
        (pb.RecordRunInputRequest(run_id=run.id), {"answer"}),
        (pb.RecordRunInputRequest(run_id=run.id, answer=Answer(text="t")), {"answer.input_id"}),
        (
            pb.RecordRunInputRequest(run_id=run.id, answer=Answer(input_id="x" * 129, text="t")),
            {"answer.input_id"},
        ),
        (pb.RecordRunInputRequest(run_id=run.id, answer=Answer(input_id="turn1-1")), {"answer"}),
        (
            pb.RecordRunInputRequest(
                run_id=run.id, answer=Answer(input_id="turn1-1", text="t", expired=True)
            ),
            {"answer.text"},
        ),
        (
            pb.RecordRunInputRequest(run_id=run.id, answer=Answer(input_id="turn1-1", text="")),
            {"answer.text"},
        ),
        (
            pb.RecordRunInputRequest(
                run_id=run.id, answer=Answer(input_id="turn1-1", text="é" * 32_769)
            ),
            {"answer.text"},
        ),
        (
            pb.RecordRunInputRequest(
                run_id=run.id,
                answer=Answer(input_id="turn1-1", decision=S.ApprovalDecision(reason="r" * 1001)),
            ),
            {"answer.decision.reason"},
        ),
        (
            pb.RecordRunInputRequest(
                run_id=run.id, answer=Answer(input_id="turn1-1", text="t", request_id="r" * 129)
            ),
            {"answer.request_id"},
        ),
        (
            pb.RecordRunInputRequest(
                run_id=run.id, answer=Answer(input_id="turn1-1", by="b" * 257, text="t")
            ),
            {"answer.by"},
        ),
        # the kind does not fit the request (checked under the run's lock)
        (
            pb.RecordRunInputRequest(
                run_id=run.id, answer=Answer(input_id="turn1-1", decision=approve())
            ),
            {"answer.decision"},
        ),
    ]
    for req, expected in cases:
        err = await rpc_error(alice.RecordRunInput(req))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, req
        assert fields_of(err) == expected, (req, fields_of(err))
    # Exactly 64 KiB of text is fine; the other kind mismatch: text for an approval.
    other = await started(alice)
    await park(alice, other.id, 3, request("turn1-1", APPROVAL))
    err = await rpc_error(answer(alice, other.id, text="yes"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"answer.text"}
    for r in (run, other):
        assert (await run_of(alice, r.id)).status == S.RUN_STATUS_AWAITING_INPUT
        assert [e.seq for e in await events_of(alice, r.id)] == [1, 2, 3]
    ok = await answer(alice, run.id, text="é" * 32_768)
    assert ok.event.input_received.text == "é" * 32_768


async def test_a_bad_pending_input_is_invalid(alice: UserStub) -> None:
    run = await started(alice)
    req = RunEvent.InputRequested(kind=run_pb2.INPUT_KIND_UNSPECIFIED, prompt="p" * (64 * 1024 + 1))
    err = await rpc_error(park(alice, run.id, 3, req))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {
        "run.pending_input.input_id",
        "run.pending_input.kind",
        "run.pending_input.prompt",
    }
    assert [e.seq for e in await events_of(alice, run.id)] == [1, 2]


async def test_a_watcher_follows_a_waiting_run_and_sees_the_answer_live(alice: UserStub) -> None:
    run = await started(alice)
    received: list[RunEvent] = []

    async def watch() -> None:
        async for item in alice.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run.id)):
            received.append(item.event)

    task = asyncio.create_task(watch())
    try:
        await wait_for(lambda: len(received) == 2)
        await park(alice, run.id, 3, request())
        await wait_for(lambda: len(received) == 3)
        assert received[-1].WhichOneof("payload") == "input_requested"
        # The watch goes on while the run waits: it is shown the answer below.
        resp = await answer(alice, run.id, decision=approve())
        await wait_for(lambda: len(received) == 4)
        assert received[-1] == resp.event
        await alice.AppendRunEvents(Batch(run_id=run.id, events=[completed_event(5)]))
        await asyncio.wait_for(task, 10)  # ends after the terminal event
    finally:
        task.cancel()
    assert [e.seq for e in received] == [1, 2, 3, 4, 5]


async def test_a_waiting_run_keeps_its_conversation_busy(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    run = await started(alice, conv.id)
    await park(alice, run.id, 3, request())
    err = await rpc_error(new_run(alice, conv.id))
    assert err.code == grpc.StatusCode.ABORTED and err.reason == "CONVERSATION_BUSY"
    assert err.metadata["active_run_id"] == run.id
    err = await rpc_error(
        alice.RecordRunStart(
            pb.RecordRunStartRequest(
                run=S.Run(
                    id=str(uuid.uuid4()),
                    conversation_id=conv.id,
                    spec=run_spec(),
                    status=S.RUN_STATUS_RUNNING,
                )
            )
        )
    )
    assert err.code == grpc.StatusCode.ABORTED and err.reason == "CONVERSATION_BUSY"
    # A terminal run may still be recorded beside it.
    await new_run(alice, conv.id, status=S.RUN_STATUS_COMPLETED)


async def test_cancelling_a_waiting_run_ends_it_and_clears_its_request(
    history: History, settings: Settings, alice: UserStub
) -> None:
    conv = await new_conversation(alice)
    run = await started(alice, conv.id)
    parked = await park(alice, run.id, 3, request())
    cancelled = RunEvent(
        seq=4,
        run_cancelled=RunEvent.RunCancelled(
            cancellation=S.Cancellation(requested_by=alice.user, reason="not needed")
        ),
    )
    values = S.Run(
        status=S.RUN_STATUS_CANCELLED,
        cancellation=S.Cancellation(requested_by=alice.user, reason="not needed"),
        last_seq=4,
    )
    values.end_time.GetCurrentTime()
    resp = await alice.AppendRunEvents(
        Batch(
            run_id=run.id,
            events=[cancelled],
            run=values,
            update_mask={"paths": ["status", "cancellation", "end_time", "last_seq"]},
            lease_epoch=parked.lease_epoch,
        )
    )
    assert resp.run.status == S.RUN_STATUS_CANCELLED
    assert not resp.run.HasField("pending_input")
    assert await cached_run(history, settings, run.id) == resp.run
    assert await stored_columns(settings, run.id) == (S.RUN_STATUS_CANCELLED, None)
    err = await rpc_error(answer(alice, run.id, decision=approve()))
    assert err.reason == "INPUT_NOT_PENDING" and err.metadata["status"] == "RUN_STATUS_CANCELLED"
    err = await rpc_error(history.system().ClaimRun(claim_request(run.id, 1)))
    assert err.reason == "RUN_ENDED"
    await new_run(alice, conv.id)  # the conversation is free again


async def test_record_run_clears_the_request_of_a_run_that_stops_waiting(
    alice: UserStub,
) -> None:
    run = await started(alice)
    # RecordRun may park a run too: the lease is released in that write.
    parked = await alice.RecordRun(
        pb.RecordRunRequest(
            run=S.Run(id=run.id, status=S.RUN_STATUS_AWAITING_INPUT, pending_input=request()),
            update_mask={"paths": ["status", "pending_input"]},
        )
    )
    assert released(parked.run) and parked.run.pending_input == request()
    # pending_input alone on a waiting run is written; any other status clears it.
    other = request("turn1-2")
    moved = await alice.RecordRun(
        pb.RecordRunRequest(
            run=S.Run(id=run.id, pending_input=other), update_mask={"paths": ["pending_input"]}
        )
    )
    assert moved.run.pending_input == other
    back = await alice.RecordRun(
        pb.RecordRunRequest(
            run=S.Run(id=run.id, status=S.RUN_STATUS_RUNNING, pending_input=other),
            update_mask={"paths": ["status", "pending_input"]},
        )
    )
    assert back.run.status == S.RUN_STATUS_RUNNING and not back.run.HasField("pending_input")


async def test_deleting_waiting_runs(alice: UserStub) -> None:
    run = await started(alice)
    await park(alice, run.id, 3, request())
    await alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id))
    err = await rpc_error(run_of(alice, run.id))
    assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(answer(alice, run.id, decision=approve()))
    assert err.code == grpc.StatusCode.NOT_FOUND

    conv = await new_conversation(alice)
    run = await started(alice, conv.id)
    await park(alice, run.id, 3, request())
    await alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id))
    err = await rpc_error(run_of(alice, run.id))
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_an_answer_on_one_replica_reaches_a_watcher_on_another(
    pg_url: str, redis_url: str, key_prefix: str, redis_direct: redis.Redis
) -> None:
    settings = make_settings(database_url=pg_url, redis_url=redis_url, redis_key_prefix=key_prefix)
    async with running_history(settings) as one, running_history(settings) as two:
        alice_one, alice_two = one.as_user("replica-alice"), two.as_user("replica-alice")
        run = await started(alice_one)
        await park(alice_one, run.id, 3, request())
        received: list[RunEvent] = []

        async def watch() -> None:
            async for item in alice_two.WatchRunEvents(
                pb.WatchRunEventsRequest(run_id=run.id, after_seq=3)
            ):
                received.append(item.event)

        task = asyncio.create_task(watch())
        try:
            resp = await answer(alice_one, run.id, decision=approve())
            await wait_for(lambda: len(received) == 1)
            assert received == [resp.event]
            assert await run_of(alice_two, run.id) == resp.run
        finally:
            task.cancel()


async def test_the_expiry_sweep_lists_only_waiting_runs_whose_request_expired(
    history: History, alice: UserStub
) -> None:
    """ListRunRecords `input_expire_before` (the orchestrators' expiry sweep, one indexed
    query): waiting runs whose request expired, not those still in time nor active ones."""
    expired = request()
    expired.expire_time.FromSeconds(1_000_000_000)  # 2001
    overdue = await started(alice)
    await park(alice, overdue.id, 3, expired)
    in_time = await started(alice)
    await park(alice, in_time.id, 3, request())
    running = await started(alice)
    system = history.system()

    async def expiring() -> set[str]:
        now = Timestamp()
        now.GetCurrentTime()
        listing = await system.ListRunRecords(
            pb.ListRunRecordsRequest(all_owners=True, input_expire_before=now, page_size=1000)
        )
        return {run.id for run in listing.runs}

    found = await expiring()
    assert overdue.id in found and in_time.id not in found and running.id not in found
    await system.RecordRunInput(
        pb.RecordRunInputRequest(run_id=overdue.id, answer=Answer(input_id="turn1-1", expired=True))
    )
    assert overdue.id not in await expiring()  # answered: RUNNING, its request gone
