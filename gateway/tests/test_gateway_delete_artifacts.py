"""Deleting runs and conversations, and a run's artifacts, over REST (issue 23 items 1 and 7),
against the real services.

* `DELETE /api/v1/runs/{id}` (was 405) and `DELETE /api/v1/conversations/{id}`: an active
  run is cancelled first, then the run, its events and checkpoint are deleted; afterwards
  every read — get, list, events (SSE), export, artifacts — is 404, and a second delete too.
* `GET /api/v1/runs/{id}/artifacts` lists the charts and files a run's tools attached;
  `…/artifacts/{name}` serves one with its content type, sandboxed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx
from gateway_helpers import detail, duet, error_of, read_events, slow_duet

CRYPTO = {"template": "crypto-analysts", "input": "Analyse BTC for a cautious investor."}


async def _run_to_end(client: httpx.AsyncClient, spec: dict) -> tuple[str, list]:
    response, frames = await read_events(client, "POST", "/api/v1/runs/stream", json_body=spec)
    assert response.status_code == 200, response.text
    assert frames[-1].event == "run_completed", [f.event for f in frames[-3:]]
    return frames[0].json()["runId"], frames


async def _assert_run_gone(client: httpx.AsyncClient, run_id: str) -> None:
    for method, path in (
        ("GET", f"/api/v1/runs/{run_id}"),
        ("GET", f"/api/v1/runs/{run_id}/export"),
        ("GET", f"/api/v1/runs/{run_id}/artifacts"),
        ("GET", f"/api/v1/runs/{run_id}/artifacts/BTC-30d.svg"),
        ("DELETE", f"/api/v1/runs/{run_id}"),
    ):
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response)["status"] == "NOT_FOUND"
    response, frames = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    assert response.status_code == 404 and not frames
    listed = (await client.get("/api/v1/runs", params={"page_size": 1000})).json()
    assert run_id not in {r["id"] for r in listed.get("runs", [])}


async def test_delete_run_deletes_a_finished_run_and_every_read_is_404_after(client):
    run_id, _ = await _run_to_end(client, duet("Delete me?", max_turns=1))
    response = await client.delete(f"/api/v1/runs/{run_id}")
    assert response.status_code == 204 and not response.content
    await _assert_run_gone(client, run_id)


async def test_delete_run_cancels_an_active_run_first(client):
    created = await client.post(
        "/api/v1/runs", json=slow_duet("Long one", tokens_per_second=20, output_tokens=400)
    )
    run_id = created.json()["id"]
    async with client.stream(
        "GET", f"/api/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"}
    ) as stream:
        lines = stream.aiter_lines()
        async for line in lines:  # the run is under way
            if line == "event: text_delta":
                break
        response = await client.delete(f"/api/v1/runs/{run_id}")
        assert response.status_code == 204
        rest = [line async for line in lines]
    assert "event: run_cancelled" in rest
    await _assert_run_gone(client, run_id)


async def test_deleting_a_conversation_deletes_its_runs(client):
    """The issue's report: after `DELETE /conversations/{id}`, export was 200 with every
    event and the run was still listed."""
    run_id, _ = await _run_to_end(client, duet("Conversation to delete", max_turns=1))
    conversation_id = (await client.get(f"/api/v1/runs/{run_id}")).json()["conversationId"]
    active = await client.post(
        "/api/v1/runs",
        json=slow_duet(
            "Still running", tokens_per_second=20, output_tokens=400, conversationId=conversation_id
        ),
    )
    assert active.status_code == 201, active.text
    response = await client.delete(f"/api/v1/conversations/{conversation_id}")
    assert response.status_code == 204
    for gone in (run_id, active.json()["id"]):
        await _assert_run_gone(client, gone)
    response = await client.get(f"/api/v1/conversations/{conversation_id}")
    assert response.status_code == 404
    response = await client.delete(f"/api/v1/conversations/{conversation_id}")
    assert response.status_code == 404


async def test_delete_run_of_another_user_is_404_and_keeps_it(alice, bob):
    created = await alice.post("/api/v1/runs", json=duet("Mine", max_turns=1))
    run_id = created.json()["id"]
    assert (await bob.delete(f"/api/v1/runs/{run_id}")).status_code == 404
    assert (await alice.get(f"/api/v1/runs/{run_id}")).status_code == 200


async def test_delete_run_with_a_malformed_id_is_400_naming_the_field(client):
    response = await client.delete("/api/v1/runs/not-a-uuid")
    assert response.status_code == 400
    violations = detail(error_of(response), "BadRequest")["fieldViolations"]
    assert [v["field"] for v in violations] == ["run_id"]


async def test_a_runs_chart_is_listed_and_served_with_its_content_type(client):
    run_id, frames = await _run_to_end(client, CRYPTO)
    charts = [f.json() for f in frames if f.event == "artifact"]
    assert charts, "the crypto template made no chart"
    listed = await client.get(f"/api/v1/runs/{run_id}/artifacts")
    assert listed.status_code == 200
    items = listed.json()["artifacts"]
    assert [i["seq"] for i in items] == [int(c["seq"]) for c in charts]
    item = items[0]
    assert item["name"] == "BTC-30d.svg" and item["mimeType"] == "image/svg+xml"
    assert item["agent"] == "technical_analyst" and item["sizeBytes"] > 100
    assert item["uri"] == f"/api/v1/runs/{run_id}/artifacts/BTC-30d.svg"
    served = await client.get(item["uri"])
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("image/svg+xml")
    assert len(served.content) == item["sizeBytes"]
    assert ET.fromstring(served.content).tag.endswith("svg")
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in served.headers["content-security-policy"]
    assert served.headers["content-disposition"].startswith("inline")


async def test_artifacts_of_a_run_without_any_is_an_empty_list(client):
    run_id, _ = await _run_to_end(client, duet("No charts here", max_turns=1))
    listed = await client.get(f"/api/v1/runs/{run_id}/artifacts")
    assert listed.status_code == 200 and listed.json() == {"artifacts": []}
    missing = await client.get(f"/api/v1/runs/{run_id}/artifacts/nope.png")
    assert missing.status_code == 404
    error = error_of(missing)
    assert detail(error, "ErrorInfo")["reason"] == "ARTIFACT_NOT_FOUND"


async def test_artifacts_of_an_unknown_or_malformed_run(client):
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await client.get(f"/api/v1/runs/{unknown}/artifacts")).status_code == 404
    assert (await client.get(f"/api/v1/runs/{unknown}/artifacts/x.svg")).status_code == 404
    bad = await client.get("/api/v1/runs/nope/artifacts")
    assert bad.status_code == 400
    assert detail(error_of(bad), "BadRequest")["fieldViolations"][0]["field"] == "run_id"
