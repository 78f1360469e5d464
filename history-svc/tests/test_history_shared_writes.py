"""The Redis writes that follow the answer (issue 19): a run start in a new conversation,
AppendRunEvents of events alone and AppendRunEventBatches answer once PostgreSQL committed,
and their live-log entries and cached values then go to Redis in one round trip. A watcher
on another replica still gets every event in order, the cached values catch up, and a Redis
cut while those writes are under way loses nothing (a private redis-server the test kills).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as redis
from history_helpers import (
    CACHE_VERSION_CHARS,
    History,
    RedisServer,
    UserStub,
    completed_event,
    make_settings,
    message,
    run_spec,
    running_history,
    text_event,
)

from chorus.core.testing import wait_for
from chorus.history.settings import Settings
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

Batch = pb.AppendRunEventsRequest


@pytest.fixture
def shared_settings(pg_url: str, private_redis: RedisServer) -> Settings:
    return make_settings(
        database_url=pg_url,
        redis_url=private_redis.url,
        redis_key_prefix=f"chorus-shared-{uuid.uuid4().hex[:8]}:",
        redis_retry_after_s=0.2,
        redis_socket_timeout_s=0.5,
        watch_degraded_poll_s=0.05,
    )


@pytest.fixture
async def replicas(shared_settings: Settings) -> AsyncIterator[tuple[History, History]]:
    """Two history-svc replicas on one database and one Redis."""
    async with running_history(shared_settings) as one, running_history(shared_settings) as two:
        yield one, two


async def start_run(stub: UserStub) -> pb.RecordRunStartResponse:
    """RecordRunStart in a new conversation (PostgreSQL: one statement), `run_started` at 1."""
    conversation_id = str(uuid.uuid4())
    return await stub.RecordRunStart(
        pb.RecordRunStartRequest(
            conversation=conversation_pb2.Conversation(id=conversation_id, title="shared"),
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation_id,
                spec=run_spec(),
                status=run_pb2.RUN_STATUS_RUNNING,
            ),
            messages=[message("hi")],
            events=[run_pb2.RunEvent(seq=1, run_started=run_pb2.RunEvent.RunStarted())],
        )
    )


async def cached(settings: Settings, key: str) -> bytes | None:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        value = await client.get(f"{settings.redis_key_prefix}{key}")
    finally:
        await client.aclose()
    return value if isinstance(value, bytes) else None


async def cached_last_seq(settings: Settings, run_id: str) -> int | None:
    raw = await cached(settings, f"run:{run_id}")
    return None if raw is None else run_pb2.Run.FromString(raw[CACHE_VERSION_CHARS:]).last_seq


def watching(stub: UserStub, run_id: str, seen: list[int]) -> asyncio.Task[None]:
    async def watch() -> None:
        async for item in stub.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run_id)):
            seen.append(item.event.seq)

    return asyncio.create_task(watch())


async def append_batches(stub: UserStub, *batches: tuple[str, Sequence[int]]) -> None:
    resp = await stub.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[
                Batch(run_id=run_id, events=[text_event(s) for s in seqs], lease_epoch=1)
                for run_id, seqs in batches
            ]
        )
    )
    assert not any(r.HasField("error") for r in resp.results)


async def test_writes_answered_before_redis_reach_a_watcher_on_another_replica(
    replicas: tuple[History, History], shared_settings: Settings
) -> None:
    one, two = replicas
    writer, reader = one.as_user("shared-alice"), two.as_user("shared-alice")
    first, second = await start_run(writer), await start_run(writer)
    seen: dict[str, list[int]] = {first.run.id: [], second.run.id: []}
    tasks = [watching(reader, run_id, got) for run_id, got in seen.items()]
    await wait_for(lambda: all(got == [1] for got in seen.values()))

    # Events alone (one statement, Redis after the answer), then both runs in one
    # AppendRunEventBatches call (log entries and cached records in one round trip).
    await writer.AppendRunEvents(
        Batch(run_id=first.run.id, events=[text_event(2), text_event(3)], lease_epoch=1)
    )
    await append_batches(writer, (first.run.id, [4, 5]), (second.run.id, [2]))
    await append_batches(writer, (first.run.id, [6]), (second.run.id, [3, 4]))
    # The end: terminal event and final record together (cache written before the answer).
    end = await writer.AppendRunEvents(
        Batch(
            run_id=first.run.id,
            events=[completed_event(7)],
            lease_epoch=1,
            run=run_pb2.Run(status=run_pb2.RUN_STATUS_COMPLETED, final_answer="done"),
            update_mask={"paths": ["status", "final_answer"]},
        )
    )
    assert end.run.status == run_pb2.RUN_STATUS_COMPLETED
    await asyncio.wait_for(tasks[0], 10)  # the watch ends after the terminal event
    assert seen[first.run.id] == [1, 2, 3, 4, 5, 6, 7]
    await wait_for(lambda: seen[second.run.id] == [1, 2, 3, 4])
    tasks[1].cancel()

    # The cached values caught up: records at their last seq, the new conversation cached.
    await one.app.servicer.drain()
    assert await cached_last_seq(shared_settings, first.run.id) == 7
    assert await cached_last_seq(shared_settings, second.run.id) == 4
    record = await reader.GetRunRecord(pb.GetRunRecordRequest(run_id=first.run.id))
    assert record.run == end.run
    assert await cached(shared_settings, f"conv:{first.conversation.id}") is not None
    got = await reader.GetConversation(
        pb.GetConversationRequest(conversation_id=first.conversation.id, include_messages=True)
    )
    assert got.conversation == first.conversation
    assert [m.content for m in got.messages] == ["hi"]


async def test_a_redis_cut_during_the_writes_after_the_answer_loses_nothing(
    replicas: tuple[History, History], shared_settings: Settings, private_redis: RedisServer
) -> None:
    one, two = replicas
    writer, reader = one.as_user("shared-bob"), two.as_user("shared-bob")
    run = (await start_run(writer)).run
    seen: list[int] = []
    task = watching(reader, run.id, seen)
    await wait_for(lambda: seen == [1])
    await writer.AppendRunEvents(Batch(run_id=run.id, events=[text_event(2)], lease_epoch=1))
    await wait_for(lambda: seen == [1, 2])

    # Redis dies right after the answers, while their writes are queued or under way.
    await append_batches(writer, (run.id, [3]))
    await writer.AppendRunEvents(Batch(run_id=run.id, events=[text_event(4)], lease_epoch=1))
    private_redis.kill()
    await append_batches(writer, (run.id, [5, 6]))
    started_during = await start_run(writer)  # its writes after the answer fail too
    await one.app.servicer.drain()  # none of them raises
    await wait_for(lambda: seen == [1, 2, 3, 4, 5, 6])  # from the store meanwhile

    # Redis is back (empty): nothing stale is served, the log wakes the watcher again.
    await private_redis.start()
    await writer.AppendRunEvents(
        Batch(run_id=run.id, events=[text_event(7), completed_event(8)], lease_epoch=1)
    )
    await asyncio.wait_for(task, 10)
    assert seen == [1, 2, 3, 4, 5, 6, 7, 8]
    for stub in (writer, reader):
        got = await stub.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
        assert got.run.last_seq == 8
        other = await stub.GetRunRecord(pb.GetRunRecordRequest(run_id=started_during.run.id))
        assert other.run == started_during.run


async def test_scripts_redis_lost_are_loaded_again(
    replicas: tuple[History, History], shared_settings: Settings, private_redis: RedisServer
) -> None:
    """The pipelines send the Lua scripts as bare EVALSHA (no SCRIPT EXISTS round trip per
    call): when Redis lost them (SCRIPT FLUSH here; a restart does the same), the write
    that hit NOSCRIPT is dropped like any failed Redis write and the next ones load them."""
    one, two = replicas
    writer, reader = one.as_user("shared-carol"), two.as_user("shared-carol")
    run = (await start_run(writer)).run
    seen: list[int] = []
    task = watching(reader, run.id, seen)
    await append_batches(writer, (run.id, [2]))
    await wait_for(lambda: seen == [1, 2])
    direct = redis.Redis.from_url(private_redis.url)
    await direct.script_flush()
    seq = 2

    async def advanced() -> bool:
        # a fill (a direct script call, which loads its script itself), then a batch whose
        # log entry and cache advance go through the pipeline
        nonlocal seq
        await reader.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
        seq += 1
        await append_batches(writer, (run.id, [seq]))
        await one.app.servicer.drain()
        last = await direct.xrevrange(
            f"{shared_settings.redis_key_prefix}run:{run.id}:events", count=1
        )
        return (
            bool(last)
            and last[0][0] == f"{seq}-0".encode()
            and (await cached_last_seq(shared_settings, run.id) == seq)
        )

    try:
        await wait_for(advanced, timeout=10, interval=0.3)  # past the failure's retry pause
    finally:
        await direct.aclose()
    await wait_for(lambda: seen == list(range(1, seq + 1)))
    task.cancel()
