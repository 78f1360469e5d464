"""Run events: AppendRunEvents rules, ListRunEvents, WatchRunEvents (in one process)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from history_helpers import (
    UserStub,
    completed_event,
    fields_of,
    new_run,
    rpc_error,
    text_event,
)

from chorus.core.testing import wait_for
from chorus.v1 import history_service_pb2 as pb
from chorus.v1 import run_pb2

RunEvent = run_pb2.RunEvent


async def append(stub: UserStub, run_id: str, events: list[RunEvent]) -> int:
    resp = await stub.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run_id, events=events))
    return int(resp.last_seq)


async def stored(stub: UserStub, run_id: str, after: int = 0) -> list[RunEvent]:
    resp = await stub.ListRunEvents(
        pb.ListRunEventsRequest(run_id=run_id, after_seq=after, page_size=5000)
    )
    return list(resp.events)


async def collect(stub: UserStub, run_id: str, after_seq: int) -> list[RunEvent]:
    call = stub.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run_id, after_seq=after_seq))
    return [item.event async for item in call]


async def test_events_are_stored_in_order_and_raise_the_runs_last_seq(alice: UserStub) -> None:
    run = await new_run(alice)
    assert await append(alice, run.id, [text_event(1, "a"), text_event(2, "b")]) == 2
    assert await append(alice, run.id, [text_event(3, "c")]) == 3
    events = await stored(alice, run.id)
    assert [(e.seq, e.run_id, e.text_delta.text) for e in events] == [
        (1, run.id, "a"),
        (2, run.id, "b"),
        (3, run.id, "c"),
    ]
    got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert got.run.last_seq == 3


async def test_an_exact_repeat_is_accepted_once_and_an_overlap_adds_only_new_events(
    alice: UserStub,
) -> None:
    run = await new_run(alice)
    batch = [text_event(i) for i in range(1, 6)]
    assert await append(alice, run.id, batch) == 5
    assert await append(alice, run.id, batch) == 5
    assert await append(alice, run.id, [*batch[3:], text_event(6), text_event(7)]) == 7
    assert [e.seq for e in await stored(alice, run.id)] == list(range(1, 8))


async def test_a_gap_is_a_failed_precondition_and_stores_nothing(alice: UserStub) -> None:
    run = await new_run(alice)
    await append(alice, run.id, [text_event(1)])
    err = await rpc_error(append(alice, run.id, [text_event(3), text_event(4)]))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "SEQ_GAP"
    assert err.metadata["expected_seq"] == "2"
    err = await rpc_error(append(alice, (await new_run(alice)).id, [text_event(2)]))
    assert err.reason == "SEQ_GAP"
    assert [e.seq for e in await stored(alice, run.id)] == [1]


async def test_a_conflicting_duplicate_is_a_failed_precondition_and_stores_nothing(
    alice: UserStub,
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, [text_event(1, "a"), text_event(2, "b")])
    err = await rpc_error(append(alice, run.id, [text_event(2, "B!"), text_event(3, "c")]))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "SEQ_CONFLICT"
    assert err.metadata["seq"] == "2"
    assert [e.text_delta.text for e in await stored(alice, run.id)] == ["a", "b"]


async def test_nothing_may_follow_the_terminal_event(alice: UserStub) -> None:
    run = await new_run(alice)
    await append(alice, run.id, [text_event(1), completed_event(2)])
    assert await append(alice, run.id, [completed_event(2)]) == 2  # repeat is fine
    err = await rpc_error(append(alice, run.id, [text_event(3)]))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "RUN_ENDED"
    err = await rpc_error(
        append(alice, (await new_run(alice)).id, [completed_event(1), text_event(2)])
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"events[0]"}


async def test_malformed_batches_are_invalid_and_store_nothing(alice: UserStub) -> None:
    run = await new_run(alice)
    cases: list[tuple[list[RunEvent], set[str]]] = [
        ([], {"events"}),
        ([text_event(i) for i in range(1, 1002)], {"events"}),
        ([text_event(0)], {"events[0].seq"}),
        ([text_event(1), text_event(3)], {"events[1].seq"}),
        ([RunEvent(seq=1)], {"events[0]"}),
        (
            [RunEvent(seq=1, run_id=str(uuid.uuid4()), text_delta=RunEvent.TextDelta(text="x"))],
            {"events[0].run_id"},
        ),
        (
            [
                RunEvent(
                    seq=1, artifact=RunEvent.Artifact(name="big", data=b"x" * (2 * 1024 * 1024))
                )
            ],
            {"events[0]"},
        ),
    ]
    for events, fields in cases:
        err = await rpc_error(append(alice, run.id, events))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert fields_of(err) == fields
    err = await rpc_error(append(alice, "not-a-run", [text_event(1)]))
    assert fields_of(err) == {"run_id"}
    err = await rpc_error(append(alice, str(uuid.uuid4()), [text_event(1)]))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert await stored(alice, run.id) == []


async def test_list_pages_after_a_seq(alice: UserStub) -> None:
    run = await new_run(alice)
    await append(alice, run.id, [text_event(i) for i in range(1, 11)])
    seqs: list[int] = []
    token = ""
    while True:
        page = await alice.ListRunEvents(
            pb.ListRunEventsRequest(run_id=run.id, after_seq=3, page_size=3, page_token=token)
        )
        seqs += [e.seq for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seqs == list(range(4, 11))
    first = await alice.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id, page_size=3))
    err = await rpc_error(
        alice.ListRunEvents(
            pb.ListRunEventsRequest(run_id=run.id, after_seq=1, page_token=first.next_page_token)
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"page_token"}
    for bad in (
        pb.ListRunEventsRequest(run_id=run.id, after_seq=-1),
        pb.ListRunEventsRequest(run_id=run.id, page_size=5001),
    ):
        assert (await rpc_error(alice.ListRunEvents(bad))).code == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_replays_then_tails_live_and_ends_after_the_terminal_event(
    alice: UserStub,
) -> None:
    run = await new_run(alice)
    await append(alice, run.id, [text_event(i) for i in range(1, 6)])
    received: list[RunEvent] = []

    async def watch() -> None:
        async for item in alice.WatchRunEvents(
            pb.WatchRunEventsRequest(run_id=run.id, after_seq=2)
        ):
            received.append(item.event)

    task = asyncio.create_task(watch())
    await wait_for(lambda: len(received) == 3)  # replay: 3, 4, 5
    await append(alice, run.id, [text_event(6), text_event(7)])
    await wait_for(lambda: len(received) == 5)  # live
    await append(alice, run.id, [text_event(8), completed_event(9)])
    await asyncio.wait_for(task, 10)  # ends by itself
    assert [e.seq for e in received] == list(range(3, 10))
    assert received[-1].WhichOneof("payload") == "run_completed"


async def test_watching_a_finished_run_replays_it_and_ends(alice: UserStub) -> None:
    run = await new_run(alice)
    await append(alice, run.id, [text_event(1), text_event(2), completed_event(3)])
    assert [e.seq for e in await collect(alice, run.id, 0)] == [1, 2, 3]
    assert [e.seq for e in await collect(alice, run.id, 2)] == [3]
    assert await asyncio.wait_for(collect(alice, run.id, 3), 5) == []


async def test_watch_rejects_bad_requests_and_unknown_runs(alice: UserStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(alice, "bad", 0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(alice, str(uuid.uuid4()), 0)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(alice, (await new_run(alice)).id, -1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_many_appenders_and_watchers_lose_and_duplicate_nothing(alice: UserStub) -> None:
    runs = [await new_run(alice) for _ in range(8)]
    batches, size = 10, 10
    total = batches * size + 1
    watchers = [asyncio.create_task(collect(alice, r.id, 0)) for r in runs]

    async def appender(run_id: str) -> None:
        # two appenders per run send the same batches (like a retrying client): each racer
        # sends batch b after its b - 1 was stored, so every batch is new or an exact repeat
        for b in range(batches):
            events = [text_event(b * size + i + 1, f"{b}.{i}") for i in range(size)]
            if b == batches - 1:
                events.append(completed_event(total))
            await append(alice, run_id, events)

    await asyncio.gather(*(appender(r.id) for r in runs for _ in range(2)))
    for run, watcher in zip(runs, watchers, strict=True):
        events = await asyncio.wait_for(watcher, 20)
        assert [e.seq for e in events] == list(range(1, total + 1))
        assert [e.seq for e in await stored(alice, run.id)] == list(range(1, total + 1))
