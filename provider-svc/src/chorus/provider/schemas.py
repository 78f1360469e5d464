"""Tool parameter schemas: from `google.protobuf.Struct` to plain JSON, and their validation.

A Struct holds every number as a double, so `{"maxLength": 5}` arrives as `5.0`; JSON
Schema keywords such as `maxLength` want integers, so integral doubles become ints.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from google.protobuf import json_format, struct_pb2


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The Struct as JSON-ready dicts and lists (integral numbers as ints)."""
    out: dict[str, Any] = _plain(json_format.MessageToDict(struct))
    return out


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a usable tool parameter schema, or None if it is.

    It must be a valid JSON Schema (checked against the 2020-12 meta-schema, which the
    OpenAI and Anthropic tool formats follow) whose top level is `"type": "object"`.
    """
    if schema.get("type") != "object":
        return 'must be a JSON Schema object schema ("type": "object")'
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        return f"is not valid JSON Schema at {where}: {exc.message}"
    return None


EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def tool_schema(parameters: struct_pb2.Struct) -> dict[str, Any]:
    """A tool's parameter schema as JSON; an empty Struct means a tool without arguments."""
    if not parameters.fields:
        return dict(EMPTY_OBJECT_SCHEMA)
    return struct_to_dict(parameters)
