"""Runs: start, stream, watch, resume, cancel, steer, answer and export (RunService).

Bodies are proto3 JSON of the contract's messages. Resource methods answer the resource
(`POST /runs` and `GET /runs/{id}` → `Run`, `PATCH …/agents/{name}` → `AgentSpec`), lists
answer the list response (`{"runs": […], "nextPageToken": "…"}`), `:cancel` answers
`CancelRunResponse`.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any, cast

import orjson
from fastapi import Header, Query, Request
from google.protobuf import field_mask_pb2
from starlette.responses import Response

from chorus.core.errors import InvalidArgument, NotFound
from chorus.core.run_export import RUN_EXPORT_FORMAT, build_run_export, list_run_events
from chorus.gateway import inputs, openapi, protojson, routing, sse
from chorus.gateway.api.deps import (
    CallerDep,
    HistoryDep,
    LimiterDep,
    RunsDep,
    SettingsDep,
    WatchesDep,
    check_text,
    json_body,
    proto_body,
)
from chorus.v1 import (
    conversation_pb2,
    run_pb2,
    run_service_pb2,
    team_pb2,
)

router = routing.router("/runs", ["runs"])

_AGENT_FIELDS = {"systemPrompt": "system_prompt", "temperature": "temperature", "model": "model"}
RUN_EXAMPLE = {"template": "duet", "input": "Tabs or spaces?", "maxTurns": 4}
"""The request body example of `POST /runs` and `POST /runs/stream`."""
EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "RunExport",
    "properties": {
        "format": {"type": "string", "enum": [RUN_EXPORT_FORMAT]},
        "exportTime": {"type": "string", "format": "date-time"},
        "complete": {"type": "boolean", "description": "The run had ended."},
        "run": openapi.ref(run_pb2.Run.DESCRIPTOR),
        "messages": {
            "type": "array",
            "items": openapi.ref(conversation_pb2.Message.DESCRIPTOR),
        },
        "events": {"type": "array", "items": openapi.ref(run_pb2.RunEvent.DESCRIPTOR)},
    },
    "required": ["format", "exportTime", "complete", "run", "messages", "events"],
}
"""The body of `GET /runs/{id}/export`."""
UPDATABLE_AGENT_FIELDS = ("system_prompt", "temperature", "model")
"""`updateMask` paths of `PATCH /runs/{id}/agents/{name}` (camelCase accepted)."""


def parse_status(value: str | None) -> run_pb2.RunStatus:
    """A `RunStatus` from `RUN_STATUS_RUNNING` or `running` (any case); None → unspecified.

    Raises:
        InvalidArgument: an unknown status (field `status`).
    """
    if not value:
        return run_pb2.RUN_STATUS_UNSPECIFIED
    name = value.strip().upper()
    if not name.startswith("RUN_STATUS_"):
        name = "RUN_STATUS_" + name
    try:
        # types-protobuf types EnumTypeWrapper.Value as a plain int, not the enum.
        return cast(run_pb2.RunStatus, run_pb2.RunStatus.Value(name))
    except ValueError:
        names = ", ".join(
            n.removeprefix("RUN_STATUS_").lower() for n in run_pb2.RunStatus.keys()[1:]
        )
        raise InvalidArgument(
            f"unknown run status {value!r}", [("status", f"one of {names}")]
        ) from None


def resume_after(last_event_id: str | None, after_seq: int | None) -> int:
    """The seq to resume after: the `Last-Event-ID` header wins over `?after_seq=`.

    Raises:
        InvalidArgument: `Last-Event-ID` that is not an integer in 0..2^63-1.
    """
    if last_event_id is not None and last_event_id.strip():
        try:
            seq = int(last_event_id.strip())
        except ValueError:
            seq = -1
        if not 0 <= seq <= protojson.MAX_INT64:
            raise InvalidArgument(
                "Last-Event-ID must be the seq of an event",
                [("Last-Event-ID", f"an integer from 0 to {protojson.MAX_INT64}")],
            )
        return seq
    return after_seq or 0


async def _run_spec(request: Request, settings: SettingsDep) -> run_pb2.RunSpec:
    spec, _ = await proto_body(request, run_pb2.RunSpec())
    check_text(spec.input, "input", settings)
    return spec


@router.post(
    "",
    status_code=201,
    summary="Start a run in the background",
    openapi_extra=openapi.body_of(
        run_pb2.RunSpec, "What to run (chorus.v1.RunSpec).", example=RUN_EXAMPLE
    ),
    responses=openapi.responses_of(run_pb2.Run, "The run.", 201),
)
async def create_run(
    request: Request, caller: CallerDep, runs: RunsDep, limiter: LimiterDep, settings: SettingsDep
) -> Response:
    """Starts a run and returns it at once (201, `Location` = the run). The same
    `requestId` returns the same run. 409 ABORTED when the conversation is busy; 429 over
    the runs rate limit."""
    spec = await _run_spec(request, settings)
    await limiter.hit("runs", caller.user)
    reply = await runs.CreateRun(
        run_service_pb2.CreateRunRequest(spec=spec), timeout=settings.rpc_timeout_s
    )
    return protojson.response(
        reply.run, 201, headers={"Location": f"{request.url.path}/{reply.run.id}"}
    )


@router.post(
    "/stream",
    summary="Start a run and stream its events (SSE)",
    openapi_extra=openapi.body_of(
        run_pb2.RunSpec, "What to run (chorus.v1.RunSpec).", example=RUN_EXAMPLE
    ),
    responses=openapi.SSE_RESPONSE,
)
async def stream_run(
    request: Request,
    caller: CallerDep,
    watches: WatchesDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> Response:
    """Starts a run and streams its events as SSE until the terminal event. When the
    client disconnects the run follows `onDisconnect` (default: it goes on; watch it with
    `GET /runs/{id}/events`)."""
    spec = await _run_spec(request, settings)
    await limiter.hit("runs", caller.user)
    return await sse.open_event_stream(
        watches, user=caller.user, start=spec, **sse.stream_options(settings)
    )


@router.get(
    "",
    summary="List the caller's runs",
    responses=openapi.responses_of(run_service_pb2.ListRunsResponse, "A page, newest first."),
)
async def list_runs(
    caller: CallerDep,
    runs: RunsDep,
    settings: SettingsDep,
    conversation_id: Annotated[
        str, Query(alias="conversationId", max_length=128, description="Only this conversation's.")
    ] = "",
    status: Annotated[
        str | None, Query(description="e.g. `running` or `RUN_STATUS_RUNNING`")
    ] = None,
    page_size: Annotated[int, Query(alias="pageSize", ge=0, le=1000)] = 0,
    page_token: Annotated[str, Query(alias="pageToken", max_length=4096)] = "",
) -> Response:
    """The caller's runs, newest first, optionally of one conversation or status."""
    reply = await runs.ListRuns(
        run_service_pb2.ListRunsRequest(
            conversation_id=conversation_id,
            status=parse_status(status),
            page_size=page_size,
            page_token=page_token,
        ),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply)


@router.get(
    "/{run_id}",
    summary="Get a run",
    responses=openapi.responses_of(run_pb2.Run, "The run."),
)
async def get_run(run_id: str, caller: CallerDep, runs: RunsDep, settings: SettingsDep) -> Response:
    """A run: its spec, status, turns, final answer, error, usage. 404 for an unknown run or
    another user's."""
    reply = await runs.GetRun(
        run_service_pb2.GetRunRequest(run_id=run_id), timeout=settings.rpc_timeout_s
    )
    return protojson.response(reply.run)


@router.get(
    "/{run_id}/events",
    summary="Watch or resume a run's events (SSE)",
    operation_id="streamRunEvents",
    responses=openapi.SSE_RESPONSE,
)
async def watch_run(
    run_id: str,
    caller: CallerDep,
    watches: WatchesDep,
    settings: SettingsDep,
    after_seq: Annotated[
        int | None,
        Query(alias="afterSeq", ge=0, le=protojson.MAX_INT64, description="Resume after this seq."),
    ] = None,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this seq (wins).")
    ] = None,
) -> Response:
    """Events with seq greater than `Last-Event-ID` (or `after_seq`), then live until the
    terminal event. No gap, no duplicate; works for finished runs (204 when nothing is
    left; 400 OUT_OF_RANGE for a seq past a finished run's last event)."""
    after = resume_after(last_event_id, after_seq)
    return await sse.open_event_stream(
        watches, user=caller.user, run_id=run_id, after_seq=after, **sse.stream_options(settings)
    )


@router.post(
    "/{run_id}/cancel",
    summary="Cancel a run",
    openapi_extra=openapi.body_of(
        None,
        'Why (optional): `{"reason": "…"}`.',
        required=False,
        example={"reason": "no longer needed"},
        schema={
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "additionalProperties": False,
        },
    ),
    responses=openapi.responses_of(run_service_pb2.CancelRunResponse, "The outcome."),
)
async def cancel_run(
    run_id: str, request: Request, caller: CallerDep, runs: RunsDep, settings: SettingsDep
) -> Response:
    """Stops the run's in-flight model call and ends it with `run_cancelled`. Idempotent:
    `cancelled: false` with a message when the run had already ended."""
    data = await json_body(request, optional=True)
    unknown = sorted(set(data) - {"reason"})
    if unknown:
        raise InvalidArgument("unknown fields", [(f, "unknown field") for f in unknown])
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidArgument("reason must be a string", [("reason", "must be a string")])
    check_text(reason, "reason", settings, required=False)
    reply = await runs.CancelRun(
        run_service_pb2.CancelRunRequest(run_id=run_id, reason=reason),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply)


@router.post(
    "/{run_id}/input",
    summary="Answer a run's request for input (approve / deny a tool call, or text)",
    operation_id="submitRunInput",
    openapi_extra=inputs.openapi_body(),
    responses=openapi.responses_of(
        run_service_pb2.SubmitRunInputResponse,
        "`{run, event}`: the run after the answer and the stored `input_received` event.",
    ),
)
async def submit_run_input(
    run_id: str, request: Request, caller: CallerDep, runs: RunsDep, settings: SettingsDep
) -> Response:
    """Answers the run's `input_requested` (issue 21): `decision` approves or denies the
    tool call awaiting approval, `text` is a human agent's turn
    (RunService.SubmitRunInput). The first answer wins; a repeat with the same `requestId`
    returns the first result (a double click answers once). 400 INVALID_ARGUMENT with
    field violations for a malformed answer (missing `inputId`, both or neither of `text`
    and `decision`, empty text, text for an approval…); 400 FAILED_PRECONDITION, reason
    `INPUT_NOT_PENDING`, for an `inputId` that is unknown, stale or already answered; 404
    for an unknown or another user's run."""
    data = await json_body(request)
    submit = inputs.parse_input(data, max_text_chars=settings.max_input_chars)
    submit.run_id = run_id
    reply = await runs.SubmitRunInput(submit, timeout=settings.rpc_timeout_s)
    return protojson.response(reply)


@router.patch(
    "/{run_id}/agents/{agent_name}",
    summary="Change an agent mid-run",
    openapi_extra=openapi.body_of(
        team_pb2.AgentSpec,
        "The new `systemPrompt`, `temperature` and/or `model`.",
        example={"systemPrompt": "Answer in one short paragraph.", "temperature": 0.3},
    ),
    responses=openapi.responses_of(
        team_pb2.AgentSpec, "The agent's configuration after the change."
    ),
)
async def update_run_agent(
    run_id: str,
    agent_name: str,
    request: Request,
    caller: CallerDep,
    runs: RunsDep,
    settings: SettingsDep,
    update_mask: Annotated[
        str | None,
        Query(
            alias="updateMask",
            description="Fields to change, comma-separated: `systemPrompt`, `temperature`, "
            "`model` (snake_case accepted); default: the fields in the body.",
        ),
    ] = None,
) -> Response:
    """Changes the agent's system prompt, temperature or model from its next turn and emits
    `agent_updated`. 400 FAILED_PRECONDITION once the run has ended, 404 for an unknown
    agent."""
    agent, data = await proto_body(request, team_pb2.AgentSpec())
    check_text(agent.system_prompt, "systemPrompt", settings, required=False)
    if update_mask is not None:
        mask = protojson.field_mask(update_mask, UPDATABLE_AGENT_FIELDS)
    else:
        names = [_AGENT_FIELDS.get(k, k) for k in data]
        mask = field_mask_pb2.FieldMask(paths=names)
    if not mask.paths:
        raise InvalidArgument(
            "nothing to change",
            [("body", "give at least one of systemPrompt, temperature, model")],
        )
    reply = await runs.UpdateRunAgent(
        run_service_pb2.UpdateRunAgentRequest(
            run_id=run_id, agent_name=agent_name, agent=agent, update_mask=mask
        ),
        timeout=settings.rpc_timeout_s,
    )
    return protojson.response(reply.agent)


@router.get(
    "/{run_id}/export",
    summary="Export a run as JSON",
    responses={
        **openapi.responses_of(None, ""),
        200: {
            "description": "`{format, exportTime, complete, run, messages, events}`: the run, "
            "its messages and every event so far (partial while the run is active).",
            "content": {"application/json": {"schema": EXPORT_SCHEMA}},
        },
    },
)
async def export_run(
    run_id: str, caller: CallerDep, runs: RunsDep, history: HistoryDep, settings: SettingsDep
) -> Response:
    """The whole run as one JSON download: the run, its conversation messages and all its
    events (`Content-Disposition: attachment`)."""
    body = await build_run_export(
        runs, history, run_id, event_dict=protojson.event_dict, timeout=settings.rpc_timeout_s
    )
    name = f"chorus-run-{body['run']['id']}.json"
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.delete(
    "/{run_id}",
    status_code=204,
    summary="Delete a run",
    responses=openapi.responses_of(None, "Deleted.", 204),
)
async def delete_run(
    run_id: str, caller: CallerDep, runs: RunsDep, settings: SettingsDep
) -> Response:
    """Deletes the run with its events and checkpoint (204); an active run is cancelled
    first (its watchers get `run_cancelled`). Afterwards every read of the run — `GET`,
    the list, `/events`, `/export`, `/artifacts` — is 404, and so is a second delete. The
    messages it added to its conversation stay (delete the conversation to remove them).
    404 for an unknown or another user's run (RunService.DeleteRun, issue 23)."""
    await runs.DeleteRun(
        run_service_pb2.DeleteRunRequest(run_id=run_id), timeout=settings.rpc_timeout_s
    )
    return Response(status_code=204)


_ARTIFACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "mimeType", "sizeBytes", "agent", "seq", "uri"],
    "properties": {
        "name": {"type": "string", "description": "File name, e.g. `BTC-30d.svg`."},
        "mimeType": {"type": "string", "description": "e.g. `image/svg+xml`."},
        "sizeBytes": {"type": "integer"},
        "agent": {"type": "string", "description": "The agent whose tool made it."},
        "seq": {"type": "integer", "description": "Seq of its `artifact` event."},
        "createTime": {"type": "string", "format": "date-time"},
        "uri": {"type": "string", "description": "Where its content is served."},
    },
}


async def _artifact_events(
    history: HistoryDep, run_id: str, settings: SettingsDep
) -> list[run_pb2.RunEvent]:
    """The run's `artifact` events in seq order (HistoryService.ListRunEvents, `kinds`)."""
    return await list_run_events(
        history, run_id, kinds=["artifact"], timeout=settings.rpc_timeout_s
    )


@router.get(
    "/{run_id}/artifacts",
    summary="List a run's artifacts",
    responses={
        **openapi.responses_of(None, "The run's artifacts (charts, files), oldest first."),
        200: {
            "description": "The run's artifacts (charts, files), oldest first.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["artifacts"],
                        "properties": {"artifacts": {"type": "array", "items": _ARTIFACT_SCHEMA}},
                    }
                }
            },
        },
    },
)
async def list_run_artifacts(
    run_id: str, request: Request, caller: CallerDep, history: HistoryDep, settings: SettingsDep
) -> Response:
    """The files and charts the run's tools attached (`artifact` events), oldest first:
    name, MIME type, size, the agent, the event's seq and time, and the `uri` serving the
    content. Several artifacts may share a name; the uri serves the latest. 404 for an
    unknown or another user's run."""
    base = request.url.path.rstrip("/")
    items = []
    for event in await _artifact_events(history, run_id, settings):
        art = event.artifact
        item: dict[str, Any] = {
            "name": art.name,
            "mimeType": art.mime_type,
            "sizeBytes": len(art.data),
            "agent": event.agent,
            "seq": event.seq,
            "uri": f"{base}/{urllib.parse.quote(art.name, safe='')}",
        }
        if event.HasField("time"):
            item["createTime"] = event.time.ToJsonString()
        items.append(item)
    return Response(orjson.dumps({"artifacts": items}), media_type="application/json")


@router.get(
    "/{run_id}/artifacts/{name}",
    summary="Download one of a run's artifacts",
    responses={
        **openapi.responses_of(None, "The artifact's bytes, with its MIME type."),
        200: {
            "description": "The artifact's bytes, served with its MIME type as Content-Type.",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
async def get_run_artifact(
    run_id: str, name: str, caller: CallerDep, history: HistoryDep, settings: SettingsDep
) -> Response:
    """The content of the run's artifact `name` (the latest of that name), with its MIME
    type as `Content-Type` and `Content-Disposition: inline` (a browser shows an image).
    It is the output of a tool, so it is served sandboxed (`Content-Security-Policy:
    sandbox`, `X-Content-Type-Options: nosniff`): an SVG or HTML artifact runs no script
    in the gateway's origin. 404 when the run has no artifact of that name, or for an
    unknown or another user's run."""
    found = [
        e for e in await _artifact_events(history, run_id, settings) if e.artifact.name == name
    ]
    if not found:
        raise NotFound(
            f"run {run_id} has no artifact named {name!r}",
            reason="ARTIFACT_NOT_FOUND",
            metadata={"run_id": run_id, "name": name},
        )
    art = found[-1].artifact
    quoted = urllib.parse.quote(art.name, safe="")
    return Response(
        art.data,
        media_type=art.mime_type or "application/octet-stream",
        headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quoted}",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        },
    )
