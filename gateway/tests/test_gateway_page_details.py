"""Small things a new user meets first (issue 23 item 13): the page's icon, the template's
own turn limit in "Max turns", and a /metrics without `_created` series."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio


async def test_favicon_is_served_as_an_svg_icon(client: httpx.AsyncClient) -> None:
    reply = await client.get("/favicon.ico")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("image/svg+xml")
    assert reply.content.startswith(b"<svg")
    page = (await client.get("/")).text
    assert '<link rel="icon" href="/static/favicon.svg"' in page
    assert (await client.get("/static/favicon.svg")).status_code == 200


async def test_metrics_have_no_created_series(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/teams")).status_code == 200  # counters have samples
    text = (await client.get("/metrics")).text
    assert "chorus_gateway_" in text
    created = [line for line in text.splitlines() if "_created" in line.split(" ")[0]]
    assert created == []


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, gateway: str) -> AsyncIterator[Any]:
    context = await browser.new_context(base_url=gateway)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="module")
async def test_max_turns_shows_the_templates_own_limit(page: Any, client: httpx.AsyncClient):
    limits = {
        t["name"]: t["spec"]["maxTurns"]
        for t in (await client.get("/api/v1/teams")).json()["templates"]
    }
    assert limits["duet"] > 0 and limits["crypto-analysts"] != limits["duet"]
    await page.goto("/")
    await page.wait_for_function("document.querySelectorAll('#template option').length > 0")
    assert await page.input_value("#template") == "duet"
    assert await page.input_value("#max-turns") == str(limits["duet"])
    await page.select_option("#template", "crypto-analysts")
    assert await page.input_value("#max-turns") == str(limits["crypto-analysts"])
