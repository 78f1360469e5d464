"""OpenAPI schemas of the proto3 JSON bodies, generated from the contract's descriptors.

Request and response bodies are the `chorus.v1` messages (the proto is the source of
truth), so `/docs` describes them from the same descriptors the gateway parses with:
`#/components/schemas/chorus.v1.RunSpec`, … Routes reference them with `body_of` and
`responses_of`; `install` adds every referenced schema to the generated document.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chorus.v1 import run_pb2

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.FieldMask": {"type": "string", "example": "title,metadata"},
    "google.protobuf.Any": {"type": "object", "additionalProperties": True},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "AIP-193 error: canonical gRPC code mapped to HTTP.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "HTTP status."},
                "message": {"type": "string"},
                "status": {"type": "string", "example": "NOT_FOUND"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"@type": {"type": "string"}},
                        "required": ["@type"],
                        "additionalProperties": True,
                    },
                    "description": "google.rpc ErrorInfo, BadRequest, RetryInfo as proto3 JSON; "
                    "a BadRequest's fieldViolations name each invalid field.",
                },
            },
            "required": ["code", "message", "status", "details"],
        }
    },
    "required": ["error"],
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    "400": {
        "description": "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE (AIP-193): a "
        "BadRequest detail names each invalid field, query parameter or header.",
        "content": _ERROR_CONTENT,
    },
    "4XX": {"description": "AIP-193 error", "content": _ERROR_CONTENT},
    "5XX": {"description": "AIP-193 error", "content": _ERROR_CONTENT},
}
"""Error responses of every `/api/v1` operation (FastAPI's 422 `HTTPValidationError` is
never answered: validation errors are 400 INVALID_ARGUMENT, `chorus.gateway.errors`)."""

REPLICA_INTERNALS = "Replica internals: clients need not read it."
TESTING_CONTROL = "Testing control: only the simulator provider honours it."
NOT_FOR_CLIENTS: dict[str, str] = {
    "chorus.v1.Run.owner_instance": f"{REPLICA_INTERNALS} The orchestrator instance "
    "executing the run (empty while nobody holds its lease).",
    "chorus.v1.Run.heartbeat_time": f"{REPLICA_INTERNALS} Last heartbeat of `ownerInstance` "
    "(the Unix epoch once the lease is released).",
    "chorus.v1.Run.lease_epoch": f"{REPLICA_INTERNALS} Fencing epoch of the lease under "
    "which `ownerInstance` executes the run.",
    "chorus.v1.Run.attempt": f"{REPLICA_INTERNALS} Executions of the run so far: 1, plus "
    "one per resume after its owner was lost or handed it over, or after a person's answer; "
    "only the resumes after a lost owner are bounded (`CHORUS_MAX_RUN_RESUMES`).",
    "chorus.v1.Run.trace_context": f"{REPLICA_INTERNALS} W3C trace context of the run's first "
    "execution, when the orchestrator traces (a resumed run continues that trace).",
    "chorus.v1.AgentSpec.simulator": f"{TESTING_CONTROL} Used when the agent's model is on "
    "the `simulator` provider; every real provider ignores it.",
    "chorus.v1.SimulatorOptions": f"{TESTING_CONTROL} Speed, determinism and faults of the "
    "offline `simulator` provider, per request (tests and benchmarks); every real provider "
    "ignores them.",
    "chorus.v1.SimulatorFault": f"{TESTING_CONTROL} A fault the simulator injects into its stream.",
}
"""Descriptions of the public messages' fields (and messages) that are no part of what a
client needs (issue 24 item 6; docs/architecture.md §3 "What is public"), by proto full
name. Their proto comments say so, but the generated descriptors carry no comments (protoc's
Python output drops source info), so the marks are kept here; test_gateway_openapi.py checks
that every element the proto comments mark is marked here too."""

# Descriptors are typed loosely: the upb runtime's classes differ from the pure-Python stubs.
_registry: dict[str, Any] = {}
_named: dict[str, dict[str, Any]] = {}


def named(name: str, schema: dict[str, Any]) -> dict[str, str]:
    """A `$ref` to `schema` as the component `name` (a body that is no proto message, e.g.
    `RunInput`; `install` adds it to the document)."""
    _named[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def ref(descriptor: Any) -> dict[str, str]:
    """A `$ref` to the schema of `descriptor` (registering it for `install`)."""
    _registry[descriptor.full_name] = descriptor
    return {"$ref": f"#/components/schemas/{descriptor.full_name}"}


def _field_schema(field: Any, pending: list[Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        if message.GetOptions().map_entry:
            value = _field_schema(message.fields_by_name["value"], pending)
            mapped: dict[str, Any] = {"type": "object", "additionalProperties": value}
            if field.full_name in NOT_FOR_CLIENTS:
                mapped["description"] = NOT_FOR_CLIENTS[field.full_name]
            return mapped
        if message.full_name in _WELL_KNOWN:
            single = dict(_WELL_KNOWN[message.full_name])
        else:
            pending.append(message)
            single = {"$ref": f"#/components/schemas/{message.full_name}"}
    elif field.type == FieldDescriptor.TYPE_ENUM:
        single = {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    else:
        single = dict(_SCALARS[field.type])
    if field.label == FieldDescriptor.LABEL_REPEATED:  # protobuf 5.x has no is_repeated
        single = {"type": "array", "items": single}
    if field.full_name in NOT_FOR_CLIENTS:
        single["description"] = NOT_FOR_CLIENTS[field.full_name]
    return single


def message_schemas(roots: list[Any]) -> dict[str, dict[str, Any]]:
    """JSON schemas of `roots` and every message they reference, keyed by full name."""
    out: dict[str, dict[str, Any]] = {}
    pending = list(roots)
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in out or descriptor.full_name in _WELL_KNOWN:
            continue
        properties = {f.json_name: _field_schema(f, pending) for f in descriptor.fields}
        schema: dict[str, Any] = {
            "type": "object",
            "title": descriptor.full_name,
            "properties": properties,
            "additionalProperties": False,
        }
        if descriptor.full_name in NOT_FOR_CLIENTS:
            schema["description"] = NOT_FOR_CLIENTS[descriptor.full_name]
        out[descriptor.full_name] = schema
    return out


def body_of(
    message: type[Message] | None,
    description: str,
    *,
    example: dict[str, Any],
    required: bool = True,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`openapi_extra` declaring a proto3 JSON request body of type `message` (or of an
    explicit JSON `schema`), with an `example` (shown by `/docs`, used by generators)."""
    body_schema = schema if schema is not None else ref(message.DESCRIPTOR) if message else {}
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {"application/json": {"schema": body_schema, "example": example}},
        }
    }


def responses_of(
    message: type[Message] | None, description: str, status: int = 200
) -> dict[int | str, dict[str, Any]]:
    """`responses` of a route answering `message` (proto3 JSON) plus the AIP error shape."""
    ok: dict[str, Any] = {"description": description}
    if message is not None:
        ok["content"] = {"application/json": {"schema": ref(message.DESCRIPTOR)}}
    return {status: ok, **_ERRORS}


def _run_event_names() -> list[str]:
    return [f.name for f in run_pb2.RunEvent.DESCRIPTOR.oneofs_by_name["payload"].fields]


def sse_content() -> dict[str, Any]:
    """The `text/event-stream` media type of a run's events, as FastAPI documents its own
    SSE routes: `itemSchema` (OpenAPI 3.2) describes one event — `event` the payload's
    name, `id` the seq, `data` one chorus.v1.RunEvent as proto3 JSON; `: keepalive`
    comments carry no event. No `schema`: the stream is not one JSON value (a generated
    client hands it over as bytes)."""
    return {
        "itemSchema": {
            "type": "object",
            "title": "RunEventFrame",
            "description": "One SSE event: `event:`, `id:`, `data:` lines. A stream that fails "
            "after it started ends with `event: error` whose data is an AIP-193 error.",
            "properties": {
                "event": {"type": "string", "enum": [*_run_event_names(), "error"]},
                "id": {"type": "string", "description": "The event's seq (Last-Event-ID)."},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            ref(run_pb2.RunEvent.DESCRIPTOR),
                            {"$ref": "#/components/schemas/Error"},
                        ]
                    },
                },
                "retry": {"type": "integer", "description": "Reconnect delay, milliseconds."},
            },
        },
        "example": 'event: text_delta\nid: 17\ndata: {"runId":"1f0c…","seq":"17",'
        '"time":"2026-01-01T12:00:00Z","agent":"optimist","textDelta":{"text":"Hi"}}\n\n',
    }


def sse_response() -> dict[int | str, dict[str, Any]]:
    """`responses` of an operation answering a run's events as Server-Sent Events."""
    return {
        200: {
            "description": "Server-Sent Events: `event:` payload type (`run_started`, "
            "`text_delta`, …), `id:` seq, `data:` proto3 JSON of chorus.v1.RunEvent. Ends "
            "after the terminal event (`run_completed`, `run_failed`, `run_cancelled`).",
            "content": {"text/event-stream": sse_content()},
        },
        204: {"description": "Nothing after the requested seq and the run has ended."},
        **_ERRORS,
    }


SSE_RESPONSE = sse_response()


def _drop_default_json(response: dict[str, Any]) -> None:
    """Drop the schema-less `application/json` FastAPI adds to a response documented with
    other media types (an SSE operation answers `text/event-stream` only)."""
    content = response.get("content", {})
    if len(content) > 1 and content.get("application/json", {}).get("schema") == {}:
        del content["application/json"]


API_PATHS = ("/api/v1/",)
"""Paths whose operations answer AIP-193 errors (the OpenAI-compatible `/v1` has its own)."""


def install(app: FastAPI) -> None:
    """Make `app.openapi()` include the proto schemas and the error schema, and document
    400 AIP-193 errors (never FastAPI's 422) on every API operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(message_schemas(list(_registry.values())))
        components.update(_named)
        components["Error"] = ERROR_SCHEMA
        for path, item in schema.get("paths", {}).items():
            if path.startswith(API_PATHS):
                for operation in item.values():
                    if "health" in operation.get("tags", ()):
                        continue  # no parameters, no body: nothing to be invalid
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    for response in responses.values():
                        _drop_default_json(response)
                    for code, error in _ERRORS.items():
                        responses.setdefault(code, error)
        text = orjson.dumps(schema)
        for name in ("HTTPValidationError", "ValidationError"):
            if f"#/components/schemas/{name}".encode() not in text:
                components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
