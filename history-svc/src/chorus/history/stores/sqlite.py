"""SQLite store (aiosqlite), the embedded default when no database URL is configured.

One connection in WAL mode, used by one coroutine at a time (an asyncio lock), and every
read-then-write inside `BEGIN IMMEDIATE`, which takes SQLite's write lock up front: the same
all-or-nothing and per-run/per-conversation serialization as the PostgreSQL store, also
against another process sharing the file (busy timeout 5 s). Times are integer µs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from chorus.core.errors import ChorusError
from chorus.history import events as event_rules
from chorus.history import runs as run_rules
from chorus.history.events import Batch
from chorus.history.settings import Settings
from chorus.history.stores import rows
from chorus.history.stores.base import (
    INPUT_ANSWERS_KIND,
    AppendedEvents,
    AppendedMessages,
    BatchOutcome,
    Checkpoint,
    ClaimedRun,
    EventWrite,
    RecordedInput,
    RunFilter,
    RunUpdate,
    StartedRun,
    Store,
    answer_on_row,
    conversation_busy,
    conversation_exists,
    conversation_not_found,
    database_unavailable,
    input_batch,
    run_exists,
    run_not_found,
)
from chorus.history.timeutil import ts_to_us
from chorus.v1 import conversation_pb2, run_pb2

_C = rows.CONVERSATION_COLUMNS
_M = rows.MESSAGE_COLUMNS


def _times(value: Any) -> int | None:
    return value  # type: ignore[no-any-return]


_UPDATE_RUN = (
    "UPDATE runs SET status = ?2, turns = ?3, final_answer = ?4, error = ?5, "
    "cancellation = ?6, usage = ?7, owner_instance = ?8, heartbeat_time = ?9, "
    "start_time = ?10, end_time = ?11, update_time = ?12, last_seq = ?13, "
    "record = ?14, pending_input = ?15 WHERE id = ?1"
)
"""Writes every updatable column of a run record; arguments from `_update_args`."""


_PUT_CHECKPOINT = (
    "INSERT INTO run_checkpoints (run_id, seq, checkpoint, update_time) "
    "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, "
    "checkpoint = excluded.checkpoint, update_time = excluded.update_time "
    "WHERE run_checkpoints.seq <= excluded.seq"
)
"""Replaces a run's checkpoint (only the latest is kept) unless the stored one covers more
(a late retry of an earlier append must not roll it back)."""


def _update_args(run: run_pb2.Run) -> tuple[Any, ...]:
    cols = rows.run_columns(run)
    return (
        run.id, cols["status"], cols["turns"], cols["final_answer"], cols["error"],
        cols["cancellation"], cols["usage"], cols["owner_instance"], cols["heartbeat_time"],
        cols["start_time"], cols["end_time"], cols["update_time"], cols["last_seq"],
        cols["record"], cols["pending_input"],
    )  # fmt: skip


class SqliteStore(Store):
    """`Store` on one SQLite file.

    Args:
        conn: an open aiosqlite connection (autocommit mode) on a migrated database.
    """

    kind = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._db = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: Settings) -> SqliteStore:
        """Open `settings.sqlite_path` (created with its directory when missing)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(settings.sqlite_path, isolation_level=None)
        for pragma in (
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
            "PRAGMA busy_timeout = 5000",
        ):
            await conn.execute(pragma)
        return cls(conn)

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def _use(self, write: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, exclusively; with `write`, inside a transaction that commits on
        success and rolls back on any exception — cancellation included: a caller that
        goes away mid-call (its client was killed) never leaves the one connection inside
        a transaction, which would fail every later write ("cannot start a transaction
        within a transaction")."""
        async with self._lock:
            try:
                if not write:
                    yield self._db
                    return
                try:
                    await self._settle("BEGIN IMMEDIATE")
                except asyncio.CancelledError:
                    if self._db.in_transaction:
                        await self._settle("ROLLBACK")
                    raise
                try:
                    yield self._db
                except BaseException:
                    await self._settle("ROLLBACK")
                    raise
                await self._settle("COMMIT")
            except sqlite3.OperationalError as exc:
                if self.on_unavailable is not None:
                    self.on_unavailable()
                raise database_unavailable(self.kind, exc) from exc

    async def _settle(self, sql: str) -> None:
        """Run a transaction-control statement to its end even when the caller is cancelled
        meanwhile (aiosqlite runs it on its thread either way): then CancelledError is
        raised after it, with the connection's transaction state known."""
        done = asyncio.ensure_future(self._db.execute(sql))
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await asyncio.wait({done})
            raise

    async def _one(self, db: aiosqlite.Connection, sql: str, *args: Any) -> Any:
        async with db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, db: aiosqlite.Connection, sql: str, *args: Any) -> list[Any]:
        async with db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def ping(self) -> None:
        async with self._use() as db:
            await self._one(db, "SELECT 1")

    # Conversations and messages

    async def create_conversation(
        self, conversation: conversation_pb2.Conversation, request_id: str
    ) -> tuple[conversation_pb2.Conversation, bool]:
        async with self._use(write=True) as db:
            if request_id:
                row = await self._one(
                    db,
                    f"SELECT {_C} FROM conversations WHERE owner = ?1 AND request_id = ?2",
                    conversation.owner,
                    request_id,
                )
                if row is not None:
                    return rows.conversation(row, _times), False
            row = await self._insert_conversation(db, conversation, request_id)
        return rows.conversation(row, _times), True

    async def _insert_conversation(
        self, db: aiosqlite.Connection, c: conversation_pb2.Conversation, request_id: str
    ) -> Any:
        """Insert a conversation (in the caller's transaction); its row."""
        provider, model, team, metadata = rows.conversation_params(c)
        return await self._one(
            db,
            f"INSERT INTO conversations (id, owner, title, model_provider, model_name, team, "
            f"metadata, message_count, request_id, create_time, update_time) "
            f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?9) RETURNING {_C}",
            c.id, c.owner, c.title, provider, model, team, metadata,
            request_id or None, ts_to_us(c.create_time),
        )  # fmt: skip

    async def get_conversation(
        self, conversation_id: str, owner: str | None
    ) -> conversation_pb2.Conversation | None:
        async with self._use() as db:
            row = await self._one(
                db,
                f"SELECT {_C} FROM conversations WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                conversation_id,
                owner,
            )
        return None if row is None else rows.conversation(row, _times)

    async def list_conversations(
        self, owner: str, limit: int, after: tuple[int, str] | None
    ) -> list[conversation_pb2.Conversation]:
        async with self._use() as db:
            if after is None:
                found = await self._all(
                    db,
                    f"SELECT {_C} FROM conversations WHERE owner = ?1 "
                    f"ORDER BY update_time DESC, id DESC LIMIT ?2",
                    owner,
                    limit,
                )
            else:
                found = await self._all(
                    db,
                    f"SELECT {_C} FROM conversations WHERE owner = ?1 "
                    f"AND (update_time, id) < (?2, ?3) ORDER BY update_time DESC, id DESC LIMIT ?4",
                    owner,
                    after[0],
                    after[1],
                    limit,
                )
        return [rows.conversation(r, _times) for r in found]

    async def update_conversation(
        self,
        conversation_id: str,
        owner: str | None,
        values: conversation_pb2.Conversation,
        paths: set[str],
        now_us: int,
    ) -> conversation_pb2.Conversation | None:
        provider, model, team, metadata = rows.conversation_params(values)
        async with self._use(write=True) as db:
            row = await self._one(
                db,
                f"UPDATE conversations SET "
                f"title = CASE WHEN ?3 THEN ?4 ELSE title END, "
                f"model_provider = CASE WHEN ?5 THEN ?6 ELSE model_provider END, "
                f"model_name = CASE WHEN ?5 THEN ?7 ELSE model_name END, "
                f"team = CASE WHEN ?8 THEN ?9 ELSE team END, "
                f"metadata = CASE WHEN ?10 THEN ?11 ELSE metadata END, "
                f"update_time = max(update_time + 1, ?12) "
                f"WHERE id = ?1 AND (?2 IS NULL OR owner = ?2) RETURNING {_C}",
                conversation_id, owner,
                "title" in paths, values.title,
                "model" in paths, provider, model,
                "team" in paths, team,
                "metadata" in paths, metadata,
                now_us,
            )  # fmt: skip
        return None if row is None else rows.conversation(row, _times)

    async def delete_conversation(
        self, conversation_id: str, owner: str | None
    ) -> list[str] | None:
        async with self._use(write=True) as db:  # BEGIN IMMEDIATE: no writer in between
            row = await self._one(
                db,
                "DELETE FROM conversations WHERE id = ?1 AND (?2 IS NULL OR owner = ?2) RETURNING id",
                conversation_id,
                owner,
            )
            if row is None:
                return None
            # run_events and run_checkpoints go with their runs (ON DELETE CASCADE).
            deleted = await self._all(
                db, "DELETE FROM runs WHERE conversation_id = ?1 RETURNING id", conversation_id
            )
        return [r[0] for r in deleted]

    async def conversation_run_ids(self, conversation_id: str) -> list[str]:
        async with self._use() as db:
            found = await self._all(
                db, "SELECT id FROM runs WHERE conversation_id = ?1", conversation_id
            )
        return [r[0] for r in found]

    async def append_messages(
        self,
        conversation_id: str,
        owner: str | None,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages | None:
        async with self._use(write=True) as db:
            row = await self._conversation_row(db, conversation_id, owner)
            if row is None:
                return None
            return await self._append_messages(db, row, messages, now_us)

    async def _conversation_row(
        self, db: aiosqlite.Connection, conversation_id: str, owner: str | None
    ) -> Any:
        """The conversation's row; None when missing or another owner's."""
        return await self._one(
            db,
            f"SELECT {_C} FROM conversations WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
            conversation_id,
            owner,
        )

    async def _append_messages(
        self,
        db: aiosqlite.Connection,
        conversation: Any,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages:
        """`append_messages` inside the caller's transaction, `conversation` being the row
        (`_conversation_row`, or just inserted)."""
        conversation_id, count = conversation[0], conversation[7]
        client_ids = [m.client_message_id for m in messages if m.client_message_id]
        stored: dict[str, conversation_pb2.Message] = {}
        if client_ids and count:  # an empty conversation has none stored
            marks = ", ".join("?" for _ in client_ids)
            for row in await self._all(
                db,
                f"SELECT {_M} FROM messages WHERE conversation_id = ? "
                f"AND client_message_id IN ({marks})",
                conversation_id,
                *client_ids,
            ):
                msg = rows.message(row, _times)
                stored[msg.client_message_id] = msg
        added = rows.number_new_messages(messages, stored, conversation_id, count, now_us)
        row = conversation
        if added:
            await db.executemany(
                f"INSERT INTO messages ({_M}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [rows.message_params(m) for m in added],
            )
            row = await self._one(
                db,
                f"UPDATE conversations SET message_count = ?2, update_time = max(update_time + 1, ?3) "
                f"WHERE id = ?1 RETURNING {_C}",
                conversation_id,
                count + len(added),
                now_us,
            )
        conv = rows.conversation(row, _times)
        return AppendedMessages(conv, rows.in_request_order(messages, stored, added), added)

    async def list_messages(
        self,
        conversation_id: str,
        owner: str | None,
        after_position: int,
        limit: int,
        run_id: str = "",
    ) -> list[conversation_pb2.Message] | None:
        async with self._use() as db:
            exists = await self._one(
                db,
                "SELECT 1 FROM conversations WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                conversation_id,
                owner,
            )
            if exists is None:
                return None
            return await self._messages_after(db, conversation_id, after_position, limit, run_id)

    async def _messages_after(
        self,
        db: aiosqlite.Connection,
        conversation_id: str,
        after_position: int,
        limit: int,
        run_id: str = "",
    ) -> list[conversation_pb2.Message]:
        """Up to `limit` messages after `after_position`, oldest first (only `run_id`'s)."""
        if run_id:
            found = await self._all(
                db,
                f"SELECT {_M} FROM messages WHERE conversation_id = ?1 AND run_id = ?2 "
                f"AND position > ?3 ORDER BY position LIMIT ?4",
                conversation_id,
                run_id,
                after_position,
                limit,
            )
        else:
            found = await self._all(
                db,
                f"SELECT {_M} FROM messages WHERE conversation_id = ?1 AND position > ?2 "
                f"ORDER BY position LIMIT ?3",
                conversation_id,
                after_position,
                limit,
            )
        return [rows.message(r, _times) for r in found]

    # Run records

    async def _run_by_request_id(
        self, db: aiosqlite.Connection, owner: str, request_id: str
    ) -> run_pb2.Run | None:
        """The owner's run created with `request_id`; None when there is none (or no key)."""
        if not request_id:
            return None
        row = await self._one(
            db,
            "SELECT record, last_seq FROM runs WHERE owner = ?1 AND request_id = ?2",
            owner,
            request_id,
        )
        return None if row is None else rows.run(row)

    async def _insert_run(self, db: aiosqlite.Connection, new: run_pb2.Run) -> None:
        """Insert a run record (`runs.prepare_new`), in the caller's transaction.

        Raises:
            Aborted: CONVERSATION_BUSY, the run is active and its conversation has an
                active run.
        """
        if new.status in run_rules.ACTIVE:
            active = await self._one(
                db,
                f"SELECT id FROM runs WHERE conversation_id = ?1 "
                f"AND status IN ({rows.ACTIVE_STATUSES})",
                new.conversation_id,
            )
            if active is not None:
                raise conversation_busy(new.conversation_id, active[0])
        cols = rows.run_columns(new)
        await db.execute(
            "INSERT INTO runs (id, owner, conversation_id, status, request_id, input, turns, "
            "final_answer, error, cancellation, usage, owner_instance, heartbeat_time, "
            "create_time, start_time, end_time, update_time, last_seq, record, pending_input) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, "
            "0, ?18, ?19)",
            (
                new.id, new.owner, new.conversation_id, cols["status"],
                new.spec.request_id or None, cols["input"], cols["turns"], cols["final_answer"],
                cols["error"], cols["cancellation"], cols["usage"], cols["owner_instance"],
                cols["heartbeat_time"], cols["create_time"], cols["start_time"],
                cols["end_time"], cols["update_time"], cols["record"], cols["pending_input"],
            ),
        )  # fmt: skip

    async def record_run(
        self, values: run_pb2.Run, paths: set[str], owner: str, is_system: bool, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        async with self._use(write=True) as db:
            row = await self._one(
                db, "SELECT owner, record, last_seq FROM runs WHERE id = ?1", values.id
            )
            if row is not None:
                if not is_system and row[0] != owner:
                    raise run_not_found(values.id)
                merged = run_rules.apply_update(rows.run(row[1:]), values, paths, now_us)
                await db.execute(_UPDATE_RUN, _update_args(merged))
                return merged, False
            if not values.HasField("spec") or not values.conversation_id:
                raise run_not_found(values.id, creating_hint=True)
            earlier = await self._run_by_request_id(db, owner, values.spec.request_id)
            if earlier is not None:
                return earlier, False
            conv = await self._one(
                db, "SELECT owner FROM conversations WHERE id = ?1", values.conversation_id
            )
            if conv is None or (conv[0] != owner and not is_system):
                raise conversation_not_found(values.conversation_id)
            new = run_rules.prepare_new(values, owner, now_us)
            await self._insert_run(db, new)
            return new, True

    async def record_heartbeats(
        self, beats: Sequence[run_pb2.Run], owner: str | None, now_us: int
    ) -> list[tuple[run_pb2.Run, bool] | None]:
        async with self._use(write=True) as db:
            stored: dict[str, run_pb2.Run] = {}
            ids = [b.id for b in beats]
            for start in range(0, len(ids), 500):  # under SQLite's host-parameter limit
                chunk = ids[start : start + 500]
                found = await self._all(
                    db,
                    "SELECT id, record, last_seq FROM runs "
                    f"WHERE id IN ({','.join('?' * len(chunk))}) AND (? IS NULL OR owner = ?)",
                    *chunk,
                    owner,
                    owner,
                )
                stored.update((r[0], rows.run(r[1:])) for r in found)
            outcomes = run_rules.apply_heartbeats(beats, stored, now_us)
            updated = [o[0] for o in outcomes if o is not None and o[1]]
            if updated:
                await db.executemany(_UPDATE_RUN, [_update_args(r) for r in updated])
        return outcomes

    async def claim_run(
        self,
        run_id: str,
        owner_instance: str,
        lease_epoch: int,
        stale_after_us: int,
        now_us: int,
    ) -> ClaimedRun:
        async with self._use(write=True) as db:
            row = await self._one(
                db, "SELECT record, last_seq, events_ended FROM runs WHERE id = ?1", run_id
            )
            if row is None:
                raise run_not_found(run_id)
            run = run_rules.claim(
                rows.run(row), bool(row[2]), owner_instance, lease_epoch, stale_after_us, now_us
            )
            await db.execute(_UPDATE_RUN, _update_args(run))
            found = await self._one(
                db, "SELECT checkpoint FROM run_checkpoints WHERE run_id = ?1", run_id
            )
        return ClaimedRun(run, None if found is None else bytes(found[0]))

    async def release_run(
        self, run_id: str, lease_epoch: int, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        async with self._use(write=True) as db:
            row = await self._one(
                db, "SELECT record, last_seq, events_ended FROM runs WHERE id = ?1", run_id
            )
            if row is None:
                raise run_not_found(run_id)
            stored = rows.run(row)
            released = run_rules.release(stored, bool(row[2]), lease_epoch, now_us)
            if released is None:
                return stored, False
            await db.execute(_UPDATE_RUN, _update_args(released))
        return released, True

    async def record_input(
        self,
        run_id: str,
        owner: str | None,
        answer: run_pb2.RunEvent.InputReceived,
        now_us: int,
    ) -> RecordedInput:
        async with self._use(write=True) as db:  # BEGIN IMMEDIATE: the writer lock
            row = await self._one(
                db,
                "SELECT owner, event_seq, events_ended, record, last_seq FROM runs WHERE id = ?1",
                run_id,
            )
            answers = await self._all(
                db,
                "SELECT event FROM run_events WHERE run_id = ?1 AND kind = ?2 ORDER BY seq",
                run_id,
                INPUT_ANSWERS_KIND,
            )
            answered = answer_on_row(run_id, owner, row, [r[0] for r in answers], answer, now_us)
            if not answered.new:
                return RecordedInput(answered.run, answered.event, [])
            _, new = await self._append_events(
                db, run_id, row[1], bool(row[2]), input_batch(answered)
            )
            await db.execute(_UPDATE_RUN, _update_args(answered.run))
            checkpoint = await self._one(
                db, "SELECT checkpoint FROM run_checkpoints WHERE run_id = ?1", run_id
            )
            if checkpoint is not None:
                await db.execute(
                    "UPDATE run_checkpoints SET seq = ?2, checkpoint = ?3, update_time = ?4 "
                    "WHERE run_id = ?1",
                    (
                        run_id,
                        answered.event.seq,
                        run_rules.moved_checkpoint(bytes(checkpoint[0]), answered.event.seq),
                        now_us,
                    ),
                )
        return RecordedInput(answered.run, answered.event, new)

    async def delete_run(self, run_id: str, owner: str | None) -> bool:
        async with self._use(write=True) as db:
            # run_events and run_checkpoints go with the row (ON DELETE CASCADE).
            row = await self._one(
                db,
                "DELETE FROM runs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2) RETURNING id",
                run_id,
                owner,
            )
        return row is not None

    async def get_run(self, run_id: str, owner: str | None) -> run_pb2.Run | None:
        async with self._use() as db:
            row = await self._one(
                db,
                "SELECT record, last_seq FROM runs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                run_id,
                owner,
            )
        return None if row is None else rows.run(row)

    async def list_runs(
        self, where: RunFilter, limit: int, after: tuple[int, str] | None
    ) -> list[run_pb2.Run]:
        conditions: list[str] = []
        args: list[Any] = []
        if where.owner is not None:
            conditions.append("owner = ?")
            args.append(where.owner)
        if where.conversation_id:
            conditions.append("conversation_id = ?")
            args.append(where.conversation_id)
        if where.status:
            conditions.append("status = ?")
            args.append(where.status)
        if where.heartbeat_before_us is not None:
            conditions.append("coalesce(heartbeat_time, create_time) < ?")
            args.append(where.heartbeat_before_us)
        if after is not None:
            conditions.append("(create_time, id) < (?, ?)")
            args.extend(after)
        sql = "SELECT record, last_seq FROM runs"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += " ORDER BY create_time DESC, id DESC LIMIT ?"
        args.append(limit)
        async with self._use() as db:
            found = await self._all(db, sql, *args)
        return [rows.run(r) for r in found]

    # Run events

    async def append_events(
        self,
        run_id: str,
        owner: str | None,
        batch: Batch,
        update: RunUpdate | None = None,
        *,
        lease_epoch: int = 0,
        checkpoint: Checkpoint | None = None,
    ) -> AppendedEvents:
        async with self._use(write=True) as db:
            row = await self._one(
                db,
                "SELECT owner, event_seq, events_ended, record, last_seq FROM runs WHERE id = ?1",
                run_id,
            )
            if row is None or (owner is not None and row[0] != owner):
                raise run_not_found(run_id)
            run = rows.run(row[3:])
            run_rules.check_lease(run, lease_epoch)  # under BEGIN IMMEDIATE's write lock
            stored_last = row[1]
            first_new, new = await self._append_events(db, run_id, stored_last, bool(row[2]), batch)
            run.last_seq = max(run.last_seq, batch.last_seq)
            if checkpoint is not None:
                event_rules.check_checkpoint(
                    checkpoint.seq, max(stored_last, batch.last_seq), run_id
                )
                await db.execute(
                    _PUT_CHECKPOINT, (run_id, checkpoint.seq, checkpoint.data, checkpoint.now_us)
                )
            if update is not None:
                run = run_rules.apply_update(run, update.values, update.paths, update.now_us)
                await db.execute(_UPDATE_RUN, _update_args(run))
        return AppendedEvents(max(stored_last, batch.last_seq), first_new, new, run)

    async def _append_events(
        self, db: aiosqlite.Connection, run_id: str, stored_last: int, ended: bool, batch: Batch
    ) -> tuple[int, list[bytes]]:
        """`append_events` inside the caller's transaction, the run's `event_seq` being
        `stored_last` and `ended` its `events_ended`. Returns `(first new seq, new payloads)`."""
        repeated = event_rules.overlap(stored_last, batch, run_id)
        if repeated:
            stored = await self._all(
                db,
                "SELECT event FROM run_events WHERE run_id = ?1 AND seq >= ?2 AND seq <= ?3 "
                "ORDER BY seq",
                run_id,
                batch.first_seq,
                batch.first_seq + repeated - 1,
            )
            event_rules.check_repeat([r[0] for r in stored], batch, run_id)
        new = batch.payloads[repeated:]
        event_rules.check_open(ended, len(new), run_id, stored_last)
        first_new = batch.first_seq + repeated
        if new:
            await db.executemany(
                "INSERT INTO run_events (run_id, seq, kind, event) VALUES (?, ?, ?, ?)",
                [
                    (run_id, first_new + i, kind, data)
                    for i, (kind, data) in enumerate(zip(batch.kinds[repeated:], new, strict=True))
                ],
            )
            await db.execute(
                "UPDATE runs SET event_seq = ?2, events_ended = ?3, "
                "last_seq = max(last_seq, ?2) WHERE id = ?1",
                (run_id, batch.last_seq, batch.ends_run),
            )
        return first_new, new

    async def append_event_batches(
        self, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        outcomes: list[BatchOutcome] = []
        inserts: list[tuple[str, int, str, bytes]] = []
        updates: list[tuple[str, int, bool]] = []
        async with self._use(write=True) as db:
            by_id: dict[str, Any] = {}
            ids = [item.run_id for item in batches]
            for start in range(0, len(ids), 500):  # under SQLite's host-parameter limit
                chunk = ids[start : start + 500]
                found = await self._all(
                    db,
                    "SELECT id, owner, event_seq, events_ended, record, last_seq FROM runs "
                    f"WHERE id IN ({','.join('?' * len(chunk))})",
                    *chunk,
                )
                by_id.update((r[0], r) for r in found)
            for item in batches:
                run_id, batch = item.run_id, item.batch
                row = by_id.get(run_id)
                try:
                    if row is None or (owner is not None and row[1] != owner):
                        raise run_not_found(run_id)
                    run = rows.run(row[4:])
                    run_rules.check_lease(run, item.lease_epoch)
                    stored_last, ended = row[2], bool(row[3])
                    repeated = event_rules.overlap(stored_last, batch, run_id)
                    if repeated:
                        stored = await self._all(
                            db,
                            "SELECT event FROM run_events WHERE run_id = ?1 AND seq >= ?2 "
                            "AND seq <= ?3 ORDER BY seq",
                            run_id,
                            batch.first_seq,
                            batch.first_seq + repeated - 1,
                        )
                        event_rules.check_repeat([r[0] for r in stored], batch, run_id)
                    event_rules.check_open(
                        ended, len(batch.payloads) - repeated, run_id, stored_last
                    )
                except ChorusError as exc:
                    outcomes.append(exc)
                    continue
                new = batch.payloads[repeated:]
                first_new = batch.first_seq + repeated
                if new:
                    inserts.extend(
                        (run_id, first_new + i, kind, data)
                        for i, (kind, data) in enumerate(
                            zip(batch.kinds[repeated:], new, strict=True)
                        )
                    )
                    updates.append((run_id, batch.last_seq, batch.ends_run))
                run.last_seq = max(run.last_seq, batch.last_seq)
                outcomes.append(
                    AppendedEvents(max(stored_last, batch.last_seq), first_new, new, run)
                )
            if inserts:
                await db.executemany(
                    "INSERT INTO run_events (run_id, seq, kind, event) VALUES (?, ?, ?, ?)",
                    inserts,
                )
                await db.executemany(
                    "UPDATE runs SET event_seq = ?2, events_ended = ?3, "
                    "last_seq = max(last_seq, ?2) WHERE id = ?1",
                    updates,
                )
        return outcomes

    async def event_log_state(self, run_id: str) -> tuple[int, bool] | None:
        async with self._use() as db:
            row = await self._one(
                db, "SELECT event_seq, events_ended FROM runs WHERE id = ?1", run_id
            )
        return None if row is None else (row[0], bool(row[1]))

    async def list_events(
        self,
        run_id: str,
        after_seq: int,
        limit: int,
        until_seq: int | None = None,
        kinds: Sequence[str] = (),
    ) -> list[tuple[int, bytes]]:
        kind_filter = ""
        if kinds:
            kind_filter = f" AND kind IN ({','.join('?' * len(kinds))})"
        async with self._use() as db:
            found = await self._all(
                db,
                "SELECT seq, event FROM run_events WHERE run_id = ? AND seq > ? "
                f"AND seq <= ?{kind_filter} ORDER BY seq LIMIT ?",
                run_id,
                after_seq,
                until_seq if until_seq is not None else 2**62,
                *kinds,
                limit,
            )
        return [(r[0], r[1]) for r in found]

    # Run start

    async def record_run_start(
        self,
        run: run_pb2.Run,
        conversation: conversation_pb2.Conversation | None,
        messages: Sequence[conversation_pb2.Message],
        events: Batch | None,
        recent_count: int,
        owner: str,
        is_system: bool,
        now_us: int,
    ) -> StartedRun:
        async with self._use(write=True) as db:
            earlier = await self._run_by_request_id(db, owner, run.spec.request_id)
            if earlier is not None:
                return StartedRun(earlier, False)
            if conversation is not None:
                if await self._one(
                    db, "SELECT 1 FROM conversations WHERE id = ?1", run.conversation_id
                ):
                    raise conversation_exists(run.conversation_id)
                conv = await self._insert_conversation(db, conversation, "")
            else:
                conv = await self._conversation_row(
                    db, run.conversation_id, None if is_system else owner
                )
                if conv is None:
                    raise conversation_not_found(run.conversation_id)
            if await self._one(db, "SELECT 1 FROM runs WHERE id = ?1", run.id):
                raise run_exists(run.id)
            new = run_rules.prepare_new(run, owner, now_us)
            await self._insert_run(db, new)
            count = conv[7]
            recent: list[conversation_pb2.Message] = []
            if recent_count and count:
                recent = await self._messages_after(
                    db, run.conversation_id, max(0, count - recent_count), recent_count
                )
            if messages:
                appended = await self._append_messages(db, conv, messages, now_us)
            else:
                appended = AppendedMessages(rows.conversation(conv, _times), [], [])
            payloads: list[bytes] = []
            if events is not None:
                _, payloads = await self._append_events(db, new.id, 0, False, events)
                new.last_seq = events.last_seq
        return StartedRun(
            new, True, appended.conversation, appended.messages, appended.added, recent, payloads
        )
