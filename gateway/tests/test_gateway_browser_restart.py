"""Issue 21's "done when", in a real browser: an `assistant-approval` run asks before calling
its tool; the orchestrator and the gateway are restarted while it waits; Approve in the
reloaded page lets it finish.

Playwright drives Debian's chromium against a gateway and an orchestrator of this module's
own (fixed ports, so both come back where the page and the gateway expect them), in front of
the session's provider-svc and history-svc.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from gateway_helpers import ARTIFACTS, Backend, base_env, browser_page

from chorus.core.testing import ServiceProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PENDING = '[data-testid="input-card"][data-state="pending"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Restartable:
    """An orchestrator and a gateway on fixed ports that a test can stop and start again."""

    backend: Backend
    data_dir: Path
    orchestrator_port: int
    gateway_port: int
    orchestrator: ServiceProcess | None = None
    gateway: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        env = base_env(self.data_dir)
        self.orchestrator = ServiceProcess(
            "chorus.orchestrator",
            env={
                **env,
                "CHORUS_ORCHESTRATOR_PORT": str(self.orchestrator_port),
                "CHORUS_PROVIDER_ADDRESS": self.backend.provider,
                "CHORUS_HISTORY_ADDRESS": self.backend.history,
            },
        )
        orchestrator = self.orchestrator.wait_ready()
        self.gateway = ServiceProcess(
            "chorus.gateway",
            env={
                **env,
                "CHORUS_PROVIDER_ADDRESS": self.backend.provider,
                "CHORUS_HISTORY_ADDRESS": self.backend.history,
                "CHORUS_ORCHESTRATOR_ADDRESS": orchestrator,
                "CHORUS_GATEWAY_PORT": str(self.gateway_port),
            },
        )
        self.gateway.wait_ready()

    def stop(self) -> None:
        for proc in (self.gateway, self.orchestrator):
            if proc is not None:
                proc.terminate(signal.SIGTERM)
                assert proc.proc.wait(30) == 0, proc.lines[-20:]
        self.gateway = self.orchestrator = None


@pytest.fixture(scope="module")
def restartable(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restartable]:
    stack = Restartable(backend, tmp_path_factory.mktemp("restartable"), _free_port(), _free_port())
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, restartable: Restartable) -> AsyncIterator[Any]:
    async with browser_page(browser, restartable.url) as tab:
        yield tab


async def test_a_waiting_run_survives_a_restart_and_approve_in_the_reloaded_page_finishes_it(
    page: Any, restartable: Restartable
) -> None:
    await page.goto("/")
    await page.wait_for_selector('#template option[value="assistant-approval"]', state="attached")
    await page.select_option("#template", "assistant-approval")
    await page.fill("#topic", "What is 17.5% of 2,340?")
    await page.click("#start")
    await page.wait_for_function("location.hash.startsWith('#run=')")
    run_id = str(await page.evaluate("location.hash")).split("=", 1)[1]
    card = page.locator(PENDING)
    await card.wait_for(timeout=30_000)
    assert await card.locator(".input-tool").text_content() == "tool: calculator"

    restartable.stop()  # the run waits in history-svc alone
    restartable.start()

    await page.reload()
    await page.locator(PENDING).wait_for(timeout=30_000)
    await page.locator(PENDING).locator(".input-approve").click()
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    assert "409.5" in (await page.text_content("#outcome .outcome-text") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "gateway-page-approval-restart.png"), full_page=True)

    async with httpx.AsyncClient(base_url=restartable.url, timeout=30) as client:
        events = (await client.get(f"/api/v1/runs/{run_id}/export")).json()["events"]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = [next(k for k in e if k not in ("runId", "seq", "time", "agent")) for e in events]
    assert kinds.count("inputRequested") == kinds.count("inputReceived") == 1
    assert "runResumed" not in kinds and kinds[-1] == "runCompleted"
