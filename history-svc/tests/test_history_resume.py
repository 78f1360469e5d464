"""Resume property across replicas: two history-svc processes share PostgreSQL and Redis;
one appends, the other watches. For any events and any split point, replay after that seq
followed by the live tail is exactly the remaining events — no gap, no duplicate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import pytest
from history_helpers import (
    REDIS_HOST,
    REDIS_PORT,
    UserStub,
    completed_event,
    env_for,
    make_settings,
    new_run,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.core.testing import ServiceProcess, require_service
from chorus.v1 import history_service_pb2 as pb
from chorus.v1 import run_pb2

RunEvent = run_pb2.RunEvent


@pytest.fixture(scope="module")
def replicas(pg_url: str) -> Iterator[tuple[str, str]]:
    """Addresses of two history-svc processes on the same PostgreSQL database and Redis."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"chorus-test:{uuid.uuid4().hex[:12]}:"
    env = env_for(
        make_settings(
            database_url=pg_url,
            redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
            redis_key_prefix=prefix,
        )
    )
    with (
        ServiceProcess("chorus.history", env=env) as a,
        ServiceProcess("chorus.history", env=env) as b,
    ):
        assert a.address and b.address
        yield a.address, b.address
    import redis as sync_redis

    client = sync_redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def event(seq: int, kind: str, n: int) -> RunEvent:
    if kind == "text":
        return RunEvent(seq=seq, agent="writer", text_delta=RunEvent.TextDelta(text=f"t{n}"))
    if kind == "reasoning":
        return RunEvent(seq=seq, reasoning_delta=RunEvent.ReasoningDelta(text=f"r{n}"))
    if kind == "progress":
        return RunEvent(seq=seq, progress=RunEvent.Progress(turn=n, max_turns=99))
    return RunEvent(seq=seq, agent="writer", agent_started=RunEvent.AgentStarted(turn=n))


def chunks(items: list[RunEvent], sizes: list[int]) -> Iterator[list[RunEvent]]:
    i = 0
    k = 0
    while i < len(items):
        size = sizes[k % len(sizes)]
        yield items[i : i + size]
        i += size
        k += 1


async def scenario(
    addresses: tuple[str, str],
    kinds: list[tuple[str, int]],
    split: int,
    after: int,
    sizes: list[int],
) -> None:
    events = [event(i, kind, n) for i, (kind, n) in enumerate(kinds, 1)]
    events.append(completed_event(len(events) + 1))
    user = f"resume-{uuid.uuid4().hex[:8]}"
    async with (
        grpc.aio.insecure_channel(addresses[0]) as ch_a,
        grpc.aio.insecure_channel(addresses[1]) as ch_b,
    ):
        appender, watcher = UserStub(ch_a, user), UserStub(ch_b, user)
        run = await new_run(appender)
        for batch in chunks(events[:split], sizes):
            await appender.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=batch))
        call = watcher.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run.id, after_seq=after))

        async def collect() -> list[RunEvent]:
            return [item.event async for item in call]

        watching = asyncio.create_task(collect())
        for batch in chunks(events[split:], sizes):
            await appender.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=batch))
        received = await asyncio.wait_for(watching, 20)
    expected = events[after:]
    for e in expected:
        e.run_id = run.id
    assert [e.seq for e in received] == [e.seq for e in expected]
    assert received == expected


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[tuple[str, int]], int, int, list[int]]:
    kinds = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["text", "reasoning", "progress", "agent"]), st.integers(0, 999)
            ),
            min_size=0,
            max_size=40,
        )
    )
    total = len(kinds) + 1
    split = draw(st.integers(0, total))
    after = draw(st.integers(0, total))
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=5))
    return kinds, split, after, sizes


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_replay_then_live_tail_equals_the_remaining_events_across_replicas(
    replicas: tuple[str, str], case: tuple[list[tuple[str, int]], int, int, list[int]]
) -> None:
    kinds, split, after, sizes = case
    asyncio.run(scenario(replicas, kinds, split, after, sizes))
