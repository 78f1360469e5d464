"""Deleting runs and conversations (issue 23 item 1), on both back ends: DeleteRunRecord
and DeleteConversation remove the run records, their events and checkpoints in one
transaction, drop the cached copies and live logs, and every later read of the run is
NOT_FOUND — also when a cached copy outlived the delete. The contract is the comment of
those RPCs in proto/chorus/v1/history_service.proto."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.duration_pb2 import Duration
from history_helpers import (
    CACHE_VERSION_CHARS,
    History,
    UserStub,
    completed_event,
    fields_of,
    message,
    new_conversation,
    new_run,
    rpc_error,
    text_event,
)

from chorus.v1 import history_service_pb2 as pb
from chorus.v1 import run_pb2


async def run_with_log(stub: UserStub, conversation_id: str | None = None) -> run_pb2.Run:
    """A running run with three events and a checkpoint at seq 3."""
    run = await new_run(stub, conversation_id)
    await stub.AppendRunEvents(
        pb.AppendRunEventsRequest(
            run_id=run.id,
            events=[text_event(s) for s in (1, 2, 3)],
            checkpoint=run_pb2.RunCheckpoint(seq=3, team_state=b"{}", turns=1),
        )
    )
    return run


async def assert_run_gone(history: History, stub: UserStub, run_id: str) -> None:
    """Every read of the run is NOT_FOUND, for its owner and for the service identity."""
    system = history.system()
    for caller in (stub, system):
        calls: list[Any] = [
            caller.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id)),
            caller.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id)),
            caller.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run_id)),
        ]
        for call in calls:
            assert (await rpc_error(call)).code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in caller.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run_id)):
                pass
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await system.ListRunRecords(pb.ListRunRecordsRequest(all_owners=True, page_size=1000))
    assert run_id not in {r.id for r in listed.runs}
    claim = system.ClaimRun(
        pb.ClaimRunRequest(
            run_id=run_id, owner_instance="o", lease_epoch=0, stale_after=Duration(seconds=1)
        )
    )
    assert (await rpc_error(claim)).code == grpc.StatusCode.NOT_FOUND
    beats = await system.RecordRunHeartbeats(
        pb.RecordRunHeartbeatsRequest(heartbeats=[pb.RunHeartbeat(run_id=run_id)])
    )
    assert not beats.runs
    append = stub.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run_id, events=[text_event(4)]))
    assert (await rpc_error(append)).code == grpc.StatusCode.NOT_FOUND
    assert await history.app.store.get_run(run_id, None) is None
    assert await history.app.store.list_events(run_id, 0, 100) == []
    assert await history.app.cache.get_run(run_id) is None
    settings = history.app.settings
    if settings.redis_url:  # a tombstone (or nothing) in Redis, and no live log
        client = redis.Redis.from_url(settings.redis_url)
        try:
            raw = await client.get(f"{settings.redis_key_prefix}run:{run_id}")
            assert raw is None or raw == b"9" * CACHE_VERSION_CHARS
            assert not await client.exists(f"{settings.redis_key_prefix}run:{run_id}:events")
        finally:
            await client.aclose()


async def test_delete_run_record_deletes_the_run_its_events_and_checkpoint(
    history: History, alice: UserStub
) -> None:
    run = await run_with_log(alice)
    await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))  # cached now
    await alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id))
    await assert_run_gone(history, alice, run.id)
    # the conversation and its messages stay
    conv = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=run.conversation_id)
    )
    assert conv.conversation.id == run.conversation_id


async def test_delete_run_record_frees_the_conversation_for_a_new_run(alice: UserStub) -> None:
    run = await run_with_log(alice)
    await alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id))
    again = await new_run(alice, run.conversation_id)  # no CONVERSATION_BUSY
    assert again.status == run_pb2.RUN_STATUS_RUNNING


async def test_delete_run_record_of_another_user_is_not_found_and_deletes_nothing(
    alice: UserStub, bob: UserStub
) -> None:
    run = await run_with_log(alice)
    err = await rpc_error(bob.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id)))
    assert err.code == grpc.StatusCode.NOT_FOUND
    events = await alice.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id))
    assert [e.seq for e in events.events] == [1, 2, 3]


@pytest.mark.parametrize("run_id", ["", "not-a-uuid"])
async def test_delete_run_record_needs_a_uuid(alice: UserStub, run_id: str) -> None:
    err = await rpc_error(alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run_id)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"run_id"}


async def test_delete_run_record_twice_is_not_found(alice: UserStub) -> None:
    run = await run_with_log(alice)
    await alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id))
    err = await rpc_error(alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id)))
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_deleting_a_conversation_deletes_its_runs_events_and_checkpoints(
    history: History, alice: UserStub
) -> None:
    conv = await new_conversation(alice)
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("hi")])
    )
    first = await new_run(alice, conv.id, status=run_pb2.RUN_STATUS_COMPLETED)
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(run_id=first.id, events=[text_event(1), completed_event(2)])
    )
    active = await run_with_log(alice, conv.id)
    other = await run_with_log(alice)  # another conversation: untouched
    for run in (first, active):
        await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))  # cached
    await alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id))
    for run in (first, active):
        await assert_run_gone(history, alice, run.id)
    err = await rpc_error(alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id)))
    assert err.code == grpc.StatusCode.NOT_FOUND
    events = await alice.ListRunEvents(pb.ListRunEventsRequest(run_id=other.id))
    assert [e.seq for e in events.events] == [1, 2, 3]
    err = await rpc_error(
        alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id))
    )
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_a_watch_of_a_run_deleted_under_it_ends_not_found(
    history: History, alice: UserStub
) -> None:
    run = await run_with_log(alice)
    seen: list[int] = []
    caught_up = asyncio.Event()

    async def watch() -> None:
        async for item in alice.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run.id)):
            seen.append(item.event.seq)
            if item.event.seq == 3:
                caught_up.set()

    task = asyncio.create_task(watch())
    async with asyncio.timeout(30):
        await caught_up.wait()
    await alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(60):
            await task
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert seen == [1, 2, 3]


async def test_a_cached_copy_left_by_a_crash_after_commit_does_not_bring_the_run_back(
    history: History, alice: UserStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies between the delete's commit and its cache cleanup (simulated: the
    cleanup after the commit never runs), and a slow fill then writes the old record: the
    tombstone written before the transaction keeps every read on the store."""
    run = await run_with_log(alice)
    record = (await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))).run

    async def crash(*_: Any, **__: Any) -> None:
        return None

    monkeypatch.setattr(history.app.servicer, "_forget", crash)
    await alice.DeleteRunRecord(pb.DeleteRunRecordRequest(run_id=run.id))
    await history.app.cache.put_run(record)  # a fill that read the row before the delete
    for call in (
        alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id)),
        alice.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id)),
    ):
        assert (await rpc_error(call)).code == grpc.StatusCode.NOT_FOUND


async def test_a_cached_conversation_run_left_by_a_crash_is_not_readable(
    history: History, alice: UserStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await run_with_log(alice)
    await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))

    async def crash(*_: Any, **__: Any) -> None:
        return None

    monkeypatch.setattr(history.app.servicer, "_forget", crash)
    await alice.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=run.conversation_id)
    )
    err = await rpc_error(alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id)))
    assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(
        alice.GetConversation(pb.GetConversationRequest(conversation_id=run.conversation_id))
    )
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_a_run_started_while_its_conversation_is_deleted_is_deleted_or_refused(
    history: History, alice: UserStub
) -> None:
    """Run starts racing the delete of their conversation: each either fails NOT_FOUND or
    its run is gone with the conversation — never a run left in a deleted conversation."""
    conv = await new_conversation(alice)
    started: list[str] = []

    async def start(i: int) -> None:
        try:
            resp = await alice.RecordRun(
                pb.RecordRunRequest(
                    run=run_pb2.Run(
                        id=str(uuid.uuid4()),
                        conversation_id=conv.id,
                        spec=run_pb2.RunSpec(template="duet", input=f"run {i}"),
                        status=run_pb2.RUN_STATUS_COMPLETED,
                    )
                )
            )
            started.append(resp.run.id)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND

    await asyncio.gather(
        *(start(i) for i in range(10)),
        alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id)),
        *(start(i) for i in range(10, 20)),
    )
    for run_id in started:
        assert await history.app.store.get_run(run_id, None) is None


async def test_list_run_events_filters_by_kind(alice: UserStub) -> None:
    run = await new_run(alice)
    artifact = run_pb2.RunEvent(
        seq=2,
        artifact=run_pb2.RunEvent.Artifact(name="c.svg", mime_type="image/svg+xml", data=b"<svg/>"),
    )
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(
            run_id=run.id, events=[text_event(1), artifact, text_event(3), completed_event(4)]
        )
    )
    got = await alice.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id, kinds=["artifact"]))
    assert [e.seq for e in got.events] == [2]
    assert got.events[0].artifact.name == "c.svg"
    page = await alice.ListRunEvents(
        pb.ListRunEventsRequest(run_id=run.id, kinds=["text_delta", "run_completed"], page_size=2)
    )
    assert [e.seq for e in page.events] == [1, 3]
    rest = await alice.ListRunEvents(
        pb.ListRunEventsRequest(
            run_id=run.id,
            kinds=["text_delta", "run_completed"],
            page_size=2,
            page_token=page.next_page_token,
        )
    )
    assert [e.seq for e in rest.events] == [4]
    err = await rpc_error(
        alice.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id, kinds=["artifact", "chart"]))
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"kinds[1]"}
    err = await rpc_error(
        alice.ListRunEvents(
            pb.ListRunEventsRequest(
                run_id=run.id, kinds=["artifact"], page_token=page.next_page_token
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
