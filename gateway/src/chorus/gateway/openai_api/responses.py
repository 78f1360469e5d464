"""The Responses API: `POST /v1/responses`, `GET /v1/responses/{id}` (also as a stream that
resumes after a `sequence_number`), `POST /v1/responses/{id}/cancel`,
`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`.

A response is a run (`ids.response_id`). Streams are the run's events mapped by
`mapping.ResponseMapper`; `sequence_number`s are a pure function of the run's event log,
so a stream resumed with `starting_after=N` — from any gateway replica, after any restart —
gets exactly the events after N. A response's run goes on when its client disconnects
(like `background: true`; cancel it with `/cancel`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import grpc
import orjson
from fastapi import APIRouter, Header, Query, Request
from google.protobuf import field_mask_pb2
from starlette.responses import Response, StreamingResponse

from chorus.core.errors import InvalidArgument, NotFound, OutOfRange
from chorus.core.logging import get_logger
from chorus.core.run_export import list_run_events
from chorus.gateway.api.deps import (
    CallerDep,
    HistoryDep,
    LimiterDep,
    ProviderDep,
    RunsDep,
    SettingsDep,
    WatchesDep,
    json_body,
)
from chorus.gateway.openai_api import ids, mapping, runs
from chorus.gateway.openai_api.errors import openai_error
from chorus.gateway.openai_api.feed import EventFeed
from chorus.gateway.openai_api.schemas import (
    MAX_METADATA,
    CreateResponseBody,
    openapi_request_body,
    parse,
    reject_client_tools,
    unsupported,
)
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import RunWatches
from chorus.v1 import (
    conversation_pb2,
    history_service_pb2,
    history_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
)

router = APIRouter(prefix="/responses", tags=["openai"])
log = get_logger(__name__)

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
_ERROR_SCHEMA = {"$ref": "#/components/schemas/OpenAIError"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "description": "OpenAI error",
        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
    },
    "5XX": {
        "description": "OpenAI error",
        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
    },
}
_JSON_OR_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A Response object (openai `Response`), or with `stream` Server-Sent "
        "Events: `event:` the type, `data:` the event (openai `ResponseStreamEvent`).",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **_ERRORS,
}


Forget = Callable[[str, str], Coroutine[Any, Any, None]]
"""`store: false`: deletes a response's run, given its run id and conversation id."""

_forgetting: set[asyncio.Task[None]] = set()


def _forget_later(job: Coroutine[Any, Any, None]) -> None:
    """Runs a deletion whose request went away (the client disconnected), to its end."""
    task = asyncio.get_running_loop().create_task(job)
    _forgetting.add(task)
    task.add_done_callback(_forgetting.discard)


def _forgetter(runs_stub: Any, history: Any, *, own_conversation: bool, timeout: float) -> Forget:
    """The deletion of a `store: false` response (OpenAI: such a response is not kept).

    The run goes with RunService.DeleteRun (an active one is cancelled first); the
    conversation goes too (HistoryService.DeleteConversation) when the response started it
    (no `previous_response_id` or `conversation`). A response that continues a
    conversation leaves its messages there (they are the conversation's). Already gone is
    no error; any other failure is logged and the response still answered.
    """

    async def forget(run_id: str, conversation_id: str) -> None:
        try:
            await runs_stub.DeleteRun(
                run_service_pb2.DeleteRunRequest(run_id=run_id), timeout=timeout
            )
            if own_conversation and conversation_id:
                await history.DeleteConversation(
                    history_service_pb2.DeleteConversationRequest(conversation_id=conversation_id),
                    timeout=timeout,
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("store_false_delete_failed", run_id=run_id, code=exc.code().name)

    return forget


def json_response(body: Any, status_code: int = 200) -> Response:
    """An orjson-encoded JSON response."""
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


async def _get_run(runs_stub: Any, run_id: str, settings: GatewaySettings) -> run_pb2.Run:
    reply = await runs_stub.GetRun(
        run_service_pb2.GetRunRequest(run_id=run_id), timeout=settings.rpc_timeout_s
    )
    run: run_pb2.Run = reply.run
    return run


def _mapper(
    run: run_pb2.Run, metadata: dict[str, str] | None = None, from_seq: int = 0
) -> mapping.ResponseMapper:
    context = mapping.context_of(run)
    if metadata:
        context = dataclasses.replace(context, metadata=dict(metadata))
    return mapping.ResponseMapper(run.id, context, run.create_time.seconds, from_seq=from_seq)


async def _metadata(
    history: history_service_pb2_grpc.HistoryServiceStub, conversation_id: str, timeout: float
) -> dict[str, str]:
    """A response's `metadata`: its conversation's (empty when the conversation is gone)."""
    if not conversation_id:
        return {}
    try:
        reply = await history.GetConversation(
            history_service_pb2.GetConversationRequest(conversation_id=conversation_id),
            timeout=timeout,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return {}
        raise
    return dict(reply.conversation.metadata)


async def _label_conversation(
    history: history_service_pb2_grpc.HistoryServiceStub,
    conversation_id: str,
    metadata: dict[str, str],
    *,
    title: str,
    team: str,
    request_id: str,
    timeout: float,
) -> tuple[str, dict[str, str]]:
    """Put `metadata` on the conversation a response runs in: a new conversation when
    `conversation_id` is empty (keyed by `request_id` when the request had an
    `Idempotency-Key`), else merged into the existing one's. Returns the conversation id
    and its metadata now.

    Raises:
        InvalidArgument: more than 16 pairs on the conversation in all.
        grpc.aio.AioRpcError: NOT_FOUND for an unknown conversation.
    """
    if not conversation_id:
        created = await history.CreateConversation(
            history_service_pb2.CreateConversationRequest(
                conversation=conversation_pb2.Conversation(
                    title=title[:100], team=team, metadata=metadata
                ),
                request_id=request_id,
            ),
            timeout=timeout,
        )
        return created.conversation.id, dict(created.conversation.metadata)
    current = await history.GetConversation(
        history_service_pb2.GetConversationRequest(conversation_id=conversation_id),
        timeout=timeout,
    )
    merged = {**current.conversation.metadata, **metadata}
    if len(merged) > MAX_METADATA:
        raise InvalidArgument(
            f"the conversation would have more than {MAX_METADATA} metadata pairs",
            [("metadata", f"at most {MAX_METADATA} pairs in all")],
        )
    updated = await history.UpdateConversation(
        history_service_pb2.UpdateConversationRequest(
            conversation=conversation_pb2.Conversation(id=conversation_id, metadata=merged),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        ),
        timeout=timeout,
    )
    return conversation_id, dict(updated.conversation.metadata)


async def _replay(
    run: run_pb2.Run,
    history: history_service_pb2_grpc.HistoryServiceStub,
    timeout: float,
    from_seq: int = 0,
) -> tuple[mapping.ResponseMapper, list[dict[str, Any]]]:
    """The run's stored log through a mapper (of the response starting at `from_seq`): the
    mapper and every OpenAI event.

    Raises:
        NotFound: `from_seq` is not the seq of one of the run's `input_received` events.
    """
    mapper = _mapper(run, await _metadata(history, run.conversation_id, timeout), from_seq)
    events: list[dict[str, Any]] = []
    for event in await list_run_events(history, run.id, page_size=5000, timeout=timeout):
        if from_seq and event.seq == from_seq and event.WhichOneof("payload") != "input_received":
            break
        events.extend(mapper.feed(event))
    if from_seq and not mapper.started:
        raise _no_response(ids.response_id(run.id, from_seq))
    mapper.finish_from_run(run)
    return mapper, events


def _run_of(response_id: str) -> str:
    """The run id of a response id, or "" when it is not one."""
    try:
        return ids.run_id_of(response_id)
    except NotFound:
        return ""


async def _check_part(
    history: history_service_pb2_grpc.HistoryServiceStub,
    run_id: str,
    from_seq: int,
    response_id: str,
    timeout: float,
) -> None:
    """404 unless `from_seq` is 0 or the seq of one of the run's `input_received` events
    (a response `resp_<run>_<seq>` exists only where an answer started it)."""
    if from_seq:
        answers = await list_run_events(history, run_id, kinds=["input_received"], timeout=timeout)
        if not any(e.seq == from_seq for e in answers):
            raise _no_response(response_id)


def _no_response(response_id: str) -> NotFound:
    return NotFound(
        f"No response found with id '{response_id[:100]}'.", reason="RESPONSE_NOT_FOUND"
    )


async def _follow_to_end(
    watches: RunWatches,
    user: str,
    feed_spec: run_pb2.RunSpec | None,
    run_id: str,
    metadata: dict[str, str],
    forget: Forget | None = None,
    *,
    mapper: mapping.ResponseMapper | None = None,
    after_seq: int = 0,
    from_seq: int = 0,
) -> mapping.ResponseMapper:
    """Start (or follow from seq 1, or after `after_seq` with a given `mapper`) a run until
    the response ends — the run's terminal event, or a request for input; the mapper of
    all of it. With `forget` (`store: false`) the run is deleted once the response ended —
    before this returns — or, when the request goes away first, in the background."""
    feed = EventFeed(watches, user=user, start=feed_spec, run_id=run_id, after_seq=after_seq)
    try:
        while (batch := await feed.next_batch()) is not None:
            for event in batch:
                if mapper is None:
                    if event.WhichOneof("payload") != "run_started":
                        raise InvalidArgument("the run's log does not start with run_started")
                    mapper = _mapper(event.run_started.run, metadata, from_seq)
                mapper.feed(event)
            if mapper is not None and mapper.ended:
                break
    except BaseException:
        if forget is not None and mapper is not None:
            _forget_later(forget(mapper.run_id, mapper.context.conversation))
        raise
    finally:
        feed.close()
    if mapper is None:
        raise InvalidArgument("the run has no events")
    if forget is not None:
        await forget(mapper.run_id, mapper.context.conversation)
    return mapper


def _stream(
    feed: EventFeed,
    first: list[run_pb2.RunEvent],
    metadata: dict[str, str],
    starting_after: int,
    settings: GatewaySettings,
    forget: Forget | None = None,
    *,
    mapper: mapping.ResponseMapper | None = None,
    from_seq: int = 0,
) -> StreamingResponse:
    """SSE of the feed's events mapped to OpenAI events numbered above `starting_after`
    (by `mapper`, or one made from the feed's `run_started`, of the response starting at
    `from_seq`), until the response ends (the run's end, or a request for input). With
    `forget` (`store: false`) the run is deleted when the response ends, before its last
    event is sent (a retrieve after it is 404), or when the client leaves first."""

    async def body() -> AsyncIterator[bytes]:
        nonlocal mapper
        batch: list[run_pb2.RunEvent] | None = first
        forgotten = False
        try:
            while batch is not None:
                frames: list[bytes] = []
                for event in batch:
                    if mapper is None:
                        mapper = _mapper(event.run_started.run, metadata, from_seq)
                    for out in mapper.feed(event):
                        if out["sequence_number"] > starting_after:
                            frames.append(mapping.sse_frame(out))
                if forget is not None and not forgotten and mapper is not None and mapper.ended:
                    forgotten = True
                    await forget(mapper.run_id, mapper.context.conversation)
                if frames:
                    yield b"".join(frames)
                if mapper is not None and mapper.ended:
                    last = mapper.next_sequence - 1
                    if starting_after >= last:  # asked past the end of a run that was live
                        raise OutOfRange(
                            f"starting_after {starting_after} is at or past the last event "
                            f"of this response ({last})",
                            [("starting_after", f"at most {last - 1}")],
                        )
                    return
                batch = await feed.next_batch(timeout=settings.sse_keepalive_s)
                if batch == []:
                    yield KEEPALIVE
        except Exception as exc:
            _, error = openai_error(exc)
            yield mapping.sse_frame(
                {
                    "type": "error",
                    "code": error["error"]["code"],
                    "message": error["error"]["message"],
                    "param": error["error"]["param"],
                    "sequence_number": mapper.next_sequence if mapper is not None else 0,
                }
            )
        finally:
            feed.close()
            if forget is not None and not forgotten and mapper is not None:
                _forget_later(forget(mapper.run_id, mapper.context.conversation))

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


@dataclasses.dataclass
class _Answer:
    """A create that answers a waiting run (issue 21) instead of starting one."""

    run: run_pb2.Run
    submit: run_service_pb2.SubmitRunInputRequest


async def _answer_of(
    body: CreateResponseBody, runs_stub: Any, settings: GatewaySettings
) -> _Answer | None:
    """The answer a `POST /v1/responses` carries for a run waiting for input, or None (the
    request starts a run as usual).

    * an `mcp_approval_response` input item (`approval_request_id`, `approve`, `reason`)
      answers the approval it names — the only item allowed then; `previous_response_id`,
      when given, must be a response of the same run;
    * text input with `previous_response_id` naming a run that waits for a *text* answer
      (a human agent's turn) is that answer: the last user message.

    Raises:
        InvalidArgument: an approval response with other items, a malformed one, one naming
            no approval request of the previous response's run (param `input`); text to a
            run that waits for an approval.
        NotFound: the previous response does not exist.
    """
    items = body.input if isinstance(body.input, list) else []
    approvals = [
        (i, item)
        for i, item in enumerate(items)
        if isinstance(item, dict) and item.get("type") == "mcp_approval_response"
    ]
    previous_run_id = _run_of(body.previous_response_id or "")
    if approvals:
        if len(items) != 1:
            raise InvalidArgument(
                "an mcp_approval_response must be the only input item (the run waits for one "
                "answer)",
                [("input", "give exactly one mcp_approval_response item")],
            )
        index, item = approvals[0]
        path = f"input[{index}]"
        found = ids.approval_of(str(item.get("approval_request_id") or ""))
        approve = item.get("approve")
        reason = item.get("reason")
        violations: list[tuple[str, str]] = []
        if found is None:
            violations.append((f"{path}.approval_request_id", "not an approval request id"))
        elif previous_run_id and found[0] != previous_run_id:
            violations.append(
                (f"{path}.approval_request_id", "not an approval request of previous_response_id")
            )
        if not isinstance(approve, bool):
            violations.append((f"{path}.approve", "required: true or false"))
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            violations.append((f"{path}.reason", "a string of at most 1000 characters"))
        if violations or found is None or not isinstance(approve, bool):
            raise InvalidArgument("invalid mcp_approval_response: " + violations[0][1], violations)
        run = await _get_run(runs_stub, found[0], settings)
        submit = run_service_pb2.SubmitRunInputRequest(
            run_id=run.id,
            input_id=found[1],
            decision=run_pb2.ApprovalDecision(approved=approve, reason=reason or ""),
        )
        return _Answer(run, submit)
    if not previous_run_id:
        return None
    try:
        run = await _get_run(runs_stub, previous_run_id, settings)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None  # create answers the missing previous response
    if run.status != run_pb2.RUN_STATUS_AWAITING_INPUT:
        return None
    pending = run.pending_input
    if pending.kind != run_pb2.INPUT_KIND_TEXT:
        approval = ids.approval_request_id(run.id, pending.input_id)
        raise InvalidArgument(
            "the previous response waits for an approval: answer it with an "
            f"mcp_approval_response item (approval_request_id {approval})",
            [("input", "an mcp_approval_response item")],
        )
    conv = (
        runs.Conversation([], [], body.input)
        if isinstance(body.input, str)
        else runs.split_messages(body.input, "input", chat=False)
    )
    submit = run_service_pb2.SubmitRunInputRequest(
        run_id=run.id, input_id=pending.input_id, text=conv.last
    )
    return _Answer(run, submit)


async def _answer(
    answer: _Answer,
    body: CreateResponseBody,
    user: str,
    runs_stub: Any,
    history: HistoryDep,
    watches: RunWatches,
    settings: GatewaySettings,
    idempotency_key: str | None,
) -> Response:
    """Answer the waiting run (RunService.SubmitRunInput) and answer the response that
    continues it: `resp_<run hex>_<seq of the input_received>`, streamed, in the background
    or when it ends (the run's end or its next request). The `request_id` is the
    `Idempotency-Key`'s digest, else the approval request's id (a retried approval returns
    the same response), else random.

    Raises:
        grpc.aio.AioRpcError: FAILED_PRECONDITION `INPUT_NOT_PENDING` (400: answered already,
            expired, or no longer waiting), INVALID_ARGUMENT (text for an approval …).
    """
    submit = answer.submit
    if idempotency_key and idempotency_key.strip():
        submit.request_id = "oai:" + runs.idempotency_key(idempotency_key)
    elif submit.HasField("decision"):
        submit.request_id = "oai:" + ids.approval_request_id(submit.run_id, submit.input_id)[:120]
    else:
        submit.request_id = "oai:" + runs.idempotency_key(None)
    reply = await runs_stub.SubmitRunInput(submit, timeout=settings.rpc_timeout_s)
    from_seq = reply.event.seq
    metadata = await _metadata(history, answer.run.conversation_id, settings.rpc_timeout_s)
    mapper = _mapper(reply.run, metadata, from_seq)
    mapper.response["background"] = bool(body.background)
    previous = body.previous_response_id or ""
    if previous and _run_of(previous) == answer.run.id:
        mapper.response["previous_response_id"] = previous
    if body.stream:
        feed = EventFeed(
            watches,
            user=user,
            run_id=answer.run.id,
            after_seq=from_seq - 1,
            max_buffered=settings.sse_max_buffered_events,
        )
        first = await feed.first_batch(settings.sse_first_event_wait_s)
        return _stream(feed, first, metadata, -1, settings, mapper=mapper)
    if body.background:
        mapper.response["status"] = "in_progress"
        return json_response(mapper.response)
    mapper = await _follow_to_end(
        watches, user, None, answer.run.id, metadata, mapper=mapper, after_seq=from_seq - 1
    )
    return json_response(mapper.response)


@router.post(
    "",
    operation_id="createResponse",
    summary="Create a response (run a team or a model)",
    responses=_JSON_OR_SSE,
    openapi_extra=openapi_request_body(CreateResponseBody),
)
async def create_response(
    request: Request,
    caller: CallerDep,
    runs_stub: RunsDep,
    provider: ProviderDep,
    history: HistoryDep,
    watches: WatchesDep,
    limiter: LimiterDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Starts a run of `model` on `input`. `stream`: SSE of the response's events;
    `background`: answers at once (status `queued`/`in_progress`); otherwise waits for the
    run's end. `store: false`: the run is deleted once it ended (and its conversation when
    the response started it), so the response cannot be retrieved afterwards; a client
    that leaves before the end cancels it. 404 unknown model or previous response, 400
    unsupported parameters (tools, non-text input, `background` with `store: false`), 409
    when the conversation has an active run, 429 over the runs rate limit."""
    body: CreateResponseBody = parse(CreateResponseBody, await json_body(request))
    reject_client_tools(body.tools, body.tool_choice)
    store = body.store is not False
    if body.background and not store:
        raise unsupported(
            "background",
            "background mode requires store=true (a background response is kept to be retrieved)",
        )
    if body.prompt is not None:
        raise unsupported("prompt", "prompt templates are not supported")
    text_format = (body.text or {}).get("format") or {}
    if isinstance(text_format, dict) and text_format.get("type", "text") != "text":
        raise unsupported("text.format", "only plain text output is supported")
    if body.previous_response_id and body.conversation is not None:
        raise InvalidArgument(
            "give either previous_response_id or conversation, not both",
            [("previous_response_id", "not with conversation")],
        )
    timeout = settings.rpc_timeout_s
    answer = await _answer_of(body, runs_stub, settings)
    if answer is not None:
        return await _answer(
            answer, body, caller.user, runs_stub, history, watches, settings, idempotency_key
        )

    find = runs.model_finder(runs_stub, provider, timeout)

    model = await find(body.model)
    if isinstance(body.input, str):
        conv = runs.Conversation([], [], body.input)
    else:
        conv = runs.split_messages(body.input, "input", chat=False)
    instructions = "\n\n".join(
        [*([body.instructions] if body.instructions else []), *conv.instructions]
    )
    conversation_id = ""
    previous_run = ""
    if body.previous_response_id:
        try:
            previous = await _get_run(runs_stub, ids.run_id_of(body.previous_response_id), settings)
        except (grpc.aio.AioRpcError, NotFound) as exc:
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise NotFound(
                f"Previous response with id '{body.previous_response_id[:100]}' not found.",
                reason="PREVIOUS_RESPONSE_NOT_FOUND",
                metadata={"param": "previous_response_id"},
            ) from None
        conversation_id = previous.conversation_id
        previous_run = previous.id
    elif body.conversation is not None:
        given = (
            body.conversation.get("id")
            if isinstance(body.conversation, dict)
            else body.conversation
        )
        found = ids.conversation_of(given) if isinstance(given, str) else None
        if found is None:
            raise InvalidArgument(
                "conversation must be a conversation id (conv_…)", [("conversation", "invalid id")]
            )
        conversation_id = found
    input_text = runs.run_input(conv)
    spec = await runs.build_spec(
        model=model,
        input_text=input_text,
        instructions=instructions or None,
        temperature=body.temperature,
        max_output_tokens=body.max_output_tokens,
        options=body.chorus,
        conversation_id=conversation_id,
        background=bool(body.background),
        key=runs.idempotency_key(idempotency_key),
        on_disconnect=run_pb2.ON_DISCONNECT_CONTINUE if store else run_pb2.ON_DISCONNECT_CANCEL,
        settings=settings,
        find=find,
        store=store,
        previous_run=previous_run,
    )
    forget = (
        None
        if store
        else _forgetter(
            runs_stub,
            history,
            own_conversation=not body.previous_response_id and body.conversation is None,
            timeout=timeout,
        )
    )
    await limiter.hit("runs", caller.user)
    metadata: dict[str, str] = {}
    if body.metadata:
        spec.conversation_id, metadata = await _label_conversation(
            history,
            conversation_id,
            body.metadata,
            title=conv.last,
            team=model.template.name,
            request_id=spec.request_id if idempotency_key else "",
            timeout=timeout,
        )
    elif conversation_id:
        metadata = await _metadata(history, conversation_id, timeout)
    if body.stream:
        feed = EventFeed(
            watches, user=caller.user, start=spec, max_buffered=settings.sse_max_buffered_events
        )
        first = await feed.first_batch(settings.sse_first_event_wait_s)
        return _stream(feed, first, metadata, -1, settings, forget)
    if body.background:
        reply = await runs_stub.CreateRun(
            run_service_pb2.CreateRunRequest(spec=spec), timeout=timeout
        )
        return json_response(_mapper(reply.run, metadata).response)
    mapper = await _follow_to_end(watches, caller.user, spec, "", metadata, forget)
    return json_response(mapper.response)


@router.get(
    "/{response_id}",
    operation_id="getResponse",
    summary="Retrieve a response, or stream its events from a sequence number",
    responses=_JSON_OR_SSE,
)
async def get_response(
    response_id: str,
    caller: CallerDep,
    runs_stub: RunsDep,
    history: HistoryDep,
    watches: WatchesDep,
    settings: SettingsDep,
    stream: bool = False,
    starting_after: Annotated[
        int | None, Query(description="Stream the events after this sequence_number.")
    ] = None,
) -> Response:
    """The response as it is now (output so far while the run is live). With
    `stream=true`: every event after `starting_after` (all when absent), then live until
    the end. 400 for a negative `starting_after`, or one at or past the last event of a
    finished response; 404 unknown id."""
    if starting_after is not None and starting_after < 0:
        raise InvalidArgument(
            "starting_after must be a sequence_number (0 or more)",
            [("starting_after", "must be >= 0")],
        )
    run_id, from_seq = ids.segment_of(response_id)
    run = await _get_run(runs_stub, run_id, settings)
    terminal = run.status in (
        run_pb2.RUN_STATUS_COMPLETED,
        run_pb2.RUN_STATUS_FAILED,
        run_pb2.RUN_STATUS_CANCELLED,
    )
    if not stream or terminal:
        mapper, events = await _replay(run, history, settings.rpc_timeout_s, from_seq)
        if not stream:
            return json_response(mapper.response)
        after = -1 if starting_after is None else starting_after
        if events and after >= events[-1]["sequence_number"]:
            raise OutOfRange(
                f"starting_after {after} is at or past the last event of this finished "
                f"response ({events[-1]['sequence_number']})",
                [("starting_after", f"at most {events[-1]['sequence_number'] - 1}")],
            )
        frames = b"".join(mapping.sse_frame(e) for e in events if e["sequence_number"] > after)
        return Response(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    await _check_part(history, run.id, from_seq, response_id, settings.rpc_timeout_s)
    feed = EventFeed(
        watches, user=caller.user, run_id=run.id, max_buffered=settings.sse_max_buffered_events
    )
    first = await feed.first_batch(settings.sse_first_event_wait_s)
    metadata = await _metadata(history, run.conversation_id, settings.rpc_timeout_s)
    after = -1 if starting_after is None else starting_after
    return _stream(feed, first, metadata, after, settings, from_seq=from_seq)


@router.post(
    "/{response_id}/cancel",
    operation_id="cancelResponse",
    summary="Cancel a response",
    responses={
        200: {"description": "The response (status `cancelled` once it stopped)."},
        **_ERRORS,
    },
)
async def cancel_response(
    response_id: str,
    caller: CallerDep,
    runs_stub: RunsDep,
    history: HistoryDep,
    watches: WatchesDep,
    settings: SettingsDep,
) -> Response:
    """Stops the run's in-flight model call and ends it `cancelled`, then answers the
    response. Idempotent: a response that already ended is answered as it is."""
    run_id, from_seq = ids.segment_of(response_id)
    await _check_part(history, run_id, from_seq, response_id, settings.rpc_timeout_s)
    await runs_stub.CancelRun(
        run_service_pb2.CancelRunRequest(run_id=run_id, reason="cancelled over the OpenAI API"),
        timeout=settings.rpc_timeout_s,
    )
    async with asyncio.timeout(settings.rpc_timeout_s):
        run = await _get_run(runs_stub, run_id, settings)
        metadata = await _metadata(history, run.conversation_id, settings.rpc_timeout_s)
        mapper = await _follow_to_end(
            watches, caller.user, None, run_id, metadata, from_seq=from_seq
        )
    return json_response(mapper.response)


@router.delete(
    "/{response_id}",
    operation_id="deleteResponse",
    summary="Delete a response",
    responses={200: {"description": "`{id, object: response.deleted, deleted: true}`"}, **_ERRORS},
)
async def delete_response(
    response_id: str,
    caller: CallerDep,
    runs_stub: RunsDep,
    history: HistoryDep,
    settings: SettingsDep,
) -> Response:
    """Deletes the response's run (RunService.DeleteRun: an active run is cancelled
    first); afterwards the response is 404 everywhere. The messages it added to its
    conversation stay there. 404 for an unknown or already deleted response."""
    run_id, from_seq = ids.segment_of(response_id)
    await _check_part(history, run_id, from_seq, response_id, settings.rpc_timeout_s)
    await runs_stub.DeleteRun(
        run_service_pb2.DeleteRunRequest(run_id=run_id), timeout=settings.rpc_timeout_s
    )
    return json_response(
        {"id": ids.response_id(run_id, from_seq), "object": "response.deleted", "deleted": True}
    )


@router.get(
    "/{response_id}/input_items",
    operation_id="listResponseInputItems",
    summary="List a response's input items",
    responses={
        200: {"description": "`{object: list, data, first_id, last_id, has_more}`"},
        **_ERRORS,
    },
)
async def list_input_items(
    response_id: str,
    caller: CallerDep,
    runs_stub: RunsDep,
    history: HistoryDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> Response:
    """The run's input as one user message item (earlier messages of the request are part
    of its text); for a response that answered the run (`resp_<run>_<seq>`, issue 21), the
    answer: an `mcp_approval_response` item, or the text as a user message."""
    run_id, from_seq = ids.segment_of(response_id)
    run = await _get_run(runs_stub, run_id, settings)
    item: dict[str, Any] = {
        "id": ids.item_id("msg", run.id, from_seq),
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": run.spec.input}],
    }
    if from_seq:
        answers = await list_run_events(
            history, run.id, kinds=["input_received"], timeout=settings.rpc_timeout_s
        )
        received = next((e.input_received for e in answers if e.seq == from_seq), None)
        if received is None:
            raise _no_response(response_id)
        if received.HasField("decision"):
            item = {
                "id": ids.item_id("mcpa", run.id, from_seq),
                "type": "mcp_approval_response",
                "approval_request_id": ids.approval_request_id(run.id, received.input_id),
                "approve": received.decision.approved,
                "reason": received.decision.reason or None,
            }
        else:
            item["content"] = [{"type": "input_text", "text": received.text}]
    data = [item][:limit]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )
