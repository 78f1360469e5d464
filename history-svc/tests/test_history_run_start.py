"""RecordRunStart: a run's opening writes (conversation, run record, input, first events) in
one call, all or nothing, read back through the other RPCs (and, on PostgreSQL + Redis, from
the database and the cache directly)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from history_helpers import (
    History,
    RedisServer,
    TcpProxy,
    UserStub,
    completed_event,
    fields_of,
    make_settings,
    message,
    new_conversation,
    new_run,
    rpc_error,
    run_spec,
    running_history,
    text_event,
)
from prometheus_client import REGISTRY

from chorus.core.testing import wait_for
from chorus.v1 import chat_pb2, conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

Run = run_pb2.Run
RunEvent = run_pb2.RunEvent
VERSION = 40  # chars of the version prefix of cached values


def started_event(seq: int = 1, **kw: Any) -> RunEvent:
    return RunEvent(
        seq=seq,
        run_started=RunEvent.RunStarted(run=Run(status=run_pb2.RUN_STATUS_RUNNING)),
        **kw,
    )


def start_request(
    conversation_id: str | None = None,
    *,
    new: bool = True,
    run_id: str | None = None,
    messages: tuple[conversation_pb2.Message, ...] | None = None,
    events: tuple[RunEvent, ...] | None = None,
    recent: int = 0,
    status: int = run_pb2.RUN_STATUS_RUNNING,
    **spec: Any,
) -> pb.RecordRunStartRequest:
    """A valid start: a new conversation (or joining `conversation_id` with `new=False`),
    a RUNNING run, one input message and `run_started`."""
    conversation_id = conversation_id or str(uuid.uuid4())
    run_id = run_id or str(uuid.uuid4())
    request = pb.RecordRunStartRequest(
        run=Run(id=run_id, conversation_id=conversation_id, spec=run_spec(**spec), status=status),
        messages=messages
        if messages is not None
        else [message("debate tabs vs spaces", client_message_id=f"{run_id}/input", run_id=run_id)],
        events=events if events is not None else [started_event()],
        recent_message_count=recent,
    )
    if new:
        request.conversation.CopyFrom(
            conversation_pb2.Conversation(id=conversation_id, title="tabs", team="duet")
        )
    return request


async def state(stub: UserStub) -> tuple[list[Any], list[Any]]:
    """Everything the caller owns, from the store: conversations (with message counts and
    update times) and run records (with last seqs)."""
    convs = await stub.ListConversations(pb.ListConversationsRequest(page_size=1000))
    runs = await stub.ListRunRecords(pb.ListRunRecordsRequest(page_size=1000))
    return list(convs.conversations), list(runs.runs)


async def events_of(stub: UserStub, run_id: str) -> list[RunEvent]:
    resp = await stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id))
    return list(resp.events)


async def contents(stub: UserStub, conversation_id: str) -> list[str]:
    resp = await stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation_id))
    return [m.content for m in resp.messages]


async def test_one_call_creates_the_conversation_run_input_and_run_started(
    alice: UserStub, backend: str, request: pytest.FixtureRequest
) -> None:
    req = start_request(recent=5)
    req.conversation.metadata["k"] = "v"
    resp = await alice.RecordRunStart(req)
    run_id, conv_id = req.run.id, req.run.conversation_id

    assert resp.created
    run = resp.run
    assert (run.id, run.owner, run.conversation_id) == (run_id, alice.user, conv_id)
    assert run.status == run_pb2.RUN_STATUS_RUNNING and run.start_time.seconds
    assert run.last_seq == 1 and run.spec.template == "duet"
    conv = resp.conversation
    assert (conv.id, conv.owner, conv.title, conv.team) == (conv_id, alice.user, "tabs", "duet")
    assert dict(conv.metadata) == {"k": "v"} and conv.message_count == 1
    assert conv.update_time.ToMicroseconds() > conv.create_time.ToMicroseconds()
    [msg] = resp.messages
    assert (msg.position, msg.conversation_id, msg.run_id) == (1, conv_id, run_id)
    assert msg.id and msg.client_message_id == f"{run_id}/input"
    assert list(resp.recent_messages) == []

    if backend == "postgres":  # in PostgreSQL, and in Redis before any read could fill it
        pg = await asyncpg.connect(request.getfixturevalue("pg_url"))
        try:
            row = await pg.fetchrow(
                "SELECT owner, title, message_count FROM conversations WHERE id = $1", conv_id
            )
            assert tuple(row) == (alice.user, "tabs", 1)
            row = await pg.fetchrow(
                "SELECT conversation_id::text, status, last_seq, event_seq, events_ended "
                "FROM runs WHERE id = $1",
                run_id,
            )
            assert tuple(row) == (conv_id, run_pb2.RUN_STATUS_RUNNING, 1, 1, False)
            rows = await pg.fetch(
                "SELECT position, content, run_id::text FROM messages WHERE conversation_id = $1",
                conv_id,
            )
            assert [tuple(r) for r in rows] == [(1, "debate tabs vs spaces", run_id)]
            rows = await pg.fetch("SELECT seq, kind FROM run_events WHERE run_id = $1", run_id)
            assert [tuple(r) for r in rows] == [(1, "run_started")]
        finally:
            await pg.close()
        r: redis.Redis = request.getfixturevalue("redis_direct")
        prefix: str = request.getfixturevalue("key_prefix")
        raw = await r.get(f"{prefix}conv:{conv_id}")
        assert pb.GetConversationResponse.FromString(raw[VERSION:]).conversation == conv
        raw = await r.get(f"{prefix}run:{run_id}")
        assert Run.FromString(raw[VERSION:]) == run
        entries = await r.xrange(f"{prefix}run:{run_id}:events")
        assert [(e[0], sorted(e[1])) for e in entries] == [(b"1-0", [b"1"])]

    # every other RPC sees it at once (the cached reads included)
    got = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv_id, include_messages=True)
    )
    assert got.conversation == conv and list(got.messages) == [msg]
    assert (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))).run == run
    listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv_id))
    assert list(listed.messages) == [msg]
    [event] = await events_of(alice, run_id)
    assert (event.seq, event.run_id, event.WhichOneof("payload")) == (1, run_id, "run_started")
    runs = await alice.ListRunRecords(pb.ListRunRecordsRequest(conversation_id=conv_id))
    assert list(runs.runs) == [run]


@pytest.mark.parametrize("count", [0, 3])
async def test_a_new_conversation_takes_every_message_and_event_of_the_start(
    alice: UserStub, count: int
) -> None:
    messages = [
        message(
            f"m{i}",
            role=chat_pb2.ROLE_ASSISTANT,
            agent="Ada",
            tool_calls=[chat_pb2.ToolCall(id=f"c{i}", name="search", arguments='{"q":1}')],
            usage=chat_pb2.Usage(input_tokens=i, output_tokens=2),
        )
        for i in range(count)
    ]
    events = [started_event(), *(text_event(seq=2 + i) for i in range(count))]
    req = start_request(messages=messages, events=events[: count + 1] if count else ())
    resp = await alice.RecordRunStart(req)
    conv_id = req.run.conversation_id
    assert resp.conversation.message_count == count and resp.run.last_seq == (
        count + 1 if count else 0
    )
    assert [(m.position, m.content) for m in resp.messages] == [
        (i + 1, f"m{i}") for i in range(count)
    ]
    assert [m.tool_calls[0].id for m in resp.messages] == [f"c{i}" for i in range(count)]
    got = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv_id, include_messages=True)
    )
    assert got.conversation == resp.conversation and list(got.messages) == list(resp.messages)
    assert [m.usage.input_tokens for m in got.messages] == list(range(count))
    stored = await events_of(alice, req.run.id)
    assert [e.seq for e in stored] == ([1, *range(2, count + 2)] if count else [])


async def test_joining_a_conversation_returns_its_latest_messages_oldest_first(
    alice: UserStub,
) -> None:
    conv = await new_conversation(alice)
    await alice.AppendMessages(
        pb.AppendMessagesRequest(
            conversation_id=conv.id, messages=[message(f"m{i}") for i in range(1, 6)]
        )
    )
    # a cached message list is extended by the write-through
    await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    first = await alice.RecordRunStart(start_request(conv.id, new=False, recent=3))
    assert first.created
    assert [m.content for m in first.recent_messages] == ["m3", "m4", "m5"]
    assert [m.position for m in first.recent_messages] == [3, 4, 5]
    assert [m.position for m in first.messages] == [6]
    assert first.conversation.message_count == 6 and first.conversation.title == conv.title
    got = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    assert got.conversation == first.conversation
    assert [m.content for m in got.messages][-2:] == ["m5", "debate tabs vs spaces"]

    # the first run ends; the next one asks for more than there is, and gets all of it
    await alice.RecordRun(
        pb.RecordRunRequest(
            run=Run(id=first.run.id, status=run_pb2.RUN_STATUS_COMPLETED),
            update_mask=FieldMask(paths=["status"]),
        )
    )
    second = await alice.RecordRunStart(
        start_request(conv.id, new=False, recent=1000, messages=(message("again"),))
    )
    assert [m.position for m in second.recent_messages] == [1, 2, 3, 4, 5, 6]
    assert second.recent_messages[-1] == first.messages[0]
    assert [m.position for m in second.messages] == [7]
    assert await contents(alice, conv.id) == [
        *(f"m{i}" for i in range(1, 6)),
        "debate tabs vs spaces",
        "again",
    ]


async def test_a_start_without_messages_or_events_creates_only_the_run(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    resp = await alice.RecordRunStart(
        start_request(conv.id, new=False, messages=(), events=(), recent=10)
    )
    assert resp.created and resp.run.last_seq == 0
    assert resp.conversation == conv and list(resp.messages) == []
    assert list(resp.recent_messages) == []
    assert await events_of(alice, resp.run.id) == []
    got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=resp.run.id))
    assert got.run == resp.run


async def test_a_repeated_request_id_returns_the_first_run_and_writes_nothing(
    alice: UserStub,
) -> None:
    req = start_request(request_id="start-1")
    first = await alice.RecordRunStart(req)
    before = await state(alice)
    # the exact retry…
    again = await alice.RecordRunStart(req)
    assert not again.created and again.run == first.run
    assert not again.HasField("conversation") and not again.messages
    # …and another start with the same key: new ids, another input, more events
    other = start_request(
        request_id="start-1",
        events=(started_event(), text_event(2)),
        messages=(message("other"),),
    )
    resp = await alice.RecordRunStart(other)
    assert not resp.created and resp.run == first.run
    assert await state(alice) == before
    err = await rpc_error(alice.GetRunRecord(pb.GetRunRecordRequest(run_id=other.run.id)))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert await contents(alice, req.run.conversation_id) == ["debate tabs vs spaces"]
    assert [e.seq for e in await events_of(alice, req.run.id)] == [1]


async def test_concurrent_starts_of_one_request_create_one_run(alice: UserStub) -> None:
    req = start_request(request_id="racing")
    results = await asyncio.gather(*(alice.RecordRunStart(req) for _ in range(5)))
    assert sorted(r.created for r in results) == [False, False, False, False, True]
    assert {r.run.id for r in results} == {req.run.id}
    convs, runs = await state(alice)
    assert [c.message_count for c in convs] == [1] and [r.id for r in runs] == [req.run.id]


async def test_a_busy_conversation_is_aborted_and_nothing_is_written(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    active = await new_run(alice, conv.id, status=run_pb2.RUN_STATUS_RUNNING)
    before = await state(alice)
    for status in (run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_QUEUED):
        req = start_request(conv.id, new=False, status=status, recent=5)
        err = await rpc_error(alice.RecordRunStart(req))
        assert err.code == grpc.StatusCode.ABORTED and err.reason == "CONVERSATION_BUSY"
        assert err.metadata["active_run_id"] == active.id
        err = await rpc_error(alice.GetRunRecord(pb.GetRunRecordRequest(run_id=req.run.id)))
        assert err.code == grpc.StatusCode.NOT_FOUND
    assert await state(alice) == before
    assert await contents(alice, conv.id) == []
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation == conv


async def test_concurrent_starts_in_one_conversation_let_one_run_in(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    reqs = [start_request(conv.id, new=False) for _ in range(4)]
    results = await asyncio.gather(*(alice.RecordRunStart(r) for r in reqs), return_exceptions=True)
    won = [r for r in results if isinstance(r, pb.RecordRunStartResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 3
    assert {e.code() for e in lost} == {grpc.StatusCode.ABORTED}
    assert await contents(alice, conv.id) == ["debate tabs vs spaces"]
    _, runs = await state(alice)
    assert [r.id for r in runs] == [won[0].run.id]


async def test_another_users_or_a_missing_conversation_is_not_found(
    alice: UserStub, bob: UserStub
) -> None:
    bobs = await new_conversation(bob)
    bob_before = await state(bob)
    for conversation_id in (bobs.id, str(uuid.uuid4())):
        err = await rpc_error(alice.RecordRunStart(start_request(conversation_id, new=False)))
        assert err.code == grpc.StatusCode.NOT_FOUND and conversation_id in err.message
    assert await state(alice) == ([], [])
    assert await state(bob) == bob_before


async def test_an_existing_run_or_conversation_id_already_exists(
    alice: UserStub, bob: UserStub
) -> None:
    conv = await new_conversation(alice)
    run = await new_run(alice, status=run_pb2.RUN_STATUS_COMPLETED)
    bobs = await new_conversation(bob)
    before, bob_before = await state(alice), await state(bob)
    fresh = str(uuid.uuid4())
    cases = [
        (start_request(fresh, run_id=run.id), "run_id"),  # a new conversation, a used run id
        (start_request(conv.id, new=False, run_id=run.id), "run_id"),
        (start_request(conv.id), "conversation_id"),  # the caller's own conversation
        (start_request(bobs.id), "conversation_id"),  # another user's
    ]
    for req, key in cases:
        err = await rpc_error(alice.RecordRunStart(req))
        assert err.code == grpc.StatusCode.ALREADY_EXISTS, req
        assert key in err.metadata
    assert await state(alice) == before and await state(bob) == bob_before
    err = await rpc_error(alice.GetConversation(pb.GetConversationRequest(conversation_id=fresh)))
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_the_live_log_carries_run_started_to_watchers(
    history: History, alice: UserStub
) -> None:
    req = start_request()
    run_id = req.run.id
    # WatchRunEvents of a run that does not exist yet is NOT_FOUND, so the watcher of the
    # call's events is the live log subscription every WatchRunEvents reads, opened first
    async with history.app.event_log.subscribe(run_id) as sub:
        await alice.RecordRunStart(req)
        live = await wait_for(lambda: sub.read(0, 1.0), timeout=10)
    assert [seq for seq, _ in live] == [1]
    assert RunEvent.FromString(live[0][1]).WhichOneof("payload") == "run_started"

    seen: list[RunEvent] = []

    async def watch() -> None:
        async for item in alice.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run_id)):
            seen.append(item.event)

    task = asyncio.create_task(watch())
    await wait_for(lambda: len(seen) == 1)
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(run_id=run_id, events=[text_event(2), completed_event(3)])
    )
    await asyncio.wait_for(task, 10)
    assert [(e.seq, e.WhichOneof("payload")) for e in seen] == [
        (1, "run_started"),
        (2, "text_delta"),
        (3, "run_completed"),
    ]


Mutation = Callable[[pb.RecordRunStartRequest], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(req: pb.RecordRunStartRequest) -> None:
        *parents, name = path.split(".")
        target: Any = req
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return apply


def _events(*events: RunEvent) -> Mutation:
    def apply(req: pb.RecordRunStartRequest) -> None:
        del req.events[:]
        req.events.extend(events)

    return apply


def _messages(*messages: conversation_pb2.Message) -> Mutation:
    def apply(req: pb.RecordRunStartRequest) -> None:
        del req.messages[:]
        req.messages.extend(messages)

    return apply


BAD: list[tuple[str, Mutation, set[str]]] = [
    ("no run id", _set("run.id", ""), {"run.id"}),
    ("run id not a UUID", _set("run.id", "run-1"), {"run.id"}),
    ("no conversation id", _set("run.conversation_id", ""), {"run.conversation_id"}),
    ("conversation id not a UUID", _set("run.conversation_id", "c"), {"run.conversation_id"}),
    ("no spec", lambda r: r.run.ClearField("spec"), {"run.spec"}),
    ("input too big", _set("run.spec.input", "i" * 65537), {"run.spec.input"}),
    ("request id too long", _set("run.spec.request_id", "r" * 129), {"run.spec.request_id"}),
    ("negative max turns", _set("run.spec.max_turns", -1), {"run.spec.max_turns"}),
    ("unknown status", _set("run.status", 99), {"run.status"}),
    ("negative turns", _set("run.turns", -1), {"run.turns"}),
    ("new conversation without id", _set("conversation.id", ""), {"conversation.id"}),
    (
        "new conversation, another id",
        _set("conversation.id", str(uuid.uuid4())),
        {"conversation.id"},
    ),
    ("title too long", _set("conversation.title", "t" * 501), {"conversation.title"}),
    ("101 messages", _messages(*(message() for _ in range(101))), {"messages"}),
    (
        "empty message",
        _messages(
            message(""),
        ),
        {"messages[0].content"},
    ),
    ("message without role", _messages(message(role=0)), {"messages[0].role"}),
    ("message run id not a UUID", _messages(message(run_id="r")), {"messages[0].run_id"}),
    (
        "client message id repeated",
        _messages(message(client_message_id="a"), message(client_message_id="a")),
        {"messages[1].client_message_id"},
    ),
    ("events from seq 2", _events(started_event(2), text_event(3)), {"events[0].seq"}),
    ("events from seq 0", _events(started_event(0)), {"events[0].seq"}),
    ("first event not run_started", _events(text_event(1)), {"events[0]"}),
    ("event without payload", _events(RunEvent(seq=1)), {"events[0]"}),
    ("a gap", _events(started_event(), text_event(3)), {"events[1].seq"}),
    (
        "terminal event not last",
        _events(started_event(), completed_event(2), text_event(3)),
        {"events[1]"},
    ),
    (
        "event of another run",
        _events(started_event(run_id=str(uuid.uuid4()))),
        {"events[0].run_id"},
    ),
    ("1001 events", _events(started_event(), *(text_event(i) for i in range(2, 1002))), {"events"}),
    ("negative recent count", _set("recent_message_count", -1), {"recent_message_count"}),
    ("recent count over 1000", _set("recent_message_count", 1001), {"recent_message_count"}),
]


async def test_bad_requests_are_invalid_name_the_field_and_write_nothing(
    alice: UserStub,
) -> None:
    conv = await new_conversation(alice)
    before = await state(alice)
    for name, mutate, fields in BAD:
        for joining in (False, True):
            if joining and name.startswith(("new conversation", "title")):
                continue
            req = start_request(conv.id, new=False) if joining else start_request()
            mutate(req)
            err = await rpc_error(alice.RecordRunStart(req))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT, name
            assert fields_of(err) == fields, name
    # every problem of one request at once
    req = start_request()
    mutations = {name: mutate for name, mutate, _ in BAD}
    for name in (
        "run id not a UUID",
        "input too big",
        "new conversation, another id",
        "empty message",
        "events from seq 2",
        "negative recent count",
    ):
        mutations[name](req)
    err = await rpc_error(alice.RecordRunStart(req))
    assert fields_of(err) == {
        "run.id",
        "run.spec.input",
        "conversation.id",
        "messages[0].content",
        "events[0].seq",
        "recent_message_count",
    }
    assert await state(alice) == before


async def test_postgres_unreachable_is_unavailable_and_writes_nothing(
    pg_url: str, proxy: TcpProxy
) -> None:
    parts = urlsplit(pg_url)
    via_proxy = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    settings = make_settings(database_url=via_proxy, db_connect_timeout_s=1, db_command_timeout_s=2)
    async with running_history(settings) as h:
        alice = h.as_user(f"start-outage-{uuid.uuid4().hex[:8]}")
        health = health_pb2_grpc.HealthStub(h.channel)

        async def serving() -> bool:
            resp = await health.Check(
                health_pb2.HealthCheckRequest(service="chorus.v1.HistoryService")
            )
            return resp.status == health_pb2.HealthCheckResponse.SERVING

        req = start_request()
        await proxy.cut()
        err = await rpc_error(alice.RecordRunStart(req))
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "DATABASE_UNAVAILABLE"
        await proxy.restore()
        await wait_for(serving)
        assert await state(alice) == ([], [])
        resp = await alice.RecordRunStart(req)  # the retry is a first start
        assert resp.created and resp.conversation.message_count == 1


def _write_failures() -> float:
    return REGISTRY.get_sample_value("chorus_history_cache_write_failures_total") or 0.0


async def test_with_redis_down_a_start_succeeds_and_reads_come_from_postgres(
    pg_url: str, private_redis: RedisServer
) -> None:
    settings = make_settings(
        database_url=pg_url,
        redis_url=private_redis.url,
        redis_key_prefix="chorus-start-outage:",
        redis_retry_after_s=0.2,
        redis_socket_timeout_s=0.5,
    )
    async with running_history(settings) as h:
        alice = h.as_user(f"start-redis-{uuid.uuid4().hex[:8]}")
        conv = await new_conversation(alice)
        await alice.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
        )
        failures = _write_failures()
        private_redis.kill()
        resp = await alice.RecordRunStart(start_request(conv.id, new=False))
        assert resp.created
        assert _write_failures() > failures
        got = await alice.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
        )
        assert got.conversation == resp.conversation and list(got.messages) == list(resp.messages)
        assert (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=resp.run.id))).run == (
            resp.run
        )
        assert [e.seq for e in await events_of(alice, resp.run.id)] == [1]
