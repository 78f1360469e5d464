"""PostgreSQL store (asyncpg pool): the dialect of `stores.sql.SqlStore`. Every statement
is parameterized.

Writes that read-then-write lock the parent row (`SELECT … FOR UPDATE` on the conversation
or run) inside one transaction, so concurrent appenders are serialized per conversation or
run and never interleave. Three common cases are one statement each instead (fast paths
measured to pay, bench/README.md): a run start in a new conversation (nothing to lock: the
conversation is inserted), an append of new messages (the conversation's `UPDATE` takes the
row lock) and the AppendRunEventBatches batches that continue their runs' logs.
Uniqueness that must hold across rows (one active run per conversation, idempotency keys)
is enforced by unique indexes (see migrations/postgres/).
Connection failures become UNAVAILABLE (reason DATABASE_UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, cast

import asyncpg

from chorus.core.errors import ChorusError
from chorus.history import codec
from chorus.history import runs as run_rules
from chorus.history.events import Batch
from chorus.history.settings import Settings
from chorus.history.stores import rows
from chorus.history.stores.base import (
    AppendedEvents,
    AppendedMessages,
    BatchOutcome,
    Checkpoint,
    EventWrite,
    RunUpdate,
    StartedRun,
    database_unavailable,
)
from chorus.history.stores.sql import RUN_COLUMNS, Conn, NewEvents, Row, SqlStore
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


class PostgresStore(SqlStore):
    """`Store` on PostgreSQL.

    Args:
        pool: an asyncpg pool on a migrated database.
        acquire_timeout_s: seconds to wait for a pooled connection (or a new one).
    """

    kind = "postgresql"
    UNIQUE_VIOLATION: ClassVar[type[Exception]] = asyncpg.UniqueViolationError
    # `lease_epoch` has a column (migration 0003) for the one-statement batch append.
    RUN_WRITE_COLUMNS: ClassVar[tuple[str, ...]] = (*RUN_COLUMNS, "lease_epoch")

    APPEND_UPDATING: ClassVar[str] = (
        "WITH continued AS (UPDATE runs SET event_seq = $6, events_ended = $5, "
        + ", ".join(f"{c} = ${i}" for i, c in enumerate(RUN_WRITE_COLUMNS, 10))
        + " WHERE id = $1 AND event_seq = $2 AND record = $3 AND last_seq = $4 "
        "AND NOT events_ended RETURNING id), "
        "inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
        "SELECT $1, s, k, e FROM unnest($7::bigint[], $8::text[], $9::bytea[]) AS t(s, k, e) "
        "WHERE EXISTS (SELECT 1 FROM continued)) "
        "SELECT count(*) FROM continued"
    )
    """`_append_updating`'s write: if the run's row still has the log end `$2`, record `$3`
    and last seq `$4` read before (and its log is open), move its log's end to `$6`
    (`$5`: ended), write the record's columns (`RUN_WRITE_COLUMNS` from `$10`) and insert
    the events (`$7`–`$9`). Returns 1 when written, 0 when nothing was."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout_s
        self._starts = _StartGroups(self)

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
        except CONNECTION_ERRORS:  # TimeoutError among them
            self._pool.terminate()

    # Dialect hooks (`SqlStore`)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Conn]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        # `_session` written out: one context manager less on every write's path
        try:
            async with (
                self._pool.acquire(timeout=self._acquire_timeout) as conn,
                conn.transaction(),
            ):
                yield conn
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> ChorusError:
        if self.on_unavailable is not None:
            self.on_unavailable()
        return database_unavailable(self.kind, exc)

    async def _one(self, conn: Conn, sql: str, *args: Any) -> Row | None:
        return await conn.fetchrow(sql, *args)

    async def _all(self, conn: Conn, sql: str, *args: Any) -> list[Row]:
        return cast(list[Row], await conn.fetch(sql, *args))

    async def _execute(self, conn: Conn, sql: str, *args: Any) -> None:
        await conn.execute(sql, *args)

    async def _executemany(self, conn: Conn, sql: str, args: list[tuple[Any, ...]]) -> None:
        await conn.executemany(sql, args)

    def _time(self, us: int | None) -> Any:
        return us_to_datetime(us)

    def _times(self, value: Any) -> int | None:
        return datetime_to_us(value)

    def _in_texts(self, column: str, index: int, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(${index}::text[])", [list(values)]

    async def _lock_runs(self, conn: Conn, run_ids: Sequence[str]) -> dict[str, Row]:
        found = await conn.fetch(
            "SELECT id::text, owner, event_seq, events_ended, record, last_seq FROM runs "
            "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
            sorted(run_ids),
        )
        return {r[0]: r for r in found}

    async def _store_events(self, conn: Conn, events: NewEvents) -> None:
        # One round trip: the insert is a data-modifying CTE of the update.
        if len(events.ends) == 1:
            ((run_id, (last_seq, ended)),) = events.ends.items()
            await conn.execute(
                "WITH inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
                "SELECT $1, s, k, e FROM unnest($2::bigint[], $3::text[], $4::bytea[]) "
                "AS t(s, k, e)) "
                "UPDATE runs SET event_seq = $5, events_ended = $6, "
                "last_seq = GREATEST(last_seq, $5) WHERE id = $1",
                run_id, events.seqs, events.kinds, events.payloads, last_seq, ended,
            )  # fmt: skip
            return
        await conn.execute(
            "WITH inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
            "SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[])) "
            "UPDATE runs SET event_seq = t.s, events_ended = t.e, "
            "last_seq = GREATEST(runs.last_seq, t.s) "
            "FROM unnest($5::uuid[], $6::bigint[], $7::boolean[]) AS t(i, s, e) "
            "WHERE runs.id = t.i",
            events.run_ids, events.seqs, events.kinds, events.payloads,
            list(events.ends), [end[0] for end in events.ends.values()],
            [end[1] for end in events.ends.values()],
        )  # fmt: skip

    def _violated(self, exc: Exception) -> str:
        return str(getattr(exc, "constraint_name", "") or "")

    async def _claim_write(self, conn: Conn, run: run_pb2.Run) -> bytes | None:
        # One round trip: the update, and the checkpoint read by a statement that starts
        # after the lock was taken (so it sees the last append's checkpoint).
        return cast(
            bytes | None,
            await conn.fetchval(
                f"WITH claimed AS ({self.UPDATE_RUN}) "
                f"SELECT checkpoint FROM run_checkpoints WHERE run_id = $1",
                *self._run_args(run),
            ),
        )

    async def _write_heartbeats(self, conn: Conn, runs: list[run_pb2.Run]) -> None:
        # One statement for every run (not one per row), and only the columns a heartbeat
        # changes (`_WRITE_HEARTBEATS`): the heartbeats of every live run come each second.
        await conn.execute(
            _WRITE_HEARTBEATS,
            [r.id for r in runs],
            [r.turns for r in runs],
            [codec.usage_to_json(r.usage) for r in runs],
            [r.owner_instance for r in runs],
            [
                us_to_datetime(r.heartbeat_time.ToMicroseconds())
                if r.HasField("heartbeat_time")
                else None
                for r in runs
            ],
            [us_to_datetime(ts_to_us(r.start_time)) for r in runs],
            [us_to_datetime(ts_to_us(r.update_time)) for r in runs],
            [r.last_seq for r in runs],
            [rows.run_record(r) for r in runs],
        )

    # Fast paths

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
        columns = list(zip(*map(self._message_args, added), strict=True))
        client_ids = [m.client_message_id for m in messages if m.client_message_id]
        try:
            async with self._session() as conn:
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
        return AppendedMessages(self._conversation(row), list(added), added)

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
        """See `Store.append_events`. A batch without record fields that continues its
        run's log (a writer's next lifecycle events: the usual case) is one statement
        (`_APPEND_CONTINUING`, as AppendRunEventBatches stores its batches; with a
        checkpoint, `_APPEND_CONTINUING_CHECKPOINT`): one round trip instead of BEGIN,
        lock, insert, (checkpoint,) COMMIT. Its result has no `run` (the
        record is not read: only its last seq moved). Anything else — a repeat, a gap, a
        lost lease, an ended, unknown or foreign run — goes through the transaction, which
        applies every rule and explains a refusal."""
        if update is None and checkpoint is None and batch.payloads:
            write = EventWrite(run_id, batch, lease_epoch)
            async with self._session() as conn:
                try:
                    appended = await self._append_continuing(conn, [write], owner)
                except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                    appended = {}  # nothing of the statement was written
            if run_id in appended:
                # The log ended right before the batch: it ends at its last seq now.
                return AppendedEvents(batch.last_seq, batch.first_seq, list(batch.payloads), None)
        elif (
            update is None
            and checkpoint is not None
            and batch.payloads
            and checkpoint.seq <= batch.last_seq
        ):
            # A writer's lifecycle events with its checkpoint (a run's first agent, a turn's
            # end): the same, the checkpoint written by the same statement.
            async with self._session() as conn:
                try:
                    found = await conn.fetchval(
                        _APPEND_CONTINUING_CHECKPOINT,
                        run_id, batch.first_seq, batch.last_seq, lease_epoch, batch.ends_run,
                        owner, list(range(batch.first_seq, batch.last_seq + 1)),
                        list(batch.kinds), list(batch.payloads), checkpoint.seq,
                        checkpoint.data, us_to_datetime(checkpoint.now_us),
                    )  # fmt: skip
                except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                    found = None  # nothing of the statement was written
            if found is not None:
                return AppendedEvents(batch.last_seq, batch.first_seq, list(batch.payloads), None)
        elif update is not None and checkpoint is None and batch.payloads:
            ended = await self._append_updating(run_id, owner, batch, update, lease_epoch)
            if ended is not None:
                return ended
        return await super().append_events(
            run_id, owner, batch, update, lease_epoch=lease_epoch, checkpoint=checkpoint
        )

    async def _append_updating(
        self, run_id: str, owner: str | None, batch: Batch, update: RunUpdate, lease_epoch: int
    ) -> AppendedEvents | None:
        """`append_events` of a batch with record fields (a run's end) that continues its
        run's log, in two round trips instead of five (BEGIN, lock, insert, update,
        COMMIT): the row read without a lock, every rule applied to it, then one statement
        (`APPEND_UPDATING`) that writes the events and the merged record only if the row
        is still exactly as read (its record, log end and last seq: a compare-and-set; a
        concurrent writer — heartbeat, claim, cancel — changes the record). None when
        anything did not hold: nothing was written, and the transaction decides (and
        explains a refusal)."""
        async with self._session() as conn:
            row = await conn.fetchrow(
                "SELECT owner, event_seq, events_ended, record, last_seq FROM runs WHERE id = $1",
                run_id,
            )
            if (
                row is None
                or (owner is not None and row[0] != owner)
                or row[2]
                or row[1] != batch.first_seq - 1
            ):
                return None
            try:
                run = rows.run(row[3:])
                run_rules.check_lease(run, lease_epoch)
                run.last_seq = max(run.last_seq, batch.last_seq)
                merged = run_rules.apply_update(run, update.values, update.paths, update.now_us)
            except ChorusError:
                return None
            try:
                written = await conn.fetchval(
                    self.APPEND_UPDATING,
                    run_id, row[1], row[3], row[4], batch.ends_run, batch.last_seq,
                    list(range(batch.first_seq, batch.last_seq + 1)), list(batch.kinds),
                    list(batch.payloads), *self._run_values(rows.run_columns(merged)),
                )  # fmt: skip
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                return None  # nothing of the statement was written
        if not written:
            return None
        return AppendedEvents(batch.last_seq, batch.first_seq, list(batch.payloads), merged)

    async def append_event_batches(
        self, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        """See `Store.append_event_batches`. The batches that continue their run where its
        stored log ends (the common case: a writer's next deltas) go in one statement
        (`_APPEND_CONTINUING`: one round trip, no transaction of four); the others — a
        repeat after a lost answer, a gap, a lost lease, an ended or unknown run — then go
        through the transaction that applies every rule and explains a refusal."""
        outcomes: list[BatchOutcome | None] = [None] * len(batches)
        async with self._session() as conn:
            try:
                appended = await self._append_continuing(conn, batches, owner)
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                appended = {}  # nothing of the statement was written: the transaction decides
            rest: list[int] = []
            for i, item in enumerate(batches):
                last_seq = appended.get(item.run_id)
                if last_seq is None:
                    rest.append(i)
                    continue
                batch = item.batch
                outcomes[i] = AppendedEvents(last_seq, batch.first_seq, list(batch.payloads), None)
            if rest:
                async with conn.transaction():
                    checked = await self._append_batches_checked(
                        conn, [batches[i] for i in rest], owner
                    )
                for i, outcome in zip(rest, checked, strict=True):
                    outcomes[i] = outcome
        assert None not in outcomes  # every batch took one path or the other
        return cast(list[BatchOutcome], outcomes)

    @staticmethod
    async def _append_continuing(
        conn: Conn, batches: Sequence[EventWrite], owner: str | None
    ) -> dict[str, int]:
        """Store, in one statement, each batch whose run is `owner`'s, open, fenced by the
        batch's lease epoch (0: unfenced) and stored exactly up to the batch's first seq;
        returns those runs' new `last_seq` by id. The others are left untouched."""
        events = NewEvents()
        for item in batches:
            events.add(item.run_id, item.batch, 0)
        found = await conn.fetch(
            _APPEND_CONTINUING,
            [item.run_id for item in batches],
            [item.batch.first_seq for item in batches],
            [item.batch.last_seq for item in batches],
            [item.lease_epoch for item in batches],
            [item.batch.ends_run for item in batches],
            owner,
            events.run_ids,
            events.seqs,
            events.kinds,
            events.payloads,
        )
        return {row[0]: row[1] for row in found}

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
        return await super()._record_run_start(
            run, conversation, messages, events, recent_count, owner, is_system, now_us
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
        transaction of seven — and that statement is group-committed with the other
        concurrent starts (`_StartGroups`: one round trip and one commit for many). An
        existing id raises `UniqueViolationError` as the transaction's inserts would."""
        new = run_rules.prepare_new(run, owner, now_us)
        added = rows.number_new_messages(messages, {}, run.conversation_id, 0, now_us)
        message_columns: list[Sequence[Any]] = list(
            zip(*map(self._message_args, added), strict=True)
        ) or [[] for _ in range(12)]
        provider, model, team, metadata = rows.conversation_params(conversation)
        create_us = ts_to_us(conversation.create_time) or 0
        run_cols = rows.run_columns(new)
        payloads = list(events.payloads) if events is not None else []
        last_seq = events.last_seq if events is not None else 0
        update_us = max(create_us + 1, now_us) if added else create_us
        times = ("heartbeat_time", "create_time", "start_time", "end_time", "update_time")
        args = (
            conversation.id, conversation.owner, conversation.title, provider, model, team,
            metadata, len(added), us_to_datetime(create_us), us_to_datetime(update_us),
            new.id, new.owner, new.conversation_id, run_cols["status"], run_cols["input"],
            run_cols["turns"], run_cols["final_answer"], run_cols["error"],
            run_cols["cancellation"], run_cols["usage"], run_cols["owner_instance"],
            *(us_to_datetime(run_cols[k]) for k in times),
            last_seq, events is not None and events.ends_run, run_cols["record"],
            *(list(column) for column in message_columns),
            list(range(events.first_seq, last_seq + 1)) if events is not None else [],
            list(events.kinds) if events is not None else [],
            payloads, run_cols["lease_epoch"], run_cols["pending_input"],
        )  # fmt: skip
        await self._starts.write(args)
        new.last_seq = last_seq
        # The conversation as its row now reads (`_C`), without reading it back.
        stored = rows.conversation(
            (conversation.id, conversation.owner, conversation.title, provider, model, team,
             metadata, len(added), create_us, update_us),
            lambda us: us,
        )  # fmt: skip
        return StartedRun(new, True, stored, list(added), added, [], payloads)


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


_WRITE_HEARTBEATS = (
    "UPDATE runs SET turns = t.turns, usage = t.usage, owner_instance = t.owner_instance, "
    "heartbeat_time = t.heartbeat_time, start_time = t.start_time, "
    "update_time = t.update_time, last_seq = t.last_seq, record = t.record "
    "FROM unnest($1::uuid[], $2::integer[], $3::jsonb[], $4::text[], $5::timestamptz[], "
    "$6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::bytea[]) "
    "AS t(id, turns, usage, owner_instance, heartbeat_time, start_time, update_time, "
    "last_seq, record) WHERE runs.id = t.id"
)
"""The records of `_write_heartbeats`: the columns `runs.apply_heartbeats` may change
(`HEARTBEAT_PATHS`, the start and update times, the serialized record); the others —
status, input, answer, error, cancellation, pending input, lease epoch — stay as stored."""


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


_APPEND_CONTINUING_CHECKPOINT = (
    "WITH locked AS (SELECT owner, event_seq, events_ended, lease_epoch FROM runs "
    "WHERE id = $1 FOR UPDATE), "
    "continued AS (UPDATE runs SET event_seq = $3, events_ended = $5, "
    "last_seq = GREATEST(runs.last_seq, $3) FROM locked l "
    "WHERE runs.id = $1 AND l.event_seq = $2 - 1 AND NOT l.events_ended "
    "AND ($4::bigint = 0 OR l.lease_epoch = $4) AND ($6::text IS NULL OR l.owner = $6) "
    "RETURNING runs.last_seq), "
    "inserted AS (INSERT INTO run_events (run_id, seq, kind, event) "
    "SELECT $1, s, k, e FROM unnest($7::bigint[], $8::text[], $9::bytea[]) AS t(s, k, e) "
    "WHERE EXISTS (SELECT 1 FROM continued)), "
    "checkpoint AS (INSERT INTO run_checkpoints (run_id, seq, checkpoint, update_time) "
    "SELECT $1, $10, $11, $12 WHERE EXISTS (SELECT 1 FROM continued) "
    "ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, "
    "checkpoint = excluded.checkpoint, update_time = excluded.update_time "
    "WHERE run_checkpoints.seq <= excluded.seq) "
    "SELECT last_seq FROM continued"
)
"""`_APPEND_CONTINUING` of one run's batch with its checkpoint (`$10` seq, `$11` serialized
`RunCheckpoint`, `$12` time; at most the batch's last seq, checked before): lock the run,
and if it is the caller's (`$6`), open, fenced by the batch's epoch (`$4`, 0: unfenced) and
stored up to right before the batch (`$2`), move its log's end to `$3`, insert the events
and replace the checkpoint unless the stored one covers more (as `_PUT_CHECKPOINT`).
Returns the run's new last seq; no row: nothing was written (the transaction decides)."""


class _StartGroups:
    """Group commit of concurrent run starts in new conversations (issue 19).

    `write` joins the open group with one start's arguments of `_START_IN_NEW_CONVERSATION`
    and returns once that start is committed. A group — every start that arrived since the
    last one was taken, at most `MAX_GROUP` — is ONE `executemany` on one connection: one
    round trip and one commit for all (asyncpg runs it as one implicit transaction: all or
    nothing). At most `MAX_IN_FLIGHT` groups are under way at once, so the database's cores
    stay busy. When the group fails on one start's rows (a used id: a unique violation,
    or any other statement error) nothing was written, and each of its starts is tried
    again alone: each caller gets its own outcome, one caller's bad start fails no other.
    When the database cannot be reached, every caller of the group gets UNAVAILABLE
    (retryable) and nothing is written.
    """

    MAX_GROUP = 64
    MAX_IN_FLIGHT = 2

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._open: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, args: tuple[Any, ...]) -> None:
        """Commit one start (`args` of `_START_IN_NEW_CONVERSATION`) with its group.

        Raises:
            asyncpg.UniqueViolationError: as the statement alone would.
            Unavailable: DATABASE_UNAVAILABLE.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._open.append((args, done))
        if self._in_flight < self.MAX_IN_FLIGHT:
            self._in_flight += 1
            task = loop.create_task(self._send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await done

    async def _send(self) -> None:
        """Send the open group, then the next, while there is one; then make way."""
        try:
            while self._open:
                group = self._open[: self.MAX_GROUP]
                del self._open[: self.MAX_GROUP]
                group = [(args, done) for args, done in group if not done.cancelled()]
                if group:
                    await self._commit(group)
        finally:
            self._in_flight -= 1

    async def _commit(self, group: list[tuple[tuple[Any, ...], asyncio.Future[None]]]) -> None:
        store = self._store
        try:
            try:
                async with store._pool.acquire(timeout=store._acquire_timeout) as conn:
                    if len(group) == 1:
                        await conn.execute(_START_IN_NEW_CONVERSATION, *group[0][0])
                    else:
                        await conn.executemany(_START_IN_NEW_CONVERSATION, [a for a, _ in group])
                    _settle(group, None)
                    return
            except CONNECTION_ERRORS:
                raise
            except Exception as exc:  # one start's rows: nothing written, each goes alone
                if len(group) == 1:
                    _settle(group, exc)
                    return
            for args, done in group:
                if done.cancelled():
                    continue
                try:
                    async with store._pool.acquire(timeout=store._acquire_timeout) as conn:
                        await conn.execute(_START_IN_NEW_CONVERSATION, *args)
                except CONNECTION_ERRORS as exc:
                    _settle([(args, done)], store._unavailable(exc))
                except Exception as exc:
                    _settle([(args, done)], exc)
                else:
                    _settle([(args, done)], None)
        except CONNECTION_ERRORS as exc:
            for item in group:
                _settle([item], store._unavailable(exc))  # an error of its own each
        except BaseException as exc:  # cancelled (shutdown): nobody may wait for ever
            for item in group:
                _settle([item], store._unavailable(exc))
            raise


def _settle(
    group: list[tuple[tuple[Any, ...], asyncio.Future[None]]], outcome: BaseException | None
) -> None:
    """Answer each caller of `group` still waiting: done, or `outcome` raised."""
    for _, done in group:
        if done.done():
            continue
        if outcome is None:
            done.set_result(None)
        else:
            done.set_exception(outcome)
