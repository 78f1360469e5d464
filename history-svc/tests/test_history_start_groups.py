"""PostgreSQL's group commit of run starts in new conversations (`stores.postgres.
_StartGroups`, issue 19): concurrent RecordRunStart calls are committed together, one
statement run per start in one round trip and one commit, and each caller still gets its
own answer or error — a used id fails only its own start, a database that cannot be
reached fails every start of the group with UNAVAILABLE and writes nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from history_helpers import History, message, run_spec

from chorus.history.stores import postgres as postgres_module
from chorus.v1 import conversation_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb


def start(
    run_id: str | None = None, conversation_id: str | None = None
) -> pb.RecordRunStartRequest:
    run_id = run_id or str(uuid.uuid4())
    conversation_id = conversation_id or str(uuid.uuid4())
    return pb.RecordRunStartRequest(
        run=run_pb2.Run(
            id=run_id,
            conversation_id=conversation_id,
            spec=run_spec(),
            status=run_pb2.RUN_STATUS_RUNNING,
        ),
        conversation=conversation_pb2.Conversation(
            id=conversation_id, title="t", team="duet", metadata={"k": "v", "e": ""}
        ),
        messages=[message("hi", client_message_id=f"{run_id}/input", run_id=run_id)],
        events=[
            run_pb2.RunEvent(
                seq=1,
                run_started=run_pb2.RunEvent.RunStarted(
                    run=run_pb2.Run(status=run_pb2.RUN_STATUS_RUNNING)
                ),
            )
        ],
    )


class CountedGroups:
    """Counts the groups `_StartGroups` commits, and their sizes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        commit = postgres_module._StartGroups._commit

        async def counted(groups: Any, group: list[Any]) -> None:
            self.sizes.append(len(group))
            await commit(groups, group)

        monkeypatch.setattr(postgres_module._StartGroups, "_commit", counted)


async def test_concurrent_starts_commit_together_and_each_gets_its_own_answer(
    pg_history: History, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = pg_history.as_user("start-groups")
    counted = CountedGroups(monkeypatch)
    requests = [start() for _ in range(30)]
    answers = await asyncio.gather(*(alice.RecordRunStart(r) for r in requests))
    assert sum(counted.sizes) == 30 and len(counted.sizes) < 30  # groups, not one by one
    for request, answer in zip(requests, answers, strict=True):
        assert answer.created and answer.run.id == request.run.id
        assert answer.run.last_seq == 1 and [m.position for m in answer.messages] == [1]
        # the answer's conversation is the stored row, though it was not read back
        stored = await alice.GetConversation(
            pb.GetConversationRequest(conversation_id=request.conversation.id)
        )
        assert answer.conversation == stored.conversation
        row = await pg.fetchrow(
            "SELECT message_count, title FROM conversations WHERE id = $1",
            request.conversation.id,
        )
        assert tuple(row) == (1, "t")
        assert (
            await pg.fetchval("SELECT count(*) FROM run_events WHERE run_id = $1", request.run.id)
            == 1
        )


async def test_a_used_id_fails_only_its_own_start(
    pg_history: History, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = pg_history.as_user("start-groups-used")
    first = start()
    await alice.RecordRunStart(first)
    counted = CountedGroups(monkeypatch)
    used_run = start(run_id=first.run.id)  # a new conversation, the run id is taken
    used_conversation = start(conversation_id=first.conversation.id)
    others = [start() for _ in range(8)]
    outcomes = await asyncio.gather(
        *(alice.RecordRunStart(r) for r in [used_run, *others, used_conversation]),
        return_exceptions=True,
    )
    assert sum(counted.sizes) == 10
    for failed in (outcomes[0], outcomes[-1]):
        assert isinstance(failed, grpc.aio.AioRpcError)
        assert failed.code() == grpc.StatusCode.ALREADY_EXISTS
    assert not await pg.fetchval(
        "SELECT count(*) FROM conversations WHERE id = $1", used_run.conversation.id
    )  # nothing of a refused start is written
    for request, outcome in zip(others, outcomes[1:-1], strict=True):
        assert isinstance(outcome, pb.RecordRunStartResponse) and outcome.created
        assert await pg.fetchval("SELECT count(*) FROM runs WHERE id = $1", request.run.id) == 1


async def test_an_unreachable_database_fails_the_whole_group_and_writes_nothing(
    pg_history: History, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = pg_history.as_user("start-groups-down")
    requests = [start() for _ in range(6)]

    async def cut(*args: Any, **kwargs: Any) -> None:
        raise ConnectionResetError("connection reset by peer")

    with monkeypatch.context() as patch:
        patch.setattr(asyncpg.Connection, "executemany", cut)
        patch.setattr(asyncpg.Connection, "execute", cut)
        outcomes = await asyncio.gather(
            *(alice.RecordRunStart(r) for r in requests), return_exceptions=True
        )
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError)
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE  # retryable
    ids = [r.run.id for r in requests]
    assert await pg.fetchval("SELECT count(*) FROM runs WHERE id = ANY($1::uuid[])", ids) == 0
    answers = await asyncio.gather(*(alice.RecordRunStart(r) for r in requests))  # a retry
    assert all(a.created for a in answers)
