"""Settings of the history service, read from `CHORUS_*` environment variables.

With `CHORUS_DATABASE_URL` unset the service runs on the embedded default: SQLite in
`CHORUS_DATA_DIR` plus an in-process cache and event log. With `CHORUS_REDIS_URL` unset the
cache and the live event log are in-process (fine for one replica; several replicas need
Redis so that watchers on one see events appended on another).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from chorus.core.settings import CoreSettings


class Settings(CoreSettings):
    """Configuration of `python -m chorus.history` (see history-svc/README.md for the table)."""

    history_port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:pass@host:port/db). "
        "Unset: embedded SQLite in data_dir.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:port/db). Unset: in-process cache and event log.",
    )
    data_dir: Path = Field(Path("./data"), description="Directory of the embedded SQLite file.")
    migrate_on_start: bool = Field(
        True, description="Apply pending schema migrations when the service starts."
    )

    # PostgreSQL
    db_pool_min_size: int = Field(1, ge=0, description="Connections the asyncpg pool keeps open.")
    db_pool_max_size: int = Field(10, ge=1, description="Most connections the asyncpg pool opens.")
    db_connect_timeout_s: float = Field(
        5.0, gt=0, description="Seconds to open one database connection."
    )
    db_command_timeout_s: float = Field(
        30.0, gt=0, description="Seconds one database statement (or pool acquire) may take."
    )
    db_startup_timeout_s: float = Field(
        30.0, ge=0, description="Seconds to keep retrying an unreachable database at start."
    )
    health_check_interval_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between database health probes (health NOT_SERVING on failure).",
    )

    # Redis
    redis_key_prefix: str = Field(
        "chorus:", description="Prefix of every Redis key this service writes."
    )
    redis_socket_timeout_s: float = Field(
        1.0, gt=0, description="Seconds one Redis command (or connect) may take."
    )
    redis_retry_after_s: float = Field(
        1.0, gt=0, description="After a Redis failure, seconds to bypass Redis before trying again."
    )
    redis_max_connections: int = Field(64, ge=2, description="Size of the Redis connection pool.")
    redis_stream_maxlen: int = Field(
        10_000,
        ge=10,
        description="Entries (append batches) kept per run in the Redis event stream; "
        "older events are served from the database.",
    )
    redis_stream_ttl_s: int = Field(
        86_400,
        ge=60,
        description="A run's Redis event stream expires this long after its last append.",
    )

    # Cache
    cache_ttl_s: int = Field(
        300, ge=1, description="Lifetime of a cached conversation, message list or run, seconds."
    )
    cache_max_entries: int = Field(
        10_000, ge=10, description="Entries of the in-process cache (embedded default)."
    )
    cache_max_messages: int = Field(
        1000,
        ge=0,
        le=1000,
        description="Messages cached per conversation (GetConversation's limit).",
    )

    # Event log (in-process) and watchers
    local_event_log_runs: int = Field(
        1000, ge=1, description="Runs whose recent events the in-process event log keeps."
    )
    local_event_log_events: int = Field(
        10_000, ge=10, description="Recent events the in-process event log keeps per run."
    )
    watch_idle_poll_s: float = Field(
        2.0,
        gt=0,
        description="A watcher with no live event for this long checks the database (catches "
        "events the live log missed, and runs that ended without a terminal event).",
    )
    watch_degraded_poll_s: float = Field(
        0.25, gt=0, description="Database poll interval of watchers while the live log is down."
    )
    watch_terminal_grace_s: float = Field(
        10.0,
        ge=0,
        description="A watch ends when the run's status is terminal for this long and no "
        "terminal event arrived.",
    )
    watch_buffer_events: int = Field(
        10_000, ge=100, description="Live events buffered per watcher before it re-reads the log."
    )

    # Limits not fixed by the contract
    max_event_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="Largest serialized RunEvent accepted, bytes."
    )

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset for the embedded SQLite)")
        return value

    @property
    def sqlite_path(self) -> Path:
        """The embedded database file."""
        return self.data_dir / "history.sqlite3"
