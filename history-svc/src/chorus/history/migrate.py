"""Schema migrations with yoyo-migrations: `migrations/postgres/` and `migrations/sqlite/`.

Migrations are plain SQL files applied in name order, each in its own transaction, recorded
in yoyo's `_yoyo_migration` table and serialized across processes by yoyo's lock table (two
replicas starting at once apply each migration exactly once). They run on start unless
`CHORUS_MIGRATE_ON_START=false`, and on demand with `python -m chorus.history migrate`.
yoyo is synchronous (psycopg 3 for PostgreSQL, sqlite3 for SQLite): call these functions
from a thread in async code.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

from chorus.history.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def yoyo_uri(settings: Settings) -> str:
    """The yoyo connection URI of the configured database (PostgreSQL through psycopg 3)."""
    if settings.database_url:
        parts = urlsplit(settings.database_url)
        return urlunsplit(("postgresql+psycopg", *parts[1:]))
    return f"sqlite:///{settings.sqlite_path.resolve()}"


def _source(settings: Settings) -> str:
    return str(MIGRATIONS_DIR / ("postgres" if settings.database_url else "sqlite"))


def pending_migrations(settings: Settings) -> list[str]:
    """Ids of the migrations not yet applied."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = get_backend(yoyo_uri(settings))
    try:
        return [m.id for m in backend.to_apply(read_migrations(_source(settings)))]
    finally:
        backend.connection.close()


def apply_migrations(settings: Settings, lock_timeout_s: float = 60.0) -> list[str]:
    """Apply every pending migration under yoyo's lock; returns the ids applied (in order).

    Raises:
        yoyo.exceptions.LockTimeout: another process held the lock for `lock_timeout_s`.
        psycopg.OperationalError / sqlite3.Error: the database is unreachable or refused.
    """
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = get_backend(yoyo_uri(settings))
    try:
        migrations = read_migrations(_source(settings))
        with backend.lock(timeout=lock_timeout_s):
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()
