"""RecordRunHeartbeats: many runs' heartbeats in one call, on both back ends.

What is written is read back three ways: the response, GetRunRecord (served from the
cache, which the call must have written through) and the database and cache read directly.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import orjson
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from history_helpers import (
    History,
    TcpProxy,
    UserStub,
    cached_run,
    fields_of,
    make_settings,
    new_run,
    rpc_error,
    running_history,
    text_event,
)

from chorus.core.testing import wait_for
from chorus.history.settings import Settings
from chorus.history.timeutil import datetime_to_us
from chorus.v1 import chat_pb2, run_pb2
from chorus.v1 import history_service_pb2 as pb

S = run_pb2


def beat(
    run_id: str,
    *,
    turns: int = 0,
    last_seq: int = 0,
    instance: str = "orch-a",
    input_tokens: int = 0,
) -> pb.RunHeartbeat:
    return pb.RunHeartbeat(
        run_id=run_id,
        owner_instance=instance,
        turns=turns,
        last_seq=last_seq,
        usage=chat_pb2.Usage(input_tokens=input_tokens, output_tokens=2 * input_tokens),
    )


async def heartbeats(stub: UserStub, *beats: pb.RunHeartbeat) -> list[run_pb2.Run]:
    response = await stub.RecordRunHeartbeats(pb.RecordRunHeartbeatsRequest(heartbeats=beats))
    return list(response.runs)


async def get(stub: UserStub, run_id: str) -> run_pb2.Run:
    return (await stub.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))).run


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Row:
    """A run's row as the database holds it."""

    turns: int
    owner_instance: str
    last_seq: int
    heartbeat_us: int | None
    usage: dict[str, object]
    record: run_pb2.Run


_ROW_SQL = "SELECT turns, owner_instance, last_seq, heartbeat_time, usage, record FROM runs "


async def stored_row(settings: Settings, run_id: str) -> Row:
    """The run's row read from the database directly (not through the service)."""
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            row = await conn.fetchrow(_ROW_SQL + "WHERE id = $1", run_id)
        finally:
            await conn.close()
        heartbeat_us = None if row[3] is None else datetime_to_us(row[3])
    else:
        with sqlite3.connect(settings.sqlite_path) as db:
            row = db.execute(_ROW_SQL + "WHERE id = ?", (run_id,)).fetchone()
        heartbeat_us = row[3]
    record = run_pb2.Run.FromString(row[5])
    record.last_seq = row[2]  # kept in its own column
    return Row(row[0], row[1], row[2], heartbeat_us, orjson.loads(row[4] or "{}"), record)


async def test_one_call_updates_every_run_and_the_values_read_back_everywhere(
    history: History, settings: Settings, alice: UserStub
) -> None:
    runs = [await new_run(alice) for _ in range(2)]  # RUNNING
    runs.append(await new_run(alice, status=S.RUN_STATUS_QUEUED))
    await alice.AppendRunEvents(
        pb.AppendRunEventsRequest(run_id=runs[1].id, events=[text_event(s) for s in (1, 2, 3)])
    )
    before = now_us()
    answer = await heartbeats(
        alice,
        beat(runs[0].id, turns=2, last_seq=7, input_tokens=10),
        beat(runs[1].id.upper(), turns=1, last_seq=1, instance="orch-b"),  # last_seq below 3
        beat(runs[2].id, turns=0, last_seq=0, input_tokens=1),
    )
    after = now_us()

    assert [r.id for r in answer] == [r.id for r in runs]  # request order, canonical ids
    expected = [(2, 7, "orch-a", 10), (1, 3, "orch-b", 0), (0, 0, "orch-a", 1)]
    for run, created, (turns, last_seq, instance, tokens) in zip(
        answer, runs, expected, strict=True
    ):
        assert (run.turns, run.last_seq, run.owner_instance) == (turns, last_seq, instance)
        assert (run.usage.input_tokens, run.usage.output_tokens) == (tokens, 2 * tokens)
        assert before <= run.heartbeat_time.ToMicroseconds() <= after  # the server's clock
        assert run.update_time.ToMicroseconds() > created.update_time.ToMicroseconds()
        # nothing else changed
        assert (run.status, run.owner, run.spec, run.conversation_id) == (
            created.status,
            created.owner,
            created.spec,
            created.conversation_id,
        )
        assert await get(alice, run.id) == run  # GetRunRecord is served from the cache
        assert await cached_run(history, settings, run.id) == run
        row = await stored_row(settings, run.id)
        assert (row.turns, row.last_seq, row.owner_instance) == (turns, last_seq, instance)
        assert row.heartbeat_us == run.heartbeat_time.ToMicroseconds()
        assert row.usage == (
            {"input_tokens": tokens, "output_tokens": 2 * tokens} if tokens else {}
        )
        assert row.record == run


async def test_an_ended_run_is_returned_unchanged_and_the_others_are_updated(
    history: History, settings: Settings, alice: UserStub
) -> None:
    ended = await new_run(alice)
    done = (
        await alice.RecordRun(
            pb.RecordRunRequest(
                run=S.Run(id=ended.id, status=S.RUN_STATUS_COMPLETED, turns=3, final_answer="42"),
                update_mask=FieldMask(paths=["status", "turns", "final_answer"]),
            )
        )
    ).run
    live = await new_run(alice)
    answer = await heartbeats(
        alice, beat(ended.id, turns=9, last_seq=9), beat(live.id, turns=4, last_seq=0)
    )
    assert answer[0] == done  # exactly as stored: no heartbeat time, turns or update time
    assert answer[1].id == live.id and answer[1].turns == 4
    assert await get(alice, ended.id) == done
    assert (await stored_row(settings, ended.id)).record == done
    assert await cached_run(history, settings, ended.id) == done


async def test_a_cancel_recorded_by_another_caller_comes_back_in_the_answer(
    history: History, alice: UserStub
) -> None:
    run = await new_run(alice)
    other = await new_run(alice)
    # CancelRun on another replica records the cancel (as the run's owner)…
    cancel = S.Cancellation(requested_by=alice.user, reason="enough")
    await alice.RecordRun(
        pb.RecordRunRequest(
            run=S.Run(id=run.id, cancellation=cancel),
            update_mask=FieldMask(paths=["cancellation"]),
        )
    )
    # …and the executing replica's heartbeat (as the service identity) learns of it
    answer = await heartbeats(history.system(), beat(run.id, turns=1), beat(other.id, turns=1))
    assert answer[0].cancellation == cancel and answer[0].status == S.RUN_STATUS_RUNNING
    assert answer[0].turns == 1 and answer[0].heartbeat_time.seconds
    assert not answer[1].HasField("cancellation")
    # the cancel stays (a heartbeat never clears it)
    assert (await get(alice, run.id)).cancellation == cancel


async def test_missing_and_foreign_runs_are_left_out_and_the_service_identity_sees_all(
    history: History, alice: UserStub, bob: UserStub
) -> None:
    alices = await new_run(alice)
    bobs = await new_run(bob)
    missing = str(uuid.uuid4())

    answer = await heartbeats(
        bob, beat(alices.id, turns=5), beat(missing, turns=5), beat(bobs.id, turns=5)
    )
    assert [r.id for r in answer] == [bobs.id]
    assert await get(alice, alices.id) == alices  # not written
    assert (await history.app.store.get_run(alices.id, None)) == alices
    assert await history.app.store.get_run(missing, None) is None  # not created

    answer = await heartbeats(
        history.system(), beat(alices.id, turns=6), beat(missing, turns=6), beat(bobs.id, turns=6)
    )
    assert [(r.id, r.owner, r.turns) for r in answer] == [
        (alices.id, alice.user, 6),
        (bobs.id, bob.user, 6),
    ]
    assert (await get(alice, alices.id)).turns == 6
    assert (await get(bob, bobs.id)).turns == 6


async def test_bad_heartbeats_are_invalid_argument_naming_each_field_and_write_nothing(
    history: History, alice: UserStub
) -> None:
    runs = [await new_run(alice) for _ in range(2)]
    bad = [
        beat(runs[0].id, turns=5),  # fine on its own
        beat("not-a-uuid"),
        beat(""),
        beat(runs[0].id.upper()),  # the same run again
        pb.RunHeartbeat(
            run_id=runs[1].id,
            turns=-1,
            last_seq=-2,
            owner_instance="x" * 257,
            usage=chat_pb2.Usage(output_tokens=-3, cost_usd=float("nan")),
        ),
    ]
    err = await rpc_error(heartbeats(alice, *bad))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err) == {
        "heartbeats[1].run_id",
        "heartbeats[2].run_id",
        "heartbeats[3].run_id",
        "heartbeats[4].turns",
        "heartbeats[4].last_seq",
        "heartbeats[4].owner_instance",
        "heartbeats[4].usage.output_tokens",
        "heartbeats[4].usage.cost_usd",
    }
    err = await rpc_error(heartbeats(alice))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"heartbeats"}
    too_many = [beat(str(uuid.uuid4())) for _ in range(1001)]
    err = await rpc_error(heartbeats(alice, *too_many))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(err) == {"heartbeats"}
    # the limit itself is fine (every run missing: an empty answer)
    assert await heartbeats(alice, *too_many[:1000]) == []
    for run in runs:  # nothing was written, in the cache or the database
        assert await get(alice, run.id) == run
        assert await history.app.store.get_run(run.id, None) == run


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5432)
    await p.start()
    yield p
    await p.cut()


async def test_with_postgres_unreachable_the_call_is_unavailable(
    pg_url: str, proxy: TcpProxy
) -> None:
    parts = urlsplit(pg_url)
    via_proxy = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    settings = make_settings(database_url=via_proxy, db_connect_timeout_s=1, db_command_timeout_s=2)
    async with running_history(settings) as h:
        alice = h.as_user(f"hb-outage-{uuid.uuid4().hex[:8]}")
        run = await new_run(alice)
        await proxy.cut()
        err = await rpc_error(heartbeats(alice, beat(run.id, turns=1)))
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "DATABASE_UNAVAILABLE"
        await proxy.restore()

        async def recorded() -> bool:
            try:
                return [r.turns for r in await heartbeats(alice, beat(run.id, turns=1))] == [1]
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return False

        await wait_for(recorded)
