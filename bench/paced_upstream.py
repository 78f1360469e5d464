"""A paced OpenAI-compatible upstream: each token its own SSE event, R tokens/s per stream.

    python -m uvicorn bench.paced_upstream:app --loop uvloop --port PORT
    env PACED_TPS=20 (tokens/s per stream), PACED_TOKENS=200 (answer length when the
    request names no max_tokens), PACED_FIRST_TOKEN_MS=0 (delay before token 0)

`POST …/chat/completions` with `"stream": true` answers with the chat.completion.chunk
events of the OpenAI streaming format: a role chunk, then one chunk per token, then a
`finish_reason` chunk, a usage chunk and `data: [DONE]`. Token `i` of a stream is scheduled
at `t0 + first_token + i / R` (t0: the request's arrival) and its text is ` <i>@<µs>`: its
index and the wall-clock time (`time.time()`, microseconds) it was scheduled for. A client
on the same machine computes each token's lag as its own receipt time minus that schedule,
so an upstream that falls behind because the chain in front of it starved it of CPU shows
up as lag instead of being hidden, and a relay that merges tokens into larger deltas still
yields one lag per token (`bench.paced_client` parses every ` i@µs` word of a delta).

Without `"stream": true` the answer is one chat.completion of all the tokens, sent when the
last one is due. `GET …/models` lists the one model `sim`. Anything else is 404; a body that
is not a JSON object, or a `max_tokens` < 1, is 400 with an OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TPS = float(os.environ.get("PACED_TPS", "20"))
TOKENS = int(os.environ.get("PACED_TOKENS", "200"))
FIRST_TOKEN_S = float(os.environ.get("PACED_FIRST_TOKEN_MS", "0")) / 1000
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
JSON_HEADERS = [(b"content-type", b"application/json")]


def token_text(index: int, scheduled_s: float) -> str:
    """The text of token `index` scheduled for wall-clock `scheduled_s`: ` <index>@<µs>`."""
    return f" {index}@{int(scheduled_s * 1_000_000)}"


def _chunk(created: int, delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": created,
        "model": "sim",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application (see the module docstring)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    arrived = time.time()
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    if path.endswith("/models") and scope["method"] == "GET":
        await _reply(send, 200, {"object": "list", "data": [{"id": "sim", "object": "model"}]})
        return
    if not path.endswith("/chat/completions") or scope["method"] != "POST":
        await _reply(send, 404, {"error": {"message": "not found", "type": "not_found"}})
        return
    try:
        request = orjson.loads(body or b"{}")
        count = int(request.get("max_tokens") or request.get("max_completion_tokens") or TOKENS)
        if count < 1:
            raise ValueError("max_tokens < 1")
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        error = "the body must be a JSON object; max_tokens, when given, an integer ≥ 1"
        await _reply(send, 400, {"error": {"message": error, "type": "invalid_request_error"}})
        return
    created = int(arrived)
    start = arrived + FIRST_TOKEN_S
    if not request.get("stream"):  # the whole answer at once, at the last token's time
        await asyncio.sleep(max(0.0, start + (count - 1) / TPS - time.time()))
        text = "".join(token_text(i, start + i / TPS) for i in range(count))
        message = {"role": "assistant", "content": text}
        await _reply(
            send,
            200,
            {
                "id": "chatcmpl-paced",
                "object": "chat.completion",
                "created": created,
                "model": "sim",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": count,
                    "total_tokens": count + 5,
                },
            },
        )
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send(
        {
            "type": "http.response.body",
            "body": _chunk(created, {"role": "assistant", "content": ""}),
            "more_body": True,
        }
    )
    # the upstream's own CPU per token bounds every path: the chunk around the text is built
    # once per stream (token texts need no JSON escaping)
    head, tail = _chunk(created, {"content": "<token>"}).split(b"<token>")
    for index in range(count):
        scheduled = start + index / TPS
        wait = scheduled - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = head + token_text(index, scheduled).encode() + tail
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    usage = {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": created,
        "model": "sim",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": count + 5},
    }
    tail = _chunk(created, {}, "stop") + b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": tail, "more_body": False})
