"""Conversations: create (idempotent), get, list (paginated), update (mask), delete."""

from __future__ import annotations

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from history_helpers import UserStub, fields_of, message, new_conversation, rpc_error

from chorus.v1 import chat_pb2, conversation_pb2
from chorus.v1 import history_service_pb2 as pb

Conversation = conversation_pb2.Conversation


async def test_create_sets_id_owner_and_times(alice: UserStub) -> None:
    resp = await alice.CreateConversation(
        pb.CreateConversationRequest(
            conversation=Conversation(
                title="Tabs or spaces",
                team="duet",
                model=chat_pb2.ModelRef(provider="simulator", model="sim-1"),
                metadata={"topic": "style"},
                owner="someone-else",  # output only: ignored
                message_count=99,  # output only: ignored
            )
        )
    )
    conv = resp.conversation
    assert len(conv.id) == 36
    assert conv.owner == alice.user
    assert (conv.title, conv.team, conv.model.model) == ("Tabs or spaces", "duet", "sim-1")
    assert dict(conv.metadata) == {"topic": "style"}
    assert conv.message_count == 0
    assert conv.create_time.seconds > 0 and conv.update_time == conv.create_time


async def test_create_with_same_request_id_returns_the_first_conversation(
    alice: UserStub, bob: UserStub
) -> None:
    req = pb.CreateConversationRequest(conversation=Conversation(title="a"), request_id="req-1")
    first = (await alice.CreateConversation(req)).conversation
    again = (await alice.CreateConversation(req)).conversation
    other_user = (await bob.CreateConversation(req)).conversation
    assert again == first
    assert other_user.id != first.id and other_user.owner == bob.user
    listed = await alice.ListConversations(pb.ListConversationsRequest())
    assert [c.id for c in listed.conversations] == [first.id]


async def test_get_returns_conversation_with_messages_when_asked(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("1"), message("2")])
    )
    bare = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    full = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    assert not bare.messages and bare.conversation.message_count == 2
    assert [m.content for m in full.messages] == ["1", "2"]
    # the second read is served by the cache and is identical
    again = await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    assert again == full


async def test_get_missing_or_malformed_id(alice: UserStub) -> None:
    err = await rpc_error(
        alice.GetConversation(
            pb.GetConversationRequest(conversation_id="00000000-0000-4000-8000-000000000000")
        )
    )
    assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(alice.GetConversation(pb.GetConversationRequest(conversation_id="nope")))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"conversation_id"}
    err = await rpc_error(alice.GetConversation(pb.GetConversationRequest()))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"conversation_id"}


async def test_list_is_most_recently_updated_first_and_pages_without_overlap(
    alice: UserStub,
) -> None:
    ids = [(await new_conversation(alice, f"c{i}")).id for i in range(5)]
    # touching the oldest makes it the most recently updated
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=ids[0], messages=[message()])
    )
    expected = [ids[0], ids[4], ids[3], ids[2], ids[1]]
    seen: list[str] = []
    token = ""
    while True:
        page = await alice.ListConversations(
            pb.ListConversationsRequest(page_size=2, page_token=token)
        )
        assert len(page.conversations) <= 2
        seen += [c.id for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected


async def test_list_rejects_bad_page_size_and_foreign_or_garbage_tokens(
    alice: UserStub, bob: UserStub
) -> None:
    for _ in range(3):
        await new_conversation(alice)
    page = await alice.ListConversations(pb.ListConversationsRequest(page_size=1))
    assert page.next_page_token
    for size in (-1, 1001):
        err = await rpc_error(alice.ListConversations(pb.ListConversationsRequest(page_size=size)))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"page_size"}
    err = await rpc_error(
        bob.ListConversations(pb.ListConversationsRequest(page_token=page.next_page_token))
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "INVALID_PAGE_TOKEN"
    err = await rpc_error(alice.ListConversations(pb.ListConversationsRequest(page_token="@@@")))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"page_token"}


async def test_update_changes_only_the_masked_fields(alice: UserStub) -> None:
    conv = (
        await alice.CreateConversation(
            pb.CreateConversationRequest(
                conversation=Conversation(title="old", team="duet", metadata={"k": "v"})
            )
        )
    ).conversation
    resp = await alice.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=Conversation(id=conv.id, title="new", team="ignored"),
            update_mask=FieldMask(paths=["title"]),
        )
    )
    updated = resp.conversation
    assert (updated.title, updated.team, dict(updated.metadata)) == ("new", "duet", {"k": "v"})
    assert updated.update_time.ToMicroseconds() > conv.update_time.ToMicroseconds()
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation == updated


async def test_update_with_empty_mask_replaces_all_four_fields(alice: UserStub) -> None:
    conv = (
        await alice.CreateConversation(
            pb.CreateConversationRequest(
                conversation=Conversation(title="old", team="duet", metadata={"k": "v"})
            )
        )
    ).conversation
    resp = await alice.UpdateConversation(
        pb.UpdateConversationRequest(conversation=Conversation(id=conv.id, title="only title"))
    )
    c = resp.conversation
    assert (c.title, c.team, dict(c.metadata), c.HasField("model")) == ("only title", "", {}, False)


async def test_update_rejects_unknown_paths_and_bad_values_and_writes_nothing(
    alice: UserStub,
) -> None:
    conv = await new_conversation(alice, "keep")
    err = await rpc_error(
        alice.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=Conversation(id=conv.id, title="x" * 501),
                update_mask=FieldMask(paths=["title", "owner", "bogus"]),
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {
        "update_mask.paths[1]",
        "update_mask.paths[2]",
        "conversation.title",
    }
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.title == "keep"
    err = await rpc_error(
        alice.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=Conversation(id="00000000-0000-4000-8000-000000000000", title="x")
            )
        )
    )
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_create_rejects_oversized_fields_and_creates_nothing(alice: UserStub) -> None:
    err = await rpc_error(
        alice.CreateConversation(
            pb.CreateConversationRequest(
                conversation=Conversation(
                    title="t" * 501, metadata={f"k{i}": "v" for i in range(65)}
                ),
                request_id="r" * 129,
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {"conversation.title", "conversation.metadata", "request_id"}
    err = await rpc_error(
        alice.CreateConversation(
            pb.CreateConversationRequest(conversation=Conversation(metadata={"k": "v" * 1025}))
        )
    )
    assert fields_of(err) == {"conversation.metadata[k]"}
    listed = await alice.ListConversations(pb.ListConversationsRequest())
    assert not listed.conversations


async def test_delete_removes_the_conversation_and_its_messages(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message()])
    )
    await alice.GetConversation(
        pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
    )
    await alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id))
    for call in (
        alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id)),
        alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id)),
        alice.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.id)),
    ):
        assert (await rpc_error(call)).code == grpc.StatusCode.NOT_FOUND
    assert not (await alice.ListConversations(pb.ListConversationsRequest())).conversations
