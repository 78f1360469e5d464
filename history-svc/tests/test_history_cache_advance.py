"""A delta batch stored by PostgreSQL's one-statement path advances the cached run record's
`last_seq` in place (`Cache.advance_runs`) instead of rewriting the record: the version's
last-seq half is replaced and `Run(last_seq=N)` appended, so the value parses as the same
record with the new last seq, keeps its TTL, and a tombstone, a missing key or a newer value
is left alone (issue 18: history-svc's CPU per delta)."""

from __future__ import annotations

import redis.asyncio as redis
from history_helpers import History, new_run, text_event

from chorus.history.cache import LocalCache
from chorus.history.settings import Settings
from chorus.v1 import history_service_pb2 as pb
from chorus.v1 import run_pb2

VERSION = 40
TOMBSTONE = b"9" * VERSION
Batch = pb.AppendRunEventsRequest


async def append(h: History, user: str, run_id: str, *seqs: int) -> None:
    await h.as_user(user).AppendRunEventBatches(
        pb.AppendRunEventBatchesRequest(
            batches=[Batch(run_id=run_id, events=[text_event(s) for s in seqs])]
        )
    )
    await h.app.servicer.drain()


async def test_a_delta_batch_advances_the_cached_record_in_place(
    pg_history: History, redis_direct: redis.Redis, key_prefix: str
) -> None:
    alice = pg_history.as_user("advance")
    run = await new_run(alice)  # cached whole by RecordRun's write-through
    key = f"{key_prefix}run:{run.id}"
    before = await redis_direct.get(key)
    ttl_before = await redis_direct.pttl(key)
    await append(pg_history, "advance", run.id, 1, 2, 3)
    raw = await redis_direct.get(key)
    assert raw[:20] == before[:20]  # same update time
    assert raw[20:VERSION] == b"%020d" % 3
    tail = run_pb2.Run(last_seq=3).SerializeToString()
    assert raw[VERSION:] == before[VERSION:] + tail  # a few bytes, not the record again
    cached = run_pb2.Run.FromString(raw[VERSION:])
    expected = run_pb2.Run.FromString(before[VERSION:])
    expected.last_seq = 3
    assert cached == expected
    assert 0 < await redis_direct.pttl(key) <= ttl_before  # its TTL kept, not renewed
    # GetRunRecord answers from the cache with the new last seq
    got = await alice.GetRunRecord(pb.GetRunRecordRequest(run_id=run.id))
    assert got.run.last_seq == 3


async def test_a_tombstone_a_missing_key_and_a_newer_value_are_left_alone(
    pg_history: History, redis_direct: redis.Redis, key_prefix: str
) -> None:
    alice = pg_history.as_user("advance-skip")
    tomb, missing, newer = [await new_run(alice) for _ in range(3)]
    await redis_direct.set(f"{key_prefix}run:{tomb.id}", TOMBSTONE)
    await redis_direct.delete(f"{key_prefix}run:{missing.id}")
    newer_key = f"{key_prefix}run:{newer.id}"
    raw = await redis_direct.get(newer_key)
    ahead = raw[:20] + b"%020d" % 50 + raw[VERSION:]
    await redis_direct.set(newer_key, ahead)
    for run in (tomb, missing, newer):
        await append(pg_history, "advance-skip", run.id, 1)
    assert await redis_direct.get(f"{key_prefix}run:{tomb.id}") == TOMBSTONE
    assert await redis_direct.get(f"{key_prefix}run:{missing.id}") is None
    assert await redis_direct.get(newer_key) == ahead


async def test_the_in_process_cache_advances_a_copy() -> None:
    cache = LocalCache(Settings(_env_file=None, cache_max_entries=10))  # type: ignore[call-arg]
    run = run_pb2.Run(id="r1", last_seq=2)
    run.update_time.FromMicroseconds(5)
    await cache.put_run(run)
    held = await cache.get_run("r1")
    await cache.advance_runs([("r1", 7), ("unknown", 3)])
    assert held is not None and held.last_seq == 2  # what a reader holds never changes
    advanced = await cache.get_run("r1")
    assert advanced is not None and advanced.last_seq == 7
    await cache.advance_runs([("r1", 4)])  # older: left alone
    assert (await cache.get_run("r1")).last_seq == 7  # type: ignore[union-attr]
    await cache.drop_runs(["r1"])
    await cache.advance_runs([("r1", 9)])
    assert await cache.get_run("r1") is None
