"""Ownership: another identity sees none of a user's data, through every RPC."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from history_helpers import (
    History,
    UserStub,
    message,
    new_conversation,
    new_run,
    rpc_error,
    run_spec,
    text_event,
)

from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb


@pytest.fixture
async def alices_data(alice: UserStub) -> tuple[conversation_pb2.Conversation, run_pb2.Run]:
    conv = await new_conversation(alice, "private")
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("secret")])
    )
    run = await new_run(alice, conv.id)
    await alice.AppendRunEvents(pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(1)]))
    # warm the cache so that cached reads are checked too
    await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    return conv, run


async def test_another_user_gets_not_found_from_every_rpc_on_the_data(
    alice: UserStub, bob: UserStub, alices_data: tuple[conversation_pb2.Conversation, run_pb2.Run]
) -> None:
    conv, run = alices_data
    calls = {
        "GetConversation": bob.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
        ),
        "UpdateConversation": bob.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=conversation_pb2.Conversation(id=conv.id, title="mine now"),
                update_mask=FieldMask(paths=["title"]),
            )
        ),
        "DeleteConversation": bob.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=conv.id)
        ),
        "AppendMessages": bob.AppendMessages(
            pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("injected")])
        ),
        "ListMessages": bob.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id)),
        "RecordRun(update)": bob.RecordRun(
            pb.RecordRunRequest(
                run=run_pb2.Run(id=run.id, status=run_pb2.RUN_STATUS_CANCELLED),
                update_mask=FieldMask(paths=["status"]),
            )
        ),
        "RecordRun(create in her conversation)": bob.RecordRun(
            pb.RecordRunRequest(
                run=run_pb2.Run(
                    id=str(uuid.uuid4()),
                    conversation_id=conv.id,
                    spec=run_spec(),
                    status=run_pb2.RUN_STATUS_COMPLETED,
                )
            )
        ),
        "GetRunRecord": bob.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id)),
        "AppendRunEvents": bob.AppendRunEvents(
            pb.AppendRunEventsRequest(run_id=run.id, events=[text_event(2)])
        ),
        "ListRunEvents": bob.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id)),
    }
    for name, call in calls.items():
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.NOT_FOUND, name
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in bob.WatchRunEvents(pb.WatchRunEventsRequest(run_id=run.id)):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # lists show bob nothing of alice's
    assert not (await bob.ListConversations(pb.ListConversationsRequest())).conversations
    assert not (await bob.ListRunRecords(pb.ListRunRecordsRequest())).runs
    assert not (await bob.ListRunRecords(pb.ListRunRecordsRequest(conversation_id=conv.id))).runs

    # and alice's data is untouched
    got = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    assert got.conversation.title == "private"
    assert [m.content for m in got.messages] == ["secret"]
    got_run = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert got_run.run.status == run.status and got_run.run.last_seq == 1


async def test_the_service_identity_reads_any_owners_rows_by_id(
    history: History, alices_data: tuple[conversation_pb2.Conversation, run_pb2.Run]
) -> None:
    conv, run = alices_data
    system = history.system()
    got = await system.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.id == conv.id
    events = await system.ListRunEvents(pb.ListRunEventsRequest(run_id=run.id))
    assert [e.seq for e in events.events] == [1]
    # but its own lists are its own
    assert not (await system.ListConversations(pb.ListConversationsRequest())).conversations
