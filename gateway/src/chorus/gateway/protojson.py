"""proto3 JSON in and out: every body the gateway reads or writes is the contract's message.

Conventions (the protobuf defaults, used everywhere — REST, SSE `data:`, WebSocket):

* field names in lowerCamelCase (`runId`, `maxTurns`); requests may use either the
  camelCase or the original snake_case name, as proto3 JSON parsers accept both;
* enums as their names (`RUN_STATUS_RUNNING`), int64 as decimal strings (`"seq": "12"`),
  Timestamps as RFC 3339 UTC strings, FieldMasks as comma-separated camelCase paths;
* fields holding their default value (0, "", false, empty list) are omitted.

Run events go through `json_format` like every other message, but for the per-token
payloads (`text_delta`, `reasoning_delta`): `event_dict` writes those itself, the same dict
(keys in field order, so the same bytes) — 0.75 µs instead of 13.9 µs per event as received
from WatchRuns, 14–28 % of the gateway's CPU per token at LLM pace (issue 19, bench/README.md
"Session 14"; tests compare both ways byte for byte and fail when either payload gains a
field).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, TypeVar

import orjson
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.message import Message
from starlette.responses import Response

from chorus.core.errors import InvalidArgument
from chorus.v1 import run_pb2

M = TypeVar("M", bound=Message)

TERMINAL_PAYLOADS = frozenset({"run_completed", "run_failed", "run_cancelled"})
"""Payload names that end a run (nothing follows them)."""

MAX_INT64 = (1 << 63) - 1
"""Largest int64 (seqs, counters): larger numbers are 400, never a proto range error."""

_PARSE_PATH = re.compile(r' at "?([A-Za-z0-9_.\[\]]+?)"?\.*(?:\n|$)')
_PARSE_PREFIX = re.compile(r"Failed to parse (\w+) field: ")
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')


def to_dict(message: Message) -> dict[str, Any]:
    """proto3 JSON of `message` as a dict (camelCase, defaults omitted)."""
    return json_format.MessageToDict(message)


def to_json(message: Message) -> bytes:
    """proto3 JSON of `message`, encoded."""
    return orjson.dumps(json_format.MessageToDict(message))


def response(message: Message, status_code: int = 200, **kwargs: Any) -> Response:
    """A JSON response whose body is the proto3 JSON of `message`."""
    return Response(
        to_json(message), status_code=status_code, media_type="application/json", **kwargs
    )


def parse(data: Any, message: M) -> M:
    """Fill `message` from proto3 JSON `data` (a dict); unknown fields are errors.

    Raises:
        InvalidArgument: with one field violation naming the offending field path
            (`team.agents[0].temperature`).
    """
    if not isinstance(data, dict):
        raise InvalidArgument(
            "the request body must be a JSON object",
            [("body", "must be a JSON object")],
        )
    try:
        return json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        field, reason = _parse_error_field(str(exc))
        raise InvalidArgument(f"invalid {field}: {reason}", [(field, reason)]) from None


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")
_MASK_PATH = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def snake_case(name: str) -> str:
    """`systemPrompt` → `system_prompt` (snake_case names are returned unchanged)."""
    return _CAMEL_HUMP.sub(r"_\1", name).lower()


def field_mask(
    text: str, allowed: tuple[str, ...], *, field: str = "updateMask"
) -> field_mask_pb2.FieldMask:
    """A `FieldMask` from a comma-separated list of paths, each in camelCase (proto3 JSON,
    `systemPrompt`) or snake_case (the proto's names, `system_prompt`) — AIP-161 masks as
    the docs show them. Paths are returned in snake_case.

    Raises:
        InvalidArgument: no path, or a path not in `allowed` (a `BadRequest` violation on
            `field`, listing the allowed paths).
    """
    paths: list[str] = []
    bad: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        path = ".".join(snake_case(part) for part in name.split("."))
        if not _MASK_PATH.match(path) or path not in allowed:
            bad.append(name)
        elif path not in paths:
            paths.append(path)
    choices = ", ".join(allowed)
    if bad:
        raise InvalidArgument(
            f"{field}: cannot update {', '.join(repr(b) for b in bad)}; one of {choices}",
            [(field, f"unknown path {b!r}; one of {choices}") for b in bad],
        )
    if not paths:
        raise InvalidArgument(
            f"{field} names no field", [(field, f"give one or more of {choices}")]
        )
    return field_mask_pb2.FieldMask(paths=paths)


def _parse_error_field(text: str) -> tuple[str, str]:
    """(field path, description) of a `json_format.ParseError` message.

    The messages nest ("Failed to parse team field: Failed to parse agents field: …") and
    sometimes end with the full path (" at RunSpec.team.agents[0].temperature"); the more
    specific of the two wins.
    """
    chain: list[str] = []
    rest = text
    while (m := _PARSE_PREFIX.match(rest)) is not None:
        chain.append(m.group(1))
        rest = rest[m.end() :]
    at = _PARSE_PATH.search(rest)
    at_path = at.group(1).partition(".")[2] if at else ""
    if at:
        rest = rest[: at.start()]
    path = max(".".join(chain), at_path, key=len)
    unknown = _UNKNOWN_FIELD.search(rest)
    if unknown:
        return (f"{path}.{unknown.group(1)}" if path else unknown.group(1)), "unknown field"
    return path or "body", rest.strip().rstrip(".") or "invalid value"


_EPOCH = dt.datetime(1970, 1, 1)
_second: tuple[int, str] = (-1 << 62, "")
"""The last second `timestamp_json` wrote, and its text up to the seconds."""


def timestamp_json(seconds: int, nanos: int) -> str:
    """RFC 3339 text of a Timestamp, exactly as `Timestamp.ToJsonString` writes it (UTC, 0,
    3, 6 or 9 fractional digits), the date and time cached per second: run events come many
    a second."""
    global _second
    cached, prefix = _second
    if seconds != cached:
        prefix = (_EPOCH + dt.timedelta(seconds=seconds)).isoformat()
        _second = (seconds, prefix)
    if nanos == 0:
        return prefix + "Z"
    if nanos % 1_000_000 == 0:
        return f"{prefix}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{prefix}.{nanos // 1000:06d}Z"
    return f"{prefix}.{nanos:09d}Z"


_DELTAS = {"text_delta": "textDelta", "reasoning_delta": "reasoningDelta"}
"""The per-token payloads `event_dict` writes itself (each has one field, `text`), with
their JSON names."""


def event_dict(event: run_pb2.RunEvent) -> dict[str, Any]:
    """proto3 JSON of a `RunEvent` as a dict: `to_dict(event)`, keys in the same order."""
    kind = event.WhichOneof("payload")
    name = _DELTAS.get(kind) if kind is not None else None
    if name is None:
        return json_format.MessageToDict(event)
    out: dict[str, Any] = {}
    if event.run_id:
        out["runId"] = event.run_id
    if event.seq:
        out["seq"] = str(event.seq)
    if event.HasField("time"):
        ts = event.time
        out["time"] = timestamp_json(ts.seconds, ts.nanos)
    if event.agent:
        out["agent"] = event.agent
    text = getattr(event, kind).text
    out[name] = {"text": text} if text else {}
    return out


def event_json(event: run_pb2.RunEvent) -> bytes:
    """proto3 JSON of a `RunEvent`, encoded (one line: newlines in text are escaped)."""
    return orjson.dumps(event_dict(event))
