"""Messages: AppendMessages (atomic, idempotent by client_message_id), ListMessages."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from history_helpers import UserStub, fields_of, message, new_conversation, rpc_error

from chorus.history.settings import Settings
from chorus.v1 import chat_pb2, conversation_pb2
from chorus.v1 import history_service_pb2 as pb


async def test_append_numbers_messages_and_updates_the_conversation(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    run_id = str(uuid.uuid4())
    resp = await alice.AppendMessages(
        pb.AppendMessagesRequest(
            conversation_id=conv.id,
            messages=[
                message("question"),
                conversation_pb2.Message(
                    role=chat_pb2.ROLE_ASSISTANT,
                    agent="writer",
                    tool_calls=[chat_pb2.ToolCall(id="c1", name="search", arguments='{"q":1}')],
                    usage=chat_pb2.Usage(input_tokens=3, output_tokens=5, cost_usd=0.25),
                    run_id=run_id,
                    position=77,  # output only
                ),
                conversation_pb2.Message(role=chat_pb2.ROLE_TOOL, content="42", tool_call_id="c1"),
            ],
        )
    )
    stored = resp.messages
    assert [m.position for m in stored] == [1, 2, 3]
    assert all(m.id and m.conversation_id == conv.id and m.create_time.seconds for m in stored)
    assert stored[1].tool_calls[0].arguments == '{"q":1}'
    assert stored[1].usage.cost_usd == 0.25 and stored[1].run_id == run_id
    listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id))
    assert list(listed.messages) == list(stored)
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.message_count == 3
    assert got.conversation.update_time.ToMicroseconds() > conv.update_time.ToMicroseconds()


async def test_append_with_known_client_message_id_returns_the_stored_message(
    alice: UserStub,
) -> None:
    conv = await new_conversation(alice)
    first = await alice.AppendMessages(
        pb.AppendMessagesRequest(
            conversation_id=conv.id, messages=[message("a", client_message_id="m-1")]
        )
    )
    retry = await alice.AppendMessages(
        pb.AppendMessagesRequest(
            conversation_id=conv.id,
            messages=[
                message("a (resent)", client_message_id="m-1"),
                message("b", client_message_id="m-2"),
            ],
        )
    )
    assert retry.messages[0] == first.messages[0]
    assert (retry.messages[1].content, retry.messages[1].position) == ("b", 2)
    listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id))
    assert [m.content for m in listed.messages] == ["a", "b"]


async def test_list_pages_oldest_first_and_filters_by_run(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    run_id = str(uuid.uuid4())
    msgs = [message(str(i), run_id=run_id if i % 2 else "") for i in range(7)]
    await alice.AppendMessages(pb.AppendMessagesRequest(conversation_id=conv.id, messages=msgs))
    contents: list[str] = []
    token = ""
    while True:
        page = await alice.ListMessages(
            pb.ListMessagesRequest(conversation_id=conv.id, page_size=3, page_token=token)
        )
        contents += [m.content for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert contents == [str(i) for i in range(7)]
    of_run = await alice.ListMessages(
        pb.ListMessagesRequest(conversation_id=conv.id, run_id=run_id)
    )
    assert [m.content for m in of_run.messages] == ["1", "3", "5"]
    page = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id, page_size=2))
    err = await rpc_error(
        alice.ListMessages(
            pb.ListMessagesRequest(
                conversation_id=conv.id, run_id=run_id, page_token=page.next_page_token
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"page_token"}


async def test_a_batch_with_one_bad_message_stores_nothing(alice: UserStub) -> None:
    conv = await new_conversation(alice)
    err = await rpc_error(
        alice.AppendMessages(
            pb.AppendMessagesRequest(
                conversation_id=conv.id,
                messages=[
                    message("fine"),
                    conversation_pb2.Message(content="no role"),
                    message(""),
                    message("x" * (1024 * 1024 + 1)),
                    message("bad run", run_id="not-a-uuid"),
                    message("dup", client_message_id="d"),
                    message("dup", client_message_id="d"),
                    message("long id", client_message_id="c" * 129),
                    conversation_pb2.Message(
                        role=chat_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="t")]
                    ),
                    message("neg", usage=chat_pb2.Usage(output_tokens=-1)),
                ],
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {
        "messages[1].role",
        "messages[2].content",
        "messages[3].content",
        "messages[4].run_id",
        "messages[6].client_message_id",
        "messages[7].client_message_id",
        "messages[8].tool_calls[0].name",
        "messages[9].usage.output_tokens",
    }
    listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id))
    assert not listed.messages


async def test_append_rejects_empty_and_oversized_batches_and_missing_conversations(
    alice: UserStub,
) -> None:
    conv = await new_conversation(alice)
    for messages in ([], [message(str(i)) for i in range(501)]):
        err = await rpc_error(
            alice.AppendMessages(
                pb.AppendMessagesRequest(conversation_id=conv.id, messages=messages)
            )
        )
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"messages"}
    err = await rpc_error(
        alice.AppendMessages(
            pb.AppendMessagesRequest(conversation_id=str(uuid.uuid4()), messages=[message()])
        )
    )
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_concurrent_appenders_get_gapless_positions_without_duplicates(
    alice: UserStub,
) -> None:
    convs = [await new_conversation(alice) for _ in range(3)]

    async def appender(conv_id: str, writer: int) -> None:
        for batch in range(4):
            await alice.AppendMessages(
                pb.AppendMessagesRequest(
                    conversation_id=conv_id,
                    messages=[
                        message(f"{writer}/{batch}/{i}", client_message_id=f"{writer}-{batch}-{i}")
                        for i in range(5)
                    ],
                )
            )

    await asyncio.gather(*(appender(c.id, w) for c in convs for w in range(6)))
    for conv in convs:
        listed = await alice.ListMessages(
            pb.ListMessagesRequest(conversation_id=conv.id, page_size=1000)
        )
        assert [m.position for m in listed.messages] == list(range(1, 121))
        assert len({m.client_message_id for m in listed.messages}) == 120
        got = await alice.GetConversation(
            pb.GetConversationRequest(conversation_id=conv.id, include_messages=True)
        )
        assert got.conversation.message_count == 120 and list(got.messages) == list(listed.messages)
        # each writer's messages keep their order
        for w in range(6):
            mine = [m.content for m in listed.messages if m.content.startswith(f"{w}/")]
            assert mine == [f"{w}/{b}/{i}" for b in range(4) for i in range(5)]


async def test_concurrent_repeats_of_one_append_store_it_once(alice: UserStub) -> None:
    """Eight copies of one request at once (a client retrying while the first is under way):
    one stores the messages, every copy answers with the same stored messages — also the
    copies whose one-statement insert lost the race on a client message id."""
    conv = await new_conversation(alice)
    await alice.AppendMessages(
        pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message("before")])
    )
    request = pb.AppendMessagesRequest(
        conversation_id=conv.id,
        messages=[message(f"m{i}", client_message_id=f"retry-{i}") for i in range(3)],
    )
    answers = await asyncio.gather(*(alice.AppendMessages(request) for _ in range(8)))
    assert all(list(a.messages) == list(answers[0].messages) for a in answers)
    assert [m.position for m in answers[0].messages] == [2, 3, 4]
    listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id))
    assert [m.content for m in listed.messages] == ["before", "m0", "m1", "m2"]
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.message_count == 4


async def test_append_to_another_owners_conversation_is_not_found_and_writes_nothing(
    alice: UserStub, bob: UserStub
) -> None:
    conv = await new_conversation(alice)
    err = await rpc_error(
        bob.AppendMessages(pb.AppendMessagesRequest(conversation_id=conv.id, messages=[message()]))
    )
    assert err.code == grpc.StatusCode.NOT_FOUND
    got = await alice.GetConversation(pb.GetConversationRequest(conversation_id=conv.id))
    assert got.conversation.message_count == 0
    assert got.conversation.update_time == conv.update_time


@pytest.mark.parametrize("backend", ["postgres"])  # the one-statement append is PostgreSQL's
async def test_repeats_queued_behind_the_first_store_it_once(
    alice: UserStub, settings: Settings
) -> None:
    """PostgreSQL: copies of one request queued on the conversation's row lock all pass the
    one-statement append's "none stored yet" check before the first commits; the first
    stores the messages, the others' inserts hit the client-message-id index and they
    answer from the transaction path with the stored messages."""
    conv = await new_conversation(alice)
    request = pb.AppendMessagesRequest(
        conversation_id=conv.id,
        messages=[message(f"m{i}", client_message_id=f"queued-{i}") for i in range(2)],
    )
    pg = await asyncpg.connect(settings.database_url)
    try:
        lock = pg.transaction()
        await lock.start()
        await pg.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conv.id)
        copies = [asyncio.ensure_future(alice.AppendMessages(request)) for _ in range(4)]
        async with asyncio.timeout(10):  # all four wait for the row lock
            # (pg_stat_activity is read once per transaction: clear that snapshot each time)
            while True:
                await pg.execute("SELECT pg_stat_clear_snapshot()")
                waiting = await pg.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'WITH conversation AS (UPDATE%'"
                )
                if waiting == len(copies):
                    break
                await asyncio.sleep(0.01)
        await lock.commit()
        answers = await asyncio.gather(*copies)
    finally:
        await pg.close()
    assert all(list(a.messages) == list(answers[0].messages) for a in answers)
    assert [(m.content, m.position) for m in answers[0].messages] == [("m0", 1), ("m1", 2)]
    listed = await alice.ListMessages(pb.ListMessagesRequest(conversation_id=conv.id))
    assert [m.content for m in listed.messages] == ["m0", "m1"]
