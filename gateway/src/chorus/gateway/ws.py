"""WebSocket `/api/v1/ws`: chat, follow, cancel, input and ping over one socket (the seeds'
protocol).

Handshake: the `Origin` header must be the gateway's own origin or one of
`ws_allowed_origins` (clients that send no Origin — not browsers — are allowed); then the
caller authenticates like any request (Basic, Bearer or Easy Auth headers). Refusals
happen before `accept()`: 403 for the origin, 401 (+ `WWW-Authenticate`) for credentials,
with the AIP-193 body.

Client → server frames, JSON text (binary frames holding UTF-8 JSON are accepted too)::

    {"type": "ping", "payload": {...}}                       → {"type": "pong", "payload": {...}}
    {"type": "chat", "payload": {"message": "…", "team": "duet", "conversationId": "…",
                                 "requestId": "…", "maxTurns": 4}}
        starts a run (template `team`, default `assistant`) and follows it:
        → {"type": "status", "status": "run_created", "runId": "…", "run": {…}}, then its events
    {"type": "subscribe", "payload": {"runId": "…", "afterSeq": 12}}
        follows a run after a seq → {"type": "status", "status": "subscribed", …}, then events;
        a run that does not exist (or is another user's), or an `afterSeq` beyond an ended
        run's last event (OUT_OF_RANGE, with `lastSeq`) → the error frame alone
    {"type": "unsubscribe", "payload": {"runId": "…"}}      → status "unsubscribed"
    {"type": "cancel", "payload": {"runId": "…", "reason": "…"}}
        (runId defaults to the last run started or followed here)
        → {"type": "status", "status": "cancel_requested" | "cancel_ignored", "runId", "message"},
        always before the run's `run_cancelled` event (the run's events wait for the ack)
    {"type": "input", "payload": {"runId": "…", "inputId": "turn1-1",
                                  "decision": {"approved": true, "reason": "…"} | "text": "…",
                                  "requestId": "…"}}
        answers the run's `input_requested` (issue 21; runId defaults as for cancel)
        → {"type": "status", "status": "input_submitted", "runId", "inputId", "run", "event"},
        always before the run's `input_received` event (a repeat of its requestId gets the
        same ack); a bad answer or one too late → the error frame with runId and inputId

Payload keys may be lowerCamelCase or snake_case (`runId` or `run_id`), like proto3 JSON.

Server → client: every frame has a `"type"`. `{"type": "status", "status": "connected"}`
first; every run event as the JSON of SSE `data:` (proto3 JSON of the RunEvent) with its
`type` added — the payload's name, as SSE's `event:` line (`run_started`, `text_delta`,
`tool_call_started`, …, `run_completed`), e.g. `{"type": "text_delta", "runId": "…", "seq":
"17", "agent": "…", "textDelta": {"text": "…"}}` (event frames are the ones with a `seq`),
ending with the run's terminal event; `pong`; and `{"type": "error", "message", "code",
"recoverable", "details"[, "runId", "lastSeq"]}`. The README maps the realtime design's
frame types (`agent_step`, `tool_call`, …) to these.

A bad frame (not JSON, not an object, unknown type, missing fields, too large) gets an
error with `recoverable: true` and the socket stays open. A frame larger than
`ws_max_message_bytes` gets an error frame; one above 4× that is refused by the server
with close code 1009. A follow that fails mid-run reports `lastSeq` so the client can
`subscribe` again after it.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
import orjson
from fastapi import APIRouter, WebSocket
from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocketDisconnect

from chorus.core import identity
from chorus.core.errors import ChorusError, InvalidArgument, OutOfRange, PermissionDenied
from chorus.core.logging import get_logger
from chorus.gateway import errors, inputs, protojson
from chorus.gateway.api.deps import act_as
from chorus.gateway.auth import Authenticator, Caller
from chorus.gateway.clients import ServiceClients
from chorus.gateway.ratelimit import RateLimiter
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import WatchBuffer
from chorus.v1 import run_pb2, run_service_pb2

log = get_logger("chorus.gateway.ws")

router = APIRouter(tags=["websocket"])

CONNECTIONS = Gauge("chorus_gateway_ws_connections", "Open WebSocket connections.")
FRAMES = Counter("chorus_gateway_ws_frames_total", "Frames received, by type.", ["type"])
EVENTS = Counter("chorus_gateway_ws_events_total", "Run events sent over WebSockets.")

DEFAULT_TEAM = "assistant"
_ACTIVE = (
    run_pb2.RUN_STATUS_QUEUED,
    run_pb2.RUN_STATUS_RUNNING,
    run_pb2.RUN_STATUS_AWAITING_INPUT,
)
"""A run in these may still add events; past the last one of any other, `afterSeq` is
OUT_OF_RANGE."""


def event_frame(event: run_pb2.RunEvent) -> str:
    """The text frame of a run event: SSE's `data:` JSON with `"type"` (the payload's name,
    SSE's `event:`) first."""
    return orjson.dumps(
        {"type": event.WhichOneof("payload") or "event", **protojson.event_dict(event)}
    ).decode()


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a WebSocket handshake's `Origin` may connect.

    No Origin (a non-browser client) is allowed; otherwise the origin must be listed in
    `allowed` or be the gateway's own (`Origin` host:port equals the `Host` header).
    """
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


class _FrameError(Exception):
    """A client frame the server cannot act on (answered with a recoverable error)."""


class _Follow(WatchBuffer):
    """One followed run: the events its watch on the shared WatchRuns call delivered and
    the socket has not been sent yet."""

    def __init__(self, max_buffered: int) -> None:
        super().__init__(max_buffered)
        self.events: collections.deque[run_pb2.RunEvent] = collections.deque()

    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        self.events.extend(events)
        self._delivered(len(self.events))

    def take_all(self) -> None:
        """The socket was sent every delivered event."""
        self._taken()

    async def wait(self) -> None:
        """Until more events were delivered or the watch ended."""
        self._ready.clear()
        if not self.events and not self.finished:
            await self._ready.wait()


class Connection:
    """One accepted socket: its sends, follows and frame handlers."""

    def __init__(
        self,
        ws: WebSocket,
        caller: Caller,
        clients: ServiceClients,
        limiter: RateLimiter,
        settings: GatewaySettings,
    ) -> None:
        self.ws = ws
        self.caller = caller
        self.clients = clients
        self.limiter = limiter
        self.settings = settings
        self.follows: dict[str, asyncio.Task[None]] = {}
        self.last_run_id = ""
        self._holds: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self.open = True

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one JSON text frame (sends are serialized; they wait while the socket is
        full, and a follow whose unsent events reach `sse_max_buffered_events` pauses its
        watch meanwhile)."""
        await self.send_raw(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        if not self.open:
            return
        async with self._lock:
            try:
                await self.ws.send({"type": "websocket.send", "text": text})
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.open = False

    async def send_error(
        self, exc: BaseException, *, recoverable: bool = True, **extra: Any
    ) -> None:
        """An `error` frame for `exc` (gRPC, gateway or frame error)."""
        if isinstance(exc, _FrameError):
            frame: dict[str, Any] = {
                "type": "error",
                "message": str(exc),
                "code": "INVALID_ARGUMENT",
                "recoverable": recoverable,
                "details": [],
            }
        else:
            status, http_status = errors.status_of(exc)
            body = errors.error_body(status, http_status)["error"]
            frame = {
                "type": "error",
                "message": body["message"],
                "code": body["status"],
                "recoverable": recoverable,
                "details": body["details"],
            }
            retry = errors.retry_after_s(status)
            if retry is not None:
                frame["retryAfter"] = retry
        frame.update(extra)
        await self.send(frame)

    # --- frames -------------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        """Act on one client frame; every problem becomes an error frame."""
        identity.set_request_id(uuid.uuid4().hex)
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > self.settings.ws_max_message_bytes:
            FRAMES.labels("oversized").inc()
            await self.send_error(
                _FrameError(f"frame of {size} bytes exceeds {self.settings.ws_max_message_bytes}")
            )
            return
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            FRAMES.labels("malformed").inc()
            await self.send_error(_FrameError("frame is not valid JSON"))
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            FRAMES.labels("malformed").inc()
            await self.send_error(_FrameError('frame must be an object with a string "type"'))
            return
        kind = frame["type"]
        payload = frame.get("payload", {})
        if payload is None:
            payload = {}
        handler = {
            "ping": self.on_ping,
            "chat": self.on_chat,
            "subscribe": self.on_subscribe,
            "unsubscribe": self.on_unsubscribe,
            "cancel": self.on_cancel,
            "input": self.on_input,
        }.get(kind)
        FRAMES.labels(kind if handler else "unknown").inc()
        if handler is None:
            await self.send_error(
                _FrameError(
                    f"unknown frame type {kind!r}: use ping, chat, subscribe, unsubscribe, "
                    "cancel, input"
                )
            )
            return
        if not isinstance(payload, dict):
            await self.send_error(_FrameError('"payload" must be an object'))
            return
        try:
            await handler(payload)
        except _FrameError as exc:
            await self.send_error(exc)
        except (grpc.aio.AioRpcError, ChorusError) as exc:
            await self.send_error(exc)
        except Exception as exc:  # a bug: INTERNAL (logged by status_of); the socket is fine
            await self.send_error(exc)

    async def on_ping(self, payload: dict[str, Any]) -> None:
        await self.send({"type": "pong", "payload": payload} if payload else {"type": "pong"})

    async def on_chat(self, payload: dict[str, Any]) -> None:
        message = _string(payload, "message", required=True)
        if len(message) > self.settings.max_input_chars:
            raise InvalidArgument(
                "message is too long",
                [("payload.message", f"at most {self.settings.max_input_chars} characters")],
                reason="INPUT_TOO_LONG",
            )
        max_turns = _field(payload, "maxTurns", None)
        if max_turns is not None and (
            not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1
        ):
            raise _FrameError(
                '"payload.maxTurns" must be a positive integer (omit it for the default)'
            )
        spec = run_pb2.RunSpec(
            template=_string(payload, "team") or DEFAULT_TEAM,
            input=message,
            conversation_id=_string(payload, "conversationId"),
            request_id=_string(payload, "requestId"),
        )
        if max_turns is not None:
            spec.max_turns = max_turns
        self._check_capacity(None)
        await self.limiter.hit("messages", self.caller.user)
        reply = await self.clients.runs.CreateRun(
            run_service_pb2.CreateRunRequest(spec=spec), timeout=self.settings.rpc_timeout_s
        )
        run_id = reply.run.id
        await self.send(
            {
                "type": "status",
                "status": "run_created",
                "runId": run_id,
                "run": protojson.to_dict(reply.run),
            }
        )
        self.follow(run_id, 0)

    async def on_subscribe(self, payload: dict[str, Any]) -> None:
        run_id = _string(payload, "runId", required=True)
        after = _field(payload, "afterSeq", 0)
        if isinstance(after, str) and after.isdigit():
            after = int(after)  # int64 travels as a string in proto3 JSON
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise _FrameError('"payload.afterSeq" must be a non-negative integer')
        self._check_capacity(run_id)
        # NOT_FOUND (unknown, or another user's) is the answer alone, never after an ack;
        # so is OUT_OF_RANGE for an `afterSeq` beyond an ended run's last event (issue 23).
        try:
            reply = await self.clients.runs.GetRun(
                run_service_pb2.GetRunRequest(run_id=run_id), timeout=self.settings.rpc_timeout_s
            )
        except (grpc.aio.AioRpcError, ChorusError) as exc:
            await self.send_error(exc, runId=run_id)
            return
        run = reply.run
        if run.status not in _ACTIVE and after > run.last_seq:
            await self.send_error(
                OutOfRange(
                    f"afterSeq {after} is beyond the run's last event ({run.last_seq})",
                    [("payload.afterSeq", f"must be at most {run.last_seq}")],
                ),
                runId=run_id,
                lastSeq=str(run.last_seq),
            )
            return
        await self.send(
            {"type": "status", "status": "subscribed", "runId": run_id, "afterSeq": str(after)}
        )
        self.follow(run_id, after)

    async def on_unsubscribe(self, payload: dict[str, Any]) -> None:
        run_id = _string(payload, "runId", required=True)
        task = self.follows.pop(run_id, None)
        if task is not None:
            task.cancel()
        await self.send({"type": "status", "status": "unsubscribed", "runId": run_id})

    async def on_cancel(self, payload: dict[str, Any]) -> None:
        run_id = _string(payload, "runId") or self.last_run_id
        if not run_id:
            raise _FrameError('"payload.runId" is required (no run started or followed yet)')
        reason = _string(payload, "reason")
        if len(reason) > 1000:
            raise _FrameError('"payload.reason" is at most 1000 characters')
        # The run's follow on this socket holds its events until the ack is sent: the ack
        # comes before the outcome (`run_cancelled`) it announces.
        hold = self._holds[run_id] = asyncio.Event()
        try:
            reply = await self.clients.runs.CancelRun(
                run_service_pb2.CancelRunRequest(run_id=run_id, reason=reason),
                timeout=self.settings.rpc_timeout_s,
            )
            await self.send(
                {
                    "type": "status",
                    "status": "cancel_requested" if reply.cancelled else "cancel_ignored",
                    "runId": run_id,
                    "message": reply.message,
                }
            )
        finally:
            del self._holds[run_id]
            hold.set()

    async def on_input(self, payload: dict[str, Any]) -> None:
        """Answer a run's `input_requested` (RunService.SubmitRunInput, issue 21): the ack
        `{"type": "status", "status": "input_submitted", "runId", "inputId", "run",
        "event"}` — sent before the `input_received` event it announces reaches this
        socket's follow of the run — or the error frame (INVALID_ARGUMENT with field
        violations `payload.…`, FAILED_PRECONDITION `INPUT_NOT_PENDING`, NOT_FOUND) with
        `runId` and `inputId`."""
        run_id = _string(payload, "runId") or self.last_run_id
        if not run_id:
            raise _FrameError('"payload.runId" is required (no run started or followed yet)')
        try:
            submit = inputs.parse_input(
                payload,
                max_text_chars=self.settings.max_input_chars,
                prefix="payload.",
                extra=frozenset(("runId", "run_id")),
            )
        except InvalidArgument as exc:
            await self.send_error(exc, runId=run_id)
            return
        submit.run_id = run_id
        hold = self._holds[run_id] = asyncio.Event()
        try:
            try:
                reply = await self.clients.runs.SubmitRunInput(
                    submit, timeout=self.settings.rpc_timeout_s
                )
            except (grpc.aio.AioRpcError, ChorusError) as exc:
                await self.send_error(exc, runId=run_id, inputId=submit.input_id)
                return
            await self.send(
                {
                    "type": "status",
                    "status": "input_submitted",
                    "runId": run_id,
                    "inputId": submit.input_id,
                    "run": protojson.to_dict(reply.run),
                    "event": protojson.event_dict(reply.event),
                }
            )
        finally:
            del self._holds[run_id]
            hold.set()

    # --- following runs ------------------------------------------------------------------

    def _check_capacity(self, run_id: str | None) -> None:
        active = {r for r, t in self.follows.items() if not t.done()}
        if run_id in active:
            return
        if len(active) >= self.settings.ws_max_subscriptions:
            raise PermissionDenied(
                f"at most {self.settings.ws_max_subscriptions} runs followed per socket; "
                "unsubscribe first",
                reason="TOO_MANY_SUBSCRIPTIONS",
            )

    def follow(self, run_id: str, after_seq: int) -> None:
        """Stream `run_id`'s events after `after_seq` to the socket (replacing an earlier
        follow of the same run)."""
        previous = self.follows.pop(run_id, None)
        if previous is not None:
            previous.cancel()
        self.follows = {r: t for r, t in self.follows.items() if not t.done()}
        self.last_run_id = run_id
        self.follows[run_id] = asyncio.create_task(self._pump(run_id, after_seq))

    async def _pump(self, run_id: str, after_seq: int) -> None:
        follow = _Follow(self.settings.sse_max_buffered_events)
        follow.watch = self.clients.watches.open(
            follow,
            user=self.caller.user,
            request_id=identity.current_request_id(),
            run_id=run_id,
            after_seq=after_seq,
        )
        last_seq = after_seq
        try:
            while True:
                while follow.events:
                    event = follow.events.popleft()
                    last_seq = event.seq
                    hold = self._holds.get(run_id)
                    if hold is not None:  # a cancel of this run awaits its ack
                        await hold.wait()
                    await self.send_raw(event_frame(event))
                    EVENTS.inc()
                    if not self.open:
                        return
                follow.take_all()
                if follow.finished:
                    break
                await follow.wait()
            if follow.error is not None:
                await self.send_error(follow.error, runId=run_id, lastSeq=str(last_seq))
        finally:
            if not follow.finished:
                follow.watch.stop()

    async def close(self) -> None:
        """Stop every follow (their watches are stopped)."""
        self.open = False
        tasks = list(self.follows.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def _field(payload: dict[str, Any], key: str, default: Any = None) -> Any:
    """`payload[key]`, also under its snake_case name (proto3 JSON accepts both)."""
    if key in payload:
        return payload[key]
    return payload.get(_snake(key), default)


def _string(payload: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = _field(payload, key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _FrameError(f'"payload.{key}" must be a string')
    if required and not value.strip():
        raise _FrameError(f'"payload.{key}" is required')
    return value


async def _deny(ws: WebSocket, exc: ChorusError) -> None:
    """Refuse the handshake with the error's HTTP status and AIP-193 body."""
    response = errors.error_response(exc)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:  # closing before accept makes the server answer 403
        await ws.close(code=1008)


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    """The chat / subscribe / cancel / ping protocol (module docstring)."""
    app = ws.app
    settings: GatewaySettings = app.state.settings
    origin = ws.headers.get("origin")
    if not origin_allowed(origin, ws.headers.get("host"), settings.ws_allowed_origins):
        log.warning("ws_origin_refused", origin=origin)
        await _deny(
            ws, PermissionDenied(f"origin {origin} is not allowed", reason="ORIGIN_REFUSED")
        )
        return
    authenticator: Authenticator = app.state.authenticator
    try:
        caller = await authenticator.authenticate(ws.headers)
    except ChorusError as exc:
        await _deny(ws, exc)
        return
    act_as(caller)
    await ws.accept()
    conn = Connection(ws, caller, app.state.clients, app.state.limiter, settings)
    CONNECTIONS.inc()
    log.info("ws_connected", user=caller.user)
    try:
        await conn.send({"type": "status", "status": "connected"})
        while conn.open:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            await conn.handle(raw)
    except WebSocketDisconnect:
        pass
    finally:
        CONNECTIONS.dec()
        await conn.close()
        log.info("ws_disconnected", user=caller.user)
