"""Chat Completions: `POST /v1/chat/completions`, streamed or not.

The messages become the run's input (`runs.split_messages`); the reply is the transcript of
the agents' messages, each introduced by its agent's name on its own line (`**Ada**`), so
a chat UI shows the whole team (a single-agent team's reply is plain). A chat completion is
interactive: when the client disconnects (a chat UI's Stop button) the run is cancelled
(`ON_DISCONNECT_CANCEL`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from starlette.responses import Response, StreamingResponse

from chorus.gateway.api.deps import (
    CallerDep,
    LimiterDep,
    ProviderDep,
    RunsDep,
    SettingsDep,
    WatchesDep,
    json_body,
)
from chorus.gateway.openai_api import mapping, runs
from chorus.gateway.openai_api.errors import openai_error
from chorus.gateway.openai_api.feed import EventFeed
from chorus.gateway.openai_api.responses import _ERRORS, KEEPALIVE, SSE_HEADERS, json_response
from chorus.gateway.openai_api.schemas import (
    ChatCompletionBody,
    openapi_request_body,
    parse,
    reject_client_tools,
    unsupported,
)
from chorus.v1 import run_pb2, team_pb2

router = APIRouter(prefix="/chat", tags=["openai"])

DONE = b"data: [DONE]\n\n"


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@router.post(
    "/completions",
    operation_id="createChatCompletion",
    summary="Create a chat completion (run a team or a model)",
    responses={
        200: {
            "description": "`chat.completion`, or with `stream` SSE `data:` lines of "
            "`chat.completion.chunk` ending `data: [DONE]`.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        **_ERRORS,
    },
    openapi_extra=openapi_request_body(ChatCompletionBody),
)
async def create_chat_completion(
    request: Request,
    caller: CallerDep,
    runs_stub: RunsDep,
    provider: ProviderDep,
    watches: WatchesDep,
    limiter: LimiterDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Runs `model` on the messages. 404 unknown model; 400 for tools, `n` > 1, a
    non-text `response_format` or non-text content; 429 over the runs rate limit. A run
    that fails after the stream started ends the stream with an `error` data line (the SDK
    raises `APIError`)."""
    body: ChatCompletionBody = parse(ChatCompletionBody, await json_body(request))
    reject_client_tools(body.tools or body.functions, body.tool_choice)
    if body.n not in (None, 1):
        raise unsupported("n", "only one choice (n = 1) is supported")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise unsupported("response_format", "only plain text output is supported")
    timeout = settings.rpc_timeout_s

    find = runs.model_finder(runs_stub, provider, timeout)

    model = await find(body.model)
    conv = runs.split_messages(body.messages, "messages", chat=True)
    spec = await runs.build_spec(
        model=model,
        input_text=runs.run_input(conv),
        instructions="\n\n".join(conv.instructions) or None,
        temperature=body.temperature,
        max_output_tokens=body.max_completion_tokens or body.max_tokens,
        options=body.chorus,
        conversation_id="",
        background=False,
        key=runs.idempotency_key(idempotency_key),
        on_disconnect=run_pb2.ON_DISCONNECT_CANCEL,
        settings=settings,
        find=find,
    )
    await limiter.hit("runs", caller.user)
    named = len(model.template.spec.agents) > 1 or model.template.spec.kind not in (
        team_pb2.TEAM_KIND_SINGLE,
    )
    feed = EventFeed(
        watches, user=caller.user, start=spec, max_buffered=settings.sse_max_buffered_events
    )
    first = await feed.first_batch(settings.sse_first_event_wait_s)

    def new_mapper(event: run_pb2.RunEvent) -> mapping.ChatMapper:
        return mapping.ChatMapper(
            event.run_id, model.id, event.run_started.run.create_time.seconds, named=named
        )

    if not body.stream:
        chat: mapping.ChatMapper | None = None
        try:
            batch: list[run_pb2.RunEvent] | None = first
            while batch is not None:
                for event in batch:
                    chat = chat or new_mapper(event)
                    chat.feed(event)
                if chat is not None and chat.ended:
                    break
                batch = await feed.next_batch()
        finally:
            feed.close()
        assert chat is not None
        if chat.error is not None:
            return json_response({"error": chat.error}, 500)
        return json_response(chat.completion())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def stream() -> AsyncIterator[bytes]:
        chat: mapping.ChatMapper | None = None
        batch: list[run_pb2.RunEvent] | None = first
        try:
            while batch is not None:
                out: list[bytes] = []
                for event in batch:
                    chat = chat or new_mapper(event)
                    out.extend(_data(c) for c in chat.feed(event))
                if chat is not None and chat.ended:
                    if chat.error is not None:
                        out.append(_data({"error": chat.error}))
                    elif include_usage:
                        out.append(_data(chat.usage_chunk()))
                    out.append(DONE)
                    yield b"".join(out)
                    return
                if out:
                    yield b"".join(out)
                batch = await feed.next_batch(timeout=settings.sse_keepalive_s)
                if batch == []:
                    yield KEEPALIVE
        except Exception as exc:
            _, error = openai_error(exc)
            yield _data(error) + DONE
        finally:
            feed.close()

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
