"""PostgreSQL store (asyncpg pool). Every statement is parameterized.

Writes that read-then-write lock the parent row (`SELECT … FOR UPDATE` on the conversation
or run) inside one transaction, so concurrent appenders are serialized per conversation or
run and never interleave. Two common cases are one statement each instead: a run start in
a new conversation (nothing to lock: the conversation is inserted) and an append of new
messages (the conversation's `UPDATE` takes the row lock). Uniqueness that must hold across
rows (one active run per conversation, idempotency keys) is enforced by unique indexes
(see migrations/postgres/).
Connection failures become UNAVAILABLE (reason DATABASE_UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg

from chorus.core.errors import Aborted, ChorusError
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
from chorus.history.timeutil import datetime_to_us, ts_to_us, us_to_datetime
from chorus.v1 import conversation_pb2, run_pb2

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)
"""Exceptions meaning "the database cannot be reached right now"."""

_C = rows.CONVERSATION_COLUMNS
_M = rows.MESSAGE_COLUMNS
_times = datetime_to_us


class PostgresStore(Store):
    """`Store` on PostgreSQL.

    Args:
        pool: an asyncpg pool on a migrated database.
        acquire_timeout_s: seconds to wait for a pooled connection (or a new one).
    """

    kind = "postgresql"

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout_s

    @classmethod
    async def connect(cls, settings: Settings) -> PostgresStore:
        """Open the pool (`db_pool_min_size` connections up front).

        Raises:
            Unavailable: the database cannot be reached.
        """
        try:
            pool = await asyncpg.create_pool(
                dsn=settings.database_url,
                min_size=settings.db_pool_min_size,
                max_size=settings.db_pool_max_size,
                timeout=settings.db_connect_timeout_s,
                command_timeout=settings.db_command_timeout_s,
                server_settings={"application_name": f"chorus-history {settings.instance_id}"},
                connection_class=_StatelessConnection,
            )
        except CONNECTION_ERRORS as exc:
            raise database_unavailable(cls.kind, exc) from exc
        return cls(pool, settings.db_command_timeout_s)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except (TimeoutError, *CONNECTION_ERRORS):
            self._pool.terminate()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            if self.on_unavailable is not None:
                self.on_unavailable()
            raise database_unavailable(self.kind, exc) from exc

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1", timeout=self._acquire_timeout)

    # Conversations and messages

    async def create_conversation(
        self, conversation: conversation_pb2.Conversation, request_id: str
    ) -> tuple[conversation_pb2.Conversation, bool]:
        async with self._conn() as conn:
            row = await self._insert_conversation(conn, conversation, request_id)
            if row is not None:
                return rows.conversation(row, _times), True
            row = await conn.fetchrow(
                f"SELECT {_C} FROM conversations WHERE owner = $1 AND request_id = $2",
                conversation.owner,
                request_id,
            )
        return rows.conversation(row, _times), False

    @staticmethod
    async def _insert_conversation(
        conn: asyncpg.Connection, c: conversation_pb2.Conversation, request_id: str
    ) -> asyncpg.Record | None:
        """Insert a conversation; its row, or None when the owner's `request_id` is used.
        An existing id raises `UniqueViolationError` (`conversations_pkey`)."""
        provider, model, team, metadata = rows.conversation_params(c)
        return await conn.fetchrow(
            f"INSERT INTO conversations (id, owner, title, model_provider, model_name, team, "
            f"metadata, message_count, request_id, create_time, update_time) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9) "
            f"ON CONFLICT (owner, request_id) WHERE request_id IS NOT NULL DO NOTHING "
            f"RETURNING {_C}",
            c.id, c.owner, c.title, provider, model, team, metadata,
            request_id or None, us_to_datetime(ts_to_us(c.create_time)),
        )  # fmt: skip

    async def get_conversation(
        self, conversation_id: str, owner: str | None
    ) -> conversation_pb2.Conversation | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_C} FROM conversations WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                conversation_id,
                owner,
            )
        return None if row is None else rows.conversation(row, _times)

    async def list_conversations(
        self, owner: str, limit: int, after: tuple[int, str] | None
    ) -> list[conversation_pb2.Conversation]:
        async with self._conn() as conn:
            if after is None:
                found = await conn.fetch(
                    f"SELECT {_C} FROM conversations WHERE owner = $1 "
                    f"ORDER BY update_time DESC, id DESC LIMIT $2",
                    owner,
                    limit,
                )
            else:
                found = await conn.fetch(
                    f"SELECT {_C} FROM conversations WHERE owner = $1 "
                    f"AND (update_time, id) < ($2, $3::uuid) "
                    f"ORDER BY update_time DESC, id DESC LIMIT $4",
                    owner,
                    us_to_datetime(after[0]),
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
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE conversations SET "
                f"title = CASE WHEN $3 THEN $4 ELSE title END, "
                f"model_provider = CASE WHEN $5 THEN $6 ELSE model_provider END, "
                f"model_name = CASE WHEN $5 THEN $7 ELSE model_name END, "
                f"team = CASE WHEN $8 THEN $9 ELSE team END, "
                f"metadata = CASE WHEN $10 THEN $11::jsonb ELSE metadata END, "
                f"update_time = GREATEST(update_time + interval '1 microsecond', $12) "
                f"WHERE id = $1 AND ($2::text IS NULL OR owner = $2) RETURNING {_C}",
                conversation_id, owner,
                "title" in paths, values.title,
                "model" in paths, provider, model,
                "team" in paths, team,
                "metadata" in paths, metadata,
                us_to_datetime(now_us),
            )  # fmt: skip
        return None if row is None else rows.conversation(row, _times)

    async def delete_conversation(
        self, conversation_id: str, owner: str | None
    ) -> list[str] | None:
        async with self._conn() as conn, conn.transaction():
            # The row lock first: a run start in this conversation (which locks it too)
            # commits before us — and its run is deleted below — or finds it gone.
            if await self._lock_conversation(conn, conversation_id, owner) is None:
                return None
            # run_events and run_checkpoints go with their runs (ON DELETE CASCADE).
            deleted = await conn.fetch(
                "DELETE FROM runs WHERE conversation_id = $1 RETURNING id::text", conversation_id
            )
            await conn.execute("DELETE FROM conversations WHERE id = $1", conversation_id)
        return [r[0] for r in deleted]

    async def conversation_run_ids(self, conversation_id: str) -> list[str]:
        async with self._conn() as conn:
            found = await conn.fetch(
                "SELECT id::text FROM runs WHERE conversation_id = $1", conversation_id
            )
        return [r[0] for r in found]

    async def append_messages(
        self,
        conversation_id: str,
        owner: str | None,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages | None:
        appended = await self._append_new_messages(conversation_id, owner, messages, now_us)
        if appended is not None:
            return appended
        async with self._conn() as conn, conn.transaction():
            row = await self._lock_conversation(conn, conversation_id, owner)
            if row is None:
                return None
            return await self._append_messages(conn, row, messages, now_us)

    async def _append_new_messages(
        self,
        conversation_id: str,
        owner: str | None,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages | None:
        """`append_messages` when none of `messages` is stored yet (the usual case: a
        repeat is a retry) as one statement (`_APPEND_NEW_MESSAGES`) — one round trip
        instead of a transaction of six. None when it did not apply (the conversation is
        missing or another owner's, a client message id is stored already, or a
        concurrent append stored one first): the caller then takes the transaction, which
        tells those cases apart."""
        # Positions 1…n here; the statement adds the count before the append.
        added = rows.number_new_messages(messages, {}, conversation_id, 0, now_us)
        if not added:
            return None
        columns = list(zip(*map(_pg_message, added), strict=True))
        client_ids = [m.client_message_id for m in messages if m.client_message_id]
        try:
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    _APPEND_NEW_MESSAGES,
                    conversation_id,
                    owner,
                    len(added),
                    us_to_datetime(now_us),
                    client_ids,
                    *(list(columns[i]) for i in (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)),
                )
        except asyncpg.UniqueViolationError:
            return None  # a concurrent append stored one of the client message ids
        if row is None:
            return None
        before = row[7] - len(added)
        for msg in added:
            msg.position += before
        return AppendedMessages(rows.conversation(row, _times), list(added), added)

    @staticmethod
    async def _lock_conversation(
        conn: asyncpg.Connection, conversation_id: str, owner: str | None
    ) -> asyncpg.Record | None:
        """The conversation's row, locked until the transaction ends; None when missing or
        another owner's."""
        return await conn.fetchrow(
            f"SELECT {_C} FROM conversations "
            f"WHERE id = $1 AND ($2::text IS NULL OR owner = $2) FOR UPDATE",
            conversation_id,
            owner,
        )

    @staticmethod
    async def _append_messages(
        conn: asyncpg.Connection,
        conversation: asyncpg.Record,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages:
        """`append_messages` inside the caller's transaction, `conversation` being the
        locked row (`_lock_conversation`, or just inserted)."""
        conversation_id, count = str(conversation[0]), conversation[7]
        client_ids = [m.client_message_id for m in messages if m.client_message_id]
        stored: dict[str, conversation_pb2.Message] = {}
        if client_ids and count:  # an empty conversation has none stored
            for row in await conn.fetch(
                f"SELECT {_M} FROM messages WHERE conversation_id = $1 "
                f"AND client_message_id = ANY($2::text[])",
                conversation_id,
                client_ids,
            ):
                msg = rows.message(row, _times)
                stored[msg.client_message_id] = msg
        added = rows.number_new_messages(messages, stored, conversation_id, count, now_us)
        row = conversation
        if added:
            await conn.executemany(
                f"INSERT INTO messages ({_M}) VALUES "
                f"($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                [_pg_message(m) for m in added],
            )
            row = await conn.fetchrow(
                f"UPDATE conversations SET message_count = $2, "
                f"update_time = GREATEST(update_time + interval '1 microsecond', $3) "
                f"WHERE id = $1 RETURNING {_C}",
                conversation_id,
                count + len(added),
                us_to_datetime(now_us),
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
        async with self._conn() as conn:
            exists = await conn.fetchval(
                "SELECT 1 FROM conversations WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                conversation_id,
                owner,
            )
            if exists is None:
                return None
            return await self._messages_after(conn, conversation_id, after_position, limit, run_id)

    @staticmethod
    async def _messages_after(
        conn: asyncpg.Connection,
        conversation_id: str,
        after_position: int,
        limit: int,
        run_id: str = "",
    ) -> list[conversation_pb2.Message]:
        """Up to `limit` messages after `after_position`, oldest first (only `run_id`'s)."""
        if run_id:
            found = await conn.fetch(
                f"SELECT {_M} FROM messages WHERE conversation_id = $1 AND run_id = $2 "
                f"AND position > $3 ORDER BY position LIMIT $4",
                conversation_id,
                run_id,
                after_position,
                limit,
            )
        else:
            found = await conn.fetch(
                f"SELECT {_M} FROM messages WHERE conversation_id = $1 "
                f"AND position > $2 ORDER BY position LIMIT $3",
                conversation_id,
                after_position,
                limit,
            )
        return [rows.message(r, _times) for r in found]

    # Run records

    async def record_run(
        self, values: run_pb2.Run, paths: set[str], owner: str, is_system: bool, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        for _ in range(3):  # a concurrent create of the same id or key: read it again
            try:
                return await self._record_run(values, paths, owner, is_system, now_us)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "runs_one_active_per_conversation":
                    raise await self._conversation_busy(values.conversation_id) from None
                if exc.constraint_name not in ("runs_pkey", "runs_owner_request_id"):
                    raise
        raise RuntimeError("run record kept changing under concurrent creates")

    async def _conversation_busy(self, conversation_id: str) -> Aborted:
        """CONVERSATION_BUSY naming the conversation's active run (after a create hit the
        one-active-run index and its transaction rolled back)."""
        async with self._conn() as conn:
            active = await conn.fetchval(
                f"SELECT id FROM runs WHERE conversation_id = $1 "
                f"AND status IN ({rows.ACTIVE_STATUSES})",
                conversation_id,
            )
        return conversation_busy(conversation_id, str(active or ""))

    @staticmethod
    async def _run_by_request_id(
        conn: asyncpg.Connection, owner: str, request_id: str
    ) -> run_pb2.Run | None:
        """The owner's run created with `request_id`; None when there is none (or no key)."""
        if not request_id:
            return None
        row = await conn.fetchrow(
            "SELECT record, last_seq FROM runs WHERE owner = $1 AND request_id = $2",
            owner,
            request_id,
        )
        return None if row is None else rows.run(row)

    @staticmethod
    async def _insert_run(conn: asyncpg.Connection, new: run_pb2.Run) -> None:
        """Insert a run record (`runs.prepare_new`). An existing id, request id or active run
        of the conversation raises `UniqueViolationError` (`runs_pkey`,
        `runs_owner_request_id`, `runs_one_active_per_conversation`)."""
        cols = rows.run_columns(new)
        await conn.execute(
            "INSERT INTO runs (id, owner, conversation_id, status, request_id, input, turns, "
            "final_answer, error, cancellation, usage, owner_instance, heartbeat_time, "
            "create_time, start_time, end_time, update_time, last_seq, record, lease_epoch, "
            "pending_input) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
            "$15, $16, $17, 0, $18, $19, $20)",
            new.id, new.owner, new.conversation_id, cols["status"], new.spec.request_id or None,
            cols["input"], cols["turns"], cols["final_answer"], cols["error"],
            cols["cancellation"], cols["usage"], cols["owner_instance"],
            *(us_to_datetime(cols[k]) for k in ("heartbeat_time", "create_time", "start_time", "end_time", "update_time")),
            cols["record"], cols["lease_epoch"], cols["pending_input"],
        )  # fmt: skip

    async def _record_run(
        self, values: run_pb2.Run, paths: set[str], owner: str, is_system: bool, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT owner, record, last_seq FROM runs WHERE id = $1 FOR UPDATE", values.id
            )
            if row is not None:
                if not is_system and row[0] != owner:
                    raise run_not_found(values.id)
                stored = rows.run(row[1:])
                merged = run_rules.apply_update(stored, values, paths, now_us)
                await conn.execute(_UPDATE_RUN, *_update_args(merged))
                return merged, False
            if not values.HasField("spec") or not values.conversation_id:
                raise run_not_found(values.id, creating_hint=True)
            earlier = await self._run_by_request_id(conn, owner, values.spec.request_id)
            if earlier is not None:
                return earlier, False
            # FOR SHARE: a concurrent DeleteConversation (which locks the row) commits
            # first and the run is refused, or waits for this run and deletes it too.
            conv_owner = await conn.fetchval(
                "SELECT owner FROM conversations WHERE id = $1 FOR SHARE", values.conversation_id
            )
            if conv_owner is None or (conv_owner != owner and not is_system):
                raise conversation_not_found(values.conversation_id)
            new = run_rules.prepare_new(values, owner, now_us)
            await self._insert_run(conn, new)
            return new, True

    async def record_heartbeats(
        self, beats: Sequence[run_pb2.Run], owner: str | None, now_us: int
    ) -> list[tuple[run_pb2.Run, bool] | None]:
        async with self._conn() as conn, conn.transaction():
            # Lock the call's runs in id order, so two calls never deadlock.
            found = await conn.fetch(
                "SELECT id::text, record, last_seq FROM runs WHERE id = ANY($1::uuid[]) "
                "AND ($2::text IS NULL OR owner = $2) ORDER BY id FOR UPDATE",
                sorted(b.id for b in beats),
                owner,
            )
            stored = {r[0]: rows.run(r[1:]) for r in found}
            outcomes = run_rules.apply_heartbeats(beats, stored, now_us)
            updated = [o[0] for o in outcomes if o is not None and o[1]]
            if updated:
                await conn.executemany(_UPDATE_RUN, [_update_args(r) for r in updated])
        return outcomes

    async def claim_run(
        self,
        run_id: str,
        owner_instance: str,
        lease_epoch: int,
        stale_after_us: int,
        now_us: int,
    ) -> ClaimedRun:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT record, last_seq, events_ended FROM runs WHERE id = $1 FOR UPDATE",
                run_id,
            )
            if row is None:
                raise run_not_found(run_id)
            run = run_rules.claim(
                rows.run(row), row[2], owner_instance, lease_epoch, stale_after_us, now_us
            )
            # One round trip: the update, and the checkpoint read by a statement that
            # starts after the lock was taken (so it sees the last append's checkpoint).
            checkpoint = await conn.fetchval(
                f"WITH claimed AS ({_UPDATE_RUN}) "
                f"SELECT checkpoint FROM run_checkpoints WHERE run_id = $1",
                *_update_args(run),
            )
        return ClaimedRun(run, checkpoint)

    async def release_run(
        self, run_id: str, lease_epoch: int, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT record, last_seq, events_ended FROM runs WHERE id = $1 FOR UPDATE",
                run_id,
            )
            if row is None:
                raise run_not_found(run_id)
            stored = rows.run(row)
            released = run_rules.release(stored, row[2], lease_epoch, now_us)
            if released is None:
                return stored, False
            await conn.execute(_UPDATE_RUN, *_update_args(released))
        return released, True

    async def record_input(
        self,
        run_id: str,
        owner: str | None,
        answer: run_pb2.RunEvent.InputReceived,
        now_us: int,
    ) -> RecordedInput:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT owner, event_seq, events_ended, record, last_seq FROM runs "
                "WHERE id = $1 FOR UPDATE",
                run_id,
            )
            answers = await conn.fetch(
                "SELECT event FROM run_events WHERE run_id = $1 AND kind = $2 ORDER BY seq",
                run_id,
                INPUT_ANSWERS_KIND,
            )
            answered = answer_on_row(run_id, owner, row, [r[0] for r in answers], answer, now_us)
            if not answered.new:
                return RecordedInput(answered.run, answered.event, [])
            _, new = await self._append_events(conn, run_id, row[1], row[2], input_batch(answered))
            await conn.execute(_UPDATE_RUN, *_update_args(answered.run))
            checkpoint = await conn.fetchval(
                "SELECT checkpoint FROM run_checkpoints WHERE run_id = $1", run_id
            )
            if checkpoint is not None:
                await conn.execute(
                    "UPDATE run_checkpoints SET seq = $2, checkpoint = $3, update_time = $4 "
                    "WHERE run_id = $1",
                    run_id,
                    answered.event.seq,
                    run_rules.moved_checkpoint(checkpoint, answered.event.seq),
                    us_to_datetime(now_us),
                )
        return RecordedInput(answered.run, answered.event, new)

    async def delete_run(self, run_id: str, owner: str | None) -> bool:
        async with self._conn() as conn:
            # One statement: the row lock serializes it with the run's writers, and
            # run_events and run_checkpoints go with the row (ON DELETE CASCADE).
            status = await conn.execute(
                "DELETE FROM runs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                run_id,
                owner,
            )
        return bool(status.endswith(" 1"))

    async def get_run(self, run_id: str, owner: str | None) -> run_pb2.Run | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT record, last_seq FROM runs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                run_id,
                owner,
            )
        return None if row is None else rows.run(row)

    async def list_runs(
        self, where: RunFilter, limit: int, after: tuple[int, str] | None
    ) -> list[run_pb2.Run]:
        conditions: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if where.owner is not None:
            conditions.append(f"owner = {arg(where.owner)}")
        if where.conversation_id:
            conditions.append(f"conversation_id = {arg(where.conversation_id)}")
        if where.status:
            conditions.append(f"status = {arg(where.status)}")
        if where.heartbeat_before_us is not None:
            conditions.append(
                f"coalesce(heartbeat_time, create_time) < {arg(us_to_datetime(where.heartbeat_before_us))}"
            )
        if after is not None:
            conditions.append(
                f"(create_time, id) < ({arg(us_to_datetime(after[0]))}, {arg(after[1])}::uuid)"
            )
        sql = "SELECT record, last_seq FROM runs"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY create_time DESC, id DESC LIMIT {arg(limit)}"
        async with self._conn() as conn:
            found = await conn.fetch(sql, *args)
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
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT owner, event_seq, events_ended, record, last_seq FROM runs "
                "WHERE id = $1 FOR UPDATE",
                run_id,
            )
            if row is None or (owner is not None and row[0] != owner):
                raise run_not_found(run_id)
            run = rows.run(row[3:])
            # The fence: the epoch is in the row locked above, so no claim can move it
            # until this transaction ends.
            run_rules.check_lease(run, lease_epoch)
            stored_last = row[1]
            first_new, new = await self._append_events(conn, run_id, stored_last, row[2], batch)
            run.last_seq = max(run.last_seq, batch.last_seq)
            if checkpoint is not None:
                event_rules.check_checkpoint(
                    checkpoint.seq, max(stored_last, batch.last_seq), run_id
                )
                await conn.execute(
                    _PUT_CHECKPOINT,
                    run_id,
                    checkpoint.seq,
                    checkpoint.data,
                    us_to_datetime(checkpoint.now_us),
                )
            if update is not None:
                run = run_rules.apply_update(run, update.values, update.paths, update.now_us)
                await conn.execute(_UPDATE_RUN, *_update_args(run))
        return AppendedEvents(max(stored_last, batch.last_seq), first_new, new, run)

    @staticmethod
    async def _append_events(
        conn: asyncpg.Connection, run_id: str, stored_last: int, ended: bool, batch: Batch
    ) -> tuple[int, list[bytes]]:
        """`append_events` inside the caller's transaction, the run's row being locked (or
        just inserted) with `stored_last` (its `event_seq`) and `ended`. Returns
        `(first new seq, new payloads)`."""
        repeated = event_rules.overlap(stored_last, batch, run_id)
        if repeated:
            stored = await conn.fetch(
                "SELECT event FROM run_events WHERE run_id = $1 AND seq >= $2 AND seq <= $3 "
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
            # one round trip: the insert runs as a data-modifying CTE of the update
            await conn.execute(
                "WITH inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
                "SELECT $1, s, k, e FROM unnest($2::bigint[], $3::text[], $4::bytea[]) "
                "AS t(s, k, e)) "
                "UPDATE runs SET event_seq = $5, events_ended = $6, "
                "last_seq = GREATEST(last_seq, $5) WHERE id = $1",
                run_id,
                list(range(first_new, batch.last_seq + 1)),
                batch.kinds[repeated:],
                new,
                batch.last_seq,
                batch.ends_run,
            )
        return first_new, new

    async def append_event_batches(
        self, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        """See `Store.append_event_batches`. The batches that continue their run where its
        stored log ends (the common case: a writer's next deltas) go in one statement
        (`_APPEND_CONTINUING`: one round trip, no transaction of four); the others — a
        repeat after a lost answer, a gap, a lost lease, an ended or unknown run — then go
        through the transaction that applies every rule and explains a refusal."""
        outcomes: list[BatchOutcome | None] = [None] * len(batches)
        async with self._conn() as conn:
            try:
                appended = await self._append_continuing(conn, batches, owner)
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                appended = {}  # nothing of the statement was written: the transaction decides
            rest: list[int] = []
            for i, item in enumerate(batches):
                row = appended.get(item.run_id)
                if row is None:
                    rest.append(i)
                    continue
                batch = item.batch
                outcomes[i] = AppendedEvents(row, batch.first_seq, list(batch.payloads), None)
            if rest:
                checked = await self._append_batches_checked(
                    conn, [batches[i] for i in rest], owner
                )
                for i, outcome in zip(rest, checked, strict=True):
                    outcomes[i] = outcome
        assert None not in outcomes  # every batch took one path or the other
        return cast(list[BatchOutcome], outcomes)

    @staticmethod
    async def _append_continuing(
        conn: asyncpg.Connection, batches: Sequence[EventWrite], owner: str | None
    ) -> dict[str, int]:
        """Store, in one statement, each batch whose run is `owner`'s, open, fenced by the
        batch's lease epoch (0: unfenced) and stored exactly up to the batch's first seq;
        returns those runs' new `last_seq` by id. The others are left untouched."""
        run_ids: list[str] = []
        seqs: list[int] = []
        kinds: list[str] = []
        payloads: list[bytes] = []
        for item in batches:
            batch = item.batch
            run_ids.extend([item.run_id] * len(batch.payloads))
            seqs.extend(range(batch.first_seq, batch.last_seq + 1))
            kinds.extend(batch.kinds)
            payloads.extend(batch.payloads)
        found = await conn.fetch(
            _APPEND_CONTINUING,
            [item.run_id for item in batches],
            [item.batch.first_seq for item in batches],
            [item.batch.last_seq for item in batches],
            [item.lease_epoch for item in batches],
            [item.batch.ends_run for item in batches],
            owner,
            run_ids,
            seqs,
            kinds,
            payloads,
        )
        return {row[0]: row[1] for row in found}

    async def _append_batches_checked(
        self, conn: asyncpg.Connection, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        """`append_event_batches` in a transaction that locks the runs and applies every
        rule of `chorus.history.events` and `chorus.history.runs` per batch."""
        outcomes: list[BatchOutcome] = []
        run_ids: list[str] = []
        seqs: list[int] = []
        kinds: list[str] = []
        payloads: list[bytes] = []
        ends: dict[str, tuple[int, bool]] = {}
        async with conn.transaction():
            # Lock every run of the call in id order, so two calls never deadlock.
            found = await conn.fetch(
                "SELECT id::text, owner, event_seq, events_ended, record, last_seq FROM runs "
                "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                sorted(item.run_id for item in batches),
            )
            by_id = {r[0]: r for r in found}
            for item in batches:
                run_id, batch = item.run_id, item.batch
                row = by_id.get(run_id)
                try:
                    if row is None or (owner is not None and row[1] != owner):
                        raise run_not_found(run_id)
                    run = rows.run(row[4:])
                    run_rules.check_lease(run, item.lease_epoch)
                    stored_last, ended = row[2], row[3]
                    repeated = event_rules.overlap(stored_last, batch, run_id)
                    if repeated:
                        stored = await conn.fetch(
                            "SELECT event FROM run_events WHERE run_id = $1 AND seq >= $2 "
                            "AND seq <= $3 ORDER BY seq",
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
                    run_ids.extend([run_id] * len(new))
                    seqs.extend(range(first_new, batch.last_seq + 1))
                    kinds.extend(batch.kinds[repeated:])
                    payloads.extend(new)
                    ends[run_id] = (batch.last_seq, batch.ends_run)
                run.last_seq = max(run.last_seq, batch.last_seq)
                outcomes.append(
                    AppendedEvents(max(stored_last, batch.last_seq), first_new, new, run)
                )
            if payloads:
                # one round trip for every run: the insert is a data-modifying CTE
                await conn.execute(
                    "WITH inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
                    "SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[])) "
                    "UPDATE runs SET event_seq = t.s, events_ended = t.e, "
                    "last_seq = GREATEST(runs.last_seq, t.s) "
                    "FROM unnest($5::uuid[], $6::bigint[], $7::boolean[]) AS t(i, s, e) "
                    "WHERE runs.id = t.i",
                    run_ids,
                    seqs,
                    kinds,
                    payloads,
                    list(ends),
                    [end[0] for end in ends.values()],
                    [end[1] for end in ends.values()],
                )
        return outcomes

    async def event_log_state(self, run_id: str) -> tuple[int, bool] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT event_seq, events_ended FROM runs WHERE id = $1", run_id
            )
        return None if row is None else (row[0], row[1])

    async def list_events(
        self,
        run_id: str,
        after_seq: int,
        limit: int,
        until_seq: int | None = None,
        kinds: Sequence[str] = (),
    ) -> list[tuple[int, bytes]]:
        async with self._conn() as conn:
            if kinds:
                found = await conn.fetch(
                    "SELECT seq, event FROM run_events WHERE run_id = $1 AND seq > $2 "
                    "AND seq <= $3 AND kind = ANY($4::text[]) ORDER BY seq LIMIT $5",
                    run_id,
                    after_seq,
                    until_seq if until_seq is not None else 2**63 - 1,
                    list(kinds),
                    limit,
                )
            elif until_seq is None:
                found = await conn.fetch(
                    "SELECT seq, event FROM run_events WHERE run_id = $1 AND seq > $2 "
                    "ORDER BY seq LIMIT $3",
                    run_id,
                    after_seq,
                    limit,
                )
            else:
                found = await conn.fetch(
                    "SELECT seq, event FROM run_events WHERE run_id = $1 AND seq > $2 "
                    "AND seq <= $3 ORDER BY seq LIMIT $4",
                    run_id,
                    after_seq,
                    until_seq,
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
        # With a request id, a unique violation may be a concurrent start of the same request
        # (the same run or conversation id, or the same key): one more try returns its run.
        attempts = 2 if run.spec.request_id else 1
        for attempt in range(attempts):
            try:
                return await self._record_run_start(
                    run, conversation, messages, events, recent_count, owner, is_system, now_us
                )
            except asyncpg.UniqueViolationError as exc:
                if attempt + 1 < attempts:
                    continue
                if exc.constraint_name == "runs_one_active_per_conversation":
                    raise await self._conversation_busy(run.conversation_id) from None
                if exc.constraint_name == "runs_pkey":
                    raise run_exists(run.id) from None
                if exc.constraint_name == "conversations_pkey":
                    raise conversation_exists(run.conversation_id) from None
                raise
        raise AssertionError("unreachable")

    async def _record_run_start(
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
        if conversation is not None and not run.spec.request_id:
            return await self._start_in_new_conversation(
                run, conversation, messages, events, owner, now_us
            )
        async with self._conn() as conn, conn.transaction():
            earlier = await self._run_by_request_id(conn, owner, run.spec.request_id)
            if earlier is not None:
                return StartedRun(earlier, False)
            if conversation is not None:  # without a request id: inserted, or raises
                conv = await self._insert_conversation(conn, conversation, "")
            else:
                conv = await self._lock_conversation(
                    conn, run.conversation_id, None if is_system else owner
                )
            if conv is None:
                raise conversation_not_found(run.conversation_id)
            new = run_rules.prepare_new(run, owner, now_us)
            await self._insert_run(conn, new)
            count = conv[7]
            recent: list[conversation_pb2.Message] = []
            if recent_count and count:
                recent = await self._messages_after(
                    conn, run.conversation_id, max(0, count - recent_count), recent_count
                )
            if messages:
                appended = await self._append_messages(conn, conv, messages, now_us)
            else:
                appended = AppendedMessages(rows.conversation(conv, _times), [], [])
            payloads: list[bytes] = []
            if events is not None:
                _, payloads = await self._append_events(conn, new.id, 0, False, events)
                new.last_seq = events.last_seq
        return StartedRun(
            new, True, appended.conversation, appended.messages, appended.added, recent, payloads
        )

    async def _start_in_new_conversation(
        self,
        run: run_pb2.Run,
        conversation: conversation_pb2.Conversation,
        messages: Sequence[conversation_pb2.Message],
        events: Batch | None,
        owner: str,
        now_us: int,
    ) -> StartedRun:
        """`record_run_start` of a run that creates its conversation and has no request id:
        nothing to look up first, so the conversation, the run, its messages and events go
        in one statement (`_START_IN_NEW_CONVERSATION`) — one round trip instead of a
        transaction of seven. An existing id raises `UniqueViolationError` as the
        transaction's inserts would."""
        new = run_rules.prepare_new(run, owner, now_us)
        added = rows.number_new_messages(messages, {}, run.conversation_id, 0, now_us)
        message_columns = list(zip(*map(_pg_message, added), strict=True)) or [[]] * 12
        provider, model, team, metadata = rows.conversation_params(conversation)
        create_us = ts_to_us(conversation.create_time)
        run_cols = rows.run_columns(new)
        payloads = list(events.payloads) if events is not None else []
        last_seq = events.last_seq if events is not None else 0
        async with self._conn() as conn:
            row = await conn.fetchrow(
                _START_IN_NEW_CONVERSATION,
                conversation.id, conversation.owner, conversation.title, provider, model, team,
                metadata, len(added), us_to_datetime(create_us),
                us_to_datetime(max(create_us + 1, now_us) if added else create_us),
                new.id, new.owner, new.conversation_id, run_cols["status"], run_cols["input"],
                run_cols["turns"], run_cols["final_answer"], run_cols["error"],
                run_cols["cancellation"], run_cols["usage"], run_cols["owner_instance"],
                *(us_to_datetime(run_cols[k]) for k in ("heartbeat_time", "create_time", "start_time", "end_time", "update_time")),
                last_seq, events is not None and events.ends_run, run_cols["record"],
                *(list(column) for column in message_columns),
                list(range(events.first_seq, last_seq + 1)) if events is not None else [],
                list(events.kinds) if events is not None else [],
                payloads, run_cols["lease_epoch"], run_cols["pending_input"],
            )  # fmt: skip
        new.last_seq = last_seq
        conv = rows.conversation(row, _times)
        return StartedRun(new, True, conv, list(added), added, [], payloads)


_START_IN_NEW_CONVERSATION = (
    f"WITH conversation AS ("
    f"INSERT INTO conversations (id, owner, title, model_provider, model_name, team, metadata, "
    f"message_count, request_id, create_time, update_time) "
    f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10) RETURNING {_C}), "
    f"run AS (INSERT INTO runs (id, owner, conversation_id, status, request_id, input, turns, "
    f"final_answer, error, cancellation, usage, owner_instance, heartbeat_time, create_time, "
    f"start_time, end_time, update_time, last_seq, event_seq, events_ended, record, "
    f"lease_epoch, pending_input) VALUES ($11, $12, $13, $14, NULL, $15, $16, $17, $18, $19, "
    f"$20, $21, $22, $23, $24, $25, $26, $27, $27, $28, $29, $45, $46)), "
    f"message AS (INSERT INTO messages ({_M}) SELECT * FROM unnest($30::uuid[], $31::uuid[], "
    f"$32::bigint[], $33::text[], $34::smallint[], $35::text[], $36::text[], $37::jsonb[], "
    f"$38::text[], $39::jsonb[], $40::uuid[], $41::timestamptz[])), "
    f"event AS (INSERT INTO run_events (run_id, seq, kind, event) "
    f"SELECT $11, s, k, e FROM unnest($42::bigint[], $43::text[], $44::bytea[]) AS t(s, k, e)) "
    f"SELECT {_C} FROM conversation"
)
"""The run start of `_start_in_new_conversation` as one statement: the conversation, the
run, its messages and its events (the foreign keys between them are checked at the end of
the statement, when every row is in)."""


_APPEND_NEW_MESSAGES = (
    f"WITH conversation AS ("
    f"UPDATE conversations SET message_count = message_count + $3, "
    f"update_time = GREATEST(update_time + interval '1 microsecond', $4) "
    f"WHERE id = $1 AND ($2::text IS NULL OR owner = $2) AND NOT EXISTS ("
    f"SELECT 1 FROM messages WHERE conversation_id = $1 AND client_message_id = ANY($5::text[])) "
    f"RETURNING {_C}), "
    f"message AS (INSERT INTO messages ({_M}) "
    f"SELECT t.id, $1, c.message_count - $3 + t.position, t.client_message_id, t.role, t.agent, "
    f"t.content, t.tool_calls, t.tool_call_id, t.usage, t.run_id, t.create_time "
    f"FROM conversation c, unnest($6::uuid[], $7::bigint[], $8::text[], $9::smallint[], "
    f"$10::text[], $11::text[], $12::jsonb[], $13::text[], $14::jsonb[], $15::uuid[], "
    f"$16::timestamptz[]) AS t(id, position, client_message_id, role, agent, content, "
    f"tool_calls, tool_call_id, usage, run_id, create_time)) "
    f"SELECT {_C} FROM conversation"
)
"""`_append_new_messages` as one statement: count the messages into the conversation (the
row lock serializes concurrent appends, as `_lock_conversation` does) unless one of their
client message ids is stored, and insert them after the count it had (their positions
come relative, 1…n). No row: nothing was written."""


class _StatelessConnection(asyncpg.Connection):
    """A pooled connection released without the reset query.

    The store keeps no session state on a connection (no SET, LISTEN, advisory locks or
    open cursors), so asyncpg's default reset (`RESET ALL; UNLISTEN *; …`, one more round
    trip per pooled call, ~6 % of history-svc's CPU under load) has nothing to undo. An open
    transaction is still rolled back on release: asyncpg does that apart from the query.
    """

    def get_reset_query(self) -> str:
        return ""


_APPEND_CONTINUING = (
    "WITH batch AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], "
    "$4::bigint[], $5::boolean[]) AS b(id, first_seq, last_seq, lease_epoch, ends_run)), "
    "locked AS (SELECT id, owner, event_seq, events_ended, lease_epoch FROM runs "
    "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE), "
    "continued AS (UPDATE runs SET event_seq = b.last_seq, events_ended = b.ends_run, "
    "last_seq = GREATEST(runs.last_seq, b.last_seq) FROM batch b JOIN locked l ON l.id = b.id "
    "WHERE runs.id = b.id AND l.event_seq = b.first_seq - 1 AND NOT l.events_ended "
    "AND (b.lease_epoch = 0 OR l.lease_epoch = b.lease_epoch) "
    "AND ($6::text IS NULL OR l.owner = $6) "
    "RETURNING runs.id::text, runs.last_seq), "
    "inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
    "SELECT e.run_id, e.seq, e.kind, e.event FROM unnest($7::uuid[], $8::bigint[], "
    "$9::text[], $10::bytea[]) AS e(run_id, seq, kind, event) "
    "WHERE e.run_id::text IN (SELECT id FROM continued)) "
    "SELECT id, last_seq FROM continued"
)
"""The common case of AppendRunEventBatches as one statement (`_append_continuing`): lock
the call's runs in id order (as the transaction does, so two calls never deadlock), then
for each run that is the caller's (`$6`, NULL for the system), not ended, whose lease epoch
(the `lease_epoch` column, kept equal to the record's) is the batch's (or the batch's is 0)
and whose log ends right before the batch: move its log's end and insert its events. Returns
those runs' id and new last seq (not the record: the cache only advances its last seq)."""


_UPDATE_RUN = (
    "UPDATE runs SET status = $2, turns = $3, final_answer = $4, error = $5, "
    "cancellation = $6, usage = $7, owner_instance = $8, heartbeat_time = $9, "
    "start_time = $10, end_time = $11, update_time = $12, last_seq = $13, "
    "record = $14, lease_epoch = $15, pending_input = $16 WHERE id = $1"
)
"""Writes every updatable column of a run record; arguments from `_update_args`."""


_PUT_CHECKPOINT = (
    "INSERT INTO run_checkpoints (run_id, seq, checkpoint, update_time) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO UPDATE SET seq = EXCLUDED.seq, "
    "checkpoint = EXCLUDED.checkpoint, update_time = EXCLUDED.update_time "
    "WHERE run_checkpoints.seq <= EXCLUDED.seq"
)
"""Replaces a run's checkpoint (only the latest is kept) unless the stored one covers more
(a late retry of an earlier append must not roll it back)."""


def _update_args(run: run_pb2.Run) -> tuple[Any, ...]:
    cols = rows.run_columns(run)
    return (
        run.id, cols["status"], cols["turns"], cols["final_answer"], cols["error"],
        cols["cancellation"], cols["usage"], cols["owner_instance"],
        *(us_to_datetime(cols[k]) for k in ("heartbeat_time", "start_time", "end_time", "update_time")),
        cols["last_seq"], cols["record"], cols["lease_epoch"], cols["pending_input"],
    )  # fmt: skip


def _pg_message(msg: conversation_pb2.Message) -> tuple[Any, ...]:
    params = rows.message_params(msg)
    return (*params[:11], us_to_datetime(params[11]))
