"""Row ↔ message mapping shared by both stores.

Rows are read by position in the column orders below; each store passes a function turning
its time values (PostgreSQL `datetime`, SQLite integer µs) into µs since the epoch.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from chorus.history import codec
from chorus.history import runs as run_rules
from chorus.history.timeutil import set_ts, ts_to_us
from chorus.v1 import conversation_pb2, run_pb2

CONVERSATION_COLUMNS = (
    "id, owner, title, model_provider, model_name, team, metadata, message_count, "
    "create_time, update_time"
)
MESSAGE_COLUMNS = (
    "id, conversation_id, position, client_message_id, role, agent, content, tool_calls, "
    "tool_call_id, usage, run_id, create_time"
)
RUN_COLUMNS = "record, last_seq"

TimeReader = Callable[[Any], int | None]


def conversation(row: Sequence[Any], times: TimeReader) -> conversation_pb2.Conversation:
    """A Conversation from a row of `CONVERSATION_COLUMNS`."""
    conv = conversation_pb2.Conversation(
        id=str(row[0]), owner=row[1], title=row[2], team=row[5], message_count=row[7]
    )
    if row[3] or row[4]:
        conv.model.provider = row[3]
        conv.model.model = row[4]
    if row[6] and row[6] != "{}":
        conv.metadata.update(orjson.loads(row[6]))
    set_ts(conv.create_time, times(row[8]))
    set_ts(conv.update_time, times(row[9]))
    return conv


def conversation_params(conv: conversation_pb2.Conversation) -> tuple[str, str, str, str]:
    """`(model_provider, model_name, team, metadata JSON)` of a conversation."""
    return (
        conv.model.provider,
        conv.model.model,
        conv.team,
        orjson.dumps(dict(conv.metadata)).decode() if conv.metadata else "{}",
    )


def message(row: Sequence[Any], times: TimeReader) -> conversation_pb2.Message:
    """A Message from a row of `MESSAGE_COLUMNS`."""
    msg = conversation_pb2.Message(
        id=str(row[0]),
        conversation_id=str(row[1]),
        position=row[2],
        client_message_id=row[3] or "",
        role=row[4],
        agent=row[5],
        content=row[6],
        tool_call_id=row[8],
        run_id=str(row[10]) if row[10] else "",
    )
    codec.tool_calls_from_json(row[7], msg.tool_calls)
    codec.usage_from_json(row[9], msg.usage)
    set_ts(msg.create_time, times(row[11]))
    return msg


def message_params(msg: conversation_pb2.Message) -> tuple[Any, ...]:
    """Values of `MESSAGE_COLUMNS` for an insert, times as µs (the store converts index 11)."""
    return (
        msg.id,
        msg.conversation_id,
        msg.position,
        msg.client_message_id or None,
        msg.role,
        msg.agent,
        msg.content,
        codec.tool_calls_to_json(msg.tool_calls),
        msg.tool_call_id,
        codec.usage_to_json(msg.usage),
        msg.run_id or None,
        ts_to_us(msg.create_time),
    )


def run(row: Sequence[Any]) -> run_pb2.Run:
    """A Run from a row of `RUN_COLUMNS`."""
    out = run_pb2.Run.FromString(row[0])
    out.last_seq = row[1]
    return out


def run_record(r: run_pb2.Run) -> bytes:
    """The lossless `record` column: the Run without `last_seq` (kept in its own column)."""
    copy = run_pb2.Run()
    copy.CopyFrom(r)
    copy.last_seq = 0
    return copy.SerializeToString(deterministic=True)


def run_columns(r: run_pb2.Run) -> dict[str, Any]:
    """Readable projection columns of a run (times as µs; the store converts them)."""
    return {
        "status": r.status,
        "input": r.spec.input,
        "turns": r.turns,
        "final_answer": r.final_answer,
        "error": codec.message_to_json(r.error) if r.HasField("error") else None,
        "cancellation": codec.message_to_json(r.cancellation)
        if r.HasField("cancellation")
        else None,
        "usage": codec.usage_to_json(r.usage),
        "owner_instance": r.owner_instance,
        # present and zero (a released lease) is 0, the Unix epoch, not NULL
        "heartbeat_time": r.heartbeat_time.ToMicroseconds()
        if r.HasField("heartbeat_time")
        else None,
        "create_time": ts_to_us(r.create_time),
        "start_time": ts_to_us(r.start_time),
        "end_time": ts_to_us(r.end_time),
        "update_time": ts_to_us(r.update_time),
        "last_seq": r.last_seq,
        "lease_epoch": r.lease_epoch,
        "pending_input": codec.message_to_json(r.pending_input)
        if r.HasField("pending_input")
        else None,
        "input_expire_time": r.pending_input.expire_time.ToMicroseconds()
        if r.HasField("pending_input") and r.pending_input.HasField("expire_time")
        else None,
        "record": run_record(r),
    }


ACTIVE_STATUSES = ", ".join(str(s) for s in sorted(run_rules.ACTIVE))
"""`runs.status` values of an active run, for SQL `status IN (…)` (QUEUED, RUNNING,
AWAITING_INPUT: the partial index `runs_one_active_per_conversation` has the same list)."""

TIME_COLUMNS = frozenset(
    {"heartbeat_time", "create_time", "start_time", "end_time", "update_time", "input_expire_time"}
)


def number_new_messages(
    messages: Sequence[conversation_pb2.Message],
    stored: dict[str, conversation_pb2.Message],
    conversation_id: str,
    count: int,
    now_us: int,
) -> list[conversation_pb2.Message]:
    """Copies of the messages not stored yet, with id, conversation, position and time set."""
    added: list[conversation_pb2.Message] = []
    for msg in messages:
        if msg.client_message_id and msg.client_message_id in stored:
            continue
        new = conversation_pb2.Message()
        new.CopyFrom(msg)
        new.id = str(uuid.uuid4())
        new.conversation_id = conversation_id
        new.position = count + len(added) + 1
        new.create_time.seconds, rem = divmod(now_us, 1_000_000)
        new.create_time.nanos = rem * 1000
        added.append(new)
    return added


def in_request_order(
    messages: Sequence[conversation_pb2.Message],
    stored: dict[str, conversation_pb2.Message],
    added: list[conversation_pb2.Message],
) -> list[conversation_pb2.Message]:
    """Every request message as stored: the earlier copy for a known client id, else the new one."""
    new = iter(added)
    return [
        stored[m.client_message_id]
        if m.client_message_id and m.client_message_id in stored
        else next(new)
        for m in messages
    ]
