"""Log before show (docs/architecture.md §4): the live event log that
WatchRunEvents follows gets a batch only after the database committed it — on every path
that publishes (RecordRunStart in both its forms, AppendRunEvents with a record update and
a checkpoint, AppendRunEventBatches), on both back ends.

Each publish is checked at the moment it happens, from a separate database connection,
which sees committed rows only.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence

import asyncpg
from history_helpers import History, UserStub, new_run, run_spec, text_event

from chorus.history.cache import RunWrites
from chorus.history.settings import Settings
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

Batch = pb.AppendRunEventsRequest


async def committed(settings: Settings, run_id: str) -> tuple[list[int], int | None]:
    """`(the run's event seqs, its checkpoint's seq)` as committed, read on a new connection."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            found = await conn.fetch(
                "SELECT seq FROM run_events WHERE run_id = $1 ORDER BY seq", run_id
            )
            cp = await conn.fetchval("SELECT seq FROM run_checkpoints WHERE run_id = $1", run_id)
        finally:
            await conn.close()
        return [r[0] for r in found], cp
    with sqlite3.connect(settings.sqlite_path) as db:
        found = db.execute(
            "SELECT seq FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
        cp_row = db.execute(
            "SELECT seq FROM run_checkpoints WHERE run_id = ?", (run_id,)
        ).fetchone()
    return [r[0] for r in found], None if cp_row is None else cp_row[0]


class CommitChecker:
    """Wraps the app's event log: at every publish, what is published must be committed."""

    def __init__(self, history: History, settings: Settings) -> None:
        # by (run id, first seq): the in-process log's publish_many calls publish
        self._seen: dict[tuple[str, int], tuple[str, list[int], int | None]] = {}
        log = history.app.event_log
        publish, publish_many = log.publish, log.publish_many

        async def check(run_id: str, first_seq: int, count: int) -> None:
            seqs, cp = await committed(settings, run_id)
            wanted = list(range(first_seq, first_seq + count))
            assert set(wanted) <= set(seqs), f"published {wanted} before commit ({seqs})"
            self._seen[run_id, first_seq] = (run_id, wanted, cp)

        async def checked_publish(run_id: str, first_seq: int, payloads: Sequence[bytes]) -> None:
            await check(run_id, first_seq, len(payloads))
            await publish(run_id, first_seq, payloads)

        async def checked_many(
            batches: Sequence[tuple[str, int, Sequence[bytes]]], writes: RunWrites | None = None
        ) -> None:
            for run_id, first_seq, payloads in batches:
                await check(run_id, first_seq, len(payloads))
            await publish_many(batches, writes)

        log.publish = checked_publish  # type: ignore[method-assign]
        log.publish_many = checked_many  # type: ignore[method-assign]

    @property
    def seen(self) -> list[tuple[str, list[int], int | None]]:
        """`(run id, seqs, committed checkpoint seq)` per publish, in order."""
        return list(self._seen.values())


def started(seq: int = 1) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(seq=seq, run_started=run_pb2.RunEvent.RunStarted())


async def test_every_publishing_path_publishes_only_committed_events(
    history: History, settings: Settings, alice: UserStub
) -> None:
    checker = CommitChecker(history, settings)

    # RecordRunStart creating its conversation (PostgreSQL: one statement).
    conversation_id = str(uuid.uuid4())
    first = await alice.RecordRunStart(
        pb.RecordRunStartRequest(
            conversation=conversation_pb2.Conversation(id=conversation_id),
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation_id,
                spec=run_spec(),
                status=run_pb2.RUN_STATUS_RUNNING,
            ),
            events=[started(), text_event(2)],
        )
    )
    # AppendRunEvents with a record update and a checkpoint (ends the run).
    await alice.AppendRunEvents(
        Batch(
            run_id=first.run.id,
            events=[text_event(3)],
            lease_epoch=1,
            run=run_pb2.Run(status=run_pb2.RUN_STATUS_COMPLETED),
            update_mask={"paths": ["status"]},
            checkpoint=run_pb2.RunCheckpoint(seq=3, team_state=b"{}"),
        )
    )
    # RecordRunStart joining the conversation with a request id (the transaction).
    second = await alice.RecordRunStart(
        pb.RecordRunStartRequest(
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation_id,
                spec=run_spec(request_id="log-after-commit"),
                status=run_pb2.RUN_STATUS_RUNNING,
            ),
            events=[started()],
        )
    )
    # AppendRunEventBatches over two runs.
    other = await new_run(alice)
    await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[
                Batch(run_id=second.run.id, events=[text_event(2), text_event(3)]),
                Batch(run_id=other.id, events=[text_event(1)], lease_epoch=1),
            ]
        )
    )
    await history.app.servicer.drain()  # a delta batch's publish follows its answer

    assert [(run_id, seqs) for run_id, seqs, _ in checker.seen] == [
        (first.run.id, [1, 2]),
        (first.run.id, [3]),
        (second.run.id, [1]),
        (second.run.id, [2, 3]),
        (other.id, [1]),
    ]
    # The checkpoint was committed with the events it came with, before their publish.
    assert checker.seen[1][2] == 3
