"""The group flush of committed calls' Redis writes (`chorus.history.shared`, issue 19):
concurrent calls share one round trip, each gets its own answer (or its own error), the
calls that wait for their writes find them in the cache once answered, and a failed or
cancelled flush never leaves a caller waiting or another group unsent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from history_helpers import (
    History,
    UserStub,
    cached_run,
    completed_event,
    make_settings,
    message,
    new_conversation,
    new_run,
    text_event,
)

from chorus.core.testing import wait_for
from chorus.history.cache import LocalCache, RunWrites
from chorus.history.event_log import LocalEventLog
from chorus.history.settings import Settings
from chorus.history.shared import SharedWrites
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

FINAL_PATHS = ["status", "last_seq"]


def end_request(run_id: str, lease_epoch: int = 0) -> pb.AppendRunEventsRequest:
    return pb.AppendRunEventsRequest(
        run_id=run_id,
        events=[text_event(1), completed_event(2)],
        run=run_pb2.Run(status=run_pb2.RUN_STATUS_COMPLETED, last_seq=2),
        update_mask=FieldMask(paths=FINAL_PATHS),
        lease_epoch=lease_epoch,
    )


class CountedPublish:
    """Counts the history app's `publish_many` calls (one per flushed group)."""

    def __init__(self, history: History) -> None:
        self.calls = 0
        log = history.app.servicer._log
        publish_many = log.publish_many

        async def counted(
            batches: Sequence[tuple[str, int, Sequence[bytes]]], writes: RunWrites | None = None
        ) -> None:
            self.calls += 1
            await publish_many(batches, writes)

        log.publish_many = counted  # type: ignore[method-assign]


async def test_concurrent_run_ends_share_round_trips_and_each_is_cached_when_answered(
    history: History, alice: UserStub, settings: Settings
) -> None:
    runs = [await new_run(alice) for _ in range(20)]
    await history.app.servicer.drain()
    counted = CountedPublish(history)

    async def end(run: run_pb2.Run) -> pb.AppendRunEventsResponse:
        resp = await alice.AppendRunEvents(end_request(run.id))
        # answered: the final record is cached already (whoever hears of the end reads it)
        cached = await cached_run(history, settings, run.id)
        assert cached is not None and cached.status == run_pb2.RUN_STATUS_COMPLETED
        return resp

    answers = await asyncio.gather(*map(end, runs))
    assert [a.run.id for a in answers] == [r.id for r in runs]  # each its own answer
    assert all(a.last_seq == 2 for a in answers)
    if settings.redis_url:  # (in process, SQLite's commits come one by one: nothing to share)
        assert 1 <= counted.calls < len(runs)  # Redis round trips shared between calls


async def test_a_refused_call_fails_alone_in_its_group(alice: UserStub) -> None:
    runs = [await new_run(alice) for _ in range(6)]
    missing = str(uuid.uuid4())
    calls = [
        alice.AppendRunEvents(end_request(missing)),  # no such run: refused by the store
        alice.AppendRunEvents(end_request("not-a-uuid")),  # refused before any write
    ]
    calls += [alice.AppendRunEvents(end_request(r.id)) for r in runs]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[0], grpc.aio.AioRpcError)
    assert outcomes[0].code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(outcomes[1], grpc.aio.AioRpcError)
    assert outcomes[1].code() == grpc.StatusCode.INVALID_ARGUMENT
    for run, outcome in zip(runs, outcomes[2:], strict=True):
        assert isinstance(outcome, pb.AppendRunEventsResponse), outcome
        assert outcome.run.id == run.id and outcome.last_seq == 2
        got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
        assert got.run.status == run_pb2.RUN_STATUS_COMPLETED


async def test_concurrent_message_appends_are_cached_when_answered_in_shared_trips(
    history: History, alice: UserStub, settings: Settings
) -> None:
    convs = [await new_conversation(alice) for _ in range(8)]
    for conv in convs:  # a cached messages list, so the appends must extend it
        await alice.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
        )
    counted = CountedPublish(history)
    alone: list[str] = []  # message appends sent on their own round trip
    cache = history.app.cache
    append_messages = cache.append_messages

    async def spy(conv: conversation_pb2.Conversation, added: Sequence[object]) -> None:
        alone.append(conv.id)
        await append_messages(conv, added)  # type: ignore[arg-type]

    cache.append_messages = spy  # type: ignore[method-assign]

    async def append(conv: conversation_pb2.Conversation) -> None:
        await alice.AppendMessages(
            pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("hi")])
        )
        cached, complete = await history.app.cache.get_conversation(conv.id, True)
        assert cached is not None and complete
        assert [m.content for m in cached.messages] == ["hi"]

    await asyncio.gather(*map(append, convs))
    if settings.redis_url:  # on the live log's pipeline, one per group, never on their own
        assert alone == [] and 1 <= counted.calls <= len(convs)


async def test_a_failed_flush_releases_its_callers_and_the_next_group_goes() -> None:
    cache, log = LocalCache(make_settings()), LocalEventLog(10, 10)
    shared = SharedWrites(log, cache)
    attempts = 0
    publish_many = log.publish_many

    async def failing_once(
        batches: Sequence[tuple[str, int, Sequence[bytes]]], writes: RunWrites | None = None
    ) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("boom")
        await publish_many(batches, writes)

    log.publish_many = failing_once  # type: ignore[method-assign]
    run = run_pb2.Run(id="r1", last_seq=1)
    await asyncio.wait_for(shared.write(runs=[run], wait=True), 10)  # released, not raised
    later = run_pb2.Run(id="r2", last_seq=1)
    await asyncio.wait_for(shared.write(runs=[later], wait=True), 10)
    assert await cache.get_run("r2") == later
    assert attempts == 2


async def test_a_cancelled_waiter_leaves_the_group_to_the_others() -> None:
    cache, log = LocalCache(make_settings()), LocalEventLog(10, 10)
    shared = SharedWrites(log, cache)
    release = asyncio.Event()
    publish_many = log.publish_many

    async def held(
        batches: Sequence[tuple[str, int, Sequence[bytes]]], writes: RunWrites | None = None
    ) -> None:
        await release.wait()
        await publish_many(batches, writes)

    log.publish_many = held  # type: ignore[method-assign]
    first = asyncio.ensure_future(shared.write(runs=[run_pb2.Run(id="a", last_seq=1)], wait=True))
    second = asyncio.ensure_future(shared.write(runs=[run_pb2.Run(id="b", last_seq=1)], wait=True))
    # both joined the group, which is now under way
    await wait_for(lambda: shared._flusher is not None and shared._open is None)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    await asyncio.wait_for(second, 10)
    assert await cache.get_run("a") is not None and await cache.get_run("b") is not None
    await shared.drain()
