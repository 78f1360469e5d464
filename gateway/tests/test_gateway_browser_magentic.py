"""The web page shows a finished MagenticOne run right (issue 23 items 7 and 8), in Chromium
(Playwright driving Debian's chromium against a gateway in front of the real services).

The page used to put every MagenticOneOrchestrator message into one card and overwrite
it: opening a finished `crypto-analysts` run showed the final answer above turn 1 and the
facts, plan and instructions were gone. Now every message has its own card under its own
agent, in seq order — checked card by card against the run's stored events — and the
technical analyst's price chart is an image inside the card of the turn that made it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_helpers import ARTIFACTS, read_events

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

ORCHESTRATOR = "MagenticOneOrchestrator"

# Each card of the transcript: its agent, its text and the artifacts it shows.
CARDS = """
() => Array.from(document.querySelectorAll('#transcript > .turn')).map((node) => ({
  agent: node.dataset.agent,
  text: (node.querySelector('.turn-text') || {textContent: ''}).textContent,
  artifacts: Array.from(node.querySelectorAll('.turn-artifacts figure')).map((f) => ({
    name: f.dataset.name,
    image: !!f.querySelector('img'),
    loaded: !!f.querySelector('img') && f.querySelector('img').naturalWidth > 0,
  })),
}))
"""


def expected_cards(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cards the page must show for `events` (proto3 JSON, seq order): one per turn
    (agent_started … agent_finished, with its message's text and its artifacts) and one per
    message outside a turn, in order."""
    cards: list[dict[str, Any]] = []
    open_turns: dict[str, dict[str, Any]] = {}
    for event in events:
        agent = event.get("agent", "")
        if "agentStarted" in event:
            card = {"agent": agent, "text": "", "artifacts": []}
            cards.append(card)
            open_turns[agent] = card
        elif "agentFinished" in event:
            open_turns.pop(agent, None)
        elif "messageCompleted" in event:
            content = event["messageCompleted"].get("message", {}).get("content", "")
            if agent in open_turns:
                open_turns[agent]["text"] = content or open_turns[agent]["text"]
            else:
                cards.append({"agent": agent, "text": content, "artifacts": []})
        elif "artifact" in event:
            card = open_turns.get(agent)
            if card is None:
                card = {"agent": agent, "text": "", "artifacts": []}
                cards.append(card)
            card["artifacts"].append(event["artifact"]["name"])
    return cards


async def test_a_finished_magentic_one_run_shows_every_message_in_its_own_card_in_order(
    browser: Any, gateway: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        spec = {"template": "crypto-analysts", "input": "Analyse BTC for a cautious investor."}
        response, frames = await read_events(client, "POST", "/api/v1/runs/stream", json_body=spec)
        assert response.status_code == 200 and frames[-1].event == "run_completed"
        run_id = frames[0].json()["runId"]
        export = (await client.get(f"/api/v1/runs/{run_id}/export")).json()
    expected = expected_cards(export["events"])
    orchestrator_cards = [c for c in expected if c["agent"] == ORCHESTRATOR]
    assert len(orchestrator_cards) >= 3, expected  # facts/plan, instructions, final answer
    assert expected[0]["agent"] == ORCHESTRATOR  # the plan comes before turn 1

    context = await browser.new_context(base_url=gateway)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"/#run={run_id}")
        await page.wait_for_function(
            "document.getElementById('status').textContent === 'completed'", timeout=60_000
        )
        await page.wait_for_function(
            "Array.from(document.querySelectorAll('.turn-artifacts img'))"
            ".every((img) => img.complete && img.naturalWidth > 0)",
            timeout=30_000,
        )
        cards = await page.evaluate(CARDS)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "page-magentic-one.png"), full_page=True)
    finally:
        await context.close()
    assert not errors, f"JavaScript errors: {errors}"

    assert [(c["agent"], c["text"]) for c in cards] == [(c["agent"], c["text"]) for c in expected]
    assert [[a["name"] for a in c["artifacts"]] for c in cards] == [
        c["artifacts"] for c in expected
    ]
    # the final answer is the last card, the orchestrator's, as well as the outcome
    assert cards[-1]["agent"] == ORCHESTRATOR
    assert cards[-1]["text"] == export["run"]["finalAnswer"]
    # the chart: an image that rendered, in the technical analyst's card
    charts = [(c["agent"], a) for c in cards for a in c["artifacts"]]
    assert charts and all(agent == "technical_analyst" for agent, _ in charts)
    assert all(a["image"] and a["loaded"] for _, a in charts)
