"""SQLite store (aiosqlite), the embedded default when no database URL is configured: the
dialect of `stores.sql.SqlStore`.

One connection in WAL mode, used by one coroutine at a time (an asyncio lock), and every
read-then-write inside `BEGIN IMMEDIATE`, which takes SQLite's write lock up front: the same
all-or-nothing and per-run/per-conversation serialization as the PostgreSQL store, also
against another process sharing the file (busy timeout 5 s). Times are integer µs. The
shared statements (PostgreSQL's form) are rewritten once each by `translate`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import aiosqlite

from chorus.history.settings import Settings
from chorus.history.stores.base import database_unavailable
from chorus.history.stores.sql import Conn, NewEvents, Row, SqlStore

_CAST = re.compile(r"::[a-z]+(\[\])?")
_PLACEHOLDER = re.compile(r"\$(\d+)")
_ROW_LOCK = re.compile(r" FOR (UPDATE|SHARE)\b")
_UNIQUE_INDEXES = {
    "runs.id": "runs_pkey",
    "runs.owner, runs.request_id": "runs_owner_request_id",
    "runs.conversation_id": "runs_one_active_per_conversation",
    "conversations.id": "conversations_pkey",
}
"""SQLite names a unique violation by its columns (`UNIQUE constraint failed: runs.id`);
the PostgreSQL names of those indexes (migrations/sqlite/ has the same ones)."""
_MAX_PARAMETERS = 500
"""Run ids per statement, under SQLite's host-parameter limit (999 before 3.32)."""


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """A statement of `SqlStore` (PostgreSQL's form) in SQLite's: `$n` → `?n`, casts
    (`::uuid`, `::text[]`, …) dropped, `FOR UPDATE` / `FOR SHARE` dropped (the
    transaction's `BEGIN IMMEDIATE` holds the whole database), `GREATEST(` → `max(` and
    `interval '1 microsecond'` → `1` (times are integer µs). Nothing else is rewritten:
    a statement needing more is a dialect hook."""
    sql = _ROW_LOCK.sub("", _PLACEHOLDER.sub(r"?\1", _CAST.sub("", sql)))
    return sql.replace("GREATEST(", "max(").replace("interval '1 microsecond'", "1")


class SqliteStore(SqlStore):
    """`Store` on one SQLite file.

    Args:
        conn: an open aiosqlite connection (autocommit mode) on a migrated database.
    """

    kind = "sqlite"
    UNIQUE_VIOLATION: ClassVar[type[Exception]] = sqlite3.IntegrityError

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

    # Dialect hooks (`SqlStore`)

    def _session(self) -> Any:
        return self._use()

    def _transaction(self) -> Any:
        return self._use(write=True)

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

    # One trip to aiosqlite's thread per statement (`execute_fetchall`), not three (execute,
    # fetch, close the cursor): each trip is a queue hand-off and a wake-up of both sides.
    # Every `_one` statement finds at most a few rows (by key, or LIMIT).

    async def _one(self, conn: Conn, sql: str, *args: Any) -> Row | None:
        found = await conn.execute_fetchall(translate(sql), args)
        return found[0] if found else None

    async def _all(self, conn: Conn, sql: str, *args: Any) -> list[Row]:
        return list(await conn.execute_fetchall(translate(sql), args))

    async def _execute(self, conn: Conn, sql: str, *args: Any) -> None:
        await conn.execute(translate(sql), args)

    async def _executemany(self, conn: Conn, sql: str, args: list[tuple[Any, ...]]) -> None:
        await conn.executemany(translate(sql), args)

    def _time(self, us: int | None) -> Any:
        return us

    def _times(self, value: Any) -> int | None:
        return value  # type: ignore[no-any-return]

    def _in_texts(self, column: str, index: int, values: Sequence[str]) -> tuple[str, list[Any]]:
        marks = ", ".join(f"${index + i}" for i in range(len(values)))
        return f"{column} IN ({marks})", list(values)

    async def _lock_runs(self, conn: Conn, run_ids: Sequence[str]) -> dict[str, Row]:
        # No row locks: BEGIN IMMEDIATE holds the database.
        found: dict[str, Row] = {}
        for start in range(0, len(run_ids), _MAX_PARAMETERS):
            chunk = run_ids[start : start + _MAX_PARAMETERS]
            for row in await self._all(
                conn,
                "SELECT id, owner, event_seq, events_ended, record, last_seq FROM runs "
                f"WHERE id IN ({', '.join('?' * len(chunk))})",
                *chunk,
            ):
                found[row[0]] = row
        return found

    async def _store_events(self, conn: Conn, events: NewEvents) -> None:
        await conn.executemany(
            "INSERT INTO run_events (run_id, seq, kind, event) VALUES (?, ?, ?, ?)",
            zip(events.run_ids, events.seqs, events.kinds, events.payloads, strict=True),
        )
        await conn.executemany(
            "UPDATE runs SET event_seq = ?2, events_ended = ?3, "
            "last_seq = max(last_seq, ?2) WHERE id = ?1",
            [(run_id, end[0], end[1]) for run_id, end in events.ends.items()],
        )

    def _violated(self, exc: Exception) -> str:
        failed = str(exc).removeprefix("UNIQUE constraint failed: ")
        return _UNIQUE_INDEXES.get(failed, "")
