"""Fixtures of the history-svc suite.

The contract suite runs every test against both back ends (`backend` fixture):

* `postgres`: PostgreSQL + Redis on this machine: a throw-away database
  (`chorus_test_<random>`, created once per session, dropped at the end) and a Redis key
  prefix unique to the test, so nothing else's keys are touched;
* `sqlite`: the embedded default, SQLite in a temporary directory + in-process cache and
  event log.

PostgreSQL/Redis missing → those tests skip locally and fail under CI=true
(`chorus.core.testing.require_service`). Helpers live in `history_helpers.py`.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

sys.path.insert(0, str(Path(__file__).parent))  # history_helpers (pytest uses importlib mode)

from history_helpers import (
    PG_HOST,
    PG_PORT,
    REDIS_HOST,
    REDIS_PORT,
    History,
    RedisServer,
    TcpProxy,
    UserStub,
    make_settings,
    running_history,
)

from chorus.core.testing import require_service, throwaway_postgres
from chorus.history.migrate import apply_migrations
from chorus.history.settings import Settings


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated throw-away PostgreSQL database for the session (dropped afterwards)."""
    with throwaway_postgres("chorus_test") as url:
        apply_migrations(make_settings(database_url=url))
        yield url


@pytest.fixture
def redis_url() -> str:
    """The machine's shared Redis (tests use a unique key prefix on it)."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix no other test or service uses."""
    return f"chorus-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_direct(key_prefix: str) -> AsyncIterator[redis.Redis]:
    """A client on the shared Redis for assertions; deletes the test's keys afterwards."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The back end under test: PostgreSQL + Redis, or the embedded SQLite + in-process."""
    return str(request.param)


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of the back end under test."""
    if backend == "postgres":
        prefix = request.getfixturevalue("key_prefix")
        request.getfixturevalue("redis_direct")  # cleans the prefix up afterwards
        return make_settings(
            database_url=request.getfixturevalue("pg_url"),
            redis_url=request.getfixturevalue("redis_url"),
            redis_key_prefix=prefix,
        )
    return make_settings(data_dir=tmp_path / "data", migrate_on_start=True)


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[History]:
    """history-svc serving on a free port in this process."""
    async with running_history(settings) as h:
        yield h


@pytest.fixture
def alice(history: History) -> UserStub:
    return history.as_user(f"alice-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def bob(history: History) -> UserStub:
    return history.as_user(f"bob-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    """A private `redis-server` on a free port that the test may kill and start again."""
    server = RedisServer()
    await server.start()
    yield server
    server.kill()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A TCP proxy to the machine's PostgreSQL that the test may cut and restore."""
    p = TcpProxy(PG_HOST, PG_PORT)
    await p.start()
    yield p
    await p.cut()


@pytest.fixture
async def pg_history(
    pg_url: str, redis_url: str, key_prefix: str, redis_direct: redis.Redis
) -> AsyncIterator[History]:
    """history-svc on PostgreSQL + Redis only (tests of what the SQLite mode has not)."""
    settings = make_settings(database_url=pg_url, redis_url=redis_url, redis_key_prefix=key_prefix)
    async with running_history(settings) as h:
        yield h


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database (to look at rows)."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()
