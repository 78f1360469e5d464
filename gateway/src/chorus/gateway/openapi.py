"""OpenAPI schemas of the proto3 JSON bodies, generated from the contract's descriptors.

Request and response bodies are the `chorus.v1` messages (the proto is the source of
truth), so `/docs` describes them from the same descriptors the gateway parses with:
`#/components/schemas/chorus.v1.RunSpec`, … Routes reference them with `body_of` and
`responses_of`; `install` adds every referenced schema to the generated document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

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
                    "items": {"type": "object", "additionalProperties": True},
                    "description": "google.rpc ErrorInfo, BadRequest, RetryInfo as proto3 JSON.",
                },
            },
        }
    },
}

# Descriptors are typed loosely: the upb runtime's classes differ from the pure-Python stubs.
_registry: dict[str, Any] = {}


def ref(descriptor: Any) -> dict[str, str]:
    """A `$ref` to the schema of `descriptor` (registering it for `install`)."""
    _registry[descriptor.full_name] = descriptor
    return {"$ref": f"#/components/schemas/{descriptor.full_name}"}


def _field_schema(field: Any, pending: list[Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        if message.GetOptions().map_entry:
            value = _field_schema(message.fields_by_name["value"], pending)
            return {"type": "object", "additionalProperties": value}
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
        return {"type": "array", "items": single}
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
        out[descriptor.full_name] = {
            "type": "object",
            "title": descriptor.full_name,
            "properties": properties,
            "additionalProperties": False,
        }
    return out


def body_of(message: type[Message], description: str, *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring a proto3 JSON request body of type `message`."""
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {"application/json": {"schema": ref(message.DESCRIPTOR)}},
        }
    }


def responses_of(
    message: type[Message] | None, description: str, status: int = 200
) -> dict[int | str, dict[str, Any]]:
    """`responses` of a route answering `message` (proto3 JSON) plus the AIP error shape."""
    ok: dict[str, Any] = {"description": description}
    if message is not None:
        ok["content"] = {"application/json": {"schema": ref(message.DESCRIPTOR)}}
    return {
        status: ok,
        "4XX": {
            "description": "AIP-193 error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
        "5XX": {
            "description": "AIP-193 error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }


SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `event:` payload type, `id:` seq, `data:` proto3 "
        "JSON of chorus.v1.RunEvent. Ends after the terminal event.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {"description": "Nothing after the requested seq and the run has ended."},
}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` include the proto schemas and the error schema."""

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
        components["Error"] = ERROR_SCHEMA
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
