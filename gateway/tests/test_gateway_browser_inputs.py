"""The web page answers a run's requests for input (issue 21, item 4), in a real browser:
Playwright driving Debian's chromium against a gateway in front of the real services.

An `assistant-approval` run ("What is 17.5% of 2,340?": the simulator's assistant calls
`calculator`) shows an approval card with the tool's name and arguments; the conversation
list marks the conversation "waiting for you"; the card survives a reload (from the saved
transcript, and rebuilt from the replayed events); Approve (double-clicked: one answer)
continues the run to its final answer. Deny asks for a reason, which the card then shows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from gateway_helpers import ARTIFACTS, browser_page

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

TEMPLATE = "assistant-approval"
QUESTION = "What is 17.5% of 2,340?"
PENDING = '[data-testid="input-card"][data-state="pending"]'


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, gateway: str) -> AsyncIterator[Any]:
    async with browser_page(browser, gateway) as tab:
        yield tab


async def _start(page: Any) -> str:
    await page.goto("/")
    await page.wait_for_selector(f'#template option[value="{TEMPLATE}"]', state="attached")
    await page.select_option("#template", TEMPLATE)
    await page.fill("#topic", QUESTION)
    await page.click("#start")
    await page.wait_for_function("location.hash.startsWith('#run=')")
    return str(await page.evaluate("location.hash")).split("=", 1)[1]


async def _events(base: str, run_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        events: list[dict[str, Any]] = (await client.get(f"/api/v1/runs/{run_id}/export")).json()[
            "events"
        ]
        return events


async def _card_shows_the_call(page: Any) -> None:
    card = page.locator(PENDING)
    await card.wait_for(timeout=30_000)
    assert await card.locator(".input-tool").text_content() == "tool: calculator"
    args = await card.locator(".input-args").text_content()
    assert isinstance(json.loads(args), dict) and "\n" in args, "pretty JSON arguments"
    assert await card.locator(".input-approve").is_visible()
    assert await card.locator(".input-deny").is_visible()


async def test_approval_card_survives_reloads_and_approve_finishes_the_run(page, gateway):
    run_id = await _start(page)
    await _card_shows_the_call(page)
    assert await page.text_content("#status") == "waiting for you"
    badge = page.locator('#conversations [data-testid="waiting-badge"]')
    await badge.wait_for(timeout=10_000)
    assert await badge.text_content() == "waiting for you"

    await page.reload()  # from the saved transcript
    await _card_shows_the_call(page)
    await page.evaluate("sessionStorage.clear()")
    await page.reload()  # rebuilt from the replayed events
    await _card_shows_the_call(page)

    await page.locator(PENDING).locator(".input-approve").dblclick()
    await page.wait_for_selector('[data-testid="input-card"][data-state="approved"]')
    card = page.locator('[data-testid="input-card"]')
    assert (await card.locator(".input-outcome").text_content() or "").startswith("Approved by dev")
    assert await card.locator("button").count() == 0, "the buttons are gone"
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    assert (await page.text_content("#outcome .outcome-text") or "").strip()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "gateway-page-approval.png"), full_page=True)
    await page.locator("#refresh-conversations").click()
    await page.wait_for_function(
        "!document.querySelector('#conversations [data-testid=\"waiting-badge\"]')"
    )

    events = await _events(gateway, run_id)
    kinds = [next(k for k in e if k not in ("runId", "seq", "time", "agent")) for e in events]
    assert kinds.count("inputReceived") == 1, "a double click answers once"
    assert kinds[-1] == "runCompleted"


async def test_deny_asks_for_a_reason_and_the_card_shows_it(page, gateway):
    run_id = await _start(page)
    card = page.locator(PENDING)
    await card.wait_for(timeout=30_000)
    await card.locator(".input-deny").click()
    await card.locator(".input-reason").fill("not today")
    await card.locator(".input-deny-confirm").click()
    denied = page.locator('[data-testid="input-card"][data-state="denied"]')
    await denied.wait_for()
    assert await denied.locator(".input-outcome").text_content() == "Denied by dev: not today"
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    events = await _events(gateway, run_id)
    finished = next(e for e in events if "toolCallFinished" in e)["toolCallFinished"]
    assert not finished.get("success", False) and "not today" in finished["result"]


async def test_a_human_editors_card_takes_text_and_shows_it(page, gateway):
    await page.goto("/")
    await page.wait_for_selector(
        '#template option[value="article-pipeline-reviewed"]', state="attached"
    )
    await page.select_option("#template", "article-pipeline-reviewed")
    await page.fill("#topic", "Why bees matter.")
    await page.click("#start")
    card = page.locator(PENDING)
    await card.wait_for(timeout=60_000)
    assert "APPROVE" in (await card.locator(".input-prompt").text_content() or "")
    assert await card.locator(".input-tool").count() == 0
    await card.locator(".input-send").click()  # empty: nothing is sent
    assert await page.locator(PENDING).count() == 1
    await card.locator(".input-text").fill("APPROVE")
    await card.locator(".input-send").click()
    answered = page.locator('[data-testid="input-card"][data-state="answered"]')
    await answered.wait_for()
    assert await answered.locator(".input-outcome").text_content() == "Answered by dev: APPROVE"
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    editor = page.locator('#transcript .turn[data-agent="editor"]:visible .turn-text')
    assert await editor.all_text_contents() == ["APPROVE"], "one editor card: the answer"
    await page.screenshot(path=str(ARTIFACTS / "gateway-page-editor.png"), full_page=True)


async def test_cancel_while_waiting_closes_the_card(page, gateway):
    await _start(page)
    await page.locator(PENDING).wait_for(timeout=30_000)
    assert await page.is_enabled("#cancel")
    await page.click("#cancel")
    closed = page.locator('[data-testid="input-card"][data-state="closed"]')
    await closed.wait_for()
    assert await closed.locator("button").count() == 0
    assert (
        await closed.locator(".input-outcome").text_content() == "Not answered: the run cancelled"
    )
    assert await page.text_content("#status") == "cancelled"
