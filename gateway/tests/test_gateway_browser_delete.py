"""The web page deletes runs and conversations (issue 20's leftover), in a real browser:
Playwright driving Debian's chromium against a gateway in front of the real services.

The run head's Delete and each conversation's × ask for a confirmation (dismissed: nothing
happens), then call `DELETE /runs/{id}` or `DELETE /conversations/{id}`; the run shown goes
from the page (its saved transcript and `#run=` too) when it, or its conversation, was
deleted. A run waiting for input is active: the confirmation says it is cancelled first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from gateway_helpers import browser_page

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PENDING = '[data-testid="input-card"][data-state="pending"]'


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, gateway: str) -> AsyncIterator[Any]:
    async with browser_page(browser, gateway) as tab:
        yield tab


@pytest_asyncio.fixture(loop_scope="module")
async def api(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{gateway}/api/v1", timeout=30) as client:
        yield client


async def _start(page: Any, template: str, topic: str) -> str:
    await page.goto("/")
    await page.wait_for_selector(f'#template option[value="{template}"]', state="attached")
    await page.select_option("#template", template)
    await page.fill("#topic", topic)
    if template == "duet":
        await page.fill("#max-turns", "2")
    await page.click("#start")
    await page.wait_for_function("location.hash.startsWith('#run=')")
    return str(await page.evaluate("location.hash")).split("=", 1)[1]


async def _finished(page: Any) -> None:
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )


def _answer_dialogs(page: Any, accept: bool) -> list[str]:
    """Answers the next confirmation; returns the list its message is appended to."""
    messages: list[str] = []

    async def answer(dialog: Any) -> None:
        messages.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", answer)
    return messages


async def _answered(messages: list[str]) -> str:
    """The confirmation's message, once the dialog handler has answered it."""
    deadline = asyncio.get_running_loop().time() + 10
    while not messages:
        assert asyncio.get_running_loop().time() < deadline, "no confirmation asked"
        await asyncio.sleep(0.02)
    return messages[0]


async def _run_section_gone(page: Any) -> None:
    await page.wait_for_function("document.getElementById('run').hidden")
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("sessionStorage.getItem('chorus.run')") is None
    assert await page.locator("#transcript > *").count() == 0


async def test_delete_run_asks_first_then_deletes_it_and_clears_the_page(page, api):
    run_id = await _start(page, "duet", "Tea or coffee?")
    await _finished(page)
    conversation_id = (await api.get(f"/runs/{run_id}")).json()["conversationId"]

    asked = _answer_dialogs(page, accept=False)
    await page.click('[data-testid="delete-run"]')
    question = await _answered(asked)
    assert "Delete this run" in question and "cancelled first" not in question
    assert (await api.get(f"/runs/{run_id}")).status_code == 200, "dismissed: kept"
    assert not await page.evaluate("document.getElementById('run').hidden")

    asked = _answer_dialogs(page, accept=True)
    await page.click('[data-testid="delete-run"]')
    await _run_section_gone(page)
    assert await _answered(asked)
    assert (await api.get(f"/runs/{run_id}")).status_code == 404
    # its messages stay in the conversation
    messages = (await api.get(f"/conversations/{conversation_id}/messages")).json()
    assert messages.get("messages")

    await page.reload()  # nothing to restore
    await page.wait_for_selector('#template option[value="duet"]', state="attached")
    assert await page.evaluate("document.getElementById('run').hidden")


async def test_deleting_a_run_waiting_for_input_cancels_it_first(page, api):
    run_id = await _start(page, "assistant-approval", "What is 17.5% of 2,340?")
    await page.locator(PENDING).wait_for(timeout=30_000)
    asked = _answer_dialogs(page, accept=True)
    await page.click('[data-testid="delete-run"]')
    await _run_section_gone(page)
    assert "cancelled first" in await _answered(asked)
    assert (await api.get(f"/runs/{run_id}")).status_code == 404


async def test_delete_conversation_removes_it_with_its_runs_and_the_run_shown(page, api):
    run_id = await _start(page, "duet", "Mountains or the sea?")
    await _finished(page)
    conversation_id = (await api.get(f"/runs/{run_id}")).json()["conversationId"]
    await page.click("#refresh-conversations")
    item = page.locator(f'#conversations li[data-conversation="{conversation_id}"]')
    await item.wait_for()
    remove = item.locator('[data-testid="delete-conversation"]')

    asked = _answer_dialogs(page, accept=False)
    await remove.click()
    assert "with its messages and runs" in await _answered(asked)
    assert (await api.get(f"/conversations/{conversation_id}")).status_code == 200
    assert await item.count() == 1

    _answer_dialogs(page, accept=True)
    await remove.click()
    await item.wait_for(state="detached")
    await _run_section_gone(page)
    assert (await api.get(f"/conversations/{conversation_id}")).status_code == 404
    assert (await api.get(f"/runs/{run_id}")).status_code == 404


async def test_a_run_deleted_elsewhere_goes_from_the_page_with_a_note(page, api):
    """DELETE answering 404 (deleted in another tab): the page drops it and says so."""
    run_id = await _start(page, "duet", "Cats or dogs?")
    await _finished(page)
    assert (await api.delete(f"/runs/{run_id}")).status_code == 204  # behind the page's back
    _answer_dialogs(page, accept=True)
    await page.click('[data-testid="delete-run"]')
    await _run_section_gone(page)
    assert await page.text_content("#banner") == "The run was already deleted."
