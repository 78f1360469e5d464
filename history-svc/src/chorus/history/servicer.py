"""`chorus.v1.HistoryService` handlers: validate, call the store, keep the cache and log in step.

Each handler checks the whole request first (INVALID_ARGUMENT naming every bad field, before
any write), scopes every read and write by the caller's identity (`SYSTEM_USER` may act on
any owner's rows by id), commits to the store, and only then updates the cache and the live
event log, whose failures never fail the call. The contract is the comment of each RPC in
proto/chorus/v1/history_service.proto.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from chorus.core.errors import ChorusError, InvalidArgument, PermissionDenied, Violations
from chorus.core.identity import Identity, current_identity, current_request_id
from chorus.history import events as event_rules
from chorus.history import limits, metrics, pagination, validation
from chorus.history import runs as run_rules
from chorus.history.cache import Cache
from chorus.history.event_log import EventLog
from chorus.history.settings import Settings
from chorus.history.shared import SharedWrites
from chorus.history.stores.base import (
    AppendedEvents,
    Checkpoint,
    EventWrite,
    RunFilter,
    RunUpdate,
    Store,
    conversation_not_found,
    run_not_found,
)
from chorus.history.timeutil import now_us, set_ts, ts_to_us
from chorus.history.watch import Watcher
from chorus.v1 import (
    conversation_pb2,
    history_service_pb2,
    history_service_pb2_grpc,
    run_pb2,
)

_CONVERSATION_PATHS = ("title", "model", "team", "metadata")

pb = history_service_pb2


@contextmanager
def _checked(message: str = "invalid request") -> Iterator[Violations]:
    """Every handler's first step: the block collects the request's violations, its end
    raises them all at once, before anything is read or written.

    Raises:
        InvalidArgument: `message` and a BadRequest field violation per bad field.
    """
    v = Violations()
    yield v
    v.raise_if_any(message)


def _scope(ident: Identity) -> str | None:
    """The owner every query is restricted to; None for the service identity."""
    return None if ident.is_system else ident.user


def _visible(ident: Identity, owner: str) -> bool:
    return ident.is_system or owner == ident.user


def _new_conversation(
    given: conversation_pb2.Conversation, conversation_id: str, owner: str, now: int
) -> conversation_pb2.Conversation:
    """The conversation to insert: the client-settable fields of `given`, id, owner, times."""
    conv = conversation_pb2.Conversation(
        id=conversation_id, owner=owner, title=given.title, team=given.team
    )
    if given.HasField("model"):
        conv.model.CopyFrom(given.model)
    conv.metadata.update(given.metadata)
    set_ts(conv.create_time, now)
    set_ts(conv.update_time, now)
    return conv


def _canonical_run_ids(messages: Iterable[conversation_pb2.Message]) -> None:
    """Messages' `run_id`s in canonical UUID form (validated before)."""
    for msg in messages:
        if msg.run_id:
            msg.run_id = str(uuid.UUID(msg.run_id))


class HistoryServicer(history_service_pb2_grpc.HistoryServiceServicer):
    """The HistoryService over a `Store`, a `Cache` and an `EventLog`."""

    def __init__(self, settings: Settings, store: Store, cache: Cache, log: EventLog) -> None:
        self._settings = settings
        self._store = store
        self._cache = cache
        self._log = log
        self._shared = SharedWrites(log, cache)
        self._watcher = Watcher(store, log, settings)

    # Conversations

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateConversationResponse:
        ident = current_identity()
        with _checked() as v:
            validation.conversation_fields(v, request.conversation, _CONVERSATION_PATHS)
            validation.request_id(v, "request_id", request.request_id)
        conv = _new_conversation(request.conversation, str(uuid.uuid4()), ident.user, now_us())
        stored, _ = await self._store.create_conversation(conv, request.request_id)
        await self._cache.put_conversation(stored)
        return pb.CreateConversationResponse(conversation=stored)

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        ident = current_identity()
        with _checked() as v:
            conversation_id = validation.uuid_field(v, "conversation_id", request.conversation_id)
        with_messages = request.include_messages
        resp, complete = await self._cache.get_conversation(conversation_id, with_messages)
        if resp is not None and not _visible(ident, resp.conversation.owner):
            raise conversation_not_found(conversation_id)
        if resp is None:
            conv = await self._store.get_conversation(conversation_id, _scope(ident))
            if conv is None:
                raise conversation_not_found(conversation_id)
            await self._cache.put_conversation(conv)
            resp = pb.GetConversationResponse(conversation=conv)
        if with_messages and not complete:
            messages = await self._store.list_messages(
                conversation_id, _scope(ident), 0, limits.MAX_INCLUDED_MESSAGES
            )
            if messages is None:
                raise conversation_not_found(conversation_id)
            await self._cache.put_messages(conversation_id, messages)
            resp.messages.extend(messages)
        return resp

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConversationsResponse:
        ident = current_identity()
        with _checked() as v:
            size = validation.page_size(v, request.page_size, limits.CONVERSATIONS_PAGE)
        found, token = await pagination.page(
            pagination.fingerprint("ListConversations", ident.user),
            request.page_token,
            (int, str),
            size,
            lambda cursor, limit: self._store.list_conversations(
                ident.user, limit, None if cursor is None else (cursor[0], cursor[1])
            ),
            lambda last: [ts_to_us(last.update_time), last.id],
        )
        return pb.ListConversationsResponse(conversations=found, next_page_token=token)

    async def UpdateConversation(
        self, request: pb.UpdateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateConversationResponse:
        ident = current_identity()
        with _checked() as v:
            conversation_id = validation.uuid_field(v, "conversation.id", request.conversation.id)
            paths = validation.mask_paths(v, request.update_mask, _CONVERSATION_PATHS)
            validation.conversation_fields(v, request.conversation, paths)
        updated = await self._store.update_conversation(
            conversation_id, _scope(ident), request.conversation, paths, now_us()
        )
        if updated is None:
            raise conversation_not_found(conversation_id)
        await self._cache.put_conversation(updated)
        return pb.UpdateConversationResponse(conversation=updated)

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConversationResponse:
        ident = current_identity()
        with _checked() as v:
            conversation_id = validation.uuid_field(v, "conversation_id", request.conversation_id)
        scope = _scope(ident)
        if await self._store.get_conversation(conversation_id, scope) is None:
            raise conversation_not_found(conversation_id)
        # Tombstones before the transaction as well as after: a process dying between its
        # commit and its cleanup leaves no cached copy that a read could serve (issue 23).
        run_ids = await self._store.conversation_run_ids(conversation_id)
        await asyncio.gather(
            self._cache.drop_conversation(conversation_id), self._cache.drop_runs(run_ids)
        )
        deleted = await self._store.delete_conversation(conversation_id, scope)
        if deleted is None:
            raise conversation_not_found(conversation_id)
        await self._forget(deleted, conversation_id)
        return pb.DeleteConversationResponse()

    async def _forget(self, run_ids: list[str], conversation_id: str | None = None) -> None:
        """After a delete committed: tombstone the cached copies and drop the live logs."""
        writes = [self._cache.drop_runs(run_ids), self._log.drop(run_ids)]
        if conversation_id is not None:
            writes.append(self._cache.drop_conversation(conversation_id))
        await asyncio.gather(*writes)

    # Messages

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendMessagesResponse:
        ident = current_identity()
        with _checked("invalid messages") as v:
            conversation_id = validation.uuid_field(v, "conversation_id", request.conversation_id)
            validation.messages(v, request.messages, limits.MAX_MESSAGES_PER_APPEND)
        _canonical_run_ids(request.messages)
        result = await self._store.append_messages(
            conversation_id, _scope(ident), request.messages, now_us()
        )
        if result is None:
            raise conversation_not_found(conversation_id)
        if result.added:  # cached before the answer, on a round trip shared with others
            await self._shared.write(messages=[(result.conversation, result.added)], wait=True)
        return pb.AppendMessagesResponse(messages=result.messages)

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMessagesResponse:
        ident = current_identity()
        with _checked() as v:
            conversation_id = validation.uuid_field(v, "conversation_id", request.conversation_id)
            run_id = validation.uuid_field(v, "run_id", request.run_id, required=False)
            size = validation.page_size(v, request.page_size, limits.MESSAGES_PAGE)

        async def fetch(cursor: list[Any] | None, limit: int) -> list[conversation_pb2.Message]:
            found = await self._store.list_messages(
                conversation_id, _scope(ident), cursor[0] if cursor else 0, limit, run_id
            )
            if found is None:
                raise conversation_not_found(conversation_id)
            return found

        found, token = await pagination.page(
            pagination.fingerprint("ListMessages", ident.user, conversation_id, run_id),
            request.page_token,
            (int,),
            size,
            fetch,
            lambda last: [last.position],
        )
        return pb.ListMessagesResponse(messages=found, next_page_token=token)

    # Run records

    async def RecordRun(
        self, request: pb.RecordRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordRunResponse:
        ident = current_identity()
        run = request.run
        with _checked("invalid run record") as v:
            run.id = validation.uuid_field(v, "run.id", run.id)
            paths = validation.mask_paths(v, request.update_mask, run_rules.UPDATABLE_PATHS)
            if not request.update_mask.paths and run.status == run_pb2.RUN_STATUS_UNSPECIFIED:
                paths.discard("status")  # "all fields" with no status: keep (or default) it
            validation.run_values(v, run, paths)
            if run.conversation_id:
                run.conversation_id = validation.uuid_field(
                    v, "run.conversation_id", run.conversation_id
                )
            if run.HasField("spec"):
                validation.run_spec(v, run.spec)
            validation.lease_epoch(v, "lease_epoch", request.lease_epoch)
        stored, created = await self._store.record_run(
            run, paths, ident.user, ident.is_system, now_us(), request.lease_epoch
        )
        await self._cache.put_run(stored)
        return pb.RecordRunResponse(run=stored, created=created)

    async def RecordRunHeartbeats(
        self, request: pb.RecordRunHeartbeatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordRunHeartbeatsResponse:
        ident = current_identity()
        now = now_us()
        with _checked("invalid heartbeats") as v:
            count = len(request.heartbeats)
            beats: list[run_pb2.Run] = []
            if not count:
                v.add("heartbeats", "at least one heartbeat is required")
            elif count > limits.MAX_HEARTBEATS_PER_CALL:
                v.add("heartbeats", f"at most {limits.MAX_HEARTBEATS_PER_CALL} heartbeats per call")
            else:
                seen: set[str] = set()
                for i, beat in enumerate(request.heartbeats):
                    field = f"heartbeats[{i}]"
                    values = run_rules.heartbeat_values(beat, now)
                    values.id = validation.uuid_field(v, f"{field}.run_id", beat.run_id)
                    if values.id in seen:
                        v.add(f"{field}.run_id", "repeated within the request")
                    elif values.id:
                        seen.add(values.id)
                    validation.run_values(v, values, run_rules.HEARTBEAT_PATHS, prefix=field)
                    beats.append(values)
                    if len(v.items) >= 50:
                        break
        outcomes = await self._store.record_heartbeats(beats, _scope(ident), now)
        found = [o for o in outcomes if o is not None]
        await self._cache.put_runs([run for run, updated in found if updated])
        return pb.RecordRunHeartbeatsResponse(runs=[run for run, _ in found])

    async def ClaimRun(
        self, request: pb.ClaimRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimRunResponse:
        """ClaimRun (issue 18, "Durable runs"; the RPC's comment is the contract): one
        compare-and-set on the run's locked row — `lease_epoch` must be the stored one and
        the lease free (released, heartbeat older than `stale_after` by this service's
        clock, or held by `owner_instance` itself) — then owner, heartbeat, `lease_epoch`
        + 1 and `attempt` + 1 are written and the latest checkpoint returned.

        Raises:
            PermissionDenied: the caller is not the internal service identity.
            InvalidArgument: `run_id` not a UUID, `owner_instance` not 1..128 characters,
                `lease_epoch` negative, `stale_after` missing, ≤ 0 or over a day.
            NotFound: no such run.
            FailedPrecondition: RUN_ENDED, LEASE_LOST or LEASE_HELD.
        """
        self._require_system("ClaimRun")
        with _checked("invalid claim") as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
            validation.owner_instance(v, "owner_instance", request.owner_instance)
            validation.lease_epoch(v, "lease_epoch", request.lease_epoch)
            stale_after_us = validation.stale_after_us(
                v, "stale_after", request.stale_after, request.HasField("stale_after")
            )
        claimed = await self._store.claim_run(
            run_id, request.owner_instance, request.lease_epoch, stale_after_us, now_us()
        )
        await self._cache.put_run(claimed.run)
        resp = pb.ClaimRunResponse(run=claimed.run)
        if claimed.checkpoint is not None:
            resp.checkpoint.ParseFromString(claimed.checkpoint)
        return resp

    async def ReleaseRun(
        self, request: pb.ReleaseRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseRunResponse:
        """ReleaseRun (issue 18): the lease given up on the locked row — `owner_instance`
        empty, `heartbeat_time` at the Unix epoch — so any replica may claim it at once; an
        ended (or already released) run comes back unchanged.

        Raises:
            PermissionDenied: the caller is not the internal service identity.
            InvalidArgument: `run_id` not a UUID, `lease_epoch` not ≥ 1.
            NotFound: no such run.
            FailedPrecondition: LEASE_LOST, `lease_epoch` is not the stored one.
        """
        self._require_system("ReleaseRun")
        with _checked("invalid release") as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
            validation.lease_epoch(v, "lease_epoch", request.lease_epoch, required=True)
        run, written = await self._store.release_run(run_id, request.lease_epoch, now_us())
        if written:
            await self._cache.put_run(run)
        return pb.ReleaseRunResponse(run=run)

    @staticmethod
    def _require_system(method: str) -> None:
        """Leases are the orchestrators' business: only the internal service identity.

        Raises:
            PermissionDenied: reason LEASE_DENIED.
        """
        if not current_identity().is_system:
            raise PermissionDenied(
                f"{method} is only allowed for the internal service identity",
                reason="LEASE_DENIED",
            )

    async def _run(self, ident: Identity, run_id: str) -> run_pb2.Run:
        run = await self._cache.get_run(run_id)
        if run is not None:
            if not _visible(ident, run.owner):
                raise run_not_found(run_id)
            return run
        run = await self._store.get_run(run_id, _scope(ident))
        if run is None:
            raise run_not_found(run_id)
        await self._cache.put_run(run)
        return run

    async def RecordRunStart(
        self, request: pb.RecordRunStartRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordRunStartResponse:
        ident = current_identity()
        batch = self._check_start(request)
        run, given = request.run, request.conversation
        now = now_us()
        conversation = None
        if request.HasField("conversation"):
            conversation = _new_conversation(given, run.conversation_id, ident.user, now)
        started = await self._store.record_run_start(
            run,
            conversation,
            request.messages,
            batch,
            request.recent_message_count,
            ident.user,
            ident.is_system,
            now,
        )
        if not started.created:
            await self._cache.put_run(started.run)
            return pb.RecordRunStartResponse(run=started.run, created=False)
        if started.payloads:
            metrics.EVENTS_APPENDED.inc(len(started.payloads))
        published = [(started.run.id, 1, started.payloads)] if started.payloads else []
        if conversation is not None and started.conversation is not None:
            # A new conversation: no cached value can be stale (its messages list is not
            # cached until a read fills it), so the Redis writes — run, conversation, live
            # log — follow the answer, on a round trip shared with other calls.
            await self._shared.write(
                published, [started.run], conversations=[started.conversation], wait=False
            )
        else:
            # An existing conversation: the run and the messages it added are cached before
            # the answer (a reader of the conversation may come next), on a shared trip.
            changed = started.conversation
            added = [(changed, started.added)] if changed is not None and started.added else []
            await self._shared.write(published, [started.run], messages=added, wait=True)
        return pb.RecordRunStartResponse(
            run=started.run,
            created=True,
            conversation=started.conversation,
            messages=started.messages,
            recent_messages=started.recent,
        )

    def _check_start(self, request: pb.RecordRunStartRequest) -> event_rules.Batch | None:
        """Validate a RecordRunStart request as CreateConversation, RecordRun (create),
        AppendMessages and AppendRunEvents validate theirs (field paths as in this request),
        plus `conversation.id` equal to `run.conversation_id`, events from seq 1 with
        `run_started` first, 0..100 messages and `recent_message_count` 0..1000. Puts ids
        in canonical form; returns the serialized events (None when there are none).

        Raises:
            InvalidArgument: naming every bad field.
        """
        run = request.run
        with _checked("invalid run start") as v:
            given_run_id = run.id
            run.id = validation.uuid_field(v, "run.id", run.id)
            run.conversation_id = validation.uuid_field(
                v, "run.conversation_id", run.conversation_id
            )
            if run.HasField("spec"):
                validation.run_spec(v, run.spec)
            else:
                v.add("run.spec", "required")
            paths = set(run_rules.UPDATABLE_PATHS)
            if run.status == run_pb2.RUN_STATUS_UNSPECIFIED:
                paths.discard("status")  # QUEUED, as RecordRun creates it
            validation.run_values(v, run, paths)
            if request.HasField("conversation"):
                conversation_id = validation.uuid_field(
                    v, "conversation.id", request.conversation.id
                )
                if (
                    conversation_id
                    and run.conversation_id
                    and conversation_id != run.conversation_id
                ):
                    v.add("conversation.id", "must equal run.conversation_id")
                validation.conversation_fields(v, request.conversation, _CONVERSATION_PATHS)
            validation.messages(
                v, request.messages, limits.MAX_MESSAGES_PER_RUN_START, required=False
            )
            if not 0 <= request.recent_message_count <= limits.MAX_RECENT_MESSAGES:
                v.add("recent_message_count", f"must be 0..{limits.MAX_RECENT_MESSAGES}")
            batch = None
            try:
                batch = event_rules.prepare_start(
                    run.id or given_run_id, request.events, self._settings.max_event_bytes
                )
            except InvalidArgument as exc:
                v.items.extend(exc.violations)
        _canonical_run_ids(request.messages)
        return batch

    async def DeleteRunRecord(
        self, request: pb.DeleteRunRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteRunRecordResponse:
        """DeleteRunRecord (issue 23): the run, its events and checkpoint in one
        transaction; its cache entry is tombstoned before and after it, its live log
        dropped after it.

        Raises:
            InvalidArgument: `run_id` is not a UUID.
            NotFound: no such run, another user's, or already deleted.
        """
        ident = current_identity()
        with _checked() as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
        scope = _scope(ident)
        if await self._store.get_run(run_id, scope) is None:  # never the cache: it may lag
            raise run_not_found(run_id)
        await self._cache.drop_runs([run_id])
        if not await self._store.delete_run(run_id, scope):
            raise run_not_found(run_id)
        await self._forget([run_id])
        return pb.DeleteRunRecordResponse()

    async def GetRunRecord(
        self, request: pb.GetRunRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRunRecordResponse:
        ident = current_identity()
        with _checked() as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
        return pb.GetRunRecordResponse(run=await self._run(ident, run_id))

    async def ListRunRecords(
        self, request: pb.ListRunRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunRecordsResponse:
        ident = current_identity()
        if request.all_owners and not ident.is_system:
            raise PermissionDenied(
                "all_owners is only allowed for the internal service identity",
                reason="ALL_OWNERS_DENIED",
            )
        with _checked() as v:
            size = validation.page_size(v, request.page_size, limits.RUNS_PAGE)
            conversation_id = validation.uuid_field(
                v, "conversation_id", request.conversation_id, required=False
            )
            if request.status not in run_pb2.RunStatus.values():
                v.add("status", f"unknown status {request.status}")
            before = ts_to_us(request.heartbeat_before)
            expiring = ts_to_us(request.input_expire_before)
        owner = None if request.all_owners else ident.user
        found, token = await pagination.page(
            pagination.fingerprint(
                "ListRunRecords",
                owner or "*",
                conversation_id,
                request.status,
                before,
                *(() if expiring is None else (expiring,)),  # earlier tokens stay valid
            ),
            request.page_token,
            (int, str),
            size,
            lambda cursor, limit: self._store.list_runs(
                RunFilter(owner, conversation_id, request.status, before, expiring),
                limit,
                None if cursor is None else (cursor[0], cursor[1]),
            ),
            lambda last: [ts_to_us(last.create_time), last.id],
        )
        return pb.ListRunRecordsResponse(runs=found, next_page_token=token)

    async def RecordRunInput(
        self, request: pb.RecordRunInputRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordRunInputResponse:
        """RecordRunInput (issue 21, human in the loop; the RPC's comment is the contract):
        first answer wins. In one transaction on the run's locked row
        (`Store.record_input`, rules in `runs.answer_input`): the `input_received` event
        appended at the run's next seq, the record RUNNING with `pending_input` cleared and
        its lease free, the checkpoint's `seq` moved to the event. After the commit the
        event goes to the live log and the record to the cache, as AppendRunEvents does.

        Raises:
            InvalidArgument: `run_id` not a UUID, a malformed answer (BadRequest field
                `answer…`), or one of the wrong kind (`answer.decision` / `answer.text`).
            NotFound: no such run, or another user's (the internal service identity may
                answer any run: expiry).
            FailedPrecondition: INPUT_NOT_PENDING (metadata `status`, `pending_input_id`).
        """
        ident = current_identity()
        with _checked("invalid input answer") as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
            validation.input_answer(v, request.answer, request.HasField("answer"))
        recorded = await self._store.record_input(run_id, _scope(ident), request.answer, now_us())
        if recorded.payloads:
            metrics.EVENTS_APPENDED.inc(len(recorded.payloads))
            await asyncio.gather(
                self._log.publish(run_id, recorded.event.seq, recorded.payloads),
                self._cache.put_run(recorded.run),
            )
        return pb.RecordRunInputResponse(run=recorded.run, event=recorded.event)

    # Run events

    async def AppendRunEvents(
        self, request: pb.AppendRunEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendRunEventsResponse:
        ident = current_identity()
        with _checked() as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
            update = self._run_update(v, request, run_id)
            validation.lease_epoch(v, "lease_epoch", request.lease_epoch)
            checkpoint = None
            if request.HasField("checkpoint"):
                validation.checkpoint(v, request.checkpoint)
                checkpoint = Checkpoint(
                    request.checkpoint.seq,
                    request.checkpoint.SerializeToString(deterministic=True),
                    now_us(),
                )
        batch = event_rules.prepare_batch(run_id, request.events, self._settings.max_event_bytes)
        result = await self._store.append_events(
            run_id,
            _scope(ident),
            batch,
            update,
            lease_epoch=request.lease_epoch,
            checkpoint=checkpoint,
        )
        if result.new_payloads:
            metrics.EVENTS_APPENDED.inc(len(result.new_payloads))
        if update is None:
            # Events alone (a writer's lifecycle events): the Redis writes follow the answer,
            # as AppendRunEventBatches' do — the record changed only in its last seq.
            if result.new_payloads:
                published = [(run_id, result.first_new_seq, result.new_payloads)]
                if result.run is None:  # not read (the one-statement path): advance it
                    await self._shared.write(
                        published, advanced=[(run_id, result.last_seq)], wait=False
                    )
                else:
                    await self._shared.write(published, [result.run], wait=False)
        else:
            # Record fields with the events (a run's end): in the cache before the answer,
            # so whoever learns of the end from the caller reads the final record — on a
            # round trip shared with the other calls that committed meanwhile.
            published = (
                [(run_id, result.first_new_seq, result.new_payloads)] if result.new_payloads else []
            )
            runs = [result.run] if result.run is not None else []
            await self._shared.write(published, runs, wait=True)
        return pb.AppendRunEventsResponse(
            last_seq=result.last_seq, run=result.run if update is not None else None
        )

    @staticmethod
    def _run_update(
        v: Violations, request: pb.AppendRunEventsRequest, run_id: str
    ) -> RunUpdate | None:
        """The record fields an AppendRunEvents request writes with its events (`run` and
        `update_mask`, checked as RecordRun checks an update), or None."""
        if not request.HasField("run") and not request.update_mask.paths:
            return None
        values = request.run
        if values.id and validation.uuid_field(v, "run.id", values.id) not in ("", run_id):
            v.add("run.id", "must be empty or equal run_id")
        if not request.update_mask.paths:
            v.add("update_mask", "required with run: the paths of run to write")
        paths = validation.mask_paths(v, request.update_mask, run_rules.UPDATABLE_PATHS)
        validation.run_values(v, values, paths)
        values.id = run_id
        return RunUpdate(values, paths, now_us())

    async def AppendRunEventBatches(
        self, request: pb.AppendRunEventBatchesRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendRunEventBatchesResponse:
        ident = current_identity()
        with _checked() as v:
            count = len(request.batches)
            if not count:
                v.add("batches", "at least one batch is required")
            elif count > limits.MAX_BATCHES_PER_APPEND:
                v.add("batches", f"at most {limits.MAX_BATCHES_PER_APPEND} batches per call")
            total = sum(len(b.events) for b in request.batches)
            if total > limits.MAX_EVENTS_PER_BATCHES_APPEND:
                v.add("batches", f"at most {limits.MAX_EVENTS_PER_BATCHES_APPEND} events in all")
        # Each batch is checked on its own: a malformed one is rejected alone.
        outcomes: list[AppendedEvents | ChorusError | None] = [None] * count
        valid: list[EventWrite] = []
        positions: list[int] = []
        seen: set[str] = set()
        for i, item in enumerate(request.batches):
            try:
                bv = Violations()
                run_id = validation.uuid_field(bv, "run_id", item.run_id)
                if item.HasField("run") or item.update_mask.paths:
                    bv.add("run", "record fields go with AppendRunEvents, not in batches")
                if item.HasField("checkpoint"):
                    bv.add("checkpoint", "checkpoints go with AppendRunEvents, not in batches")
                validation.lease_epoch(bv, "lease_epoch", item.lease_epoch)
                bv.raise_if_any()
                if run_id in seen:
                    raise InvalidArgument(
                        f"run {run_id} has more than one batch in this call",
                        [("run_id", "each run may have one batch per call")],
                    )
                seen.add(run_id)
                batch = event_rules.prepare_batch(
                    run_id, item.events, self._settings.max_event_bytes
                )
            except ChorusError as exc:
                outcomes[i] = exc
                continue
            valid.append(EventWrite(run_id, batch, item.lease_epoch))
            positions.append(i)
        if valid:
            stored = await self._store.append_event_batches(valid, _scope(ident))
            for i, stored_outcome in zip(positions, stored, strict=True):
                outcomes[i] = stored_outcome
        resp = pb.AppendRunEventBatchesResponse()
        published: list[tuple[str, int, list[bytes]]] = []
        runs: list[run_pb2.Run] = []
        advanced: list[tuple[str, int]] = []
        request_id = current_request_id()
        run_ids = dict(zip(positions, (write.run_id for write in valid), strict=True))
        for i, outcome in enumerate(outcomes):
            result = resp.results.add()
            if isinstance(outcome, AppendedEvents):
                result.last_seq = outcome.last_seq
                if outcome.new_payloads:
                    run_id = run_ids[i]
                    published.append((run_id, outcome.first_new_seq, outcome.new_payloads))
                    if outcome.run is None:
                        advanced.append((run_id, outcome.last_seq))
                    else:
                        runs.append(outcome.run)
            else:
                assert outcome is not None
                metrics.EVENT_BATCHES_REJECTED.labels(outcome.reason).inc()
                result.error.CopyFrom(outcome.to_status(request_id))
        if published:
            metrics.EVENTS_APPENDED.inc(sum(len(p[2]) for p in published))
            await self._shared.write(published, runs, advanced, wait=False)
        return resp

    async def drain(self) -> None:
        """Wait for the Redis writes of the calls already answered (at shutdown)."""
        await self._shared.drain()

    async def ListRunEvents(
        self, request: pb.ListRunEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunEventsResponse:
        ident = current_identity()
        with _checked() as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
            size = validation.page_size(v, request.page_size, limits.EVENTS_PAGE)
            if request.after_seq < 0:
                v.add("after_seq", "must not be negative")
            kinds = validation.event_kinds(v, "kinds", request.kinds)
        parts = [ident.user, run_id, request.after_seq] + ([",".join(kinds)] if kinds else [])

        async def fetch(cursor: list[Any] | None, limit: int) -> list[tuple[int, bytes]]:
            await self._run(ident, run_id)  # after the token's check, as before
            after = cursor[0] if cursor else request.after_seq
            return await self._store.list_events(run_id, after, limit, kinds=kinds)

        found, token = await pagination.page(
            pagination.fingerprint("ListRunEvents", *parts),
            request.page_token,
            (int,),
            size,
            fetch,
            lambda last: [last[0]],
        )
        resp = pb.ListRunEventsResponse(next_page_token=token)
        for _, payload in found:
            resp.events.add().ParseFromString(payload)
        return resp

    async def WatchRunEvents(
        self, request: pb.WatchRunEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunEventsResponse]:
        ident = current_identity()
        with _checked() as v:
            run_id = validation.uuid_field(v, "run_id", request.run_id)
            if request.after_seq < 0:
                v.add("after_seq", "must not be negative")
        await self._run(ident, run_id)
        async for item in self._watcher.watch(run_id, request.after_seq):
            yield item
