"""PostgreSQL's `runs.lease_epoch` column mirrors `Run.lease_epoch` in the record after
every write path, and AppendRunEventBatches' one-statement path relies on it for the
lease fence (migration 0003; issue 18). A write path that forgot the column would let a
stale owner's batch through that path: these tests pin both."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from history_helpers import History, UserStub, new_run, text_event

from chorus.history.stores.postgres import PostgresStore
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

Batch = pb.AppendRunEventsRequest
STALE_NOW = Duration(nanos=1000)  # any lease is older than 1 µs


async def column_and_record(pg: asyncpg.Connection, run_id: str) -> tuple[int, int]:
    row = await pg.fetchrow("SELECT lease_epoch, record FROM runs WHERE id = $1", run_id)
    return row[0], run_pb2.Run.FromString(row[1]).lease_epoch


async def test_the_column_follows_the_record_on_every_write_path(
    pg_history: History, pg: asyncpg.Connection
) -> None:
    alice, system = pg_history.as_user("lease-column"), pg_history.system()
    # RecordRun
    run = await new_run(alice)
    assert await column_and_record(pg, run.id) == (1, 1)
    # RecordRunStart in a new conversation (one statement) and in an existing one
    conversation_id = str(uuid.uuid4())
    started = await alice.RecordRunStart(
        pb.RecordRunStartRequest(
            conversation=conversation_pb2.Conversation(id=conversation_id),
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation_id,
                spec=run_pb2.RunSpec(template="duet", input="hi"),
                status=run_pb2.RUN_STATUS_RUNNING,
            ),
            events=[run_pb2.RunEvent(seq=1, run_started=run_pb2.RunEvent.RunStarted())],
        )
    )
    assert await column_and_record(pg, started.run.id) == (1, 1)
    # ClaimRun (epoch 2), then ReleaseRun, then another claim (epoch 3)
    for instance, epoch in (("orch-b", 1), ("orch-c", 2)):
        claimed = await system.ClaimRun(
            pb.ClaimRunRequest(
                run_id=run.id, owner_instance=instance, lease_epoch=epoch, stale_after=STALE_NOW
            )
        )
        assert await column_and_record(pg, run.id) == (epoch + 1, epoch + 1)
        released = await system.ReleaseRun(
            pb.ReleaseRunRequest(run_id=run.id, lease_epoch=claimed.run.lease_epoch)
        )
        assert await column_and_record(pg, run.id) == (released.run.lease_epoch,) * 2
    # AppendRunEvents with a record update keeps it
    await alice.AppendRunEvents(
        Batch(
            run_id=run.id,
            events=[text_event(1)],
            lease_epoch=3,
            run=run_pb2.Run(turns=1),
            update_mask={"paths": ["turns"]},
        )
    )
    assert await column_and_record(pg, run.id) == (3, 3)


async def test_a_stale_owner_never_passes_the_one_statement_path(
    pg_history: History, pg: asyncpg.Connection
) -> None:
    alice, system = pg_history.as_user("lease-column-stale"), pg_history.system()
    run = await new_run(alice)
    await system.ClaimRun(
        pb.ClaimRunRequest(
            run_id=run.id, owner_instance="orch-b", lease_epoch=1, stale_after=STALE_NOW
        )
    )
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[Batch(run_id=run.id, events=[text_event(1)], lease_epoch=1)]
        )
    )
    assert resp.results[0].WhichOneof("result") == "error"
    assert await pg.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", run.id) == 0


async def test_a_continuing_batch_takes_one_statement_and_others_the_transaction(
    pg_history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice: UserStub = pg_history.as_user("lease-column-path")
    checked: list[list[str]] = []
    original = PostgresStore._append_batches_checked

    async def spy(self: PostgresStore, conn, batches, owner):  # type: ignore[no-untyped-def]
        checked.append([item.run_id for item in batches])
        return await original(self, conn, batches, owner)

    monkeypatch.setattr(PostgresStore, "_append_batches_checked", spy)
    first, second = await new_run(alice), await new_run(alice)
    request = pb.AppendRunEventBatchesRequest(
        batches=[
            Batch(run_id=first.id, events=[text_event(1), text_event(2)], lease_epoch=1),
            Batch(run_id=second.id, events=[text_event(1)]),
        ]
    )
    resp = await alice.AppendRunEventBatches(request)
    assert [r.last_seq for r in resp.results] == [2, 1]
    assert checked == []  # both continued their (empty) logs: one statement
    # the same call again is a repeat after a lost answer: the transaction recognises it
    resp = await alice.AppendRunEventBatches(request)
    assert [r.last_seq for r in resp.results] == [2, 1]
    assert checked == [[first.id, second.id]]
    # a gap is refused by the transaction, with its reason
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(batches=[Batch(run_id=first.id, events=[text_event(9)])])
    )
    assert resp.results[0].WhichOneof("result") == "error"
    assert checked[-1] == [first.id]


async def test_a_continuing_append_with_a_checkpoint_takes_one_statement(
    pg_history: History, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, system = pg_history.as_user("lease-column-checkpoint"), pg_history.system()
    transactions: list[str] = []
    original = PostgresStore._transaction

    def spy(self: PostgresStore):  # type: ignore[no-untyped-def]
        transactions.append("begin")
        return original(self)

    monkeypatch.setattr(PostgresStore, "_transaction", spy)
    run = await new_run(alice)
    transactions.clear()  # (RecordRun's)
    point = run_pb2.RunCheckpoint(seq=2, turns=1)
    request = Batch(
        run_id=run.id, events=[text_event(1), text_event(2)], lease_epoch=1, checkpoint=point
    )
    assert (await alice.AppendRunEvents(request)).last_seq == 2
    assert transactions == []  # events, log end and checkpoint: one statement
    row = await pg.fetchrow("SELECT seq, checkpoint FROM run_checkpoints WHERE run_id = $1", run.id)
    assert row[0] == 2 and run_pb2.RunCheckpoint.FromString(row[1]) == point
    # a repeat after a lost answer: the transaction recognises it
    assert (await alice.AppendRunEvents(request)).last_seq == 2
    assert transactions == ["begin"]
    # a stale owner's append with a checkpoint never passes the statement: nothing written
    await system.ClaimRun(
        pb.ClaimRunRequest(
            run_id=run.id, owner_instance="orch-b", lease_epoch=1, stale_after=STALE_NOW
        )
    )
    stale = Batch(
        run_id=run.id,
        events=[text_event(3)],
        lease_epoch=1,
        checkpoint=run_pb2.RunCheckpoint(seq=3, turns=2),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await alice.AppendRunEvents(stale)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await pg.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", run.id) == 2
    assert await pg.fetchval("SELECT seq FROM run_checkpoints WHERE run_id = $1", run.id) == 2


async def test_a_run_end_takes_one_write_unless_the_row_changed_under_it(
    pg_history: History, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = pg_history.as_user("lease-column-end")
    transactions: list[str] = []
    original = PostgresStore._transaction

    def spy(self: PostgresStore):  # type: ignore[no-untyped-def]
        transactions.append("begin")
        return original(self)

    monkeypatch.setattr(PostgresStore, "_transaction", spy)

    def end(run_id: str) -> pb.AppendRunEventsRequest:
        return Batch(
            run_id=run_id,
            events=[text_event(1)],
            lease_epoch=1,
            run=run_pb2.Run(status=run_pb2.RUN_STATUS_COMPLETED, last_seq=1, final_answer="ok"),
            update_mask={"paths": ["status", "last_seq", "final_answer"]},
        )

    run = await new_run(alice)
    transactions.clear()  # (RecordRun's)
    ended = (await alice.AppendRunEvents(end(run.id))).run
    assert transactions == []  # read, then one compare-and-set statement: no transaction
    assert ended.status == run_pb2.RUN_STATUS_COMPLETED and ended.last_seq == 1
    stored = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert stored.run == ended
    assert await pg.fetchval("SELECT event_seq FROM runs WHERE id = $1", run.id) == 1

    # A writer changes the record between the read and the write: the statement writes
    # nothing and the transaction merges the end into the changed record.
    other = await new_run(alice)
    transactions.clear()
    row = await pg.fetchrow("SELECT record FROM runs WHERE id = $1", other.id)
    record = run_pb2.Run.FromString(row[0])
    record.owner_instance = "orch-z"  # a heartbeat's change, made after the read below
    read = PostgresStore._append_updating

    async def read_then_race(self, run_id, owner, batch, update, lease_epoch):  # type: ignore[no-untyped-def]
        fetchrow = asyncpg.Connection.fetchrow

        async def then_write(conn, sql, *args, **kw):  # type: ignore[no-untyped-def]
            found = await fetchrow(conn, sql, *args, **kw)
            await pg.execute(
                "UPDATE runs SET record = $2, owner_instance = 'orch-z' WHERE id = $1",
                run_id,
                record.SerializeToString(),
            )
            return found

        monkeypatch.setattr(asyncpg.Connection, "fetchrow", then_write)
        try:
            return await read(self, run_id, owner, batch, update, lease_epoch)
        finally:
            monkeypatch.setattr(asyncpg.Connection, "fetchrow", fetchrow)

    monkeypatch.setattr(PostgresStore, "_append_updating", read_then_race)
    ended = (await alice.AppendRunEvents(end(other.id))).run
    assert transactions == ["begin"]  # the compare-and-set found the row changed
    assert ended.status == run_pb2.RUN_STATUS_COMPLETED
    assert ended.owner_instance == "orch-z"  # the concurrent change is kept, not lost
    assert await pg.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", other.id) == 1
