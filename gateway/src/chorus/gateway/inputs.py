"""Answers to a run's requests for input (issue 21): the body of `POST /runs/{id}/input` and
the payload of the WebSocket `input` frame, checked and turned into a
`SubmitRunInputRequest` (RunService.SubmitRunInput).

The JSON shape (lowerCamelCase, snake_case accepted, as every body of the API)::

    {"inputId": "turn1-1", "decision": {"approved": false, "reason": "not now"},
     "requestId": "…"}
    {"inputId": "turn2-1", "text": "Shorter, please.", "requestId": "…"}

Exactly one of `text` (a human agent's turn, INPUT_KIND_TEXT) or `decision` (a tool call's
approval, INPUT_KIND_APPROVAL). `decision.approved` must be given (true or false: a missing
one would silently deny). Every problem is reported at once, each as a `BadRequest` field
violation (INVALID_ARGUMENT, HTTP 400): a missing `inputId`, both or neither answer, an
empty or too long text, a reason over 1000 characters, wrong JSON types, unknown fields.
Whether the answer fits the request (text for an approval…) is the orchestrator's check.
"""

from __future__ import annotations

from typing import Any

from chorus.core.errors import InvalidArgument
from chorus.gateway import openapi
from chorus.v1 import run_pb2, run_service_pb2

MAX_ID_CHARS = 128
"""Longest `inputId` and `requestId` (AIP-155 request ids; run.proto)."""
MAX_REASON_CHARS = 1000
"""Longest denial reason (`ApprovalDecision.reason`, run.proto)."""

_FIELDS = {
    "inputId": "inputId",
    "input_id": "inputId",
    "text": "text",
    "decision": "decision",
    "requestId": "requestId",
    "request_id": "requestId",
}
_DECISION_FIELDS = {"approved", "reason"}

INPUT_EXAMPLE = {"inputId": "turn1-1", "decision": {"approved": True}, "requestId": "3f2a…"}
"""The request body example of `POST /runs/{id}/input`."""

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "RunInput",
    "description": "An answer to the run's `input_requested` (issue 21): `inputId` and "
    "exactly one of `text` (a human agent's turn) or `decision` (approve or deny a tool "
    "call). A repeat with the same `requestId` returns the first result.",
    "properties": {
        "inputId": {
            "type": "string",
            "maxLength": MAX_ID_CHARS,
            "description": "The request answered: `InputRequested.inputId` (e.g. `turn1-1`).",
        },
        "text": {
            "type": "string",
            "description": "The text answer of an INPUT_KIND_TEXT request (1 character to "
            "CHORUS_MAX_INPUT_CHARS).",
        },
        "decision": {
            "type": "object",
            "title": "RunInputDecision",
            "description": "The answer of an INPUT_KIND_APPROVAL request "
            "(chorus.v1.ApprovalDecision).",
            "properties": {
                "approved": {"type": "boolean", "description": "True runs the tool call."},
                "reason": {
                    "type": "string",
                    "maxLength": MAX_REASON_CHARS,
                    "description": "Why (optional; given to the agent on a denial).",
                },
            },
            "required": ["approved"],
            "additionalProperties": False,
        },
        "requestId": {
            "type": "string",
            "maxLength": MAX_ID_CHARS,
            "description": "Idempotency key (AIP-155): a repeat returns the first result.",
        },
    },
    "required": ["inputId"],
    "additionalProperties": False,
}
"""The JSON schema of the body of `POST /runs/{id}/input` (component `RunInput`)."""


def _string(value: Any, field: str, violations: list[tuple[str, str]], *, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        violations.append((field, "must be a string"))
        return ""
    if len(value) > limit:
        violations.append((field, f"at most {limit} characters, got {len(value)}"))
    return value


def parse_input(
    data: dict[str, Any],
    *,
    max_text_chars: int,
    prefix: str = "",
    extra: frozenset[str] = frozenset(),
) -> run_service_pb2.SubmitRunInputRequest:
    """A `SubmitRunInputRequest` (without `run_id`) from the JSON object `data`.

    Args:
        data: the body (REST) or the frame's payload (WebSocket).
        max_text_chars: the longest text answer (`CHORUS_MAX_INPUT_CHARS`).
        prefix: put before every field path in violations (`payload.` for a frame).
        extra: keys the caller reads itself (`runId`, `run_id` in a frame), not unknown.

    Raises:
        InvalidArgument: every problem as a field violation (HTTP 400, module docstring);
            reason `INPUT_TOO_LONG` when the only problem is a long text.
    """
    violations: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = _FIELDS.get(key)
        if name is None:
            if key not in extra:
                violations.append((prefix + key, "unknown field"))
            continue
        if name in values:
            violations.append((prefix + name, "given twice (camelCase and snake_case)"))
            continue
        values[name] = value
    request = run_service_pb2.SubmitRunInputRequest()
    request.input_id = _string(
        values.get("inputId"), prefix + "inputId", violations, limit=MAX_ID_CHARS
    )
    if not request.input_id.strip() and not any(f == prefix + "inputId" for f, _ in violations):
        violations.append((prefix + "inputId", "required: the inputId of the input_requested"))
    request.request_id = _string(
        values.get("requestId"), prefix + "requestId", violations, limit=MAX_ID_CHARS
    )
    text = values.get("text")
    decision = values.get("decision")
    if text is not None and decision is not None:
        message = "give either text or decision, not both"
        violations += [(prefix + "text", message), (prefix + "decision", message)]
    elif text is None and decision is None:
        violations.append(
            (
                prefix + "text",
                "an answer is required: text (a text request) or decision (an approval)",
            )
        )
    elif text is not None:
        if not isinstance(text, str):
            violations.append((prefix + "text", "must be a string"))
        elif not text.strip():
            violations.append((prefix + "text", "must not be empty"))
        elif len(text) > max_text_chars:
            violations.append(
                (prefix + "text", f"at most {max_text_chars} characters, got {len(text)}")
            )
        else:
            request.text = text
    else:
        request.decision.CopyFrom(_decision(decision, prefix + "decision", violations))
    if violations:
        fields = ", ".join(dict.fromkeys(f for f, _ in violations))
        too_long = all("characters, got" in d for _, d in violations)
        raise InvalidArgument(
            f"invalid input: {fields}", violations, reason="INPUT_TOO_LONG" if too_long else None
        )
    return request


def _decision(
    value: Any, field: str, violations: list[tuple[str, str]]
) -> run_pb2.ApprovalDecision:
    out = run_pb2.ApprovalDecision()
    if not isinstance(value, dict):
        violations.append((field, 'must be an object: {"approved": true|false, "reason"?}'))
        return out
    for key in sorted(set(value) - _DECISION_FIELDS):
        violations.append((f"{field}.{key}", "unknown field"))
    approved = value.get("approved")
    if approved is None:
        violations.append((f"{field}.approved", "required: true approves, false denies"))
    elif not isinstance(approved, bool):
        violations.append((f"{field}.approved", "must be true or false"))
    else:
        out.approved = approved
    out.reason = _string(value.get("reason"), f"{field}.reason", violations, limit=MAX_REASON_CHARS)
    return out


def openapi_body() -> dict[str, Any]:
    """`openapi_extra` of `POST /runs/{id}/input`: the `RunInput` request body."""
    return openapi.body_of(
        None,
        "The answer (`RunInput`): `inputId` and `text` or `decision`, and a `requestId`.",
        example=INPUT_EXAMPLE,
        schema=openapi.named("RunInput", INPUT_SCHEMA),
    )
