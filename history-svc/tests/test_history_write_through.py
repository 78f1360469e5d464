"""PostgreSQL + Redis: write-through and cache-aside, proven by reading both directly."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as redis
from google.protobuf.field_mask_pb2 import FieldMask
from history_helpers import (
    History,
    message,
    new_conversation,
    new_run,
    text_event,
)

from chorus.core.testing import wait_for
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

VERSION = 40  # chars of the version prefix of cached values
TOMBSTONE = b"9" * VERSION


async def cached_conversation(
    r: redis.Redis, prefix: str, conv_id: str
) -> conversation_pb2.Conversation | None:
    raw = await r.get(f"{prefix}conv:{conv_id}")
    if raw is None:
        return None
    return pb.GetConversationResponse.FromString(raw[VERSION:]).conversation


async def test_writes_reach_postgres_first_and_redis_right_after(
    pg_history: History, pg: asyncpg.Connection, redis_direct: redis.Redis, key_prefix: str
) -> None:
    alice = pg_history.as_user("wt-alice")
    conv = await new_conversation(alice, "first")
    row = await pg.fetchrow("SELECT owner, title FROM conversations WHERE id = $1", conv.id)
    assert tuple(row) == ("wt-alice", "first")
    assert await cached_conversation(redis_direct, key_prefix, conv.id) == conv

    updated = (
        await alice.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=conversation_pb2.Conversation(id=conv.id, title="second"),
                update_mask=FieldMask(paths=["title"]),
            )
        )
    ).conversation
    assert await pg.fetchval("SELECT title FROM conversations WHERE id = $1", conv.id) == "second"
    assert await cached_conversation(redis_direct, key_prefix, conv.id) == updated

    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("1")])
    )
    await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("2")])
    )
    rows = await pg.fetch(
        "SELECT position, content FROM messages WHERE conversation_id = $1 ORDER BY position",
        conv.id,
    )
    assert [tuple(r) for r in rows] == [(1, "1"), (2, "2")]
    listed = await redis_direct.get(f"{key_prefix}conv:{conv.id}:msgs")
    assert [m.content for m in pb.GetConversationResponse.FromString(listed).messages] == ["1", "2"]
    cached = await cached_conversation(redis_direct, key_prefix, conv.id)
    assert cached is not None and cached.message_count == 2

    run = await new_run(alice, conv.id)
    raw = await redis_direct.get(f"{key_prefix}run:{run.id}")
    assert run_pb2.Run.FromString(raw[VERSION:]) == run
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1), text_event(2)])
    )
    assert await pg.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", run.id) == 2
    assert await pg.fetchval("SELECT last_seq FROM runs WHERE id = $1", run.id) == 2
    entries = await redis_direct.xrange(f"{key_prefix}run:{run.id}:events")
    assert [(e[0], sorted(e[1])) for e in entries] == [(b"2-0", [b"1", b"2"])]
    raw = await redis_direct.get(f"{key_prefix}run:{run.id}")
    assert run_pb2.Run.FromString(raw[VERSION:]).last_seq == 2

    await alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id))
    assert await pg.fetchval("SELECT count(*) FROM conversations WHERE id = $1", conv.id) == 0
    assert (
        await pg.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conv.id) == 0
    )
    assert await redis_direct.get(f"{key_prefix}conv:{conv.id}") == TOMBSTONE
    assert not await redis_direct.exists(f"{key_prefix}conv:{conv.id}:msgs")


async def test_reads_are_served_from_redis_and_fill_it_on_a_miss(
    pg_history: History, pg: asyncpg.Connection, redis_direct: redis.Redis, key_prefix: str
) -> None:
    alice = pg_history.as_user("wt-reader")
    conv = await new_conversation(alice, "cached title")
    # change the row behind the service's back: a cached read does not see it…
    await pg.execute("UPDATE conversations SET title = 'from postgres' WHERE id = $1", conv.id)
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.title == "cached title"
    # …a miss reads PostgreSQL and fills Redis
    await redis_direct.delete(f"{key_prefix}conv:{conv.id}")
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.title == "from postgres"
    cached = await cached_conversation(redis_direct, key_prefix, conv.id)
    assert cached is not None and cached.title == "from postgres"


async def test_an_older_value_never_replaces_a_newer_cached_one(
    pg_history: History, redis_direct: redis.Redis, key_prefix: str
) -> None:
    alice = pg_history.as_user("wt-versions")
    conv = await new_conversation(alice, "v1")
    newer = (
        await alice.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=conversation_pb2.Conversation(id=conv.id, title="v2"),
                update_mask=FieldMask(paths=["title"]),
            )
        )
    ).conversation
    await pg_history.app.cache.put_conversation(conv)  # a late cache fill with the old row
    assert await cached_conversation(redis_direct, key_prefix, conv.id) == newer


async def test_events_trimmed_from_redis_are_replayed_from_postgres(
    pg_history: History, redis_direct: redis.Redis, key_prefix: str
) -> None:
    alice = pg_history.as_user("wt-trim")
    run = await new_run(alice)
    for seq in range(1, 31):
        await alice.AppendRunEvents(
            pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(seq)])
        )
    key = f"{key_prefix}run:{run.id}:events"
    await redis_direct.xtrim(key, maxlen=5, approximate=False)  # as retention would
    assert await redis_direct.xlen(key) == 5
    seen: list[int] = []

    async def watch() -> None:
        async for item in alice.WatchRunEvents(
            pb.WatchRunEventsRequest(run_id=run.id, after_seq=3)
        ):
            seen.append(item.event.seq)

    task = asyncio.create_task(watch())
    try:
        await wait_for(lambda: len(seen) == 27)
    finally:
        task.cancel()
    assert seen == list(range(4, 31))


async def test_a_flush_of_many_runs_caches_every_record_and_never_an_older_one(
    pg_history: History,
    redis_direct: redis.Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chorus.history import cache

    monkeypatch.setattr(cache, "_MANY_KEYS", 2)  # 5 runs: script calls of 2, 2 and 1 keys
    alice = pg_history.as_user("wt-flush")
    runs = [await new_run(alice) for _ in range(5)]
    # run 1's cached value is newer than anything this flush writes (a tombstone)
    await redis_direct.set(f"{key_prefix}run:{runs[1].id}", TOMBSTONE)
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[
                pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1), text_event(2)])
                for run in runs
            ]
        )
    )
    assert [r.last_seq for r in resp.results] == [2] * 5
    await pg_history.app.servicer.drain()  # the Redis writes follow the answer
    for i, run in enumerate(runs):
        key = f"{key_prefix}run:{run.id}"
        raw = await redis_direct.get(key)
        if i == 1:
            assert raw == TOMBSTONE
            continue
        cached = run_pb2.Run.FromString(raw[VERSION:])
        assert (cached.id, cached.last_seq) == (run.id, 2)
        assert cached.update_time.ToMicroseconds() >= run.update_time.ToMicroseconds()
        assert 0 < await redis_direct.pttl(key) <= pg_history.app.settings.cache_ttl_s * 1000


async def test_a_flush_of_many_runs_adds_every_runs_entry_and_counts_a_refused_one(
    pg_history: History,
    pg: asyncpg.Connection,
    redis_direct: redis.Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chorus.history import event_log, metrics

    # 5 small batches: script calls of 2, 2 and 1 runs; the 3-event batch goes on its own
    monkeypatch.setattr(event_log, "_MANY_RUNS", 2)
    monkeypatch.setattr(event_log, "_MANY_EVENTS", 2)
    alice = pg_history.as_user("wt-publish")
    runs = [await new_run(alice) for _ in range(7)]
    # run 1's stream is already past what this flush adds (as if a later batch got there
    # first): its entry is refused, counted, and the others are added all the same
    await redis_direct.xadd(f"{key_prefix}run:{runs[1].id}:events", {"9": b"x"}, id="9-0")
    sizes = [2, 2, 2, 2, 2, 3, 1]
    failures = metrics.EVENT_LOG_PUBLISH_FAILURES._value.get()
    resp = await alice.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[
                pb.AppendRunEventsRequest(
                    run_id=run.id, events=[text_event(seq, f"t{seq}") for seq in range(1, n + 1)]
                )
                for run, n in zip(runs, sizes, strict=True)
            ]
        )
    )
    assert [r.last_seq for r in resp.results] == sizes
    await pg_history.app.servicer.drain()  # the Redis writes follow the answer
    assert metrics.EVENT_LOG_PUBLISH_FAILURES._value.get() == failures + 1
    for i, (run, n) in enumerate(zip(runs, sizes, strict=True)):
        key = f"{key_prefix}run:{run.id}:events"
        entries = await redis_direct.xrange(key)
        if i == 1:
            assert [e[0] for e in entries] == [b"9-0"]
        else:
            assert [e[0] for e in entries] == [f"{n}-0".encode()]
            fields = entries[0][1]
            assert sorted(fields) == [str(seq).encode() for seq in range(1, n + 1)]
            assert run_pb2.RunEvent.FromString(fields[b"1"]).text_delta.text == "t1"
            assert 0 < await redis_direct.pttl(key) <= 86_400_000
        # the store has every batch, the refused one included (watchers read it from there)
        assert await pg.fetchval("SELECT last_seq FROM runs WHERE id = $1", run.id) == n
