"""A bare one-hop Python relay: the floor for a Python service in front of the upstream.

    RELAY_UPSTREAM=http://127.0.0.1:PORT python -m uvicorn bench.relay:app --loop uvloop \
        --http httptools --port PORT

uvicorn and one ASGI handler: every request is sent to `RELAY_UPSTREAM` + its path (method,
body and `content-type` / `authorization` headers kept) with one shared aiohttp session, and
the answer's status, content type and body bytes are forwarded as they arrive, one ASGI
send per chunk read — no parsing, no logging, no framework. What a service costs beyond
this is its own work. A request that met a pooled connection the upstream had just closed
is sent once more (`_STALE`); an upstream that cannot be reached is 502 with a JSON error
body.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM = os.environ.get("RELAY_UPSTREAM", "http://127.0.0.1:9101")
FORWARDED = {b"content-type", b"authorization"}
_session: aiohttp.ClientSession | None = None
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
"""Errors of a reused keep-alive connection the upstream closed (uvicorn: after 5 s idle)
just as a request went out on it; nothing reached the upstream's handler, so the request is
sent once more, on a new connection, as HTTP clients do for idempotent requests. At 400
streams 2 of ~1,600 requests met it (502 before the retry)."""


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
    return _session


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application (see the module docstring)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if _session is not None:
            await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
    started = False
    for attempt in (1, 2):
        try:
            async with _client().request(
                scope["method"], UPSTREAM + scope["path"], data=body, headers=headers
            ) as answer:
                content_type = answer.headers.get("content-type", "application/octet-stream")
                await send(
                    {
                        "type": "http.response.start",
                        "status": answer.status,
                        "headers": [(b"content-type", content_type.encode())],
                    }
                )
                started = True
                async for chunk in answer.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            break
        except aiohttp.ClientError as exc:
            if started:  # cut mid-stream: end the body, the client sees a short stream
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if attempt == 1 and isinstance(exc, _STALE):
                continue  # a pooled connection the upstream closed as we sent: a new one
            await send(
                {
                    "type": "http.response.start",
                    "status": 502,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            error = f'{{"error": {{"message": "upstream: {type(exc).__name__}"}}}}'
            await send({"type": "http.response.body", "body": error.encode()})
            return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
