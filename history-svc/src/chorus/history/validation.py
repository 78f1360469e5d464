"""Request checks shared by the HistoryService handlers.

Each function records every problem it finds in a `Violations` (field path → description)
so that one INVALID_ARGUMENT names all bad fields at once; the handler calls
`raise_if_any()` before touching storage, so a bad request writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from chorus.core.errors import Violations
from chorus.history import limits
from chorus.v1 import chat_pb2, conversation_pb2, run_pb2


def uuid_field(v: Violations, field: str, value: str, *, required: bool = True) -> str:
    """The canonical (lower-case, hyphenated) form of a UUID field; "" when absent and optional."""
    if not value:
        if required:
            v.add(field, "required")
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        v.add(field, "must be a UUID")
        return ""


def page_size(v: Violations, value: int, bounds: tuple[int, int]) -> int:
    """The effective page size: 0 → the default; must be 0..max."""
    maximum, default = bounds
    if value < 0 or value > maximum:
        v.add("page_size", f"must be 0..{maximum} (0 means {default})")
        return default
    return value or default


def mask_paths(
    v: Violations, mask: FieldMask, allowed: Iterable[str], *, field: str = "update_mask"
) -> set[str]:
    """The paths of an update mask (AIP-134); empty mask → every allowed path."""
    allowed = tuple(allowed)
    if not mask.paths:
        return set(allowed)
    paths: set[str] = set()
    for i, path in enumerate(mask.paths):
        if path not in allowed:
            v.add(
                f"{field}.paths[{i}]",
                f"unknown or immutable path {path!r}; allowed: {', '.join(allowed)}",
            )
        else:
            paths.add(path)
    return paths


def text(v: Violations, field: str, value: str, max_chars: int) -> None:
    """At most `max_chars` characters."""
    if len(value) > max_chars:
        v.add(field, f"at most {max_chars} characters (got {len(value)})")


def utf8_size(v: Violations, field: str, value: str, max_bytes: int) -> None:
    """At most `max_bytes` bytes of UTF-8 (cheap check first: chars ≤ bytes ≤ 4 × chars)."""
    if len(value) * 4 > max_bytes and len(value.encode()) > max_bytes:
        v.add(field, f"at most {max_bytes} bytes of UTF-8")


def request_id(v: Violations, field: str, value: str) -> None:
    """An idempotency key: at most 128 characters."""
    text(v, field, value, limits.MAX_REQUEST_ID_CHARS)


def model_ref(v: Violations, field: str, model: chat_pb2.ModelRef) -> None:
    text(v, f"{field}.provider", model.provider, limits.MAX_MODEL_FIELD_CHARS)
    text(v, f"{field}.model", model.model, limits.MAX_MODEL_FIELD_CHARS)


def conversation_fields(
    v: Violations,
    conv: conversation_pb2.Conversation,
    paths: Iterable[str],
    prefix: str = "conversation",
) -> None:
    """The client-settable fields named in `paths` (`title`, `model`, `team`, `metadata`)."""
    paths = set(paths)
    if "title" in paths:
        text(v, f"{prefix}.title", conv.title, limits.MAX_TITLE_CHARS)
    if "model" in paths:
        model_ref(v, f"{prefix}.model", conv.model)
    if "team" in paths:
        text(v, f"{prefix}.team", conv.team, limits.MAX_TEAM_CHARS)
    if "metadata" in paths:
        if len(conv.metadata) > limits.MAX_METADATA_ENTRIES:
            v.add(f"{prefix}.metadata", f"at most {limits.MAX_METADATA_ENTRIES} entries")
        for key, value in conv.metadata.items():
            if not key or len(key) > limits.MAX_METADATA_KEY_CHARS:
                v.add(
                    f"{prefix}.metadata",
                    f"keys must be 1..{limits.MAX_METADATA_KEY_CHARS} characters",
                )
                break
            if len(value) > limits.MAX_METADATA_VALUE_CHARS:
                v.add(
                    f"{prefix}.metadata[{key}]",
                    f"at most {limits.MAX_METADATA_VALUE_CHARS} characters",
                )


def message(v: Violations, msg: conversation_pb2.Message, prefix: str) -> None:
    """One message of AppendMessages (role, content, tool calls, ids, sizes)."""
    if msg.role == chat_pb2.ROLE_UNSPECIFIED:
        v.add(f"{prefix}.role", "required")
    elif msg.role not in chat_pb2.Role.values():
        v.add(f"{prefix}.role", f"unknown role {msg.role}")
    if not msg.content and not msg.tool_calls:
        v.add(f"{prefix}.content", "must not be empty (unless tool_calls is set)")
    utf8_size(v, f"{prefix}.content", msg.content, limits.MAX_CONTENT_BYTES)
    text(
        v, f"{prefix}.client_message_id", msg.client_message_id, limits.MAX_CLIENT_MESSAGE_ID_CHARS
    )
    text(v, f"{prefix}.agent", msg.agent, limits.MAX_AGENT_CHARS)
    text(v, f"{prefix}.tool_call_id", msg.tool_call_id, limits.MAX_TOOL_CALL_ID_CHARS)
    uuid_field(v, f"{prefix}.run_id", msg.run_id, required=False)
    if len(msg.tool_calls) > limits.MAX_TOOL_CALLS_PER_MESSAGE:
        v.add(f"{prefix}.tool_calls", f"at most {limits.MAX_TOOL_CALLS_PER_MESSAGE} calls")
    for j, call in enumerate(msg.tool_calls):
        text(v, f"{prefix}.tool_calls[{j}].id", call.id, limits.MAX_TOOL_CALL_ID_CHARS)
        if not call.name:
            v.add(f"{prefix}.tool_calls[{j}].name", "required")
        text(v, f"{prefix}.tool_calls[{j}].name", call.name, limits.MAX_TOOL_NAME_CHARS)
        utf8_size(
            v,
            f"{prefix}.tool_calls[{j}].arguments",
            call.arguments,
            limits.MAX_TOOL_ARGUMENTS_BYTES,
        )
    usage(v, f"{prefix}.usage", msg.usage)


def messages(
    v: Violations,
    msgs: Sequence[conversation_pb2.Message],
    max_count: int,
    *,
    required: bool = True,
) -> None:
    """Messages to append under `messages` (AppendMessages: 1..500, RecordRunStart: 0..100):
    each valid (`message`), `client_message_id`s unique within the request. Stops after 50
    violations (enough to diagnose; keeps the error small)."""
    if not msgs:
        if required:
            v.add("messages", "at least one message is required")
    elif len(msgs) > max_count:
        v.add("messages", f"at most {max_count} messages per call")
    else:
        seen: set[str] = set()
        for i, msg in enumerate(msgs):
            message(v, msg, f"messages[{i}]")
            if msg.client_message_id:
                if msg.client_message_id in seen:
                    v.add(f"messages[{i}].client_message_id", "repeated within the request")
                seen.add(msg.client_message_id)
            if len(v.items) >= 50:
                break


def usage(v: Violations, field: str, u: chat_pb2.Usage) -> None:
    for name in (
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
    ):
        if getattr(u, name) < 0:
            v.add(f"{field}.{name}", "must not be negative")
    if u.HasField("cost_usd") and not u.cost_usd >= 0:  # also rejects NaN
        v.add(f"{field}.cost_usd", "must be a non-negative number")


def run_values(v: Violations, run: run_pb2.Run, paths: Iterable[str], prefix: str = "run") -> None:
    """The Run fields named in `paths` (RecordRun; a heartbeat's, prefix `heartbeats[i]`),
    reported as `{prefix}.{field}`."""
    paths = set(paths)
    if "status" in paths:
        if run.status == run_pb2.RUN_STATUS_UNSPECIFIED:
            v.add(f"{prefix}.status", "required when status is updated")
        elif run.status not in run_pb2.RunStatus.values():
            v.add(f"{prefix}.status", f"unknown status {run.status}")
    if "turns" in paths and run.turns < 0:
        v.add(f"{prefix}.turns", "must not be negative")
    if "final_answer" in paths:
        utf8_size(v, f"{prefix}.final_answer", run.final_answer, limits.MAX_FINAL_ANSWER_BYTES)
    if "error" in paths:
        text(v, f"{prefix}.error.message", run.error.message, limits.MAX_ERROR_MESSAGE_CHARS)
        text(v, f"{prefix}.error.reason", run.error.reason, limits.MAX_AGENT_CHARS)
    if "cancellation" in paths:
        text(
            v,
            f"{prefix}.cancellation.reason",
            run.cancellation.reason,
            limits.MAX_CANCEL_REASON_CHARS,
        )
        text(
            v,
            f"{prefix}.cancellation.requested_by",
            run.cancellation.requested_by,
            limits.MAX_AGENT_CHARS,
        )
    if "usage" in paths:
        usage(v, f"{prefix}.usage", run.usage)
    if "last_seq" in paths and run.last_seq < 0:
        v.add(f"{prefix}.last_seq", "must not be negative")
    if "owner_instance" in paths:
        text(v, f"{prefix}.owner_instance", run.owner_instance, limits.MAX_OWNER_INSTANCE_CHARS)
    if "pending_input" in paths and run.HasField("pending_input"):
        input_requested(v, f"{prefix}.pending_input", run.pending_input)
    # Not updatable (only ClaimRun moves them) but given at a create: not negative.
    if run.lease_epoch < 0:
        v.add(f"{prefix}.lease_epoch", "must not be negative")
    if run.attempt < 0:
        v.add(f"{prefix}.attempt", "must not be negative")


def run_spec(v: Violations, spec: run_pb2.RunSpec) -> None:
    """The spec of a run being created (stored as given; the orchestrator validated the team)."""
    utf8_size(v, "run.spec.input", spec.input, limits.MAX_RUN_INPUT_BYTES)
    request_id(v, "run.spec.request_id", spec.request_id)
    if spec.max_turns < 0:
        v.add("run.spec.max_turns", "must not be negative")


MAX_EVENT_KINDS = 20
"""`ListRunEventsRequest.kinds` limit."""
EVENT_KINDS = frozenset(
    f.name for f in run_pb2.RunEvent.DESCRIPTOR.oneofs_by_name["payload"].fields
)
"""The RunEvent `payload` field names."""


def event_kinds(v: Violations, field: str, kinds: Iterable[str]) -> list[str]:
    """A `kinds` filter: distinct RunEvent payload names, at most `MAX_EVENT_KINDS`."""
    given = list(kinds)
    if len(given) > MAX_EVENT_KINDS:
        v.add(field, f"at most {MAX_EVENT_KINDS} kinds")
        return []
    for i, kind in enumerate(given):
        if kind not in EVENT_KINDS:
            v.add(f"{field}[{i}]", "not a RunEvent payload name (e.g. artifact, text_delta)")
    return sorted(set(given))


def lease_epoch(v: Violations, field: str, value: int, *, required: bool = False) -> None:
    """A lease epoch (Run.lease_epoch): not negative; with `required` (ReleaseRun), ≥ 1."""
    if value < 0:
        v.add(field, "must not be negative")
    elif required and value == 0:
        v.add(field, "required: the lease epoch the caller holds (1 or more)")


def owner_instance(v: Violations, field: str, value: str) -> None:
    """A claiming orchestrator instance (ClaimRunRequest.owner_instance): 1..128 characters."""
    if not value:
        v.add(field, "required")
    else:
        text(v, field, value, limits.MAX_CLAIM_OWNER_INSTANCE_CHARS)


def stale_after_us(v: Violations, field: str, value: Duration, present: bool) -> int:
    """ClaimRunRequest.stale_after in µs: required, a valid Duration, > 0 and at most
    `limits.MAX_STALE_AFTER_S`. Returns 0 when invalid."""
    if not present:
        v.add(field, "required (how old a heartbeat must be for the lease to count as expired)")
        return 0
    seconds, nanos = value.seconds, value.nanos
    if not -999_999_999 <= nanos <= 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        v.add(field, "not a valid Duration (nanos out of range or of another sign)")
        return 0
    total_us = seconds * 1_000_000 + nanos // 1000
    if total_us <= 0:
        v.add(field, "must be greater than 0 (at least 1 µs)")
        return 0
    if total_us > limits.MAX_STALE_AFTER_S * 1_000_000:
        v.add(field, f"must be at most {limits.MAX_STALE_AFTER_S} s")
        return 0
    return total_us


def checkpoint(v: Violations, cp: run_pb2.RunCheckpoint, prefix: str = "checkpoint") -> None:
    """A run checkpoint (AppendRunEventsRequest.checkpoint): seq, turns and message count
    not negative, `team_state` at most 16 MiB (RunCheckpoint's comment), usage valid.
    Whether `seq` is within the run's log is checked by the store, under the run's lock."""
    if cp.seq < 0:
        v.add(f"{prefix}.seq", "must not be negative")
    if len(cp.team_state) > limits.MAX_CHECKPOINT_STATE_BYTES:
        v.add(
            f"{prefix}.team_state",
            f"at most {limits.MAX_CHECKPOINT_STATE_BYTES} bytes (got {len(cp.team_state)})",
        )
    if cp.turns < 0:
        v.add(f"{prefix}.turns", "must not be negative")
    if cp.message_count < 0:
        v.add(f"{prefix}.message_count", "must not be negative")
    usage(v, f"{prefix}.usage", cp.usage)


def input_requested(v: Violations, field: str, req: run_pb2.RunEvent.InputRequested) -> None:
    """A run's pending request for input (`Run.pending_input`, issue 21): `input_id`
    1..128 characters, a known `kind`, `prompt` ≤ 64 KiB, `agent` ≤ 256 characters, the
    tool call's sizes as a message's."""
    if not req.input_id:
        v.add(f"{field}.input_id", "required")
    text(v, f"{field}.input_id", req.input_id, limits.MAX_INPUT_ID_CHARS)
    if req.kind not in (run_pb2.INPUT_KIND_TEXT, run_pb2.INPUT_KIND_APPROVAL):
        v.add(f"{field}.kind", "must be INPUT_KIND_TEXT or INPUT_KIND_APPROVAL")
    utf8_size(v, f"{field}.prompt", req.prompt, limits.MAX_INPUT_PROMPT_BYTES)
    text(v, f"{field}.agent", req.agent, limits.MAX_AGENT_CHARS)
    call = req.tool_call
    text(v, f"{field}.tool_call.id", call.id, limits.MAX_TOOL_CALL_ID_CHARS)
    text(v, f"{field}.tool_call.name", call.name, limits.MAX_TOOL_NAME_CHARS)
    utf8_size(v, f"{field}.tool_call.arguments", call.arguments, limits.MAX_TOOL_ARGUMENTS_BYTES)


def input_answer(
    v: Violations, answer: run_pb2.RunEvent.InputReceived, present: bool, field: str = "answer"
) -> None:
    """RecordRunInputRequest.answer (issue 21): required; `input_id` 1..128 characters;
    exactly one of `text` (1 byte..64 KiB) and `decision` (`reason` ≤ 1000 characters), or
    `expired` with no text; `by` ≤ 256 and `request_id` ≤ 128 characters. Whether the
    kind fits the request is checked under the run's lock (`runs.answer_input`)."""
    if not present:
        v.add(field, "required")
        return
    if not answer.input_id:
        v.add(f"{field}.input_id", "required")
    text(v, f"{field}.input_id", answer.input_id, limits.MAX_INPUT_ID_CHARS)
    given = answer.WhichOneof("answer")
    if given is None and not answer.expired:
        v.add(field, "one of text or decision is required (or expired)")
    if given == "text":
        if answer.expired:
            v.add(f"{field}.text", "must be unset when expired")
        elif not answer.text:
            v.add(f"{field}.text", "must not be empty")
        else:
            utf8_size(v, f"{field}.text", answer.text, limits.MAX_INPUT_TEXT_BYTES)
    if given == "decision":
        text(
            v, f"{field}.decision.reason", answer.decision.reason, limits.MAX_DECISION_REASON_CHARS
        )
    text(v, f"{field}.by", answer.by, limits.MAX_AGENT_CHARS)
    request_id(v, f"{field}.request_id", answer.request_id)
