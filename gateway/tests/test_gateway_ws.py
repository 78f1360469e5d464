"""The WebSocket protocol with the `websockets` client against the real services: chat,
ping, cancel, subscribe, bad frames that keep the socket open, size limits, Origin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from gateway_helpers import TERMINAL, detail, duet, read_events, slow_duet

EVENT_KEYS = {"runStarted", "runCompleted", "runFailed", "runCancelled"}


def _ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/ws"


@pytest.fixture
async def ws(gateway: str) -> AsyncIterator[Any]:
    async with websockets.connect(_ws_url(gateway), origin=gateway) as socket:
        assert json.loads(await socket.recv()) == {"type": "status", "status": "connected"}
        yield socket


async def _send(socket: Any, frame: dict[str, Any] | str) -> None:
    await socket.send(frame if isinstance(frame, str) else json.dumps(frame))


async def _recv(socket: Any) -> dict[str, Any]:
    return json.loads(await socket.recv())


async def _until_terminal(socket: Any) -> list[dict[str, Any]]:
    """Event frames (those with a seq) up to and including the run's terminal event."""
    events = []
    while True:
        frame = await _recv(socket)
        if "seq" not in frame:
            continue
        events.append(frame)
        if EVENT_KEYS & frame.keys() - {"runStarted"}:
            return events


async def _alive(socket: Any) -> None:
    await _send(socket, {"type": "ping", "payload": {"n": 1}})
    assert await _recv(socket) == {"type": "pong", "payload": {"n": 1}}


async def test_ping_gets_pong(ws):
    await _send(ws, {"type": "ping"})
    assert await _recv(ws) == {"type": "pong"}
    await _alive(ws)


async def test_chat_starts_a_run_and_streams_it_to_the_end(ws):
    await _send(
        ws, {"type": "chat", "payload": {"message": "Cats or dogs?", "team": "duet", "maxTurns": 2}}
    )
    created = await _recv(ws)
    assert created["type"] == "status" and created["status"] == "run_created"
    assert created["run"]["spec"]["template"] == "duet"
    events = await _until_terminal(ws)
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    assert all(e["runId"] == created["runId"] for e in events)
    assert "runStarted" in events[0] and "runCompleted" in events[-1]


async def test_every_server_frame_has_a_type_and_events_are_named_like_sse(ws, client):
    """Issue 23: a client that switches on `msg.type` reads every frame — event frames
    carry their payload's name, the `event:` of the same event over SSE."""
    run_id = (await client.post("/api/v1/runs", json=duet("Typed frames"))).json()["id"]
    _, sse = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    await _send(ws, {"type": "subscribe", "payload": {"runId": run_id}})
    frames = [await _recv(ws)]
    frames += await _until_terminal(ws)
    await _send(ws, {"type": "ping"})
    await _send(ws, {"type": "nonsense"})
    frames += [await _recv(ws), await _recv(ws)]
    assert all(isinstance(f.get("type"), str) for f in frames), frames
    assert [f["type"] for f in frames[:1] + frames[-2:]] == ["status", "pong", "error"]
    events = frames[1:-2]
    assert [e["type"] for e in events] == [f.event for f in sse]
    assert {"run_started", "text_delta", "run_completed"} <= {e["type"] for e in events}
    assert [{k: v for k, v in e.items() if k != "type"} for e in events] == [f.json() for f in sse]


async def test_chat_defaults_to_the_assistant_in_a_conversation(ws, client):
    conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
    await _send(
        ws, {"type": "chat", "payload": {"message": "Hello", "conversation_id": conversation}}
    )
    created = await _recv(ws)
    assert created["run"]["spec"]["template"] == "assistant"
    assert created["run"]["conversationId"] == conversation
    assert "runCompleted" in (await _until_terminal(ws))[-1]


async def test_subscribe_after_k_gets_exactly_the_rest_same_as_sse(ws, client):
    run_id = (await client.post("/api/v1/runs", json=duet("Watch me"))).json()["id"]
    _, sse = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    await _send(ws, {"type": "subscribe", "payload": {"runId": run_id, "afterSeq": 4}})
    ack = await _recv(ws)
    assert ack == {"type": "status", "status": "subscribed", "runId": run_id, "afterSeq": "4"}
    events = await _until_terminal(ws)
    assert events == [{"type": f.event, **f.json()} for f in sse[4:]]


async def test_cancel_stops_a_live_run(ws, client):
    run_id = (await client.post("/api/v1/runs", json=slow_duet("Stop me"))).json()["id"]
    await _send(ws, {"type": "subscribe", "payload": {"run_id": run_id}})
    assert (await _recv(ws))["status"] == "subscribed"
    assert "runStarted" in await _recv(ws)
    await _send(ws, {"type": "cancel", "payload": {"reason": "from ws"}})
    frames: list[dict] = []
    while not any("runCancelled" in f for f in frames):
        frames.append(await _recv(ws))
    acks = [f for f in frames if f.get("type") == "status"]
    assert len(acks) == 1 and acks[0]["status"] == "cancel_requested" and acks[0]["runId"] == run_id
    ended = frames[-1]
    assert ended["runCancelled"]["cancellation"]["reason"] == "from ws"
    await _send(ws, {"type": "cancel", "payload": {"runId": run_id}})
    assert (await _recv(ws))["status"] == "cancel_ignored"


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "object"),
        ({"payload": {}}, '"type"'),
        ({"type": "dance"}, "unknown frame type"),
        ({"type": "chat", "payload": "hello"}, "payload"),
        ({"type": "chat", "payload": {}}, "payload.message"),
        ({"type": "chat", "payload": {"message": "x", "maxTurns": -1}}, "maxTurns"),
        ({"type": "chat", "payload": {"message": "x", "maxTurns": 0}}, "maxTurns"),
        ({"type": "subscribe", "payload": {"afterSeq": 1}}, "payload.runId"),
        ({"type": "subscribe", "payload": {"runId": "r", "afterSeq": "x"}}, "afterSeq"),
    ],
)
async def test_bad_frames_get_a_recoverable_error_and_the_socket_stays_open(ws, frame, says):
    await _send(ws, frame)
    error = await _recv(ws)
    assert error["type"] == "error" and error["recoverable"] is True
    assert says in error["message"]
    await _alive(ws)


async def test_cancel_without_any_run_is_an_error(ws):
    await _send(ws, {"type": "cancel"})
    error = await _recv(ws)
    assert error["type"] == "error" and "runId" in error["message"]
    await _alive(ws)


async def test_cancel_is_acknowledged_before_the_run_cancelled_event(ws, client):
    """Issue 23: the ack came after `runCancelled` (the run's events raced the CancelRun
    reply); the run's events now wait for the ack. Five runs, each cancelled mid-stream."""
    for i in range(5):
        spec = slow_duet(f"Cancel me {i}", tokens_per_second=200, output_tokens=200)
        run_id = (await client.post("/api/v1/runs", json=spec)).json()["id"]
        await _send(ws, {"type": "subscribe", "payload": {"runId": run_id}})
        assert (await _recv(ws))["status"] == "subscribed"
        while "textDelta" not in await _recv(ws):
            pass
        await _send(ws, {"type": "cancel", "payload": {"runId": run_id}})
        kinds = []
        while "run_cancelled" not in kinds:
            frame = await _recv(ws)
            kinds.append(frame["status"] if frame["type"] == "status" else frame["type"])
        assert "cancel_requested" in kinds, kinds
        after_ack = kinds[kinds.index("cancel_requested") + 1 :]
        assert after_ack and after_ack[-1] == "run_cancelled", kinds


async def test_subscribing_to_an_unknown_run_is_the_error_alone(ws):
    run_id = "00000000-0000-4000-8000-00000000000e"
    await _send(ws, {"type": "subscribe", "payload": {"runId": run_id}})
    error = await _recv(ws)
    assert error["type"] == "error" and error["code"] == "NOT_FOUND", error
    assert error["runId"] == run_id and error["recoverable"]
    await _alive(ws)  # the next frame is the pong: no "subscribed", no second error


async def test_subscribing_past_the_end_of_an_ended_run_is_the_error_alone(ws, client):
    """Issue 23: an `afterSeq` beyond a finished run's last event is OUT_OF_RANGE, sent
    instead of the "subscribed" ack (like an unknown run), with the last seq to use."""
    run_id = (await client.post("/api/v1/runs", json=duet("Past the end"))).json()["id"]
    _, sse = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    last = len(sse)
    assert "runCompleted" in sse[-1].json()  # ended: its last seq is final
    for after in (last + 1, 10**9, str(last + 5)):
        await _send(ws, {"type": "subscribe", "payload": {"runId": run_id, "afterSeq": after}})
        error = await _recv(ws)
        assert error["type"] == "error" and error["code"] == "OUT_OF_RANGE", error
        assert error["runId"] == run_id and error["lastSeq"] == str(last) and error["recoverable"]
        violation = detail(error, "BadRequest")["fieldViolations"][0]
        assert violation["field"] == "payload.afterSeq"
        await _alive(ws)  # the next frame is the pong: no "subscribed", no second error
    # the last seq itself is in range: acknowledged, and nothing follows it
    await _send(ws, {"type": "subscribe", "payload": {"runId": run_id, "afterSeq": last}})
    ack = await _recv(ws)
    assert ack == {"type": "status", "status": "subscribed", "runId": run_id, "afterSeq": str(last)}
    await _alive(ws)
    # one before it: the terminal event alone
    await _send(ws, {"type": "subscribe", "payload": {"runId": run_id, "afterSeq": last - 1}})
    assert (await _recv(ws))["status"] == "subscribed"
    assert await _until_terminal(ws) == [{"type": sse[-1].event, **sse[-1].json()}]


async def test_service_errors_keep_their_code(ws):
    await _send(
        ws, {"type": "subscribe", "payload": {"runId": "00000000-0000-4000-8000-00000000000f"}}
    )
    error = await _recv(ws)
    assert error["type"] == "error" and error["code"] == "NOT_FOUND"
    assert error["runId"] == "00000000-0000-4000-8000-00000000000f" and error["recoverable"]
    await _send(ws, {"type": "chat", "payload": {"message": "x", "team": "no-such-team"}})
    error = await _recv(ws)
    assert error["code"] == "INVALID_ARGUMENT" and error["details"]
    await _alive(ws)


async def test_oversized_frames(gateways):
    url = gateways.url(ws_max_message_bytes="1024")
    async with websockets.connect(_ws_url(url), origin=url, max_size=None) as socket:
        await socket.recv()
        await _send(socket, {"type": "ping", "payload": {"pad": "x" * 2000}})
        error = await _recv(socket)
        assert error["type"] == "error" and "exceeds 1024" in error["message"]
        await _alive(socket)
        await _send(socket, {"type": "ping", "payload": {"pad": "x" * 5000}})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:1"])
async def test_foreign_origin_is_refused_with_403(gateway, origin):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(_ws_url(gateway), origin=origin):
            pass
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["status"] == "PERMISSION_DENIED"


async def test_allowed_origins_and_clients_without_origin_may_connect(gateways, gateway):
    url = gateways.url(ws_allowed_origins='["https://app.example"]')
    async with websockets.connect(_ws_url(url), origin="https://app.example") as socket:
        assert (await _recv(socket))["status"] == "connected"
    async with websockets.connect(_ws_url(gateway)) as socket:
        assert (await _recv(socket))["status"] == "connected"


async def test_closing_the_socket_leaves_the_run_running(gateway):
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        run_id = (await client.post("/api/v1/runs", json=slow_duet("Outlive the socket"))).json()[
            "id"
        ]
        async with websockets.connect(_ws_url(gateway)) as socket:
            await socket.recv()
            await _send(socket, {"type": "subscribe", "payload": {"runId": run_id}})
            await socket.recv()
            assert "runStarted" in await _recv(socket)
        _, rest = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
        assert rest[-1].event in TERMINAL and rest[-1].event == "run_completed"


async def test_a_follow_past_its_buffer_bound_pauses_and_still_gets_every_event(
    gateways, gateway, client
):
    # Joining a live run 50 events in: the catch-up arrives in one go, above a bound of 4,
    # so the follow pauses its watch; the run's later events wait in the orchestrator until
    # the socket was sent the catch-up and the watch resumed — then all come, once, in order.
    spec = slow_duet(tokens_per_second=200, output_tokens=150)
    run_id = (await client.post("/api/v1/runs", json=spec)).json()["id"]
    async with websockets.connect(_ws_url(gateway), origin=gateway) as first:
        await first.recv()
        await _send(first, {"type": "subscribe", "payload": {"runId": run_id}})
        while (await _recv(first)).get("seq", "0") != "50":
            pass
    url = gateways.url(sse_max_buffered_events="4")
    async with websockets.connect(_ws_url(url), origin=url) as socket:
        await socket.recv()
        await _send(socket, {"type": "subscribe", "payload": {"runId": run_id}})
        assert (await _recv(socket))["status"] == "subscribed"
        async with asyncio.timeout(30):  # a watch never resumed would hang here
            events = await _until_terminal(socket)
    _, sse = await read_events(client, "GET", f"/api/v1/runs/{run_id}/events")
    assert events == [{"type": f.event, **f.json()} for f in sse] and len(events) > 100
