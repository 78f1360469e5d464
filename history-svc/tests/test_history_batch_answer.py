"""AppendRunEventBatches answers once the store committed, before its Redis writes (the
live log's entries and the cached records), which follow in the background — bounded by
`shared.MAX_WRITES_AFTER_ANSWER` calls in a group, beyond which a call waits for its own
(issue 18: the first delta of a turn is shown once its batch is answered)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from history_helpers import History, UserStub, new_run, text_event

from chorus.core.testing import wait_for
from chorus.history import shared
from chorus.history.cache import RunWrites
from chorus.v1 import history_service_pb2 as pb

Batch = pb.AppendRunEventsRequest


class HeldPublish:
    """Holds every `publish_many` of the history app's live log until released."""

    def __init__(self, history: History) -> None:
        self.release = asyncio.Event()
        self.started: asyncio.Queue[None] = asyncio.Queue()  # one item per publish begun
        log = history.app.servicer._log
        publish_many = log.publish_many

        async def held(
            batches: Sequence[tuple[str, int, Sequence[bytes]]], writes: RunWrites | None = None
        ) -> None:
            self.started.put_nowait(None)
            await self.release.wait()
            await publish_many(batches, writes)

        log.publish_many = held  # type: ignore[method-assign]


async def append(stub: UserStub, run_id: str, seq: int) -> pb.AppendRunEventBatchesResponse:
    return await stub.AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(batches=[Batch(run_id=run_id, events=[text_event(seq)])])
    )


async def test_the_answer_does_not_wait_for_the_live_log(history: History, alice: UserStub) -> None:
    held = HeldPublish(history)
    run = await new_run(alice)
    resp = await asyncio.wait_for(append(alice, run.id, 1), 10)
    assert resp.results[0].last_seq == 1  # answered while its publish is still held
    assert held.started.qsize() == 1
    stored = await alice.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id))
    assert [e.seq for e in stored.events] == [1]
    # a watcher on any replica gets the event once the live log has it (or from the store)
    watch = alice.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run.id, after_seq=0))
    first = await asyncio.wait_for(watch.read(), 10)
    assert first.event.seq == 1
    watch.cancel()
    held.release.set()
    await history.app.servicer.drain()


async def test_beyond_the_bound_a_call_waits_for_its_own_writes(
    history: History, alice: UserStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "MAX_WRITES_AFTER_ANSWER", 1)
    held = HeldPublish(history)
    first, second, third = await new_run(alice), await new_run(alice), await new_run(alice)
    await asyncio.wait_for(append(alice, first.id, 1), 10)  # its writes in the background
    await asyncio.wait_for(held.started.get(), 10)  # …held on their way to Redis
    # the next group fills while that one is under way: one call still answers at once,
    await asyncio.wait_for(append(alice, second.id, 1), 10)
    blocked = asyncio.ensure_future(append(alice, third.id, 1))  # the next waits for its own
    await wait_for(lambda: history.app.servicer._shared._open.calls == 2)  # type: ignore[union-attr]
    assert not blocked.done()
    held.release.set()
    resp = await asyncio.wait_for(blocked, 10)
    assert resp.results[0].last_seq == 1
    assert held.started.qsize() == 1  # the second and third calls' writes: one round trip
    await history.app.servicer.drain()
    assert history.app.servicer._shared._flusher is None
