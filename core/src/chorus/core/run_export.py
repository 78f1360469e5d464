"""A run's export document and its events, read from RunService and HistoryService.

One builder serves the gateway's `GET /api/v1/runs/{id}/export` and the CLI's
`chorus runs export`, and one pager their artifact listings, so both write the same
document: `{format, exportTime, complete, run, messages, events}` (proto3 JSON, camelCase).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from chorus.v1 import (
    history_service_pb2,
    history_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

RUN_EXPORT_FORMAT = "chorus.run-export.v1"
"""`format` of an export document."""

TERMINAL_STATUSES = (
    run_pb2.RUN_STATUS_COMPLETED,
    run_pb2.RUN_STATUS_FAILED,
    run_pb2.RUN_STATUS_CANCELLED,
)
"""Run statuses after which nothing is added to a run (the export is `complete`)."""


async def list_run_events(
    history: history_service_pb2_grpc.HistoryServiceStub,
    run_id: str,
    *,
    kinds: Sequence[str] = (),
    page_size: int = 1000,
    **call_options: Any,
) -> list[run_pb2.RunEvent]:
    """Every event of the run in seq order (HistoryService.ListRunEvents, all pages), only
    those whose payload is one of `kinds` when given. `call_options` (`timeout`,
    `metadata`) go to each call; its gRPC errors (NOT_FOUND for an unknown run) propagate."""
    found: list[run_pb2.RunEvent] = []
    token = ""
    while True:
        page = await history.ListRunEvents(
            history_service_pb2.ListRunEventsRequest(
                run_id=run_id, kinds=list(kinds), page_size=page_size, page_token=token
            ),
            **call_options,
        )
        found.extend(page.events)
        token = page.next_page_token
        if not token:
            return found


async def build_run_export(
    runs: run_service_pb2_grpc.RunServiceStub,
    history: history_service_pb2_grpc.HistoryServiceStub,
    run_id: str,
    *,
    event_dict: Callable[[run_pb2.RunEvent], dict[str, Any]] = json_format.MessageToDict,
    **call_options: Any,
) -> dict[str, Any]:
    """The export document of the run: `{format, exportTime, complete, run, messages,
    events}` — the run (RunService.GetRun), the messages it added to its conversation
    (none when the conversation was deleted) and every event so far; `complete` is false
    while the run is active. `exportTime` is RFC 3339 UTC. `event_dict` turns an event
    into its proto3 JSON dict (a faster equivalent may be given). `call_options`
    (`timeout`, `metadata`) go to each call; gRPC errors other than a deleted
    conversation's NOT_FOUND propagate (NOT_FOUND for an unknown run)."""
    run = (await runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id), **call_options)).run
    events = [
        event_dict(e)
        for e in await list_run_events(history, run_id, page_size=5000, **call_options)
    ]
    messages: list[dict[str, Any]] = []
    token = ""
    while run.conversation_id:
        try:
            mpage = await history.ListMessages(
                history_service_pb2.ListMessagesRequest(
                    conversation_id=run.conversation_id,
                    run_id=run_id,
                    page_size=1000,
                    page_token=token,
                ),
                **call_options,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            break  # the conversation was deleted; the run and its events remain
        messages.extend(json_format.MessageToDict(m) for m in mpage.messages)
        token = mpage.next_page_token
        if not token:
            break
    return {
        "format": RUN_EXPORT_FORMAT,
        "exportTime": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "complete": run.status in TERMINAL_STATUSES,
        "run": json_format.MessageToDict(run),
        "messages": messages,
        "events": events,
    }
