"""Human in the loop through the gateway (issue 21, item 4): answering a run's request for
input over REST (`POST /api/v1/runs/{id}/input`), the WebSocket `input` frame, SSE and the
OpenAI-compatible `/v1` (an `mcp_approval_request` output item answered by an
`mcp_approval_response` input item), against the real services.

The run is the `assistant-approval` template on "What is 17.5% of 2,340?": the simulator's
assistant calls `calculator`, every tool call needs approval, so the run stops at
`input_requested` (status RUN_STATUS_AWAITING_INPUT) until someone answers. The unit tests
at the top check the body parser, the OpenAI ids and the mapping on synthetic logs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, get_args

import httpx
import openai
import pytest
import websockets
from gateway_helpers import API_KEYS, SseFrame, detail, error_of, sse_frames
from google.protobuf import timestamp_pb2
from openai.types.responses import Response, ResponseStreamEvent

from chorus.core.errors import InvalidArgument
from chorus.gateway import inputs
from chorus.gateway.openai_api import ids, mapping
from chorus.v1 import chat_pb2, run_pb2

TEMPLATE = "assistant-approval"
QUESTION = "What is 17.5% of 2,340?"
TERMINAL = ("run_completed", "run_failed", "run_cancelled")

# --- unit: the body, the ids, the mapping ---------------------------------------------------


def _violations(data: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        inputs.parse_input(data, max_text_chars=100, **kwargs)
    return dict(caught.value.violations)


def test_the_body_parser_reports_every_problem_by_field():
    assert set(_violations({})) == {"inputId", "text"}
    both = _violations({"inputId": "i", "text": "x", "decision": {"approved": True}})
    assert set(both) == {"text", "decision"}
    assert "not both" in both["text"]
    assert set(_violations({"inputId": "i", "text": "   "})) == {"text"}
    assert set(_violations({"inputId": "i", "text": "x" * 101})) == {"text"}
    assert set(_violations({"inputId": "i", "decision": {}})) == {"decision.approved"}
    assert set(_violations({"inputId": "i", "decision": {"approved": "yes"}})) == {
        "decision.approved"
    }
    assert set(_violations({"inputId": "i", "decision": True})) == {"decision"}
    assert set(_violations({"inputId": 7, "text": "x", "colour": 1})) == {"inputId", "colour"}
    long_reason = {"inputId": "i", "decision": {"approved": False, "reason": "r" * 1001}}
    assert set(_violations(long_reason)) == {"decision.reason"}
    assert set(_violations({"inputId": "i"}, prefix="payload.")) == {"payload.text"}


def test_the_body_parser_accepts_both_spellings_and_keeps_the_request_id():
    parsed = inputs.parse_input(
        {"input_id": "turn1-1", "decision": {"approved": False, "reason": "no"}, "request_id": "r"},
        max_text_chars=100,
    )
    assert parsed.input_id == "turn1-1" and parsed.request_id == "r"
    assert parsed.WhichOneof("answer") == "decision"
    assert not parsed.decision.approved and parsed.decision.reason == "no"
    frame = inputs.parse_input(
        {"runId": "x", "inputId": "t", "text": "hello"},
        max_text_chars=100,
        extra=frozenset({"runId"}),
    )
    assert frame.text == "hello"


RUN_ID = "0b7d6a2e-1f0c-4c55-9a51-3f1b2c4d5e6f"


def test_response_and_approval_ids_round_trip():
    assert ids.segment_of(ids.response_id(RUN_ID)) == (RUN_ID, 0)
    assert ids.segment_of(ids.response_id(RUN_ID, 42)) == (RUN_ID, 42)
    assert ids.run_id_of(ids.response_id(RUN_ID, 42)) == RUN_ID
    for bad in (ids.response_id(RUN_ID) + "_0", ids.response_id(RUN_ID) + "_x", "resp_1_2"):
        with pytest.raises(Exception, match="No response found"):
            ids.segment_of(bad)
    approval = ids.approval_request_id(RUN_ID, "turn1-1")
    assert approval.startswith("mcpr_")
    assert ids.approval_of(approval) == (RUN_ID, "turn1-1")
    assert ids.approval_of("mcpr_nothex_abc") is None
    assert ids.approval_of("fc_" + approval[5:]) is None


E = run_pb2.RunEvent
EVENT_TYPES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in get_args(get_args(ResponseStreamEvent)[0])
}


def _approval_log() -> list[run_pb2.RunEvent]:
    run = run_pb2.Run(
        id=RUN_ID,
        spec=run_pb2.RunSpec(template=TEMPLATE, input=QUESTION),
        create_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
    )
    call = chat_pb2.ToolCall(id="call-1", name="calculator", arguments='{"expression": "1+1"}')
    payloads: list[tuple[str, dict[str, Any]]] = [
        ("", {"run_started": E.RunStarted(run=run)}),
        ("assistant", {"agent_started": E.AgentStarted(turn=1)}),
        ("assistant", {"text_delta": E.TextDelta(text="Let me compute.")}),
        ("assistant", {"tool_call_started": E.ToolCallStarted(call=call)}),
        (
            "assistant",
            {
                "input_requested": E.InputRequested(
                    input_id="turn1-1",
                    kind=run_pb2.INPUT_KIND_APPROVAL,
                    prompt="Run calculator?",
                    tool_call=call,
                    agent="assistant",
                )
            },
        ),
        (
            "",
            {
                "input_received": E.InputReceived(
                    input_id="turn1-1", by="dev", decision=run_pb2.ApprovalDecision(approved=True)
                )
            },
        ),
        (
            "assistant",
            {"tool_call_finished": E.ToolCallFinished(call=call, result="2", success=True)},
        ),
        ("assistant", {"text_delta": E.TextDelta(text="It is 2.")}),
        ("assistant", {"agent_finished": E.AgentFinished(turn=1)}),
        ("", {"run_completed": E.RunCompleted(final_answer="It is 2.")}),
    ]
    out = []
    for i, (agent, payload) in enumerate(payloads, 1):
        event = run_pb2.RunEvent(run_id=RUN_ID, seq=i, agent=agent, **payload)
        event.time.seconds = 1_800_000_010
        out.append(event)
    return out


def _feed(mapper: mapping.ResponseMapper, log: list[run_pb2.RunEvent]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in log:
        out.extend(mapper.feed(event))
    for event in out:
        EVENT_TYPES[event["type"]].model_validate(event)  # the SDK is the judge
    return out


def test_an_approval_request_ends_the_first_response_and_its_answer_starts_the_next():
    log = _approval_log()
    context = mapping.ResponseContext(model=f"chorus/{TEMPLATE}")
    first = mapping.ResponseMapper(RUN_ID, context, 1_800_000_000)
    events = _feed(first, log)
    assert events[-1]["type"] == "response.completed"
    final = Response.model_validate(events[-1]["response"])
    assert final.id == ids.response_id(RUN_ID) and final.status == "completed"
    request = final.output[-1]
    assert request.type == "mcp_approval_request"
    assert (request.name, request.server_label) == ("calculator", "chorus")
    assert json.loads(request.arguments) == {"expression": "1+1"}
    assert ids.approval_of(request.id) == (RUN_ID, "turn1-1")
    call = next(i for i in final.output if i.type == "function_call")
    assert call.status == "incomplete", "the call has not run: it awaits approval"
    assert first.waiting_input is not None and first.waiting_input.input_id == "turn1-1"

    second = mapping.ResponseMapper(RUN_ID, context, 1_800_000_000, from_seq=6)
    events = _feed(second, log)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["sequence_number"] == 0
    done = Response.model_validate(events[-1]["response"])
    assert done.id == ids.response_id(RUN_ID, 6)
    assert done.previous_response_id == ids.response_id(RUN_ID)
    assert done.status == "completed" and done.output_text == "It is 2."
    tool = next(i for i in done.output if i.type == "function_call")
    assert tool.model_extra["output"] == "2" and tool.status == "completed"


def test_a_text_request_ends_the_response_with_the_agents_prompt():
    log = [
        run_pb2.RunEvent(
            run_id=RUN_ID,
            seq=1,
            run_started=E.RunStarted(run=run_pb2.Run(id=RUN_ID)),
        ),
        run_pb2.RunEvent(
            run_id=RUN_ID,
            seq=2,
            agent="editor",
            input_requested=E.InputRequested(
                input_id="turn2-1",
                kind=run_pb2.INPUT_KIND_TEXT,
                prompt="Review the draft: APPROVE, or notes.",
                agent="editor",
            ),
        ),
    ]
    mapper = mapping.ResponseMapper(RUN_ID, mapping.ResponseContext(model="m"), 0)
    events = _feed(mapper, log)
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed"
    assert final.output_text == "Review the draft: APPROVE, or notes."
    assert final.output[-1].model_extra["agent"] == "editor"


# --- end to end: the real services ----------------------------------------------------------


async def test_the_openapi_document_describes_the_endpoint(client):
    doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/api/v1/runs/{run_id}/input"]["post"]
    assert operation["operationId"] == "submitRunInput"
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/RunInput"}
    schema = doc["components"]["schemas"]["RunInput"]
    assert schema["required"] == ["inputId"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"inputId", "text", "decision", "requestId"}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/chorus.v1.SubmitRunInputResponse"}
    assert {"400", "4XX", "5XX"} <= set(operation["responses"])
    events = doc["components"]["schemas"]["chorus.v1.RunEvent"]["properties"]
    assert {"inputRequested", "inputReceived"} <= set(events)


def _ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/ws"


async def _start(client: httpx.AsyncClient) -> str:
    reply = await client.post("/api/v1/runs", json={"template": TEMPLATE, "input": QUESTION})
    assert reply.status_code == 201, reply.text
    run_id: str = reply.json()["id"]
    return run_id


async def _read_until(
    frames: AsyncIterator[SseFrame], seen: list[SseFrame], kind: str | tuple[str, ...]
) -> SseFrame:
    """Read event frames (into `seen`) until one of `kind`; the stream must not end first."""
    kinds = (kind,) if isinstance(kind, str) else kind
    async for frame in frames:
        if frame.comment is not None or not frame.data:
            continue
        seen.append(frame)
        if frame.event in kinds:
            return frame
    raise AssertionError(f"the stream ended before {kinds}: {[f.event for f in seen]}")


async def _waiting(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """Follow the run until its `input_requested`; that event's payload."""
    seen: list[SseFrame] = []
    async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
        assert response.status_code == 200
        frame = await _read_until(sse_frames(response), seen, ("input_requested", *TERMINAL))
    assert frame.event == "input_requested", [f.event for f in seen]
    request: dict[str, Any] = frame.json()["inputRequested"]
    return request


async def _events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """Every event of the run once it ended (the stream to the terminal event)."""
    seen: list[SseFrame] = []
    async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
        assert response.status_code == 200
        await _read_until(sse_frames(response), seen, TERMINAL)
    return [{"type": f.event, **f.json()} for f in seen]


@pytest.fixture
async def waiting_run(client: httpx.AsyncClient) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """An `assistant-approval` run waiting for the approval of its calculator call."""
    run_id = await _start(client)
    request = await _waiting(client, run_id)
    yield run_id, request
    await client.post(f"/api/v1/runs/{run_id}/cancel", json={})


async def test_a_waiting_run_shows_its_request_and_approve_runs_the_tool(client, waiting_run):
    run_id, request = waiting_run
    assert request["kind"] == "INPUT_KIND_APPROVAL"
    assert request["toolCall"]["name"] == "calculator"
    assert request["inputId"] and request["expireTime"]
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert run["status"] == "RUN_STATUS_AWAITING_INPUT"
    assert run["pendingInput"]["inputId"] == request["inputId"]
    listed = (await client.get("/api/v1/runs", params={"status": "awaiting_input"})).json()
    assert run_id in [r["id"] for r in listed["runs"]]

    reply = await client.post(
        f"/api/v1/runs/{run_id}/input",
        json={"inputId": request["inputId"], "decision": {"approved": True}, "requestId": "a-1"},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"run", "event"}
    received = body["event"]["inputReceived"]
    assert received["inputId"] == request["inputId"] and received["by"] == "dev"
    assert received["decision"]["approved"] is True and received["requestId"] == "a-1"

    events = await _events(client, run_id)
    kinds = [e["type"] for e in events]
    assert kinds.index("input_requested") < kinds.index("input_received")
    finished = [e for e in events if e["type"] == "tool_call_finished"]
    assert finished and finished[0]["toolCallFinished"].get("success") is True
    assert kinds[-1] == "run_completed"
    assert events[-1]["runCompleted"].get("finalAnswer")


async def test_deny_with_a_reason_reaches_the_agent_and_the_run_completes(client, waiting_run):
    run_id, request = waiting_run
    reply = await client.post(
        f"/api/v1/runs/{run_id}/input",
        json={
            "inputId": request["inputId"],
            "decision": {"approved": False, "reason": "no maths today"},
        },
    )
    assert reply.status_code == 200, reply.text
    decision = reply.json()["event"]["inputReceived"]["decision"]
    assert decision.get("approved", False) is False and decision["reason"] == "no maths today"
    events = await _events(client, run_id)
    finished = next(e for e in events if e["type"] == "tool_call_finished")["toolCallFinished"]
    assert not finished.get("success", False)
    assert "no maths today" in finished.get("result", "")
    assert events[-1]["type"] == "run_completed"


async def test_a_double_click_with_one_request_id_answers_once(client, waiting_run):
    run_id, request = waiting_run
    body = {"inputId": request["inputId"], "decision": {"approved": True}, "requestId": "dbl-1"}
    first, second = await asyncio.gather(
        client.post(f"/api/v1/runs/{run_id}/input", json=body),
        client.post(f"/api/v1/runs/{run_id}/input", json=body),
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["event"] == second.json()["event"]
    events = await _events(client, run_id)
    assert [e["type"] for e in events].count("input_received") == 1
    # a later answer under another request id finds nothing pending
    stale = await client.post(
        f"/api/v1/runs/{run_id}/input",
        json={"inputId": request["inputId"], "decision": {"approved": False}, "requestId": "x"},
    )
    assert stale.status_code == 400, stale.text
    error = error_of(stale)
    assert error["status"] == "FAILED_PRECONDITION"
    assert detail(error, "ErrorInfo")["reason"] == "INPUT_NOT_PENDING"


async def test_bad_answers_are_400s_naming_the_fields(client, waiting_run):
    run_id, request = waiting_run
    url = f"/api/v1/runs/{run_id}/input"
    cases: list[tuple[Any, set[str]]] = [
        ({"decision": {"approved": True}}, {"inputId"}),
        ({"inputId": request["inputId"]}, {"text"}),
        (
            {"inputId": request["inputId"], "text": "yes", "decision": {"approved": True}},
            {"text", "decision"},
        ),
        ({"inputId": request["inputId"], "text": ""}, {"text"}),
        ({"inputId": request["inputId"], "decision": {"approved": True}, "x": 1}, {"x"}),
        ([1, 2], {"body"}),
    ]
    for body, fields in cases:
        reply = await client.post(url, json=body)
        assert reply.status_code == 400, (body, reply.text)
        error = error_of(reply)
        assert error["status"] == "INVALID_ARGUMENT"
        named = {v["field"] for v in detail(error, "BadRequest")["fieldViolations"]}
        assert named == fields, (body, named)
    not_json = await client.post(url, content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    # text for an approval: the orchestrator's check, still a 400 with the field
    text = await client.post(url, json={"inputId": request["inputId"], "text": "fine"})
    assert text.status_code == 400, text.text
    assert error_of(text)["status"] == "INVALID_ARGUMENT"
    unknown = await client.post(url, json={"inputId": "turn99-9", "decision": {"approved": True}})
    assert unknown.status_code == 400, unknown.text
    assert detail(error_of(unknown), "ErrorInfo")["reason"] == "INPUT_NOT_PENDING"
    missing = await client.post(
        "/api/v1/runs/00000000-0000-4000-8000-000000000000/input",
        json={"inputId": "turn1-1", "decision": {"approved": True}},
    )
    assert missing.status_code == 404, missing.text
    # still waiting: nothing of that changed the run
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert run["status"] == "RUN_STATUS_AWAITING_INPUT"


async def test_another_users_run_is_404(alice, bob):
    run_id = await _start(alice)
    request = await _waiting(alice, run_id)
    try:
        reply = await bob.post(
            f"/api/v1/runs/{run_id}/input",
            json={"inputId": request["inputId"], "decision": {"approved": True}},
        )
        assert reply.status_code == 404, reply.text
        assert error_of(reply)["status"] == "NOT_FOUND"
    finally:
        await alice.post(f"/api/v1/runs/{run_id}/cancel", json={})


async def test_an_sse_stream_of_a_waiting_run_stays_open_and_continues(client):
    run_id = await _start(client)
    seen: list[SseFrame] = []
    async with (
        httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as other,
        client.stream("GET", f"/api/v1/runs/{run_id}/events") as response,
    ):
        frames = sse_frames(response)
        request = (await _read_until(frames, seen, "input_requested")).json()
        # the same stream, still open: answer from another connection, read on
        reply = await other.post(
            f"/api/v1/runs/{run_id}/input",
            json={
                "inputId": request["inputRequested"]["inputId"],
                "decision": {"approved": True},
            },
        )
        assert reply.status_code == 200, reply.text
        await _read_until(frames, seen, TERMINAL)
    kinds = [f.event for f in seen]
    assert kinds[kinds.index("input_requested") + 1] == "input_received"
    assert kinds[-1] == "run_completed"
    assert [int(f.id or 0) for f in seen] == list(range(1, len(seen) + 1))


async def test_cancel_while_waiting_ends_the_run_and_the_answer_is_too_late(client, waiting_run):
    run_id, request = waiting_run
    cancelled = await client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "no"})
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
    events = await _events(client, run_id)
    assert [e["type"] for e in events][-2:] == ["input_requested", "run_cancelled"]
    late = await client.post(
        f"/api/v1/runs/{run_id}/input",
        json={"inputId": request["inputId"], "decision": {"approved": True}},
    )
    assert late.status_code == 400, late.text
    assert error_of(late)["status"] == "FAILED_PRECONDITION"


async def test_deleting_the_conversation_of_a_waiting_run_deletes_the_run(client, waiting_run):
    run_id, _ = waiting_run
    conversation = (await client.get(f"/api/v1/runs/{run_id}")).json()["conversationId"]
    deleted = await client.delete(f"/api/v1/conversations/{conversation}")
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(f"/api/v1/runs/{run_id}")).status_code == 404


async def test_the_websocket_input_frame_answers_and_acks_before_the_event(gateway):
    async with websockets.connect(_ws_url(gateway), origin=gateway) as ws:
        assert json.loads(await ws.recv())["status"] == "connected"
        await ws.send(
            json.dumps({"type": "chat", "payload": {"message": QUESTION, "team": TEMPLATE}})
        )
        frames: list[dict[str, Any]] = []
        request: dict[str, Any] | None = None
        while request is None:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            assert frame["type"] not in TERMINAL, frames
            if frame["type"] == "input_requested":
                request = frame["inputRequested"]
        run_id = frames[0]["runId"]
        # a malformed answer: an error frame, the socket stays usable
        await ws.send(json.dumps({"type": "input", "payload": {"runId": run_id}}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "INVALID_ARGUMENT"
        assert error["recoverable"] is True and error["runId"] == run_id
        fields = {v["field"] for d in error["details"] for v in d.get("fieldViolations", [])}
        assert fields == {"payload.inputId", "payload.text"}

        await ws.send(
            json.dumps(
                {
                    "type": "input",
                    "payload": {
                        "runId": run_id,
                        "inputId": request["inputId"],
                        "decision": {"approved": True},
                        "requestId": "ws-1",
                    },
                }
            )
        )
        after: list[dict[str, Any]] = []
        while not after or after[-1]["type"] not in TERMINAL:
            after.append(json.loads(await ws.recv()))
        kinds = [f["type"] for f in after]
        assert kinds[0] == "status" and after[0]["status"] == "input_submitted"
        assert after[0]["inputId"] == request["inputId"]
        assert after[0]["event"]["inputReceived"]["requestId"] == "ws-1"
        assert kinds.index("input_received") > 0, "the ack comes before the event"
        assert kinds[-1] == "run_completed"

        # answering again: the error frame (nothing pending), with runId and inputId
        await ws.send(
            json.dumps(
                {
                    "type": "input",
                    "payload": {
                        "runId": run_id,
                        "inputId": request["inputId"],
                        "decision": {"approved": True},
                    },
                }
            )
        )
        stale = json.loads(await ws.recv())
        assert stale["type"] == "error" and stale["code"] == "FAILED_PRECONDITION"
        assert stale["inputId"] == request["inputId"]


async def test_ws_subscribe_to_a_waiting_run_is_not_out_of_range(gateway, client):
    run_id = await _start(client)
    await _waiting(client, run_id)
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    try:
        async with websockets.connect(_ws_url(gateway), origin=gateway) as ws:
            await ws.recv()
            await ws.send(
                json.dumps(
                    {"type": "subscribe", "payload": {"runId": run_id, "afterSeq": run["lastSeq"]}}
                )
            )
            ack = json.loads(await ws.recv())
            assert ack["status"] == "subscribed", ack
    finally:
        await client.post(f"/api/v1/runs/{run_id}/cancel", json={})


# --- the OpenAI-compatible API, with the openai SDK -----------------------------------------


def _openai(base: str, key: str = "any-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_approval_request_then_approval_response_continues_the_run(gateway):
    client = _openai(gateway)
    first = client.responses.create(model=f"chorus/{TEMPLATE}", input=QUESTION)
    assert first.status == "completed"
    request = first.output[-1]
    assert request.type == "mcp_approval_request"
    assert request.name == "calculator" and request.server_label == "chorus"
    json.loads(request.arguments)
    assert client.responses.retrieve(first.id).output[-1].id == request.id

    seen = list(
        client.responses.create(
            model=f"chorus/{TEMPLATE}",
            previous_response_id=first.id,
            input=[
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": request.id,
                    "approve": True,
                }
            ],
            stream=True,
        )
    )
    assert seen[0].type == "response.created" and seen[-1].type == "response.completed"
    second = seen[-1].response
    assert second.id.startswith(first.id + "_")
    assert second.previous_response_id == first.id
    assert second.output_text
    assert any(i.type == "function_call" and i.status == "completed" for i in second.output)
    again = client.responses.retrieve(second.id)
    assert again.status == "completed" and again.output_text == second.output_text
    answered = client.responses.input_items.list(second.id).data
    assert [(i.type, i.approval_request_id, i.approve) for i in answered] == [
        ("mcp_approval_response", request.id, True)
    ]
    replayed = list(client.responses.retrieve(second.id, stream=True, starting_after=1))
    assert replayed[0].sequence_number == 2 and replayed[-1].type == "response.completed"

    # the same approval again: nothing is pending any more
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=f"chorus/{TEMPLATE}",
            previous_response_id=second.id,
            input=[
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": request.id,
                    "approve": False,
                }
            ],
            extra_headers={"Idempotency-Key": "another"},
        )


def test_openai_denial_without_streaming_and_bad_approval_items(gateway):
    client = _openai(gateway)
    first = client.responses.create(model=f"chorus/{TEMPLATE}", input=QUESTION)
    request = first.output[-1]
    assert request.type == "mcp_approval_request"
    with pytest.raises(openai.BadRequestError):  # text to a run that waits for an approval
        client.responses.create(
            model=f"chorus/{TEMPLATE}", previous_response_id=first.id, input="go ahead"
        )
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=f"chorus/{TEMPLATE}",
            previous_response_id=first.id,
            input=[
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": "mcpr_x_y",
                    "approve": True,
                }
            ],
        )
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=f"chorus/{TEMPLATE}",
            previous_response_id=first.id,
            input=[
                {"type": "mcp_approval_response", "approval_request_id": request.id},
            ],
        )
    second = client.responses.create(
        model=f"chorus/{TEMPLATE}",
        previous_response_id=first.id,
        input=[
            {
                "type": "mcp_approval_response",
                "approval_request_id": request.id,
                "approve": False,
                "reason": "not now",
            }
        ],
    )
    assert second.status == "completed"
    call = next(i for i in second.output if i.type == "function_call")
    assert call.status == "incomplete" and "not now" in call.model_extra["output"]
    for bogus in (first.id + "_999999", first.id + "_1"):  # no answer started a part there
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(bogus)
        with pytest.raises(openai.NotFoundError):
            client.responses.cancel(bogus)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(bogus)


def test_another_users_approval_is_not_found(keyed_gateway):
    alice = _openai(keyed_gateway, API_KEYS["alice"])
    bob = _openai(keyed_gateway, API_KEYS["bob"])
    first = alice.responses.create(model=f"chorus/{TEMPLATE}", input=QUESTION)
    request = first.output[-1]
    try:
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(
                model=f"chorus/{TEMPLATE}",
                input=[
                    {
                        "type": "mcp_approval_response",
                        "approval_request_id": request.id,
                        "approve": True,
                    }
                ],
            )
    finally:
        alice.responses.cancel(first.id)


# --- text requests: the human editor of `article-pipeline-reviewed` -------------------------

REVIEWED = "article-pipeline-reviewed"


async def test_a_human_agents_text_answer_becomes_its_message(client):
    reply = await client.post(
        "/api/v1/runs", json={"template": REVIEWED, "input": "Why bees matter."}
    )
    assert reply.status_code == 201, reply.text
    run_id = reply.json()["id"]
    request = await _waiting(client, run_id)
    assert request["kind"] == "INPUT_KIND_TEXT" and request["agent"] == "editor"
    assert "APPROVE" in request["prompt"] and "toolCall" not in request
    url = f"/api/v1/runs/{run_id}/input"
    decision = await client.post(
        url, json={"inputId": request["inputId"], "decision": {"approved": True}}
    )
    assert decision.status_code == 400, decision.text  # a decision for a text request
    answer = await client.post(url, json={"inputId": request["inputId"], "text": "APPROVE"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["event"]["inputReceived"]["text"] == "APPROVE"
    events = await _events(client, run_id)
    editor = [
        e["messageCompleted"]["message"]["content"]
        for e in events
        if e["type"] == "message_completed" and e.get("agent") == "editor"
    ]
    assert editor == ["APPROVE"]
    assert events[-1]["type"] == "run_completed"


def test_openai_text_request_is_answered_by_the_next_responses_text(gateway):
    client = _openai(gateway)
    first = client.responses.create(model=f"chorus/{REVIEWED}", input="Why bees matter.")
    assert first.status == "completed"
    prompt = first.output[-1]
    assert prompt.type == "message" and prompt.model_extra["agent"] == "editor"
    assert "APPROVE" in prompt.content[0].text
    second = client.responses.create(
        model=f"chorus/{REVIEWED}", previous_response_id=first.id, input="APPROVE"
    )
    assert second.id.startswith(first.id + "_") and second.previous_response_id == first.id
    assert second.status == "completed"
    run = httpx.get(f"{gateway}/api/v1/runs/{ids.run_id_of(first.id)}").json()
    assert run["status"] == "RUN_STATUS_COMPLETED"


def test_openai_background_approval_is_followed_by_retrieving_the_part(gateway):
    client = _openai(gateway)
    first = client.responses.create(model=f"chorus/{TEMPLATE}", input=QUESTION, background=True)
    seen = list(client.responses.retrieve(first.id, stream=True))
    assert seen[-1].type == "response.completed"
    request = seen[-1].response.output[-1]
    assert request.type == "mcp_approval_request"
    part = client.responses.create(
        model=f"chorus/{TEMPLATE}",
        previous_response_id=first.id,
        background=True,
        input=[
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
        ],
    )
    assert part.status in ("queued", "in_progress") and part.background is True
    rest = list(client.responses.retrieve(part.id, stream=True))
    assert rest[0].type == "response.created" and rest[-1].type == "response.completed"
    assert rest[-1].response.output_text
