"""The SQL logic of both stores, once: every RPC's transaction — what is read, checked and
written, in which order — over a few hooks of the database at hand (issue 24, "one store
layer").

`SqlStore` implements `Store` on a database migrated by migrations/postgres/ or
migrations/sqlite/. Statements are written here once, in PostgreSQL's form; a dialect
(`stores.postgres.PostgresStore`, `stores.sqlite.SqliteStore`) supplies only what differs:

* connections and transactions: `_session()` (a connection, each statement its own
  transaction) and `_transaction()` (one transaction holding the write lock a
  read-then-write needs: `SELECT … FOR UPDATE` row locks on PostgreSQL, `BEGIN IMMEDIATE`
  on SQLite); the calls `_one`, `_all`, `_execute`, `_executemany` (SQLite rewrites the
  statement to its own form: `stores.sqlite.translate`);
* times: `_time(µs)` as a statement argument, `_times(column value)` as µs;
* the few statements that differ beyond that: `_in_texts` (a text list parameter),
  `_lock_runs` (many runs' rows, locked), `_store_events` (the insert of new events),
  `_claim_write`, and which unique index a violation hit (`_violated`);
* fast paths that pay on one database only (PostgreSQL's one-statement run start, message
  append and AppendRunEventBatches, measured in bench/README.md), as overrides of
  `_record_run_start`, `_append_new_messages` and `append_event_batches`.

Rules of run records and event logs live in `chorus.history.runs` and
`chorus.history.events`; this module calls them on the rows it read under the lock.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from chorus.core.errors import Aborted, ChorusError
from chorus.history import events as event_rules
from chorus.history import runs as run_rules
from chorus.history.events import Batch
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
    conversation_busy,
    conversation_exists,
    conversation_not_found,
    run_exists,
    run_not_found,
)
from chorus.history.timeutil import ts_to_us
from chorus.v1 import conversation_pb2, run_pb2

Conn = Any
"""A dialect's connection (an asyncpg connection, the aiosqlite connection)."""
Row = Any
"""A row as the dialect's driver returns it, read by position (asyncpg `Record`, tuple)."""

_C = rows.CONVERSATION_COLUMNS
_M = rows.MESSAGE_COLUMNS
_OWNED = "($2::text IS NULL OR owner = $2)"
"""Scopes a statement to the owner `$2` (NULL: the internal service identity, any owner)."""
_EVENT_ROW = "owner, event_seq, events_ended, record, last_seq"
"""A run's row as appends read it: owner, its log's end and whether it ended, the record."""
_LOCK_EVENT_ROW = f"SELECT {_EVENT_ROW} FROM runs WHERE id = $1 FOR UPDATE"
_STORED_EVENTS = (
    "SELECT event FROM run_events WHERE run_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq"
)
_CHECKPOINT = "SELECT checkpoint FROM run_checkpoints WHERE run_id = $1"
_PUT_CHECKPOINT = (
    "INSERT INTO run_checkpoints (run_id, seq, checkpoint, update_time) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, "
    "checkpoint = excluded.checkpoint, update_time = excluded.update_time "
    "WHERE run_checkpoints.seq <= excluded.seq"
)
"""Replaces a run's checkpoint (only the latest is kept) unless the stored one covers more
(a late retry of an earlier append must not roll it back)."""
_TOUCH = "update_time = GREATEST(update_time + interval '1 microsecond', {})"
"""A conversation's `update_time` moved to now, and at least 1 µs on (page cursors)."""

RUN_COLUMNS = (
    "status", "turns", "final_answer", "error", "cancellation", "usage", "owner_instance",
    "heartbeat_time", "start_time", "end_time", "update_time", "last_seq", "record",
    "pending_input", "input_expire_time",
)  # fmt: skip
"""The `runs` columns every write of a record sets (keys of `rows.run_columns`)."""


@dataclass(slots=True)
class NewEvents:
    """New events of one or more runs, by column, for `SqlStore._store_events`.

    Attributes:
        run_ids, seqs, kinds, payloads: one entry per event.
        ends: per run, its log's new end `(last seq, whether it ended the run)`.
    """

    run_ids: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    ends: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def add(self, run_id: str, batch: Batch, repeated: int) -> None:
        """The events of `batch` after its first `repeated` (already stored)."""
        new = batch.payloads[repeated:]
        self.run_ids.extend([run_id] * len(new))
        self.seqs.extend(range(batch.first_seq + repeated, batch.last_seq + 1))
        self.kinds.extend(batch.kinds[repeated:])
        self.payloads.extend(new)
        self.ends[run_id] = (batch.last_seq, batch.ends_run)


class SqlStore(Store):
    """`Store` over SQL: the logic of every RPC, the dialect's hooks abstract (module
    docstring). Class attributes a dialect sets:

    Attributes:
        UNIQUE_VIOLATION: the driver's exception for a unique-index violation (`_violated`
            names the index).
        RUN_WRITE_COLUMNS: the `runs` columns a record write sets (`RUN_COLUMNS`, plus
            PostgreSQL's `lease_epoch`).
        UPDATE_RUN, INSERT_RUN: the record's update and insert, made from them.
    """

    UNIQUE_VIOLATION: ClassVar[type[Exception]]
    RUN_WRITE_COLUMNS: ClassVar[tuple[str, ...]] = RUN_COLUMNS
    UPDATE_RUN: ClassVar[str]
    INSERT_RUN: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        columns = cls.RUN_WRITE_COLUMNS
        cls.UPDATE_RUN = (
            "UPDATE runs SET "
            + ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, 2))
            + " WHERE id = $1"
        )
        inserted = ("id", "owner", "conversation_id", "request_id", "input", "create_time")
        cls.INSERT_RUN = (
            f"INSERT INTO runs ({', '.join(inserted + columns)}) VALUES ("
            + ", ".join(f"${i}" for i in range(1, len(inserted) + len(columns) + 1))
            + ")"
        )

    # Dialect hooks

    @abc.abstractmethod
    def _session(self) -> AbstractAsyncContextManager[Conn]:
        """A connection, exclusively; each statement commits on its own.

        Raises:
            Unavailable: DATABASE_UNAVAILABLE (the database cannot be reached).
        """

    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Conn]:
        """A connection inside one transaction that commits when the block ends and rolls
        back on any exception. `FOR UPDATE` / `FOR SHARE` in its statements lock rows
        until it ends (SQLite: the whole database is locked from its start).

        Raises:
            Unavailable: DATABASE_UNAVAILABLE.
        """

    @abc.abstractmethod
    async def _one(self, conn: Conn, sql: str, *args: Any) -> Row | None:
        """The first row of `sql`, or None."""

    @abc.abstractmethod
    async def _all(self, conn: Conn, sql: str, *args: Any) -> list[Row]:
        """Every row of `sql`."""

    @abc.abstractmethod
    async def _execute(self, conn: Conn, sql: str, *args: Any) -> None:
        """Run `sql` once."""

    @abc.abstractmethod
    async def _executemany(self, conn: Conn, sql: str, args: list[tuple[Any, ...]]) -> None:
        """Run `sql` once per argument tuple."""

    @abc.abstractmethod
    def _time(self, us: int | None) -> Any:
        """A time in µs (or None) as a statement argument."""

    @abc.abstractmethod
    def _times(self, value: Any) -> int | None:
        """A time column's value as µs (or None)."""

    @abc.abstractmethod
    def _in_texts(self, column: str, index: int, values: Sequence[str]) -> tuple[str, list[Any]]:
        """`column` is one of `values` (a text column): the condition, its parameters
        numbered from `$index`, and their arguments."""

    @abc.abstractmethod
    async def _lock_runs(self, conn: Conn, run_ids: Sequence[str]) -> dict[str, Row]:
        """The rows `(id, owner, event_seq, events_ended, record, last_seq)` of the runs
        found among `run_ids`, by id, locked until the transaction ends (PostgreSQL: in id
        order, so two calls never deadlock)."""

    @abc.abstractmethod
    async def _store_events(self, conn: Conn, events: NewEvents) -> None:
        """Insert `events` and move each run's log end (`event_seq`, `events_ended`,
        `last_seq` raised), in the caller's transaction."""

    @abc.abstractmethod
    def _violated(self, exc: Exception) -> str:
        """The unique index a `UNIQUE_VIOLATION` hit, by its PostgreSQL name
        (`runs_pkey`, `runs_owner_request_id`, `runs_one_active_per_conversation`,
        `conversations_pkey`); "" for another."""

    async def _claim_write(self, conn: Conn, run: run_pb2.Run) -> bytes | None:
        """ClaimRun's write of the claimed record (on the locked row), then the run's
        checkpoint read after it (serialized `RunCheckpoint`, None when none)."""
        await self._execute(conn, self.UPDATE_RUN, *self._run_args(run))
        found = await self._one(conn, _CHECKPOINT, run.id)
        return None if found is None else bytes(found[0])

    async def _append_new_messages(
        self,
        conversation_id: str,
        owner: str | None,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages | None:
        """A faster `append_messages` for the case it covers; None to take the transaction
        (the default: always)."""
        return None

    # Shared helpers

    def _run_args(self, run: run_pb2.Run) -> tuple[Any, ...]:
        """Arguments of `UPDATE_RUN`."""
        return (run.id, *self._run_values(rows.run_columns(run)))

    def _run_values(self, cols: dict[str, Any]) -> list[Any]:
        return [
            self._time(cols[c]) if c in rows.TIME_COLUMNS else cols[c]
            for c in self.RUN_WRITE_COLUMNS
        ]

    def _message_args(self, msg: conversation_pb2.Message) -> tuple[Any, ...]:
        """Values of `MESSAGE_COLUMNS` for an insert."""
        params = rows.message_params(msg)
        return (*params[:11], self._time(params[11]))

    def _conversation(self, row: Row) -> conversation_pb2.Conversation:
        return rows.conversation(row, self._times)

    async def _conversation_busy(self, conversation_id: str) -> Aborted:
        """CONVERSATION_BUSY naming the conversation's active run (after a create hit the
        one-active-run index and its transaction rolled back)."""
        async with self._session() as conn:
            active = await self._one(
                conn,
                f"SELECT id FROM runs WHERE conversation_id = $1 "
                f"AND status IN ({rows.ACTIVE_STATUSES})",
                conversation_id,
            )
        return conversation_busy(conversation_id, "" if active is None else str(active[0]))

    async def ping(self) -> None:
        async with self._session() as conn:
            await self._one(conn, "SELECT 1")

    # Conversations and messages

    async def create_conversation(
        self, conversation: conversation_pb2.Conversation, request_id: str
    ) -> tuple[conversation_pb2.Conversation, bool]:
        async with self._session() as conn:
            row = await self._insert_conversation(conn, conversation, request_id)
            if row is not None:
                return self._conversation(row), True
            row = await self._one(
                conn,
                f"SELECT {_C} FROM conversations WHERE owner = $1 AND request_id = $2",
                conversation.owner,
                request_id,
            )
        return self._conversation(row), False

    async def _insert_conversation(
        self, conn: Conn, c: conversation_pb2.Conversation, request_id: str
    ) -> Row | None:
        """Insert a conversation; its row, or None when the owner's `request_id` is used.
        An existing id raises `UNIQUE_VIOLATION` (`conversations_pkey`)."""
        provider, model, team, metadata = rows.conversation_params(c)
        return await self._one(
            conn,
            f"INSERT INTO conversations (id, owner, title, model_provider, model_name, team, "
            f"metadata, message_count, request_id, create_time, update_time) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9) "
            f"ON CONFLICT (owner, request_id) WHERE request_id IS NOT NULL DO NOTHING "
            f"RETURNING {_C}",
            c.id, c.owner, c.title, provider, model, team, metadata,
            request_id or None, self._time(ts_to_us(c.create_time)),
        )  # fmt: skip

    async def get_conversation(
        self, conversation_id: str, owner: str | None
    ) -> conversation_pb2.Conversation | None:
        async with self._session() as conn:
            row = await self._one(
                conn, f"SELECT {_C} FROM conversations WHERE id = $1 AND {_OWNED}",
                conversation_id, owner,
            )  # fmt: skip
        return None if row is None else self._conversation(row)

    async def list_conversations(
        self, owner: str, limit: int, after: tuple[int, str] | None
    ) -> list[conversation_pb2.Conversation]:
        async with self._session() as conn:
            if after is None:
                found = await self._all(
                    conn,
                    f"SELECT {_C} FROM conversations WHERE owner = $1 "
                    f"ORDER BY update_time DESC, id DESC LIMIT $2",
                    owner,
                    limit,
                )
            else:
                found = await self._all(
                    conn,
                    f"SELECT {_C} FROM conversations WHERE owner = $1 "
                    f"AND (update_time, id) < ($2, $3::uuid) "
                    f"ORDER BY update_time DESC, id DESC LIMIT $4",
                    owner,
                    self._time(after[0]),
                    after[1],
                    limit,
                )
        return [self._conversation(r) for r in found]

    async def update_conversation(
        self,
        conversation_id: str,
        owner: str | None,
        values: conversation_pb2.Conversation,
        paths: set[str],
        now_us: int,
    ) -> conversation_pb2.Conversation | None:
        provider, model, team, metadata = rows.conversation_params(values)
        async with self._session() as conn:
            row = await self._one(
                conn,
                f"UPDATE conversations SET "
                f"title = CASE WHEN $3 THEN $4 ELSE title END, "
                f"model_provider = CASE WHEN $5 THEN $6 ELSE model_provider END, "
                f"model_name = CASE WHEN $5 THEN $7 ELSE model_name END, "
                f"team = CASE WHEN $8 THEN $9 ELSE team END, "
                f"metadata = CASE WHEN $10 THEN $11::jsonb ELSE metadata END, "
                f"{_TOUCH.format('$12')} WHERE id = $1 AND {_OWNED} RETURNING {_C}",
                conversation_id, owner,
                "title" in paths, values.title,
                "model" in paths, provider, model,
                "team" in paths, team,
                "metadata" in paths, metadata,
                self._time(now_us),
            )  # fmt: skip
        return None if row is None else self._conversation(row)

    async def delete_conversation(
        self, conversation_id: str, owner: str | None
    ) -> list[str] | None:
        async with self._transaction() as conn:
            # The row lock first: a run start in this conversation (which locks it too)
            # commits before us — and its run is deleted below — or finds it gone.
            if await self._lock_conversation(conn, conversation_id, owner) is None:
                return None
            # run_events and run_checkpoints go with their runs (ON DELETE CASCADE).
            deleted = await self._all(
                conn, "DELETE FROM runs WHERE conversation_id = $1 RETURNING id::text",
                conversation_id,
            )  # fmt: skip
            await self._execute(conn, "DELETE FROM conversations WHERE id = $1", conversation_id)
        return [r[0] for r in deleted]

    async def conversation_run_ids(self, conversation_id: str) -> list[str]:
        async with self._session() as conn:
            found = await self._all(
                conn, "SELECT id::text FROM runs WHERE conversation_id = $1", conversation_id
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
        async with self._transaction() as conn:
            row = await self._lock_conversation(conn, conversation_id, owner)
            if row is None:
                return None
            return await self._append_messages(conn, row, messages, now_us)

    async def _lock_conversation(
        self, conn: Conn, conversation_id: str, owner: str | None
    ) -> Row | None:
        """The conversation's row, locked until the transaction ends; None when missing or
        another owner's."""
        return await self._one(
            conn, f"SELECT {_C} FROM conversations WHERE id = $1 AND {_OWNED} FOR UPDATE",
            conversation_id, owner,
        )  # fmt: skip

    async def _append_messages(
        self,
        conn: Conn,
        conversation: Row,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages:
        """`append_messages` inside the caller's transaction, `conversation` being the
        locked row (`_lock_conversation`, or just inserted)."""
        conversation_id, count = str(conversation[0]), conversation[7]
        client_ids = [m.client_message_id for m in messages if m.client_message_id]
        stored: dict[str, conversation_pb2.Message] = {}
        if client_ids and count:  # an empty conversation has none stored
            known, args = self._in_texts("client_message_id", 2, client_ids)
            for row in await self._all(
                conn,
                f"SELECT {_M} FROM messages WHERE conversation_id = $1 AND {known}",
                conversation_id,
                *args,
            ):
                msg = rows.message(row, self._times)
                stored[msg.client_message_id] = msg
        added = rows.number_new_messages(messages, stored, conversation_id, count, now_us)
        row = conversation
        if added:
            await self._executemany(
                conn,
                f"INSERT INTO messages ({_M}) VALUES "
                f"($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                [self._message_args(m) for m in added],
            )
            row = await self._one(
                conn,
                f"UPDATE conversations SET message_count = $2, {_TOUCH.format('$3')} "
                f"WHERE id = $1 RETURNING {_C}",
                conversation_id,
                count + len(added),
                self._time(now_us),
            )
        conv = self._conversation(row)
        return AppendedMessages(conv, rows.in_request_order(messages, stored, added), added)

    async def list_messages(
        self,
        conversation_id: str,
        owner: str | None,
        after_position: int,
        limit: int,
        run_id: str = "",
    ) -> list[conversation_pb2.Message] | None:
        async with self._session() as conn:
            exists = await self._one(
                conn, f"SELECT 1 FROM conversations WHERE id = $1 AND {_OWNED}",
                conversation_id, owner,
            )  # fmt: skip
            if exists is None:
                return None
            return await self._messages_after(conn, conversation_id, after_position, limit, run_id)

    async def _messages_after(
        self, conn: Conn, conversation_id: str, after_position: int, limit: int, run_id: str = ""
    ) -> list[conversation_pb2.Message]:
        """Up to `limit` messages after `after_position`, oldest first (only `run_id`'s)."""
        if run_id:
            found = await self._all(
                conn,
                f"SELECT {_M} FROM messages WHERE conversation_id = $1 AND run_id = $2 "
                f"AND position > $3 ORDER BY position LIMIT $4",
                conversation_id, run_id, after_position, limit,
            )  # fmt: skip
        else:
            found = await self._all(
                conn,
                f"SELECT {_M} FROM messages WHERE conversation_id = $1 "
                f"AND position > $2 ORDER BY position LIMIT $3",
                conversation_id, after_position, limit,
            )  # fmt: skip
        return [rows.message(r, self._times) for r in found]

    # Run records

    async def record_run(
        self,
        values: run_pb2.Run,
        paths: set[str],
        owner: str,
        is_system: bool,
        now_us: int,
        lease_epoch: int = 0,
    ) -> tuple[run_pb2.Run, bool]:
        for _ in range(3):  # a concurrent create of the same id or key: read it again
            try:
                return await self._record_run(values, paths, owner, is_system, now_us, lease_epoch)
            except self.UNIQUE_VIOLATION as exc:
                index = self._violated(exc)
                if index == "runs_one_active_per_conversation":
                    raise await self._conversation_busy(values.conversation_id) from None
                if index not in ("runs_pkey", "runs_owner_request_id"):
                    raise
        raise RuntimeError("run record kept changing under concurrent creates")

    async def _record_run(
        self,
        values: run_pb2.Run,
        paths: set[str],
        owner: str,
        is_system: bool,
        now_us: int,
        lease_epoch: int,
    ) -> tuple[run_pb2.Run, bool]:
        async with self._transaction() as conn:
            row = await self._one(
                conn, "SELECT owner, record, last_seq FROM runs WHERE id = $1 FOR UPDATE", values.id
            )
            if row is not None:
                if not is_system and row[0] != owner:
                    raise run_not_found(values.id)
                stored = rows.run(row[1:])
                run_rules.check_lease(stored, lease_epoch)  # the fence: before any write
                merged = run_rules.apply_update(stored, values, paths, now_us)
                await self._execute(conn, self.UPDATE_RUN, *self._run_args(merged))
                return merged, False
            if not values.HasField("spec") or not values.conversation_id:
                raise run_not_found(values.id, creating_hint=True)
            earlier = await self._run_by_request_id(conn, owner, values.spec.request_id)
            if earlier is not None:
                return earlier, False
            # FOR SHARE: a concurrent DeleteConversation (which locks the row) commits
            # first and the run is refused, or waits for this run and deletes it too.
            conv = await self._one(
                conn, "SELECT owner FROM conversations WHERE id = $1 FOR SHARE",
                values.conversation_id,
            )  # fmt: skip
            if conv is None or (conv[0] != owner and not is_system):
                raise conversation_not_found(values.conversation_id)
            new = run_rules.prepare_new(values, owner, now_us)
            await self._insert_run(conn, new)
            return new, True

    async def _run_by_request_id(
        self, conn: Conn, owner: str, request_id: str
    ) -> run_pb2.Run | None:
        """The owner's run created with `request_id`; None when there is none (or no key)."""
        if not request_id:
            return None
        row = await self._one(
            conn, "SELECT record, last_seq FROM runs WHERE owner = $1 AND request_id = $2",
            owner, request_id,
        )  # fmt: skip
        return None if row is None else rows.run(row)

    async def _insert_run(self, conn: Conn, new: run_pb2.Run) -> None:
        """Insert a run record (`runs.prepare_new`). An existing id, request id or active run
        of the conversation raises `UNIQUE_VIOLATION` (`runs_pkey`, `runs_owner_request_id`,
        `runs_one_active_per_conversation`)."""
        cols = rows.run_columns(new)
        await self._execute(
            conn, self.INSERT_RUN,
            new.id, new.owner, new.conversation_id, new.spec.request_id or None, cols["input"],
            self._time(cols["create_time"]), *self._run_values(cols),
        )  # fmt: skip

    async def record_heartbeats(
        self, beats: Sequence[run_pb2.Run], owner: str | None, now_us: int
    ) -> list[tuple[run_pb2.Run, bool] | None]:
        async with self._transaction() as conn:
            found = await self._lock_runs(conn, [b.id for b in beats])
            stored = {
                run_id: rows.run(row[4:])
                for run_id, row in found.items()
                if owner is None or row[1] == owner
            }
            outcomes = run_rules.apply_heartbeats(beats, stored, now_us)
            updated = [o[0] for o in outcomes if o is not None and o[1]]
            if updated:
                await self._write_heartbeats(conn, updated)
        return outcomes

    async def _write_heartbeats(self, conn: Conn, runs: list[run_pb2.Run]) -> None:
        """Write the records `record_heartbeats` changed, their rows locked (a dialect may
        write only the columns a heartbeat changes, in one statement)."""
        await self._executemany(conn, self.UPDATE_RUN, [self._run_args(r) for r in runs])

    async def claim_run(
        self,
        run_id: str,
        owner_instance: str,
        lease_epoch: int,
        stale_after_us: int,
        now_us: int,
    ) -> ClaimedRun:
        async with self._transaction() as conn:
            row = await self._lock_run_end(conn, run_id)
            run = run_rules.claim(
                rows.run(row), bool(row[2]), owner_instance, lease_epoch, stale_after_us, now_us
            )
            checkpoint = await self._claim_write(conn, run)
        return ClaimedRun(run, checkpoint)

    async def _lock_run_end(self, conn: Conn, run_id: str) -> Row:
        """The run's `(record, last_seq, events_ended)`, locked.

        Raises:
            NotFound: no such run.
        """
        row = await self._one(
            conn, "SELECT record, last_seq, events_ended FROM runs WHERE id = $1 FOR UPDATE",
            run_id,
        )  # fmt: skip
        if row is None:
            raise run_not_found(run_id)
        return row

    async def release_run(
        self, run_id: str, lease_epoch: int, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        async with self._transaction() as conn:
            row = await self._lock_run_end(conn, run_id)
            stored = rows.run(row)
            released = run_rules.release(stored, bool(row[2]), lease_epoch, now_us)
            if released is None:
                return stored, False
            await self._execute(conn, self.UPDATE_RUN, *self._run_args(released))
        return released, True

    async def record_input(
        self,
        run_id: str,
        owner: str | None,
        answer: run_pb2.RunEvent.InputReceived,
        now_us: int,
    ) -> RecordedInput:
        async with self._transaction() as conn:
            row = await self._one(conn, _LOCK_EVENT_ROW, run_id)
            answers = await self._all(
                conn, "SELECT event FROM run_events WHERE run_id = $1 AND kind = $2 ORDER BY seq",
                run_id, INPUT_ANSWERS_KIND,
            )  # fmt: skip
            if row is None or (owner is not None and row[0] != owner):
                raise run_not_found(run_id)
            answered = run_rules.answer_input(
                rows.run(row[3:]),
                answer,
                [run_pb2.RunEvent.FromString(bytes(r[0])) for r in answers],
                row[1] + 1,
                now_us,
            )
            event = answered.event
            if not answered.new:
                return RecordedInput(answered.run, event, [])
            batch = Batch(
                event.seq,
                [event.SerializeToString(deterministic=True)],
                [INPUT_ANSWERS_KIND],
                False,
            )
            _, new = await self._append_events(conn, run_id, row[1], bool(row[2]), batch)
            await self._execute(conn, self.UPDATE_RUN, *self._run_args(answered.run))
            checkpoint = await self._one(conn, _CHECKPOINT, run_id)
            if checkpoint is not None:
                await self._execute(
                    conn,
                    "UPDATE run_checkpoints SET seq = $2, checkpoint = $3, update_time = $4 "
                    "WHERE run_id = $1",
                    run_id,
                    event.seq,
                    run_rules.moved_checkpoint(bytes(checkpoint[0]), event.seq),
                    self._time(now_us),
                )
        return RecordedInput(answered.run, event, new)

    async def delete_run(self, run_id: str, owner: str | None) -> bool:
        async with self._session() as conn:
            # One statement: the row lock serializes it with the run's writers, and
            # run_events and run_checkpoints go with the row (ON DELETE CASCADE).
            row = await self._one(
                conn, f"DELETE FROM runs WHERE id = $1 AND {_OWNED} RETURNING id", run_id, owner
            )
        return row is not None

    async def get_run(self, run_id: str, owner: str | None) -> run_pb2.Run | None:
        async with self._session() as conn:
            row = await self._one(
                conn, f"SELECT record, last_seq FROM runs WHERE id = $1 AND {_OWNED}",
                run_id, owner,
            )  # fmt: skip
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
            before = arg(self._time(where.heartbeat_before_us))
            conditions.append(f"coalesce(heartbeat_time, create_time) < {before}")
        if where.input_expire_before_us is not None:  # the partial index runs_input_expiry
            before = arg(self._time(where.input_expire_before_us))
            conditions.append(f"status = 6 AND input_expire_time < {before}")
        if after is not None:
            conditions.append(
                f"(create_time, id) < ({arg(self._time(after[0]))}, {arg(after[1])}::uuid)"
            )
        sql = "SELECT record, last_seq FROM runs"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY create_time DESC, id DESC LIMIT {arg(limit)}"
        async with self._session() as conn:
            found = await self._all(conn, sql, *args)
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
        async with self._transaction() as conn:
            row = await self._one(conn, _LOCK_EVENT_ROW, run_id)
            if row is None or (owner is not None and row[0] != owner):
                raise run_not_found(run_id)
            run = rows.run(row[3:])
            # The fence: the epoch is in the row locked above, so no claim can move it
            # until this transaction ends.
            run_rules.check_lease(run, lease_epoch)
            stored_last = row[1]
            first_new, new = await self._append_events(
                conn, run_id, stored_last, bool(row[2]), batch
            )
            run.last_seq = max(run.last_seq, batch.last_seq)
            if checkpoint is not None:
                event_rules.check_checkpoint(
                    checkpoint.seq, max(stored_last, batch.last_seq), run_id
                )
                await self._execute(
                    conn, _PUT_CHECKPOINT,
                    run_id, checkpoint.seq, checkpoint.data, self._time(checkpoint.now_us),
                )  # fmt: skip
            if update is not None:
                run = run_rules.apply_update(run, update.values, update.paths, update.now_us)
                await self._execute(conn, self.UPDATE_RUN, *self._run_args(run))
        return AppendedEvents(max(stored_last, batch.last_seq), first_new, new, run)

    async def _append_events(
        self, conn: Conn, run_id: str, stored_last: int, ended: bool, batch: Batch
    ) -> tuple[int, list[bytes]]:
        """`append_events` inside the caller's transaction, the run's row being locked (or
        just inserted) with `stored_last` (its `event_seq`) and `ended`. Returns
        `(first new seq, new payloads)`."""
        repeated = await self._check_batch(conn, run_id, stored_last, ended, batch)
        new = batch.payloads[repeated:]
        if new:
            events = NewEvents()
            events.add(run_id, batch, repeated)
            await self._store_events(conn, events)
        return batch.first_seq + repeated, new

    async def _check_batch(
        self, conn: Conn, run_id: str, stored_last: int, ended: bool, batch: Batch
    ) -> int:
        """The event-log rules for `batch` on a run whose log ends at `stored_last`
        (`ended`: with its terminal event): how many of its events are stored already.

        Raises:
            FailedPrecondition: SEQ_GAP, SEQ_CONFLICT (a stored prefix differs), RUN_ENDED.
        """
        repeated = event_rules.overlap(stored_last, batch, run_id)
        if repeated:
            stored = await self._all(
                conn, _STORED_EVENTS, run_id, batch.first_seq, batch.first_seq + repeated - 1
            )
            event_rules.check_repeat([r[0] for r in stored], batch, run_id)
        event_rules.check_open(ended, len(batch.payloads) - repeated, run_id, stored_last)
        return repeated

    async def append_event_batches(
        self, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        async with self._transaction() as conn:
            return await self._append_batches_checked(conn, batches, owner)

    async def _append_batches_checked(
        self, conn: Conn, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        """`append_event_batches` inside the caller's transaction: lock the runs, apply
        every rule of `chorus.history.events` and `chorus.history.runs` per batch, store
        the accepted batches' new events together."""
        outcomes: list[BatchOutcome] = []
        events = NewEvents()
        found = await self._lock_runs(conn, [item.run_id for item in batches])
        for item in batches:
            run_id, batch = item.run_id, item.batch
            row = found.get(run_id)
            try:
                if row is None or (owner is not None and row[1] != owner):
                    raise run_not_found(run_id)
                run = rows.run(row[4:])
                run_rules.check_lease(run, item.lease_epoch)
                stored_last = row[2]
                repeated = await self._check_batch(conn, run_id, stored_last, bool(row[3]), batch)
            except ChorusError as exc:
                outcomes.append(exc)
                continue
            new = batch.payloads[repeated:]
            if new:
                events.add(run_id, batch, repeated)
            run.last_seq = max(run.last_seq, batch.last_seq)
            outcomes.append(
                AppendedEvents(
                    max(stored_last, batch.last_seq), batch.first_seq + repeated, new, run
                )
            )
        if events.payloads:
            await self._store_events(conn, events)
        return outcomes

    async def event_log_state(self, run_id: str) -> tuple[int, bool] | None:
        async with self._session() as conn:
            row = await self._one(
                conn, "SELECT event_seq, events_ended FROM runs WHERE id = $1", run_id
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
        sql = "SELECT seq, event FROM run_events WHERE run_id = $1 AND seq > $2 AND seq <= $3"
        args: list[Any] = [run_id, after_seq, 2**62 if until_seq is None else until_seq]
        if kinds:
            only, extra = self._in_texts("kind", 4, kinds)
            sql += f" AND {only}"
            args.extend(extra)
        sql += f" ORDER BY seq LIMIT ${len(args) + 1}"
        async with self._session() as conn:
            found = await self._all(conn, sql, *args, limit)
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
            except self.UNIQUE_VIOLATION as exc:
                if attempt + 1 < attempts:
                    continue
                index = self._violated(exc)
                if index == "runs_one_active_per_conversation":
                    raise await self._conversation_busy(run.conversation_id) from None
                # PostgreSQL's one-statement start may hit the run's first event before
                # its row: a used run id either way.
                if index in ("runs_pkey", "run_events_pkey"):
                    raise run_exists(run.id) from None
                if index == "conversations_pkey":
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
        """One try of `record_run_start`: its transaction. A used run or conversation id,
        or an active run in the conversation, raises `UNIQUE_VIOLATION`."""
        async with self._transaction() as conn:
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
                appended = AppendedMessages(self._conversation(conv), [], [])
            payloads: list[bytes] = []
            if events is not None:
                _, payloads = await self._append_events(conn, new.id, 0, False, events)
                new.last_seq = events.last_seq
        return StartedRun(
            new, True, appended.conversation, appended.messages, appended.added, recent, payloads
        )
