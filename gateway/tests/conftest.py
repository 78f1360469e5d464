"""Fixtures of the gateway suite: the real services as processes, gateways in front of them.

* `backend` — provider-svc (simulator), history-svc (embedded SQLite) and orchestrator-svc,
  each `python -m chorus.<service>` on port 0 with a shared internal token (session scope).
* `gateways` — starts `python -m chorus.gateway` processes on port 0 with extra settings
  (auth modes, rate limits, …), one per distinct configuration, reused for the session.
* `gateway` — the default gateway: auth_mode=none on loopback, generous rate limits.
* `slow_gateway` — a gateway whose provider-svc streams at 40 tokens/s (its own provider
  and orchestrator, the same history), so a person — or a browser test — can watch.
* `chromium`, `browser` — Debian's chromium driven by Playwright (browser tests, module scope).

Helpers for SSE (`read_sse`) and run specs live in `gateway_helpers.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parent))  # gateway_helpers (pytest uses importlib mode)

from gateway_helpers import (
    API_KEYS,
    CHROMIUM,
    CHROMIUM_ARGS,
    Backend,
    Gateways,
    api_key_hashes_json,
    base_env,
)

from chorus.core.testing import ServiceProcess, backend_processes


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """provider-svc, history-svc and orchestrator-svc as real processes."""
    with backend_processes(base_env(tmp_path_factory.mktemp("gateway-backend"))) as b:
        yield Backend(b.provider, b.history, b.orchestrator, b.processes)


@pytest.fixture(scope="session")
def gateways(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """Starts gateways with given settings in front of `backend`."""
    pool = Gateways(backend, tmp_path_factory.mktemp("gateway-data"))
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def gateway(gateways: Gateways) -> str:
    """The default gateway's base URL: auth_mode=none on 127.0.0.1."""
    return gateways.url()


@pytest.fixture(scope="session")
def slow_gateway(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway in front of a simulator at 40 tokens/s (for the browser tests)."""
    env = {
        **base_env(tmp_path_factory.mktemp("slow-backend")),
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "40",
        "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0.1",
    }
    provider = ServiceProcess("chorus.provider", env={**env, "CHORUS_PROVIDER_PORT": "0"})
    processes = [provider]
    try:
        orchestrator = ServiceProcess(
            "chorus.orchestrator",
            env={
                **env,
                "CHORUS_ORCHESTRATOR_PORT": "0",
                "CHORUS_PROVIDER_ADDRESS": provider.wait_ready(),
                "CHORUS_HISTORY_ADDRESS": backend.history,
            },
        )
        processes.append(orchestrator)
        slow = Backend(provider.wait_ready(), backend.history, orchestrator.wait_ready())
        pool = Gateways(slow, tmp_path_factory.mktemp("slow-gateway"))
        try:
            yield pool.url()
        finally:
            pool.stop()
    finally:
        for proc in reversed(processes):
            proc.stop()


@pytest.fixture(scope="session")
def keyed_gateway(gateways: Gateways) -> str:
    """A gateway in apikey mode with two users, alice and bob (`API_KEYS`)."""
    return gateways.url(auth_mode="apikey", api_key_hashes=api_key_hashes_json())


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the default gateway."""
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as c:
        yield c


@pytest.fixture
async def alice(keyed_gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the apikey gateway, authenticated as alice."""
    headers = {"Authorization": f"Bearer {API_KEYS['alice']}"}
    async with httpx.AsyncClient(base_url=keyed_gateway, timeout=30, headers=headers) as c:
        yield c


@pytest.fixture
async def bob(keyed_gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the apikey gateway, authenticated as bob."""
    headers = {"Authorization": f"Bearer {API_KEYS['bob']}"}
    async with httpx.AsyncClient(base_url=keyed_gateway, timeout=30, headers=headers) as c:
        yield c


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, or a skip that CI=true turns into a failure."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"requires-service: chromium at {CHROMIUM} (apt-get install chromium; make browser-deps)"
        )
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: str) -> AsyncIterator[Any]:
    """A headless chromium (Playwright) for the module's tests."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()
