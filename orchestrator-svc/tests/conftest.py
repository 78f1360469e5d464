"""Fixtures of the orchestrator-svc suite.

`stack` runs provider-svc (simulator, full speed), history-svc and orchestrator-svc in the
test's event loop, each on its own port. history-svc runs on its embedded SQLite by default;
tests parametrized with `history_backend = "postgres"` run it on PostgreSQL + Redis of this
machine instead: a throw-away database (created once per session, dropped at the end) and a
Redis key prefix unique to the test (its keys are deleted afterwards). PostgreSQL / Redis
missing → those tests skip locally and fail under CI=true (`require_service`).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

sys.path.insert(0, str(Path(__file__).parent))  # orchestrator_helpers (importlib mode)

from orchestrator_helpers import (
    REDIS_HOST,
    REDIS_PORT,
    RunClient,
    Stack,
    running_stack,
)

from chorus.core.testing import require_service, throwaway_postgres


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for the session (history-svc migrates it)."""
    with throwaway_postgres("chorus_orch_test") as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix unique to the test; its keys are deleted afterwards."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"chorus-orch-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def history_backend(request: pytest.FixtureRequest) -> str:
    """`sqlite` (default) or `postgres` (indirect parametrization chooses)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def history_values(history_backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """history-svc settings of the chosen back end."""
    if history_backend == "postgres":
        return {
            "database_url": request.getfixturevalue("pg_url"),
            "redis_url": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
        }
    return {}


@pytest.fixture
def orchestrator_values(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra orchestrator settings (indirect parametrization gives them)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def stack(
    tmp_path: Path, history_values: dict[str, Any], orchestrator_values: dict[str, Any]
) -> AsyncIterator[Stack]:
    """provider-svc, history-svc and orchestrator-svc on free ports in this process."""
    async with running_stack(
        tmp_path, history_values=history_values, orchestrator_values=orchestrator_values
    ) as s:
        yield s


@pytest.fixture
def alice(stack: Stack) -> RunClient:
    """RunService as a user of its own."""
    return stack.client(f"alice-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def bob(stack: Stack) -> RunClient:
    """RunService as another user."""
    return stack.client(f"bob-{uuid.uuid4().hex[:8]}")
