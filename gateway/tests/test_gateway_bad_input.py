"""Inputs that once answered 500 (issue 23, item 2) are 400 with an AIP-193 body naming the
field; update masks take the names the docs show (camelCase and snake_case); an error never
costs the client its keep-alive connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from gateway_helpers import detail, error_of, slow_duet

from chorus.gateway.app import build_app
from chorus.gateway.settings import GatewaySettings

HUGE = "999999999999999999999999999999"


def _violations(response: httpx.Response) -> dict[str, str]:
    error = error_of(response)
    assert response.status_code == 400, error
    assert error["status"] == "INVALID_ARGUMENT"
    return {v["field"]: v["description"] for v in detail(error, "BadRequest")["fieldViolations"]}


@pytest.fixture
async def live_run(client: httpx.AsyncClient) -> AsyncIterator[str]:
    """A run slow enough to stay active while it is patched; cancelled afterwards."""
    reply = await client.post(
        "/api/v1/runs", json=slow_duet("Patch me", tokens_per_second=20, max_turns=4)
    )
    assert reply.status_code == 201, reply.text
    run_id = reply.json()["id"]
    try:
        yield run_id
    finally:
        await client.post(f"/api/v1/runs/{run_id}/cancel", json={})


@pytest.mark.parametrize("param", ["update_mask", "updateMask"])
@pytest.mark.parametrize(
    ("mask", "body"),
    [
        ("system_prompt", {"systemPrompt": "Be brief."}),
        ("systemPrompt", {"systemPrompt": "Be briefer."}),
        ("temperature,system_prompt", {"temperature": 0.3, "systemPrompt": "Be kind."}),
    ],
)
async def test_agent_update_mask_takes_snake_and_camel_case(client, live_run, param, mask, body):
    reply = await client.patch(
        f"/api/v1/runs/{live_run}/agents/Ada", params={param: mask}, json=body
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["systemPrompt"] == body["systemPrompt"]


async def test_unknown_agent_mask_path_is_400_naming_update_mask(client, live_run):
    for mask in ("__x__", "name", "system-prompt", ","):
        reply = await client.patch(
            f"/api/v1/runs/{live_run}/agents/Ada",
            params={"update_mask": mask},
            json={"systemPrompt": "x"},
        )
        violations = _violations(reply)
        assert set(violations) == {"updateMask"}, (mask, violations)


async def test_unknown_conversation_mask_path_is_400_naming_update_mask(client):
    conversation = (await client.post("/api/v1/conversations", json={"title": "t"})).json()["id"]
    reply = await client.patch(
        f"/api/v1/conversations/{conversation}", params={"update_mask": "__x__"}, json={}
    )
    assert "__x__" in _violations(reply)["updateMask"]
    for param in ("update_mask", "updateMask"):
        reply = await client.patch(
            f"/api/v1/conversations/{conversation}",
            params={param: "title"},
            json={"title": f"new {param}"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["title"] == f"new {param}"


async def test_a_seq_beyond_int64_is_400_naming_where_it_came_from(client, live_run):
    url = f"/api/v1/runs/{live_run}/events"
    reply = await client.get(url, headers={"Last-Event-ID": HUGE})
    assert "Last-Event-ID" in _violations(reply)
    for param in ("after_seq", "afterSeq"):
        reply = await client.get(url, params={param: "201073595542394929152"})
        assert set(_violations(reply)) == {"afterSeq"}
    # the largest int64 is a valid seq: past the (active) run's end, so nothing yet
    async with client.stream(
        "GET", url, headers={"Last-Event-ID": str((1 << 63) - 1)}, timeout=5
    ) as reply:
        assert reply.status_code in (200, 400)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
    )
    return status, await reader.readexactly(length)


async def test_an_internal_error_keeps_the_connection_open() -> None:
    """The request after a 500 on the same keep-alive connection is served (it was reset:
    Starlette re-raised the error after its response and uvicorn closed the socket)."""
    settings = GatewaySettings(_env_file=None, dev_mode=True)  # type: ignore[call-arg]
    app = build_app(settings)

    @app.get("/api/v1/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("a bug")

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag only
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(request.format("/api/v1/boom").encode())
        status, body = await _read_response(reader)
        assert status == 500 and b'"INTERNAL"' in body and b"a bug" not in body
        writer.write(request.format("/health").encode())
        status, body = await asyncio.wait_for(_read_response(reader), 30)
        assert (status, body) == (200, b'{"status":"ok"}')
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
