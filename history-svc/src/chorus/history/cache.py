"""The cache in front of the store: Redis (shared by replicas) or in-process (embedded).

Write-through: after the store committed, the handler puts the new value here. Cache-aside:
a read looks here first, then in the store, then fills the cache. Redis is never needed for
correctness: a failed Redis call counts as a miss (reads) or drops the key as soon as Redis
answers again (writes; `chorus_history_cache_write_failures_total`), and every key expires
after `cache_ttl_s`.

Values carry a version (update time and message count or last seq) and are only ever
replaced by a newer one (a Lua compare-and-set in Redis), so a slow cache fill can't
overwrite a newer write-through. Deleted conversations and runs leave a tombstone for one
TTL, so a fill racing the delete can't bring them back; the tombstone is written before the
delete's transaction as well as after it, so a process dying between its commit and its
cache cleanup leaves no readable copy of what it deleted (issue 23). Message lists hold the first
`cache_max_messages` messages of a conversation and are valid only when their positions are
1..n with n = min(message_count, limit) — messages never change once stored, so a list that
passes this check is exactly right.

Redis keys (prefix `redis_key_prefix`): `conv:{id}` (version + the Conversation framed as
field 1 of GetConversationResponse), `conv:{id}:msgs` (the messages framed as field 2 of
GetConversationResponse, appended to with APPEND), `run:{id}` (version + Run bytes; a
tombstone is the version `99…9` alone). A hit
is therefore one round trip and one protobuf parse of `conv + msgs` into the response — no
per-message work in Python.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any

import cachetools
import redis.asyncio as redis
from redis.commands.core import AsyncScript

from chorus.history import metrics
from chorus.history.redis_guard import ERRORS, RedisGuard, queue_script
from chorus.history.settings import Settings
from chorus.history.timeutil import ts_to_us
from chorus.v1 import conversation_pb2, history_service_pb2, run_pb2

GetConversationResponse = history_service_pb2.GetConversationResponse

_VERSION_CHARS = 40
_TOMBSTONE = b"9" * _VERSION_CHARS

# KEYS[1]: key; ARGV: version, value, ttl ms. Sets version..value unless the stored version
# is the same or newer (a tombstone is newer than everything). Returns 1 when set.
_SET_IF_NEWER = """
local cur = redis.call('GETRANGE', KEYS[1], 0, 39)
if cur ~= '' and cur >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: keys; ARGV[1]: ttl ms; ARGV[2k], ARGV[2k + 1]: version and value for KEYS[k].
# `_SET_IF_NEWER` for every key, in order, in one call. Returns how many were set.
_SET_MANY_IF_NEWER = """
local set = 0
for k, key in ipairs(KEYS) do
  local version = ARGV[2 * k]
  local cur = redis.call('GETRANGE', key, 0, 39)
  if cur == '' or cur < version then
    redis.call('SET', key, version .. ARGV[2 * k + 1], 'PX', ARGV[1])
    set = set + 1
  end
end
return set
"""

# Keys per `_SET_MANY_IF_NEWER` call: bounds how long one call holds Redis (~1 ms).
_MANY_KEYS = 500


# KEYS: run keys; ARGV[2k - 1]: the new last seq of KEYS[k] as 20 digits; ARGV[2k]: a
# serialized Run holding only that last seq. A cached record whose version's last-seq half
# is older gets that half replaced and the bytes appended (protobuf: the last value of a
# field wins, so the record now parses with the new last seq); its TTL is kept. A missing
# key, a tombstone (all 9s) or a newer value is left alone. Returns how many were advanced.
_ADVANCE_LAST_SEQ = """
local n = 0
for k, key in ipairs(KEYS) do
  local seq = ARGV[2 * k - 1]
  local cur = redis.call('GETRANGE', key, 20, 39)
  if cur ~= '' and cur < seq then
    redis.call('SETRANGE', key, 20, seq)
    redis.call('APPEND', key, ARGV[2 * k])
    n = n + 1
  end
end
return n
"""

# KEYS[1]: key; ARGV[1]: bytes. Appends only to an existing value (a missing list stays
# missing until a full fill). Returns the new length, or 0.
_APPEND_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('APPEND', KEYS[1], ARGV[1]) end
return 0
"""


def conversation_version(conv: conversation_pb2.Conversation) -> bytes:
    """Fixed-width version of a conversation: update time (strictly increasing per write)."""
    return b"%020d%020d" % (ts_to_us(conv.update_time) or 0, conv.message_count)


def run_version(run: run_pb2.Run) -> bytes:
    """Fixed-width version of a run record: update time, then last seq."""
    return b"%020d%020d" % (ts_to_us(run.update_time) or 0, run.last_seq)


def _framed(conversation: conversation_pb2.Conversation) -> bytes:
    """The conversation as field 1 of GetConversationResponse (so responses are concatenations)."""
    return GetConversationResponse(conversation=conversation).SerializeToString()


def messages_valid(messages: Sequence[conversation_pb2.Message], expected: int) -> bool:
    """A cached list is usable when it holds positions 1..expected in order."""
    return len(messages) == expected and all(m.position == i for i, m in enumerate(messages, 1))


class Cache(abc.ABC):
    """Cached conversations, message lists and run records.

    Args:
        max_messages: messages cached per conversation (its first ones).
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages

    @abc.abstractmethod
    async def get_conversation(
        self, conversation_id: str, with_messages: bool
    ) -> tuple[GetConversationResponse | None, bool]:
        """`(response, messages_included)`: the cached conversation as a GetConversation
        response (None when not cached); with `with_messages`, also its first messages when
        they are validly cached (`messages_included`)."""

    @abc.abstractmethod
    async def put_conversation(self, conversation: conversation_pb2.Conversation) -> None:
        """Cache the conversation unless a newer version is cached."""

    @abc.abstractmethod
    async def put_messages(
        self, conversation_id: str, messages: Sequence[conversation_pb2.Message]
    ) -> None:
        """Cache the conversation's first messages (read from the store)."""

    @abc.abstractmethod
    async def append_messages(
        self, conversation: conversation_pb2.Conversation, added: Sequence[conversation_pb2.Message]
    ) -> None:
        """Write-through of AppendMessages: the conversation and its new messages."""

    @abc.abstractmethod
    async def drop_conversation(self, conversation_id: str) -> None:
        """Forget a deleted conversation (tombstone) and its messages."""

    @abc.abstractmethod
    async def drop_runs(self, run_ids: Sequence[str]) -> None:
        """Forget deleted runs: a tombstone for each, so no fill or write-through of an
        older version caches them again within the TTL."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> run_pb2.Run | None:
        """The cached run record, or None."""

    @abc.abstractmethod
    async def put_run(self, run: run_pb2.Run) -> None:
        """Cache the run record unless a newer version is cached."""

    async def put_runs(self, runs: Sequence[run_pb2.Run]) -> None:
        """`put_run` for each of `runs` (one round trip where the cache is remote)."""
        for run in runs:
            await self.put_run(run)

    async def advance_runs(self, last_seqs: Sequence[tuple[str, int]]) -> None:
        """Raise the cached records' `last_seq` to each `(run_id, last_seq)` (a delta batch
        stored, the rest of the record unchanged); a record not cached, deleted or newer
        is left alone. Cheaper than `put_runs`: no record is read or written whole."""
        for run_id, last_seq in last_seqs:
            cached = await self.get_run(run_id)
            if cached is not None and cached.last_seq < last_seq:
                advanced = run_pb2.Run()
                advanced.CopyFrom(cached)
                advanced.last_seq = last_seq
                await self.put_run(advanced)

    def run_writes(
        self,
        runs: Sequence[run_pb2.Run],
        last_seqs: Sequence[tuple[str, int]],
        conversations: Sequence[conversation_pb2.Conversation] = (),
        messages: Sequence[Appended] = (),
    ) -> RunWrites:
        """`put_runs(runs)`, `advance_runs(last_seqs)`, `put_conversation` of each of
        `conversations` and `append_messages` of each of `messages` as one `RunWrites`, to
        be sent on its own (`RunWrites.send`) or, where the cache is Redis, queued on the
        live log's pipeline (one round trip for many calls' log entries and cached
        values: `chorus.history.shared`)."""
        return RunWrites(self, runs, last_seqs, conversations, messages)


Appended = tuple[conversation_pb2.Conversation, Sequence[conversation_pb2.Message]]
"""A conversation as a commit left it and the messages that commit added to it (those of
`Cache.append_messages`)."""


class RunWrites:
    """Cached-record writes of committed calls (`Cache.run_writes`): whole records (`runs`,
    read by the store), last-seq advances (`last_seqs`: `(run_id, last_seq)`), new or
    changed `conversations` and message appends (`messages`).

    `send` writes them on their own. On Redis, `queue` puts them on a caller's pipeline
    instead and `sent` takes that pipeline's outcome. Nothing raises: a failure is counted
    and the keys are dropped once Redis answers again, as for any cache write."""

    def __init__(
        self,
        cache: Cache,
        runs: Sequence[run_pb2.Run],
        last_seqs: Sequence[tuple[str, int]],
        conversations: Sequence[conversation_pb2.Conversation] = (),
        messages: Sequence[Appended] = (),
    ) -> None:
        self.cache = cache
        self.runs = runs
        self.last_seqs = last_seqs
        self.conversations = conversations
        self.messages = messages

    async def send(self) -> None:
        """Write them (one round trip per kind where the cache is remote)."""
        await asyncio.gather(
            self.cache.put_runs(self.runs),
            self.cache.advance_runs(self.last_seqs),
            *map(self.cache.put_conversation, self.conversations),
            *(self.cache.append_messages(conv, added) for conv, added in self.messages),
        )


def _count(entity: str, hit: bool) -> None:
    metrics.CACHE_REQUESTS.labels(entity, "hit" if hit else "miss").inc()


class RedisCache(Cache):
    """`Cache` in Redis, shared by every replica.

    Args:
        client: a `redis.asyncio` client (bytes responses).
        guard: the shared Redis availability tracker.
    """

    def __init__(self, client: redis.Redis, guard: RedisGuard, settings: Settings) -> None:
        super().__init__(settings.cache_max_messages)
        self._redis = client
        self._guard = guard
        self._prefix = settings.redis_key_prefix
        self._ttl_ms = settings.cache_ttl_s * 1000
        self._set_if_newer = guard.script(client, _SET_IF_NEWER)
        self._set_many_if_newer = guard.script(client, _SET_MANY_IF_NEWER)
        self._append_if_exists = guard.script(client, _APPEND_IF_EXISTS)
        self._advance_last_seq = guard.script(client, _ADVANCE_LAST_SEQ)
        self._dirty: set[str] = set()

    def conversation_key(self, conversation_id: str) -> str:
        return f"{self._prefix}conv:{conversation_id}"

    def messages_key(self, conversation_id: str) -> str:
        return f"{self._prefix}conv:{conversation_id}:msgs"

    def run_key(self, run_id: str) -> str:
        return f"{self._prefix}run:{run_id}"

    async def _ready(self) -> bool:
        """Redis may be used now (after dropping keys whose write-through failed)."""
        if not self._guard.usable() or not await self._guard.scripts_ready(self._redis):
            return False
        if self._dirty:
            keys = list(self._dirty)
            try:
                await self._redis.delete(*keys)
            except ERRORS as exc:
                self._guard.failed("drop_stale", exc)
                return False
            self._dirty.difference_update(keys)
            self._guard.succeeded()
        return True

    def _write_failed(self, operation: str, exc: BaseException, *keys: str) -> None:
        self._guard.failed(operation, exc)
        metrics.CACHE_WRITE_FAILURES.inc()
        if len(self._dirty) < 100_000:  # beyond that the TTL bounds staleness
            self._dirty.update(keys)

    async def get_conversation(
        self, conversation_id: str, with_messages: bool
    ) -> tuple[GetConversationResponse | None, bool]:
        if not await self._ready():
            return None, False
        try:
            if with_messages:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.get(self.conversation_key(conversation_id))
                    pipe.get(self.messages_key(conversation_id))
                    raw, listed = await pipe.execute()
            else:
                raw, listed = await self._redis.get(self.conversation_key(conversation_id)), None
        except ERRORS as exc:
            self._guard.failed("get_conversation", exc)
            return None, False
        self._guard.succeeded()
        if raw is None or raw.startswith(_TOMBSTONE):
            _count("conversation", False)
            return None, False
        _count("conversation", True)
        if listed is None:
            if with_messages:
                _count("messages", False)
            return GetConversationResponse.FromString(raw[_VERSION_CHARS:]), False
        resp = GetConversationResponse.FromString(raw[_VERSION_CHARS:] + listed)
        valid = messages_valid(
            resp.messages, min(resp.conversation.message_count, self.max_messages)
        )
        _count("messages", valid)
        if not valid:
            del resp.messages[:]
        return resp, valid

    async def put_conversation(self, conversation: conversation_pb2.Conversation) -> None:
        key = self.conversation_key(conversation.id)
        if not await self._ready():
            self._dirty.add(key)
            return
        try:
            await self._set_if_newer(
                keys=[key],
                args=[
                    conversation_version(conversation),
                    _framed(conversation),
                    self._ttl_ms,
                ],
            )
        except ERRORS as exc:
            self._write_failed("put_conversation", exc, key)
            return
        self._guard.succeeded()

    async def put_messages(
        self, conversation_id: str, messages: Sequence[conversation_pb2.Message]
    ) -> None:
        if not await self._ready():
            return
        key = self.messages_key(conversation_id)
        blob = GetConversationResponse(messages=messages[: self.max_messages]).SerializeToString()
        try:
            await self._redis.set(key, blob, px=self._ttl_ms)
        except ERRORS as exc:
            self._guard.failed("put_messages", exc)
            return
        self._guard.succeeded()

    async def append_messages(
        self, conversation: conversation_pb2.Conversation, added: Sequence[conversation_pb2.Message]
    ) -> None:
        conv_key, msgs_key = (
            self.conversation_key(conversation.id),
            self.messages_key(conversation.id),
        )
        if not await self._ready():
            self._dirty.update((conv_key, msgs_key))
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await self._queue_append_messages(pipe, conversation, added)
                await pipe.execute()
        except ERRORS as exc:
            self._write_failed("append_messages", exc, conv_key, msgs_key)
            return
        self._guard.succeeded()

    async def _queue_append_messages(
        self,
        pipe: redis.client.Pipeline,
        conversation: conversation_pb2.Conversation,
        added: Sequence[conversation_pb2.Message],
    ) -> None:
        """Queue `append_messages`' commands on `pipe`: the conversation if newer, and the
        new messages appended to a cached list."""
        queue_script(
            pipe,
            self._set_if_newer,
            [self.conversation_key(conversation.id)],
            [conversation_version(conversation), _framed(conversation), self._ttl_ms],
        )
        cached = [m for m in added if m.position <= self.max_messages]
        if cached:
            blob = GetConversationResponse(messages=cached).SerializeToString()
            queue_script(pipe, self._append_if_exists, [self.messages_key(conversation.id)], [blob])

    async def drop_conversation(self, conversation_id: str) -> None:
        conv_key, msgs_key = (
            self.conversation_key(conversation_id),
            self.messages_key(conversation_id),
        )
        if not await self._ready():
            self._dirty.update((conv_key, msgs_key))
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(conv_key, _TOMBSTONE, px=self._ttl_ms)
                pipe.delete(msgs_key)
                await pipe.execute()
        except ERRORS as exc:
            self._write_failed("drop_conversation", exc, conv_key, msgs_key)
            return
        self._guard.succeeded()

    async def drop_runs(self, run_ids: Sequence[str]) -> None:
        keys = [self.run_key(run_id) for run_id in run_ids]
        if not keys:
            return
        if not await self._ready():
            self._dirty.update(keys)
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, _TOMBSTONE, px=self._ttl_ms)
                await pipe.execute()
        except ERRORS as exc:
            self._write_failed("drop_runs", exc, *keys)
            return
        self._guard.succeeded()

    async def get_run(self, run_id: str) -> run_pb2.Run | None:
        if not await self._ready():
            return None
        try:
            raw = await self._redis.get(self.run_key(run_id))
        except ERRORS as exc:
            self._guard.failed("get_run", exc)
            return None
        self._guard.succeeded()
        if not isinstance(raw, bytes) or raw.startswith(_TOMBSTONE):  # None: not cached
            _count("run", False)
            return None
        _count("run", True)
        return run_pb2.Run.FromString(raw[_VERSION_CHARS:])

    async def put_run(self, run: run_pb2.Run) -> None:
        key = self.run_key(run.id)
        if not await self._ready():
            self._dirty.add(key)
            return
        try:
            await self._set_if_newer(
                keys=[key], args=[run_version(run), run.SerializeToString(), self._ttl_ms]
            )
        except ERRORS as exc:
            self._write_failed("put_run", exc, key)
            return
        self._guard.succeeded()

    async def put_runs(self, runs: Sequence[run_pb2.Run]) -> None:
        # A delta flush carries a batch for every live run: commands and replies were most
        # of history-svc's Redis time under 300 slow streams with one call per run.
        await self._per_run_scripts(
            "put_runs",
            self._set_many_if_newer,
            [self.run_key(run.id) for run in runs],
            [(run_version(run), run.SerializeToString()) for run in runs],
            prefix=[self._ttl_ms],
        )

    async def advance_runs(self, last_seqs: Sequence[tuple[str, int]]) -> None:
        # a few bytes per run instead of its record
        await self._per_run_scripts(
            "advance_runs",
            self._advance_last_seq,
            [self.run_key(run_id) for run_id, _ in last_seqs],
            [
                (b"%020d" % last_seq, run_pb2.Run(last_seq=last_seq).SerializeToString())
                for _, last_seq in last_seqs
            ],
        )

    async def queue_run_writes(self, pipe: Any, writes: RunWrites) -> int | None:
        """Queue `writes` on `pipe` (a non-transactional pipeline of this cache's client):
        how many commands were queued (0: nothing to write), or None when Redis is skipped
        now (their keys are then dropped once it answers again). The pipeline's owner
        hands their replies to `run_writes_sent`."""
        keys, calls = self._run_write_calls(writes)
        if not keys:
            return 0
        if not await self._ready():
            self._dirty.update(keys)
            return None
        for script, script_keys, args in calls:
            queue_script(pipe, script, script_keys, args)
        return len(calls)

    def run_writes_sent(self, writes: RunWrites, replies: Sequence[Any] | BaseException) -> None:
        """The outcome of `queue_run_writes`' commands: their replies, or the exception the
        pipeline raised."""
        if isinstance(replies, BaseException):
            failure: BaseException | None = replies
        else:
            failure = next((r for r in replies if isinstance(r, BaseException)), None)
        if failure is None:
            self._guard.succeeded()
            return
        keys = [self.run_key(run.id) for run in writes.runs]
        keys += [self.run_key(run_id) for run_id, _ in writes.last_seqs]
        keys += [self.conversation_key(c.id) for c in writes.conversations]
        for conv, _ in writes.messages:
            keys += [self.conversation_key(conv.id), self.messages_key(conv.id)]
        self._write_failed("run_writes", failure, *keys)

    def _run_write_calls(
        self, writes: RunWrites
    ) -> tuple[list[str], list[tuple[AsyncScript, list[str], list[bytes | int]]]]:
        """The keys of `writes` and its script calls `(script, keys, args)`, at most
        `_MANY_KEYS` keys each."""
        calls: list[tuple[AsyncScript, list[str], list[bytes | int]]] = []
        all_keys: list[str] = []
        for script, keys, per_key, prefix in (
            (
                self._set_many_if_newer,
                [self.run_key(run.id) for run in writes.runs],
                [(run_version(run), run.SerializeToString()) for run in writes.runs],
                [self._ttl_ms],
            ),
            (
                self._advance_last_seq,
                [self.run_key(run_id) for run_id, _ in writes.last_seqs],
                [
                    (b"%020d" % last_seq, run_pb2.Run(last_seq=last_seq).SerializeToString())
                    for _, last_seq in writes.last_seqs
                ],
                [],
            ),
        ):
            all_keys += keys
            for start in range(0, len(keys), _MANY_KEYS):
                args: list[bytes | int] = list(prefix)
                for pair in per_key[start : start + _MANY_KEYS]:
                    args += pair
                calls.append((script, keys[start : start + _MANY_KEYS], args))
        for conversation in writes.conversations:
            key = self.conversation_key(conversation.id)
            all_keys.append(key)
            version = conversation_version(conversation)
            calls.append(
                (self._set_if_newer, [key], [version, _framed(conversation), self._ttl_ms])
            )
        # `append_messages` of each: the conversation if newer, then the messages appended
        # to a cached list. Not in one MULTI as `append_messages` sends them: a reader
        # between the two finds a list shorter than the count and reads the store
        # (`messages_valid`).
        for conversation, added in writes.messages:
            conv_key = self.conversation_key(conversation.id)
            all_keys.append(conv_key)
            version = conversation_version(conversation)
            calls.append(
                (self._set_if_newer, [conv_key], [version, _framed(conversation), self._ttl_ms])
            )
            cached = [m for m in added if m.position <= self.max_messages]
            if cached:
                blob = GetConversationResponse(messages=cached).SerializeToString()
                msgs_key = self.messages_key(conversation.id)
                all_keys.append(msgs_key)
                calls.append((self._append_if_exists, [msgs_key], [blob]))
        return all_keys, calls

    async def _per_run_scripts(
        self,
        operation: str,
        script: AsyncScript,
        keys: list[str],
        per_key: list[tuple[bytes, bytes]],
        prefix: Sequence[bytes | int] = (),
    ) -> None:
        """Run `script` over `keys` in calls of at most `_MANY_KEYS` keys, pipelined: each
        call gets `prefix`, then the two arguments of each of its keys. A failure is
        counted and its keys dropped once Redis answers again (`_write_failed`)."""
        if not keys:
            return
        if not await self._ready():
            self._dirty.update(keys)
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), _MANY_KEYS):
                    args: list[bytes | int] = list(prefix)
                    for pair in per_key[start : start + _MANY_KEYS]:
                        args += pair
                    queue_script(pipe, script, keys[start : start + _MANY_KEYS], args)
                await pipe.execute()
        except ERRORS as exc:
            self._write_failed(operation, exc, *keys)
            return
        self._guard.succeeded()


class LocalCache(Cache):
    """`Cache` in this process (TTL + LRU, `cache_max_entries`), for the embedded default.

    Values are the stored messages themselves; callers copy them into responses and never
    mutate them.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.cache_max_messages)
        self._entries: cachetools.TTLCache[tuple[str, str], tuple[bytes, object]] = (
            cachetools.TTLCache(settings.cache_max_entries, settings.cache_ttl_s)
        )

    def _put_if_newer(self, key: tuple[str, str], version: bytes, value: object) -> None:
        current = self._entries.get(key)
        if current is None or current[0] < version:
            self._entries[key] = (version, value)

    async def get_conversation(
        self, conversation_id: str, with_messages: bool
    ) -> tuple[GetConversationResponse | None, bool]:
        entry = self._entries.get(("conv", conversation_id))
        if entry is None or entry[0] == _TOMBSTONE:
            _count("conversation", False)
            return None, False
        _count("conversation", True)
        conv: conversation_pb2.Conversation = entry[1]  # type: ignore[assignment]
        if not with_messages:
            return GetConversationResponse(conversation=conv), False
        listed = self._entries.get(("msgs", conversation_id))
        messages: list[conversation_pb2.Message] | None = None if listed is None else listed[1]  # type: ignore[assignment]
        valid = messages is not None and messages_valid(
            messages, min(conv.message_count, self.max_messages)
        )
        _count("messages", valid)
        return GetConversationResponse(conversation=conv, messages=messages if valid else ()), valid

    async def put_conversation(self, conversation: conversation_pb2.Conversation) -> None:
        self._put_if_newer(
            ("conv", conversation.id), conversation_version(conversation), conversation
        )

    async def put_messages(
        self, conversation_id: str, messages: Sequence[conversation_pb2.Message]
    ) -> None:
        self._entries[("msgs", conversation_id)] = (b"", list(messages[: self.max_messages]))

    async def append_messages(
        self, conversation: conversation_pb2.Conversation, added: Sequence[conversation_pb2.Message]
    ) -> None:
        await self.put_conversation(conversation)
        listed = self._entries.get(("msgs", conversation.id))
        if listed is not None:
            messages: list[conversation_pb2.Message] = listed[1]  # type: ignore[assignment]
            fresh = messages + [m for m in added if m.position <= self.max_messages]
            self._entries[("msgs", conversation.id)] = (b"", fresh)

    async def drop_conversation(self, conversation_id: str) -> None:
        self._entries[("conv", conversation_id)] = (_TOMBSTONE, None)
        self._entries.pop(("msgs", conversation_id), None)

    async def drop_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            self._entries[("run", run_id)] = (_TOMBSTONE, None)

    async def get_run(self, run_id: str) -> run_pb2.Run | None:
        entry = self._entries.get(("run", run_id))
        hit = entry is not None and entry[0] != _TOMBSTONE
        _count("run", hit)
        return entry[1] if hit else None  # type: ignore[index,return-value]

    async def put_run(self, run: run_pb2.Run) -> None:
        self._put_if_newer(("run", run.id), run_version(run), run)

    async def advance_runs(self, last_seqs: Sequence[tuple[str, int]]) -> None:
        for run_id, last_seq in last_seqs:
            entry = self._entries.get(("run", run_id))
            if entry is None or entry[0] == _TOMBSTONE:
                continue
            cached: run_pb2.Run = entry[1]  # type: ignore[assignment]
            if cached.last_seq < last_seq:  # a new message: readers may hold the old one
                advanced = run_pb2.Run()
                advanced.CopyFrom(cached)
                advanced.last_seq = last_seq
                self._put_if_newer(("run", run_id), run_version(advanced), advanced)
