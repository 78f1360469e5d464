"""The web page in a real browser: Playwright driving Debian's chromium against a gateway in
front of the real services (simulator at 40 tokens/s, so text arrives visibly).

Start a duet and watch both agents' text grow token by token; reload mid-run and see the
transcript continue from the last seq without repeating; cancel a run; export it as JSON.
A screenshot of the finished page is kept in `test-artifacts/`.
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


# Records, for every turn node, each distinct text length it had (in order).
RECORD_GROWTH = """
() => {
  window.__growth = [];
  const seen = new Map();
  const observe = () => {
    document.querySelectorAll('#transcript .turn').forEach((node, i) => {
      const len = (node.querySelector('.turn-text') || {textContent: ''}).textContent.length;
      const key = i + ':' + node.dataset.agent;
      const lens = seen.get(key) || [];
      if (lens[lens.length - 1] !== len) { lens.push(len); seen.set(key, lens); }
    });
    window.__growth = Array.from(seen.entries());
  };
  new MutationObserver(observe).observe(document.getElementById('transcript'),
    {subtree: true, childList: true, characterData: true});
}
"""


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, slow_gateway: str) -> AsyncIterator[Any]:
    async with browser_page(browser, slow_gateway) as tab:
        yield tab


async def _start(
    page: Any, template: str, topic: str, max_turns: int, models: dict[str, str]
) -> str:
    await page.goto("/")
    await page.wait_for_selector(f'#template option[value="{template}"]', state="attached")
    await page.select_option("#template", template)
    for agent, model in models.items():
        await page.select_option(f'#agent-models select[data-agent="{agent}"]', model)
    await page.fill("#max-turns", str(max_turns))
    await page.fill("#topic", topic)
    await page.click("#start")
    await page.wait_for_function("location.hash.startsWith('#run=')")
    return (await page.evaluate("location.hash")).split("=", 1)[1]


async def _export(base: str, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return (await client.get(f"/api/v1/runs/{run_id}/export")).json()


async def test_duet_streams_token_by_token_and_survives_a_reload(page, slow_gateway):
    run_id = await _start(
        page, "duet", "Should cities ban cars downtown?", 4, {"Blaise": "simulator/sim-1"}
    )
    await page.evaluate(RECORD_GROWTH)
    # Mid-run: Ada's turn is done and Blaise is speaking.
    await page.wait_for_function(
        "document.querySelectorAll('#transcript .turn[data-agent=\"Blaise\"] .turn-text')[0]"
        "?.textContent.length > 20",
        timeout=30_000,
    )
    assert (await page.text_content("#status")) == "running"
    growth = dict(await page.evaluate("window.__growth"))
    ada = next(v for k, v in growth.items() if k.endswith(":Ada"))
    assert len(ada) >= 5, f"Ada's text arrived in pieces: {ada}"

    resumed_after: list[str] = []
    page.on(
        "request",
        lambda r: (
            resumed_after.append(r.headers.get("last-event-id", "0"))
            if r.url.endswith(f"/runs/{run_id}/events")
            else None
        ),
    )
    before = await page.eval_on_selector_all(
        "#transcript .turn .turn-text", "ns => ns.map(n => n.textContent)"
    )
    await page.reload()
    await page.wait_for_selector("#transcript .turn")
    await page.evaluate(RECORD_GROWTH)
    after = await page.eval_on_selector_all(
        "#transcript .turn .turn-text", "ns => ns.map(n => n.textContent)"
    )
    assert after[: len(before) - 1] == before[:-1], "the transcript is restored after the reload"
    assert resumed_after and int(resumed_after[0]) > 0, "the stream resumed after the last seq"

    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    growth = dict(await page.evaluate("window.__growth"))
    later_blaise = [v for k, v in growth.items() if k.endswith(":Blaise")][-1]
    assert len(later_blaise) >= 5, f"Blaise's text arrived in pieces: {later_blaise}"

    export = await _export(slow_gateway, run_id)
    said = [(m["agent"], m["content"]) for m in export["messages"] if m["role"] == "ROLE_ASSISTANT"]
    shown = await page.eval_on_selector_all(
        "#transcript .turn",
        "ns => ns.map(n => [n.dataset.agent, n.querySelector('.turn-text').textContent])",
    )
    assert [tuple(s) for s in shown] == said, "every turn shown once, with its whole text"
    assert {agent for agent, _ in said} == {"Ada", "Blaise"}
    assert await page.text_content("#progress-label") == "turn 4 of 4"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "gateway-page-finished.png"), full_page=True)


async def test_cancel_button_ends_the_run(page):
    await _start(page, "duet", "A very long debate", 8, {})
    await page.wait_for_function(
        "document.querySelector('#transcript .turn .turn-text')?.textContent.length > 5",
        timeout=30_000,
    )
    await page.click("#cancel")
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'cancelled'", timeout=30_000
    )
    assert "Cancelled by dev" in (await page.text_content("#outcome") or "")
    assert await page.is_disabled("#cancel")


async def test_export_downloads_the_run_as_json(page, tmp_path):
    run_id = await _start(page, "duet", "Short one", 1, {"Blaise": "simulator/sim-fast"})
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    async with page.expect_download() as info:
        await page.click("#export")
    download = await info.value
    assert download.suggested_filename == f"chorus-run-{run_id}.json"
    target = tmp_path / "export.json"
    await download.save_as(str(target))
    exported = json.loads(target.read_text())
    assert exported["run"]["id"] == run_id and exported["complete"] is True
    assert "runCompleted" in exported["events"][-1]


async def test_model_output_is_never_interpreted_as_html(page, slow_gateway):
    topic = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    await _start(page, "duet", topic, 1, {"Blaise": "simulator/sim-fast"})
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    assert await page.evaluate("window.__pwned === undefined")
    assert await page.locator("#transcript img, #transcript b").count() == 0


async def test_side_panel_changes_an_agent_mid_run(page):
    await _start(page, "duet", "Steer the debate", 6, {})
    await page.wait_for_selector('#agents form[data-agent="Blaise"] button:not([disabled])')
    form = page.locator('#agents form[data-agent="Blaise"]')
    await form.locator(".agent-temperature").fill("0.1")
    await form.locator(".agent-prompt").fill("Answer in one short sentence.")
    await form.locator("button").click()
    await page.wait_for_function(
        "document.querySelector('#agents form[data-agent=\"Blaise\"] .agent-result')"
        "?.textContent === 'applied from the next turn'"
    )
    note = page.locator("#transcript .note")
    await note.first.wait_for()
    text = await note.first.text_content() or ""
    assert "Blaise updated" in text and "temperature" in text and "system_prompt" in text
    await page.click("#cancel")
    await page.wait_for_function("document.getElementById('status').textContent === 'cancelled'")


async def test_tool_calls_are_shown_collapsed_with_arguments_and_results(page):
    await _start(page, "assistant", "What is 17.5% of 2,340?", 0, {})
    await page.wait_for_function(
        "document.getElementById('status').textContent === 'completed'", timeout=60_000
    )
    tool = page.locator("#transcript details.tool").first
    await tool.wait_for(state="attached")
    assert await tool.get_attribute("open") is None, "collapsed until clicked"
    summary = await tool.locator("summary").text_content() or ""
    assert summary.startswith("tool: ") and summary.endswith("ok")
    await tool.locator("summary").click()
    args = await tool.locator(".tool-args").text_content() or ""
    result = await tool.locator(".tool-result").text_content() or ""
    assert args.strip().startswith("{") and result.strip()


async def test_page_asks_for_an_api_key_and_uses_it_for_every_call(browser, keyed_gateway):
    from gateway_helpers import API_KEYS

    context = await browser.new_context(base_url=keyed_gateway)
    page = await context.new_page()
    try:
        await page.goto("/")
        await page.wait_for_selector("#apikey-panel:not([hidden])")
        await page.fill("#apikey", API_KEYS["alice"])
        await page.click("#apikey-form button")
        await page.wait_for_function(
            "document.getElementById('whoami').textContent === 'alice (apikey)'"
        )
        await page.wait_for_selector('#template option[value="duet"]', state="attached")
        await page.fill("#max-turns", "2")
        await page.fill("#topic", "Keys please")
        await page.click("#start")
        await page.wait_for_function(
            "document.getElementById('status').textContent === 'completed'", timeout=60_000
        )
        assert await page.locator("#transcript .turn").count() == 2
    finally:
        await context.close()
