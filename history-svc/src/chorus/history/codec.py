"""JSON forms of the small nested messages stored in readable database columns.

Messages' `usage` and `tool_calls` and runs' `usage`, `error` and `cancellation` are kept as
JSON (PostgreSQL `jsonb`, SQLite text) so that they can be read in `psql`. Usage and tool
calls are on the read path of every message, so they are mapped by hand (orjson, no
reflection); the rare run fields go through `json_format`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from chorus.v1 import chat_pb2

_USAGE_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)

M = TypeVar("M", bound=ProtoMessage)


def usage_to_json(usage: chat_pb2.Usage) -> str | None:
    """`{"input_tokens": 3, …}` with the non-zero fields; None when nothing is set."""
    data: dict[str, Any] = {name: getattr(usage, name) for name in _USAGE_FIELDS}
    data = {k: v for k, v in data.items() if v}
    if usage.estimated:
        data["estimated"] = True
    if usage.HasField("cost_usd"):
        data["cost_usd"] = usage.cost_usd
    return orjson.dumps(data).decode() if data else None


def usage_from_json(text: str | None, into: chat_pb2.Usage) -> None:
    """Fill `into` from `usage_to_json` output (no-op for None)."""
    if text:
        for key, value in orjson.loads(text).items():
            setattr(into, key, value)


def tool_calls_to_json(calls: Any) -> str | None:
    """`[{"id", "name", "arguments"}, …]`; None for no calls."""
    if not calls:
        return None
    return orjson.dumps(
        [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]
    ).decode()


def tool_calls_from_json(text: str | None, into: Any) -> None:
    """Append the calls of `tool_calls_to_json` output to the repeated field `into`."""
    if text:
        for call in orjson.loads(text):
            into.add(**call)


def message_to_json(message: ProtoMessage) -> str | None:
    """proto3 JSON of a message (snake_case names); None when it is empty."""
    if message.ByteSize() == 0:
        return None
    return orjson.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True)
    ).decode()


def message_from_json(text: str | None, into: M) -> M:
    """Parse `message_to_json` output into `into` (unchanged for None); returns `into`."""
    if text:
        json_format.ParseDict(orjson.loads(text), into)
    return into
