"""Run checkpoints (issue 18, "Durable runs"): written by AppendRunEvents in the transaction
of their events, only the latest kept, handed to the next owner by ClaimRun — on both back
ends. The contract is the comment of `AppendRunEventsRequest.checkpoint` and
`RunCheckpoint` in proto/chorus/v1."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
import grpc
import orjson
from google.protobuf.duration_pb2 import Duration
from history_helpers import (
    History,
    UserStub,
    fields_of,
    new_run,
    rpc_error,
    running_history,
    text_event,
)

from chorus.core.errors import from_status
from chorus.history.settings import Settings
from chorus.v1 import chat_pb2, run_pb2, team_pb2
from chorus.v1 import history_service_pb2 as pb

Batch = pb.AppendRunEventsRequest
Checkpoint = run_pb2.RunCheckpoint
MICROSECOND = Duration(nanos=1000)
MIB = 1024 * 1024


def checkpoint(seq: int, **kw: Any) -> run_pb2.RunCheckpoint:
    state = orjson.dumps({"type": "TeamState", "agent_states": {"a": {"seq": seq}}})
    values: dict[str, Any] = {
        "seq": seq,
        "team_state": state,
        "agents": [team_pb2.AgentSpec(name="a")],
        "pending_agents": [team_pb2.AgentSpec(name="b")],
        "turns": seq,
        "usage": chat_pb2.Usage(input_tokens=10 * seq, output_tokens=seq),
        "message_count": seq,
        "speakers": ["a", "b"],
        "last_message": f"message {seq}",
    }
    values.update(kw)
    return Checkpoint(**values)


async def append(
    stub: UserStub, run_id: str, seqs: range, cp: run_pb2.RunCheckpoint | None = None, **kw: Any
) -> pb.AppendRunEventsResponse:
    return await stub.AppendRunEvents(
        Batch(run_id=run_id, events=[text_event(s) for s in seqs], checkpoint=cp, **kw)
    )


async def latest(history: History, run: run_pb2.Run) -> pb.ClaimRunResponse:
    """Claim the run (as a new owner would) to read its checkpoint."""
    current = await history.system().GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    req = pb.ClaimRunRequest(
        run_id=run.id, owner_instance="orch-z", lease_epoch=current.run.lease_epoch
    )
    req.stale_after.CopyFrom(MICROSECOND)
    return await history.system().ClaimRun(req)


async def seqs_of(stub: UserStub, run_id: str) -> list[int]:
    resp = await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id))
    return [e.seq for e in resp.events]


async def checkpoint_rows(settings: Settings, run_id: str) -> list[tuple[int, bytes]]:
    """The run's rows of `run_checkpoints`, read from the database directly."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            found = await conn.fetch(
                "SELECT seq, checkpoint FROM run_checkpoints WHERE run_id = $1", run_id
            )
        finally:
            await conn.close()
        return [(r[0], bytes(r[1])) for r in found]
    with sqlite3.connect(settings.sqlite_path) as db:
        found = db.execute(
            "SELECT seq, checkpoint FROM run_checkpoints WHERE run_id = ?", (run_id,)
        ).fetchall()
    return [(r[0], bytes(r[1])) for r in found]


async def test_a_checkpoint_comes_back_whole_from_claim_run(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    sent = checkpoint(3)
    resp = await append(alice, run.id, range(1, 4), sent, lease_epoch=1)
    assert resp.last_seq == 3
    claimed = await latest(history, run)
    assert claimed.checkpoint == sent
    assert claimed.run.lease_epoch == 2
    assert await checkpoint_rows(settings, run.id) == [(3, sent.SerializeToString())]


async def test_a_run_without_a_checkpoint_is_claimed_without_one(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, range(1, 3))
    assert not (await latest(history, run)).HasField("checkpoint")


async def test_each_checkpoint_replaces_the_last_and_only_the_latest_is_kept(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, range(1, 3), checkpoint(2))
    await append(alice, run.id, range(3, 4))  # events without a checkpoint keep it
    assert (await latest(history, run)).checkpoint == checkpoint(2)
    await append(alice, run.id, range(4, 6), checkpoint(5, team_state=b'{"v": 2}'))
    assert (await latest(history, run)).checkpoint == checkpoint(5, team_state=b'{"v": 2}')
    assert [seq for seq, _ in await checkpoint_rows(settings, run.id)] == [5]


async def test_a_late_retry_of_an_earlier_append_does_not_roll_the_checkpoint_back(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, range(1, 3), checkpoint(2))
    await append(alice, run.id, range(3, 5), checkpoint(4))
    resp = await append(alice, run.id, range(1, 3), checkpoint(2))  # exact repeat: accepted
    assert resp.last_seq == 4
    assert (await latest(history, run)).checkpoint == checkpoint(4)


async def test_a_checkpoint_may_cover_events_stored_by_earlier_appends(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, range(1, 6))
    await append(alice, run.id, range(5, 6), checkpoint(5))  # a repeat of seq 5
    assert (await latest(history, run)).checkpoint.seq == 5


async def test_a_rejected_append_stores_no_checkpoint(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, range(1, 3), checkpoint(2))
    # A gap (seq 5 after 2), a conflicting repeat, a stale epoch: each refused whole.
    refused = {
        "SEQ_GAP": append(alice, run.id, range(5, 6), checkpoint(5)),
        "SEQ_CONFLICT": alice.AppendRunEvents(
            Batch(run_id=run.id, events=[text_event(2, "other")], checkpoint=checkpoint(2))
        ),
        "LEASE_LOST": append(alice, run.id, range(3, 4), checkpoint(3), lease_epoch=7),
    }
    for reason, call in refused.items():
        err = await rpc_error(call)
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert await seqs_of(alice, run.id) == [1, 2]
    assert [seq for seq, _ in await checkpoint_rows(settings, run.id)] == [2]
    assert (await latest(history, run)).checkpoint == checkpoint(2)


async def test_a_checkpoint_beyond_the_runs_last_seq_is_invalid_and_nothing_is_stored(
    history: History, settings: Settings, alice: UserStub
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, range(1, 3))
    err = await rpc_error(append(alice, run.id, range(3, 5), checkpoint(5)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"checkpoint.seq"}
    assert await seqs_of(alice, run.id) == [1, 2]  # the events were not stored either
    assert await checkpoint_rows(settings, run.id) == []
    record = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert record.run.last_seq == 2


async def test_a_checkpoint_in_an_event_batches_call_rejects_only_its_batch(
    settings: Settings, alice: UserStub
) -> None:
    a, b = await new_run(alice), await new_run(alice)
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[
                Batch(run_id=a.id, events=[text_event(1)], checkpoint=checkpoint(1)),
                Batch(run_id=b.id, events=[text_event(1)]),
            ]
        )
    )
    assert [r.WhichOneof("result") for r in resp.results] == ["error", "last_seq"]
    error = resp.results[0].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert fields_of(from_status(error)) == {"checkpoint"}
    assert await seqs_of(alice, a.id) == []
    assert await seqs_of(alice, b.id) == [1]
    assert await checkpoint_rows(settings, a.id) == []


async def test_bad_checkpoint_fields_are_invalid_argument(alice: UserStub) -> None:
    run = await new_run(alice)
    bad = Checkpoint(
        seq=-1,
        turns=-2,
        message_count=-3,
        usage=chat_pb2.Usage(input_tokens=-1),
    )
    err = await rpc_error(append(alice, run.id, range(1, 2), bad))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {
        "checkpoint.seq",
        "checkpoint.turns",
        "checkpoint.message_count",
        "checkpoint.usage.input_tokens",
    }
    assert await seqs_of(alice, run.id) == []


async def test_a_team_state_over_16_mib_is_invalid_argument(settings: Settings) -> None:
    # The gRPC limit (CHORUS_MAX_MESSAGE_BYTES, 16 MiB) would refuse the message before
    # the handler: raised for this test, so the contract's own limit answers.
    roomy = settings.model_copy(update={"max_message_bytes": 20 * MIB})
    async with running_history(roomy) as history:
        alice = history.as_user("alice-big")
        run = await new_run(alice)
        err = await rpc_error(
            append(alice, run.id, range(1, 2), checkpoint(1, team_state=b"x" * (16 * MIB + 1)))
        )
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert fields_of(err) == {"checkpoint.team_state"}
        assert await seqs_of(alice, run.id) == []
        # exactly 16 MiB is accepted
        big = checkpoint(1, team_state=b"x" * (16 * MIB))
        await append(alice, run.id, range(1, 2), big)
        assert await checkpoint_rows(roomy, run.id) == [(1, big.SerializeToString())]
