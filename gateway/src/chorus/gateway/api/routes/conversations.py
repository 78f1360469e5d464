"""Conversations and their messages (HistoryService), and chatting with the assistant.

`POST /conversations/{id}/messages` runs the `assistant` team template in the
conversation (its history is the context) with the conversation's model when it has one:
JSON with the user and assistant messages, or SSE of the run's events when the client
sends `Accept: text/event-stream`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Annotated, Any

import grpc
import orjson
from fastapi import Query, Request
from google.protobuf import field_mask_pb2
from starlette.responses import Response

from chorus.core import identity
from chorus.core.errors import (
    Aborted,
    ChorusError,
    DeadlineExceeded,
    InvalidArgument,
    error_for_code,
    status_code_from_rpc,
)
from chorus.core.logging import get_logger
from chorus.gateway import openapi, protojson, routing, sse
from chorus.gateway.api.deps import (
    CallerDep,
    HistoryDep,
    LimiterDep,
    RunsDep,
    SettingsDep,
    WatchesDep,
    check_text,
    proto_body,
)
from chorus.v1 import (
    chat_pb2,
    conversation_pb2,
    history_service_pb2,
    run_pb2,
    run_service_pb2,
)

log = get_logger("chorus.gateway.conversations")

router = routing.router("/conversations", ["conversations"])

ASSISTANT_TEMPLATE = "assistant"
"""The team template `POST /conversations/{id}/messages` runs."""
TITLE_CHARS = 80
"""Length of a title made from the first message."""
UPDATABLE_CONVERSATION_FIELDS = ("title", "model", "team", "metadata")
"""`updateMask` paths of `PATCH /conversations/{id}`."""
_TEMPLATE_CACHE_S = 60.0


CHAT_REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ChatReply",
    "properties": {
        "conversation": openapi.ref(conversation_pb2.Conversation.DESCRIPTOR),
        "run": openapi.ref(run_pb2.Run.DESCRIPTOR),
        "userMessage": {
            "anyOf": [openapi.ref(conversation_pb2.Message.DESCRIPTOR), {"type": "null"}]
        },
        "assistantMessage": {
            "anyOf": [openapi.ref(conversation_pb2.Message.DESCRIPTOR), {"type": "null"}]
        },
    },
    "required": ["conversation", "run", "userMessage", "assistantMessage"],
}
"""The JSON answer of `POST /conversations/{id}/messages`."""


def title_from(text: str) -> str:
    """A conversation title from a message: its first line, at most `TITLE_CHARS`."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


@router.get(
    "",
    summary="List the caller's conversations",
    responses=openapi.responses_of(
        history_service_pb2.ListConversationsResponse, "A page, most recently updated first."
    ),
)
async def list_conversations(
    caller: CallerDep,
    history: HistoryDep,
    settings: SettingsDep,
    page_size: Annotated[int, Query(alias="pageSize", ge=0, le=1000)] = 0,
    page_token: Annotated[str, Query(alias="pageToken", max_length=4096)] = "",
) -> Response:
    """The caller's conversations, most recently updated first."""
    reply = await history.ListConversations(
        history_service_pb2.ListConversationsRequest(page_size=page_size, page_token=page_token),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply)


@router.post(
    "",
    status_code=201,
    summary="Create a conversation",
    openapi_extra=openapi.body_of(
        conversation_pb2.Conversation,
        "`title`, `model`, `team`, `metadata`.",
        required=False,
        example={"title": "Trip to Lisbon", "metadata": {"project": "travel"}},
    ),
    responses=openapi.responses_of(conversation_pb2.Conversation, "The conversation.", 201),
)
async def create_conversation(
    request: Request,
    caller: CallerDep,
    history: HistoryDep,
    settings: SettingsDep,
    request_id: Annotated[
        str, Query(alias="requestId", max_length=128, description="Idempotency key (AIP-155).")
    ] = "",
) -> Response:
    """Creates a conversation (201, `Location`). The same `request_id` returns the
    conversation created first."""
    conversation, _ = await proto_body(request, conversation_pb2.Conversation(), optional=True)
    reply = await history.CreateConversation(
        history_service_pb2.CreateConversationRequest(
            conversation=conversation, request_id=request_id
        ),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(
        reply.conversation, 201, headers={"Location": f"{request.url.path}/{reply.conversation.id}"}
    )


@router.get(
    "/{conversation_id}",
    summary="Get a conversation",
    responses=openapi.responses_of(conversation_pb2.Conversation, "The conversation."),
)
async def get_conversation(
    conversation_id: str, caller: CallerDep, history: HistoryDep, settings: SettingsDep
) -> Response:
    """A conversation (its messages: `GET /conversations/{id}/messages`). 404 for an unknown
    conversation or another user's."""
    reply = await history.GetConversation(
        history_service_pb2.GetConversationRequest(conversation_id=conversation_id),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply.conversation)


@router.patch(
    "/{conversation_id}",
    summary="Update a conversation",
    openapi_extra=openapi.body_of(
        conversation_pb2.Conversation,
        "New values of `title`, `model`, `team`, `metadata`.",
        example={"title": "Trip to Lisbon in May"},
    ),
    responses=openapi.responses_of(
        conversation_pb2.Conversation, "The conversation after the update."
    ),
)
async def update_conversation(
    conversation_id: str,
    request: Request,
    caller: CallerDep,
    history: HistoryDep,
    settings: SettingsDep,
    update_mask: Annotated[
        str | None,
        Query(
            alias="updateMask",
            description="Fields to change, comma-separated: `title`, `model`, `team`, "
            "`metadata`; default: the fields in the body.",
        ),
    ] = None,
) -> Response:
    """Changes the fields named by `update_mask` (default: those present in the body)."""
    conversation, data = await proto_body(request, conversation_pb2.Conversation())
    if update_mask is not None:
        mask = protojson.field_mask(update_mask, UPDATABLE_CONVERSATION_FIELDS)
    else:
        mask = field_mask_pb2.FieldMask(paths=list(data))
    bad = [p for p in mask.paths if p not in UPDATABLE_CONVERSATION_FIELDS]
    if bad or not mask.paths:
        raise InvalidArgument(
            "only title, model, team and metadata can be changed",
            [(p, "not updatable") for p in bad] or [("body", "give a field to change")],
        )
    conversation.id = conversation_id
    reply = await history.UpdateConversation(
        history_service_pb2.UpdateConversationRequest(conversation=conversation, update_mask=mask),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply.conversation)


@router.delete(
    "/{conversation_id}",
    status_code=204,
    summary="Delete a conversation",
    responses=openapi.responses_of(None, "Deleted.", 204),
)
async def delete_conversation(
    conversation_id: str,
    caller: CallerDep,
    history: HistoryDep,
    runs: RunsDep,
    settings: SettingsDep,
) -> Response:
    """Deletes the conversation with its messages and its runs — their events and
    checkpoints too — (204); afterwards every read of the conversation or of one of its
    runs is 404. An active run is cancelled first (its watchers get `run_cancelled`), then
    everything goes in one transaction (HistoryService.DeleteConversation, issue 23). 404
    when it does not exist (or was already deleted)."""
    timeout = settings.rpc_timeout_s
    for status in (
        run_pb2.RUN_STATUS_QUEUED,
        run_pb2.RUN_STATUS_RUNNING,
        run_pb2.RUN_STATUS_AWAITING_INPUT,  # active too: waits for a person (issue 21)
    ):
        active = await runs.ListRuns(
            run_service_pb2.ListRunsRequest(
                conversation_id=conversation_id, status=status, page_size=1000
            ),
            timeout=timeout,
        )
        for run in active.runs:  # cancelled, awaited and deleted (RunService.DeleteRun)
            try:
                await runs.DeleteRun(
                    run_service_pb2.DeleteRunRequest(run_id=run.id), timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # deleted meanwhile: fine
                    raise
    await history.DeleteConversation(
        history_service_pb2.DeleteConversationRequest(conversation_id=conversation_id),
        timeout=timeout,
    )
    return Response(status_code=204)


@router.get(
    "/{conversation_id}/messages",
    summary="List a conversation's messages",
    responses=openapi.responses_of(
        history_service_pb2.ListMessagesResponse, "A page, oldest first."
    ),
)
async def list_messages(
    conversation_id: str,
    caller: CallerDep,
    history: HistoryDep,
    settings: SettingsDep,
    page_size: Annotated[int, Query(alias="pageSize", ge=0, le=1000)] = 0,
    page_token: Annotated[str, Query(alias="pageToken", max_length=4096)] = "",
    run_id: Annotated[
        str, Query(alias="runId", max_length=128, description="Only this run's messages.")
    ] = "",
) -> Response:
    """The conversation's messages, oldest first."""
    reply = await history.ListMessages(
        history_service_pb2.ListMessagesRequest(
            conversation_id=conversation_id,
            page_size=page_size,
            page_token=page_token,
            run_id=run_id,
        ),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply)


async def _assistant_agent(request: Request, runs: RunsDep, settings: SettingsDep) -> str:
    """The agent name of the `assistant` template (cached for a minute)."""
    state = request.app.state
    cached: tuple[float, str] | None = getattr(state, "assistant_agent", None)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    reply = await runs.ListTeamTemplates(
        run_service_pb2.ListTeamTemplatesRequest(), timeout=settings.rpc_timeout_s
    )
    for template in reply.templates:
        if template.name == ASSISTANT_TEMPLATE and template.spec.agents:
            name = str(template.spec.agents[0].name)
            state.assistant_agent = (time.monotonic() + _TEMPLATE_CACHE_S, name)
            return name
    raise error_for_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the orchestrator has no {ASSISTANT_TEMPLATE!r} team template",
        reason="TEMPLATE_MISSING",
    )


def _run_error(event: run_pb2.RunEvent) -> ChorusError:
    """The error to answer for a run that ended without completing."""
    run_id = event.run_id
    if event.HasField("run_failed"):
        failure = event.run_failed.error
        code = status_code_from_rpc(failure.code) if failure.code else grpc.StatusCode.INTERNAL
        err = error_for_code(
            code, failure.message or "the run failed", reason=failure.reason or None
        )
    else:
        who = event.run_cancelled.cancellation.requested_by
        err = Aborted(f"the run was cancelled{f' by {who}' if who else ''}", reason="RUN_CANCELLED")
    err.metadata["run_id"] = run_id
    return err


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message to the conversation's assistant",
    openapi_extra=openapi.body_of(
        conversation_pb2.Message,
        "The user's message: `content` (required) and optional `clientMessageId` "
        "(idempotency key of the run it starts).",
        example={"content": "What is 17.5% of 2,340?"},
    ),
    responses={
        **openapi.responses_of(None, ""),
        200: {
            "description": "`{conversation, run, userMessage, assistantMessage}` (JSON), or "
            "the run's events as SSE when the request sends `Accept: text/event-stream`.",
            "content": {
                "application/json": {"schema": CHAT_REPLY_SCHEMA},
                "text/event-stream": openapi.sse_content(),
            },
        },
    },
)
async def send_message(
    conversation_id: str,
    request: Request,
    caller: CallerDep,
    runs: RunsDep,
    watches: WatchesDep,
    history: HistoryDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> Response:
    """Runs the `assistant` template with the message in this conversation."""
    message, _ = await proto_body(request, conversation_pb2.Message())
    check_text(message.content, "content", settings)
    if message.role not in (chat_pb2.ROLE_UNSPECIFIED, chat_pb2.ROLE_USER):
        raise InvalidArgument("only user messages can be sent", [("role", "must be ROLE_USER")])
    await limiter.hit("messages", caller.user)
    timeout = settings.rpc_timeout_s
    conversation = (
        await history.GetConversation(
            history_service_pb2.GetConversationRequest(conversation_id=conversation_id),
            timeout=timeout,
        )
    ).conversation
    spec = run_pb2.RunSpec(
        template=ASSISTANT_TEMPLATE,
        input=message.content,
        conversation_id=conversation_id,
        request_id=message.client_message_id,
        on_disconnect=run_pb2.ON_DISCONNECT_CONTINUE,
    )
    if conversation.model.provider or conversation.model.model:
        agent = await _assistant_agent(request, runs, settings)
        spec.model_overrides[agent].CopyFrom(conversation.model)
    if "text/event-stream" in request.headers.get("accept", ""):
        response = await sse.open_event_stream(
            watches, user=caller.user, start=spec, **sse.stream_options(settings)
        )
        await _title_if_untitled(history, conversation, message.content, timeout)
        return response
    return await _chat_json(
        watches, caller.user, spec, history, runs, conversation, message.content, settings
    )


class _Outcome:
    """The sink of a JSON chat's watch (`chorus.gateway.watches`): the run's id once it
    started, its terminal event, the watch's end. Over the shared WatchRuns call, so the
    wait survives the loss of an orchestrator replica (the watch reattaches)."""

    def __init__(self) -> None:
        self.run_id = ""
        self.terminal: run_pb2.RunEvent | None = None
        self.error: BaseException | None = None
        self.started = asyncio.Event()
        self.done = asyncio.Event()

    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        self.run_id = self.run_id or events[0].run_id
        self.started.set()
        last = events[-1]
        if last.WhichOneof("payload") in protojson.TERMINAL_PAYLOADS:
            self.terminal = last

    def end(self, error: BaseException | None) -> None:
        self.error = error
        self.started.set()
        self.done.set()


async def _chat_json(
    watches: WatchesDep,
    user: str,
    spec: run_pb2.RunSpec,
    history: HistoryDep,
    runs: RunsDep,
    conversation: conversation_pb2.Conversation,
    content: str,
    settings: SettingsDep,
) -> Response:
    """Start the run, wait for it to end; answer the conversation, run and the two
    messages."""
    outcome = _Outcome()
    watch = watches.open(outcome, user=user, request_id=identity.current_request_id(), start=spec)
    try:
        async with asyncio.timeout(settings.chat_timeout_s):
            await outcome.started.wait()
            if outcome.run_id:
                await _title_if_untitled(history, conversation, content, settings.rpc_timeout_s)
            await outcome.done.wait()
    except TimeoutError:
        raise DeadlineExceeded(
            f"the run did not finish within {settings.chat_timeout_s:.0f} s; "
            f"watch it with GET /api/v1/runs/{outcome.run_id}/events",
            reason="RUN_STILL_ACTIVE",
            metadata={"run_id": outcome.run_id},
        ) from None
    finally:
        if not outcome.done.is_set():
            watch.stop()  # the run goes on (on_disconnect CONTINUE); we only stop listening
    terminal, run_id = outcome.terminal, outcome.run_id
    if terminal is None:
        if outcome.error is not None:
            raise outcome.error
        raise error_for_code(grpc.StatusCode.INTERNAL, "the run's stream ended without an outcome")
    if not terminal.HasField("run_completed"):
        raise _run_error(terminal)
    timeout = settings.rpc_timeout_s
    run, listed, current = await asyncio.gather(
        runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), timeout=timeout),
        history.ListMessages(
            history_service_pb2.ListMessagesRequest(
                conversation_id=conversation.id, run_id=run_id, page_size=1000
            ),
            timeout=timeout,
        ),
        history.GetConversation(
            history_service_pb2.GetConversationRequest(conversation_id=conversation.id),
            timeout=timeout,
        ),
    )
    final = run.run
    if final.status in (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING):
        # The record may trail the terminal event by a moment: report the run as it ended.
        completed = terminal.run_completed
        final.status = run_pb2.RUN_STATUS_COMPLETED
        final.final_answer = completed.final_answer
        final.usage.CopyFrom(completed.usage)
        final.last_seq = max(final.last_seq, terminal.seq)
        final.end_time.CopyFrom(terminal.time)
    sent = next((m for m in listed.messages if m.role == chat_pb2.ROLE_USER), None)
    reply = next((m for m in reversed(listed.messages) if m.role == chat_pb2.ROLE_ASSISTANT), None)
    body = {
        "conversation": protojson.to_dict(current.conversation),
        "run": protojson.to_dict(final),
        "userMessage": protojson.to_dict(sent) if sent is not None else None,
        "assistantMessage": protojson.to_dict(reply) if reply is not None else None,
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def _title_if_untitled(
    history: HistoryDep, conversation: conversation_pb2.Conversation, content: str, timeout: float
) -> None:
    """Give an untitled conversation a title made from its first message (best effort)."""
    if conversation.title:
        return
    conversation.title = title_from(content)
    try:
        await history.UpdateConversation(
            history_service_pb2.UpdateConversationRequest(
                conversation=conversation_pb2.Conversation(
                    id=conversation.id, title=conversation.title
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            timeout=timeout,
        )
    except (grpc.aio.AioRpcError, ChorusError) as exc:  # the chat goes on without a title
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc.code
        log.warning("title_update_failed", conversation_id=conversation.id, code=code.name)
