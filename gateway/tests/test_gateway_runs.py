"""Runs over REST and SSE against the real services: start, read, list, stream, resume,
cancel, steer, export — success and error paths."""

from __future__ import annotations

import asyncio
import json

import httpx
from gateway_helpers import (
    TERMINAL,
    detail,
    duet,
    error_of,
    metric,
    read_events,
    slow_duet,
)

from chorus.core.testing import wait_for


async def _finished(client: httpx.AsyncClient, run_id: str) -> dict:
    """Wait for the run to reach a terminal status; return it."""

    async def ended() -> dict | None:
        run = (await client.get(f"/api/v1/runs/{run_id}")).json()
        return run if run["status"].split("_")[-1] in ("COMPLETED", "FAILED", "CANCELLED") else None

    return await wait_for(ended, timeout=60, interval=0.05)


async def _completed_run(client: httpx.AsyncClient, **spec: object) -> tuple[str, list]:
    created = await client.post("/api/v1/runs", json=duet(**spec))  # type: ignore[arg-type]
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    response, frames = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    assert response.status_code == 200
    assert frames[-1].event == "run_completed", [f.event for f in frames[-3:]]
    return run_id, frames


# --- create / get / list ----------------------------------------------------------------


async def test_create_run_answers_201_with_the_run_and_its_location(client):
    created = await client.post("/api/v1/runs", json=duet("Cats or dogs?"))
    assert created.status_code == 201
    run = created.json()
    assert created.headers["location"] == f"/api/v1/runs/{run['id']}"
    assert run["owner"] == "dev"
    assert run["spec"]["template"] == "duet" and run["spec"]["input"] == "Cats or dogs?"
    assert run["status"] in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING")
    fetched = await client.get(created.headers["location"])
    assert fetched.status_code == 200 and fetched.json()["id"] == run["id"]


async def test_same_request_id_returns_the_same_run(client):
    spec = duet("Idempotent?", requestId="gw-idem-1")
    first = (await client.post("/api/v1/runs", json=spec)).json()
    second = (await client.post("/api/v1/runs", json=spec)).json()
    assert first["id"] == second["id"]


async def test_second_active_run_in_a_conversation_is_409(client):
    first = (await client.post("/api/v1/runs", json=slow_duet("Busy"))).json()
    second = await client.post(
        "/api/v1/runs", json=slow_duet("Also busy", conversationId=first["conversationId"])
    )
    error = error_of(second)
    assert second.status_code == 409 and error["status"] == "ABORTED"
    assert detail(error, "ErrorInfo")["reason"] == "CONVERSATION_BUSY"
    await client.post(f"/api/v1/runs/{first['id']}/cancel")


async def test_unknown_template_is_invalid_argument_from_the_orchestrator(client):
    reply = await client.post("/api/v1/runs", json={"template": "no-such-team", "input": "x"})
    error = error_of(reply)
    assert reply.status_code == 400 and error["status"] == "INVALID_ARGUMENT"
    fields = [v["field"] for v in detail(error, "BadRequest")["fieldViolations"]]
    assert any("template" in f for f in fields), fields


async def test_malformed_bodies_name_the_offending_field(client):
    cases = [
        ({"template": "duet", "input": "x", "maxTurns": "lots"}, "maxTurns"),
        ({"template": "duet", "input": "x", "colour": "red"}, "colour"),
        ({"template": "duet", "input": 7}, "input"),
        ({"template": "duet", "input": ""}, "input"),
    ]
    for body, field in cases:
        reply = await client.post("/api/v1/runs", json=body)
        error = error_of(reply)
        assert reply.status_code == 400, body
        violations = detail(error, "BadRequest")["fieldViolations"]
        assert [v["field"] for v in violations] == [field], (body, violations)
    not_json = await client.post(
        "/api/v1/runs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and error_of(not_json)["status"] == "INVALID_ARGUMENT"


async def test_input_over_the_size_limit_is_rejected_before_any_call(client):
    reply = await client.post("/api/v1/runs", json=duet("x" * 65537))
    error = error_of(reply)
    assert reply.status_code == 400
    assert detail(error, "ErrorInfo")["reason"] == "INPUT_TOO_LONG"


async def test_body_over_the_request_limit_is_413(client):
    reply = await client.post(
        "/api/v1/runs",
        content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 413
    assert detail(error_of(reply), "ErrorInfo")["reason"] == "REQUEST_TOO_LARGE"


async def test_unknown_run_is_404_in_aip_shape(client):
    reply = await client.get("/api/v1/runs/00000000-0000-4000-8000-000000000000")
    error = error_of(reply)
    assert reply.status_code == 404 and error["status"] == "NOT_FOUND"
    assert detail(error, "ErrorInfo")["domain"] == "chorus.dev"


async def test_list_runs_filters_by_conversation_and_status(client):
    run_id, _ = await _completed_run(client, topic="Listing")
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    listed = await client.get(
        "/api/v1/runs", params={"conversation_id": run["conversationId"], "status": "completed"}
    )
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["runs"]] == [run_id]
    none = await client.get(
        "/api/v1/runs",
        params={"conversation_id": run["conversationId"], "status": "RUN_STATUS_FAILED"},
    )
    assert none.json().get("runs", []) == []


async def test_list_runs_rejects_bad_filters(client):
    bad_status = await client.get("/api/v1/runs", params={"status": "sleeping"})
    assert bad_status.status_code == 400
    assert detail(error_of(bad_status), "BadRequest")["fieldViolations"][0]["field"] == "status"
    bad_size = await client.get("/api/v1/runs", params={"page_size": 5000})
    assert bad_size.status_code == 400
    assert detail(error_of(bad_size), "BadRequest")["fieldViolations"][0]["field"] == "pageSize"


# --- SSE ---------------------------------------------------------------------------------


async def test_event_stream_is_sse_event_by_event(client):
    created = await client.post("/api/v1/runs", json=duet("SSE framing"))
    run_id = created.json()["id"]
    async with client.stream(
        "GET", f"/api/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        body = (await response.aread()).decode()
    assert body.startswith("retry: ")
    blocks = [b for b in body.split("\n\n") if b.strip() and not b.startswith(("retry", ":"))]
    seqs = []
    for block in blocks:
        lines = block.split("\n")
        assert [line.split(":", 1)[0] for line in lines] == ["event", "id", "data"], block
        event, seq, data = (line.split(": ", 1)[1] for line in lines)
        payload = json.loads(data)
        assert payload["seq"] == seq and payload["runId"] == run_id
        camel = "".join(w.capitalize() if i else w for i, w in enumerate(event.split("_")))
        assert camel in payload, (event, payload)
        seqs.append(int(seq))
    assert seqs == list(range(1, len(seqs) + 1))
    assert blocks[0].startswith("event: run_started")
    assert blocks[-1].startswith("event: run_completed")
    agents = {json.loads(b.split("data: ", 1)[1]).get("agent") for b in blocks if "text_delta" in b}
    assert agents == {"Ada", "Blaise"}


async def test_stream_dropped_at_k_resumes_with_last_event_id_exactly_after_k(client):
    created = await client.post("/api/v1/runs", json=slow_duet("Resume me", output_tokens=30))
    run_id = created.json()["id"]
    k = 6
    _, head = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events", stop_after=k)
    assert [int(f.id) for f in head] == list(range(1, k + 1))
    live = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert live["status"] == "RUN_STATUS_RUNNING", "the drop happened mid-run"
    _, tail = await read_events(
        client, "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(k)}
    )
    assert [int(f.id) for f in tail] == list(range(k + 1, k + 1 + len(tail)))
    assert tail[-1].event in TERMINAL
    _, everything = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    assert [f.data for f in head + tail] == [f.data for f in everything]


async def test_after_seq_query_resumes_and_last_event_id_wins(client):
    run_id, frames = await _completed_run(client, topic="after_seq")
    _, by_query = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events?after_seq=3")
    assert [f.id for f in by_query] == [f.id for f in frames[3:]]
    _, by_header = await read_events(
        client,
        "GET",
        f"/api/v1/runs/{run_id}/events?after_seq=3",
        headers={"Last-Event-ID": "5"},
    )
    assert [f.id for f in by_header] == [f.id for f in frames[5:]]


async def test_nothing_after_the_last_seq_of_a_finished_run_is_204(client):
    run_id, frames = await _completed_run(client, topic="204")
    reply = await client.get(
        f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": frames[-1].id or ""}
    )
    assert reply.status_code == 204 and reply.content == b""


async def test_a_seq_past_the_end_of_a_finished_run_is_400_out_of_range(client):
    # Nobody was shown a seq the log does not hold (issue 18, log before show): resuming
    # after one is the client's error, not a 204 that would hide it.
    run_id, frames = await _completed_run(client, topic="past the end")
    reply = await client.get(
        f"/api/v1/runs/{run_id}/events",
        headers={"Last-Event-ID": str(int(frames[-1].id or 0) + 1)},
    )
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert error_of(reply)["status"] == "OUT_OF_RANGE"


async def test_events_of_an_unknown_run_are_a_real_404(client):
    reply = await client.get(
        "/api/v1/runs/00000000-0000-4000-8000-000000000001/events",
        headers={"Accept": "text/event-stream"},
    )
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/json"
    assert error_of(reply)["status"] == "NOT_FOUND"


async def test_bad_last_event_id_is_400(client):
    reply = await client.get(
        "/api/v1/runs/00000000-0000-4000-8000-000000000001/events",
        headers={"Last-Event-ID": "seven"},
    )
    assert reply.status_code == 400
    violation = detail(error_of(reply), "BadRequest")["fieldViolations"][0]
    assert violation["field"] == "Last-Event-ID"


async def test_post_runs_stream_starts_and_streams_to_the_end(client):
    response, frames = await read_events(
        client, "POST", "/api/v1/runs/stream", json_body=duet("Stream it")
    )
    assert response.status_code == 200
    assert frames[0].event == "run_started" and frames[-1].event == "run_completed"
    run_id = frames[0].json()["runId"]
    assert (await client.get(f"/api/v1/runs/{run_id}")).json()["status"] == "RUN_STATUS_COMPLETED"


async def test_post_runs_stream_with_bad_spec_is_an_http_error_not_a_stream(client):
    reply = await client.post(
        "/api/v1/runs/stream",
        json={"template": "missing-template", "input": "x"},
        headers={"Accept": "text/event-stream"},
    )
    assert reply.status_code == 400 and error_of(reply)["status"] == "INVALID_ARGUMENT"


async def test_disconnect_with_on_disconnect_cancel_cancels_the_run(client):
    spec = slow_duet("Leave early", onDisconnect="ON_DISCONNECT_CANCEL")
    _, head = await read_events(client, "POST", "/api/v1/runs/stream", json_body=spec, stop_after=3)
    run_id = head[0].json()["runId"]
    run = await _finished(client, run_id)
    assert run["status"] == "RUN_STATUS_CANCELLED"


async def test_disconnect_of_a_watcher_cancels_only_the_upstream_call(client, gateway):
    created = await client.post("/api/v1/runs", json=slow_duet("Keep going"))
    run_id = created.json()["id"]
    _, head = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events", stop_after=3)
    assert len(head) == 3

    async def streams_closed() -> bool:
        text = (await client.get("/metrics")).text
        return metric(text, "chorus_gateway_sse_streams") == 0

    await wait_for(streams_closed, timeout=10)
    run = await _finished(client, run_id)
    assert run["status"] == "RUN_STATUS_COMPLETED", "the run outlives its watcher"


async def test_idle_stream_gets_keepalive_comments(gateways):
    url = gateways.url(sse_keepalive_s="0.2")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        spec = slow_duet("Think first", time_to_first_token="1.2s", output_tokens=3)
        run_id = (await client.post("/api/v1/runs", json=spec)).json()["id"]
        comments_before_text = 0
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            from gateway_helpers import sse_frames

            async for frame in sse_frames(response):
                if frame.comment == "keepalive":
                    comments_before_text += 1
                if frame.event == "text_delta":
                    break
        assert comments_before_text >= 2


# --- cancel / steer / export ------------------------------------------------------------


async def test_cancel_is_real_and_idempotent(client):
    run_id = (await client.post("/api/v1/runs", json=slow_duet("Cancel me"))).json()["id"]
    _, head = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events", stop_after=2)
    first = await client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "enough"})
    assert first.status_code == 200 and first.json()["cancelled"] is True
    _, rest = await read_events(
        client, "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": head[-1].id or ""}
    )
    last = rest[-1].json()
    assert rest[-1].event == "run_cancelled"
    assert last["runCancelled"]["cancellation"]["reason"] == "enough"
    assert last["runCancelled"]["cancellation"]["requestedBy"] == "dev"
    again = await client.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 200
    assert again.json().get("cancelled", False) is False and again.json()["message"]


async def test_cancel_errors(client):
    missing = await client.post("/api/v1/runs/00000000-0000-4000-8000-000000000002/cancel")
    assert missing.status_code == 404
    unknown_field = await client.post(
        "/api/v1/runs/00000000-0000-4000-8000-000000000002/cancel", json={"why": "x"}
    )
    assert unknown_field.status_code == 400
    assert detail(error_of(unknown_field), "BadRequest")["fieldViolations"][0]["field"] == "why"


async def test_patch_agent_mid_run_emits_agent_updated(client):
    run_id = (await client.post("/api/v1/runs", json=slow_duet("Steer", max_turns=4))).json()["id"]
    _, head = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events", stop_after=2)
    patched = await client.patch(
        f"/api/v1/runs/{run_id}/agents/Blaise",
        json={"temperature": 0.1, "systemPrompt": "Be brief."},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["temperature"] == 0.1 and patched.json()["systemPrompt"] == "Be brief."
    _, rest = await read_events(
        client, "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": head[-1].id or ""}
    )
    updates = [f.json()["agentUpdated"] for f in rest if f.event == "agent_updated"]
    assert len(updates) == 1
    assert sorted(updates[0]["fields"]) == ["system_prompt", "temperature"]
    assert updates[0]["updatedBy"] == "dev"
    await client.post(f"/api/v1/runs/{run_id}/cancel")


async def test_patch_agent_errors(client):
    run_id, _ = await _completed_run(client, topic="Too late")
    ended = await client.patch(f"/api/v1/runs/{run_id}/agents/Ada", json={"temperature": 1})
    assert ended.status_code == 400 and error_of(ended)["status"] == "FAILED_PRECONDITION"
    empty = await client.patch(f"/api/v1/runs/{run_id}/agents/Ada", json={})
    assert empty.status_code == 400
    live = (await client.post("/api/v1/runs", json=slow_duet("Who?"))).json()["id"]
    await read_events(client, "GET", f"/api/v1/runs/{live}/events", stop_after=1)
    nobody = await client.patch(f"/api/v1/runs/{live}/agents/Nobody", json={"temperature": 1})
    assert nobody.status_code == 404
    hot = await client.patch(f"/api/v1/runs/{live}/agents/Ada", json={"temperature": 9})
    assert hot.status_code == 400 and error_of(hot)["status"] == "INVALID_ARGUMENT"
    await client.post(f"/api/v1/runs/{live}/cancel")


async def test_export_is_a_json_download_of_run_messages_and_events(client):
    run_id, frames = await _completed_run(client, topic="Export me")
    reply = await client.get(f"/api/v1/runs/{run_id}/export")
    assert reply.status_code == 200
    assert (
        reply.headers["content-disposition"] == f'attachment; filename="chorus-run-{run_id}.json"'
    )
    body = reply.json()
    assert body["format"] == "chorus.run-export.v1" and body["complete"] is True
    assert body["run"]["id"] == run_id
    assert [e["seq"] for e in body["events"]] == [f.id for f in frames]
    assert body["events"] == [f.json() for f in frames]
    roles = [m["role"] for m in body["messages"]]
    assert roles[0] == "ROLE_USER" and roles.count("ROLE_ASSISTANT") >= 2


async def test_export_after_the_conversation_was_deleted_is_404(client):
    """Deleting a conversation deletes its runs (issue 23: the export used to be 200 with
    every event)."""
    run_id, _ = await _completed_run(client, topic="Orphan")
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert (
        await client.delete(f"/api/v1/conversations/{run['conversationId']}")
    ).status_code == 204
    reply = await client.get(f"/api/v1/runs/{run_id}/export")
    assert reply.status_code == 404


async def test_export_while_running_is_partial(client):
    run_id = (await client.post("/api/v1/runs", json=slow_duet("Partial"))).json()["id"]
    await read_events(client, "GET", f"/api/v1/runs/{run_id}/events", stop_after=3)
    body = (await client.get(f"/api/v1/runs/{run_id}/export")).json()
    assert body["complete"] is False and body["events"]
    await client.post(f"/api/v1/runs/{run_id}/cancel")
    missing = await client.get("/api/v1/runs/00000000-0000-4000-8000-000000000003/export")
    assert missing.status_code == 404


async def test_concurrent_watchers_see_identical_streams(client):
    run_id = (await client.post("/api/v1/runs", json=slow_duet("Many eyes"))).json()["id"]
    results = await asyncio.gather(
        *(read_events(client, "GET", f"/api/v1/runs/{run_id}/events") for _ in range(5))
    )
    datas = [[f.data for f in frames] for _, frames in results]
    assert all(d == datas[0] for d in datas) and datas[0]
