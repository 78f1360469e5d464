"""Outages: Redis unreachable (a private redis-server the test kills) and PostgreSQL
unreachable (a TCP proxy the test cuts) — never the machine's shared servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from history_helpers import (
    History,
    RedisServer,
    TcpProxy,
    completed_event,
    make_settings,
    message,
    new_conversation,
    new_run,
    rpc_error,
    running_history,
    text_event,
)
from prometheus_client import REGISTRY

from chorus.core.settings import ConfigurationError
from chorus.core.testing import free_port, wait_for
from chorus.history.app import build_app
from chorus.v1 import conversation_pb2
from chorus.v1 import history_service_pb2 as pb


def _write_failures() -> float:
    return REGISTRY.get_sample_value("chorus_history_cache_write_failures_total") or 0.0


@pytest.fixture
async def on_private_redis(pg_url: str, private_redis: RedisServer) -> AsyncIterator[History]:
    settings = make_settings(
        database_url=pg_url,
        redis_url=private_redis.url,
        redis_key_prefix="chorus-outage:",
        redis_retry_after_s=0.2,
        redis_socket_timeout_s=0.5,
        watch_degraded_poll_s=0.05,
    )
    async with running_history(settings) as h:
        yield h


async def test_with_redis_down_writes_succeed_and_reads_come_from_postgres_until_it_returns(
    on_private_redis: History, private_redis: RedisServer
) -> None:
    alice = on_private_redis.as_user("outage-alice")
    conv = await new_conversation(alice, "before")
    await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    failures = _write_failures()
    private_redis.kill()

    await alice.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=conversation_pb2.Conversation(id=conv.id, title="during"),
            update_mask=FieldMask(paths=["title"]),
        )
    )
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("m")])
    )
    run = await new_run(alice, conv.id)
    await alice.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1)]))
    got = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    assert got.conversation.title == "during" and [m.content for m in got.messages] == ["m"]
    assert (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))).run.last_seq == 1
    assert _write_failures() > failures

    # Redis comes back (empty, on the same port): the cache fills again
    await private_redis.start()
    direct = redis.Redis.from_url(private_redis.url)
    key = f"chorus-outage:conv:{conv.id}"

    async def cached_again() -> bool:
        await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
        return bool(await direct.exists(key))

    try:
        await wait_for(cached_again, timeout=10, interval=0.05)
    finally:
        await direct.aclose()


async def test_a_watcher_keeps_receiving_through_a_redis_outage(
    on_private_redis: History, private_redis: RedisServer
) -> None:
    alice = on_private_redis.as_user("outage-watcher")
    run = await new_run(alice)
    seen: list[int] = []

    async def watch() -> None:
        async for item in alice.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run.id)):
            seen.append(item.event.seq)

    task = asyncio.create_task(watch())
    await alice.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1)]))
    await wait_for(lambda: seen == [1])
    private_redis.kill()
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(2), text_event(3)])
    )
    await wait_for(lambda: seen == [1, 2, 3])
    await private_redis.start()
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(4), completed_event(5)])
    )
    await asyncio.wait_for(task, 10)
    assert seen == [1, 2, 3, 4, 5]


async def test_postgres_unreachable_is_unavailable_and_not_serving_until_it_is_back(
    pg_url: str, proxy: TcpProxy
) -> None:
    parts = urlsplit(pg_url)
    via_proxy = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    settings = make_settings(database_url=via_proxy, db_connect_timeout_s=1, db_command_timeout_s=2)
    async with running_history(settings) as h:
        alice = h.as_user("outage-db")
        health = health_pb2_grpc.HealthStub(h.channel)

        async def status() -> int:
            resp = await health.Check(
                health_pb2.HealthCheckRequest(service="chorus.v1.HistoryService")
            )
            return int(resp.status)

        async def serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.SERVING

        async def not_serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

        await new_conversation(alice)
        assert await serving()

        await proxy.cut()
        err = await rpc_error(alice.ListConversations(pb.ListConversationsRequest()))
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "DATABASE_UNAVAILABLE"
        assert "database is unreachable" in err.message
        await wait_for(not_serving)
        err = await rpc_error(new_conversation(alice))
        assert err.code == grpc.StatusCode.UNAVAILABLE

        await proxy.restore()
        await wait_for(serving)
        listed = await alice.ListConversations(pb.ListConversationsRequest())
        assert len(listed.conversations) == 1


async def test_start_fails_clearly_when_the_database_never_answers() -> None:
    settings = make_settings(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        db_startup_timeout_s=0.3,
        migrate_on_start=True,
    )
    with pytest.raises(ConfigurationError, match="cannot open the PostgreSQL database"):
        await build_app(settings)


def _redis_errors() -> float:
    return sum(
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "chorus_history_redis_errors"
        for s in metric.samples
        if s.name == "chorus_history_redis_errors_total"
    )


async def test_a_burst_beyond_the_redis_pool_waits_for_a_connection_instead_of_failing(
    pg_url: str, private_redis: RedisServer
) -> None:
    settings = make_settings(
        database_url=pg_url,
        redis_url=private_redis.url,
        redis_key_prefix="chorus-pool:",
        redis_max_connections=2,
    )
    async with running_history(settings) as h:
        alice = h.as_user("alice-pool")
        runs = [await new_run(alice) for _ in range(20)]
        before = _redis_errors()
        await asyncio.gather(
            *(
                alice.AppendRunEvents(
                    pb.AppendRunEventsRequest(run_id=r.id, events=[text_event(1)])
                )
                for r in runs
            )
        )
        assert _redis_errors() == before  # 20 concurrent calls shared 2 connections
