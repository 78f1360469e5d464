"""The orchestrator's client of HistoryService: typed calls made on behalf of a given user.

Runs outlive the RPCs that started them, and background work (heartbeats, the recovery
sweep) acts for many users, so every call names its user explicitly (`x-chorus-user`)
instead of relying on the context. Failures are re-raised as `ChorusError`s keeping
history-svc's code and reason (`from_rpc_error`). Writes that are safe to repeat are retried
with jittered exponential backoff (tenacity) while history-svc is UNAVAILABLE or does not
answer in time (DEADLINE_EXCEEDED: its database is cut off), for up to `retry_s` seconds — a
store outage pauses a run instead of failing it (issue 18).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import field_mask_pb2
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from chorus.core.deadlines import time_remaining
from chorus.core.errors import ChorusError, from_rpc_error, from_status
from chorus.core.identity import SYSTEM_USER, current_request_id
from chorus.orchestrator.auth import CallAuth
from chorus.v1 import (
    conversation_pb2,
    history_service_pb2_grpc,
    run_pb2,
)
from chorus.v1 import (
    history_service_pb2 as hs,
)

T = TypeVar("T")

UNARY_TIMEOUT_S = 10.0
"""Deadline of one unary call to history-svc."""
_RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
RETRY_FIRST_WAIT_S = 0.05
"""Scale of the full-jitter exponential backoff between retries (tenacity), seconds."""
RETRY_MAX_WAIT_S = 2.0
"""Longest wait between two retries, seconds."""


def _retried(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _RETRIED_CODES


class HistoryClient:
    """HistoryService calls used by the orchestrator.

    Args:
        channel: a channel to history-svc, without client interceptors: calls carry their
            metadata from `auth` (the acting user, the internal token, the request id of
            the current RPC) and their own deadlines.
        retry_s: how long idempotent writes are retried on UNAVAILABLE or
            DEADLINE_EXCEEDED, seconds (CHORUS_STORE_OUTAGE_LIMIT_S).
        auth: builds the calls' metadata.
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, retry_s: float, auth: CallAuth | None = None
    ) -> None:
        self.stub = history_service_pb2_grpc.HistoryServiceStub(channel)
        self._retry_s = retry_s
        self._auth = auth if auth is not None else CallAuth(None)
        self.outage: ChorusError | None = None
        """The error of the last retried call that gave up on UNAVAILABLE or
        DEADLINE_EXCEEDED (history-svc or its database away past the retry limit), until a
        call succeeds again: a run failing meanwhile fails for that reason."""

    def _md(self, user: str) -> tuple[tuple[str, str], ...]:
        return self._auth.metadata(user, current_request_id())

    async def _call(
        self, call: Callable[[], Awaitable[T]], *, retry: bool = False, retry_s: float | None = None
    ) -> T:
        """`call`, and with `retry` again with jittered exponential backoff (tenacity; 50 ms
        scale, at most 2 s apart) on UNAVAILABLE and DEADLINE_EXCEEDED for `retry_s`
        seconds (default: the client's `retry_s`; `math.inf`: until history-svc answers);
        an error becomes a `ChorusError` of the same code. The first attempt is a plain
        call: the retry machinery is built only after a failure.

        Raises:
            chorus.core.errors.ChorusError: the call's error; after the retries gave up on
                an outage, also kept as `outage`.
        """
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            if not (retry and _retried(exc)):
                raise from_rpc_error(exc) from None
            limit = self._retry_s if retry_s is None else retry_s
            result = await self._retry(call, limit)
        self.outage = None
        return result

    async def _retry(self, call: Callable[[], Awaitable[T]], limit_s: float) -> T:
        """Retry `call` (its first attempt failed on an outage code) for `limit_s` s."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(limit_s) if math.isfinite(limit_s) else stop_never,
            wait=wait_random_exponential(multiplier=RETRY_FIRST_WAIT_S, max=RETRY_MAX_WAIT_S),
            retry=retry_if_exception(_retried),
            reraise=True,
        )
        # The first attempt failed already: wait (full jitter, 50 ms scale) before retrying.
        await asyncio.sleep(random.uniform(0.0, RETRY_FIRST_WAIT_S))
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if _retried(exc):
                self.outage = error
            raise error from None
        raise AssertionError("unreachable: tenacity returns or raises")

    # ----------------------------------------------------------------- conversations
    async def append_messages(
        self, user: str, conversation_id: str, messages: Sequence[conversation_pb2.Message]
    ) -> list[conversation_pb2.Message]:
        """AppendMessages (idempotent: every message carries a `client_message_id`)."""
        request = hs.AppendMessagesRequest(conversation_id=conversation_id, messages=messages)
        response = await self._call(
            lambda: self.stub.AppendMessages(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            ),
            retry=True,
        )
        return list(response.messages)

    async def context_before_run(
        self, user: str, conversation_id: str, run_id: str, limit: int
    ) -> list[conversation_pb2.Message]:
        """The conversation's latest `limit` messages before `run_id`'s first message (its
        input), oldest first: a resumed SINGLE run's context, as RecordRunStart read it at
        the start. Reads the conversation page by page (ListMessages, 1000 a page)."""
        before: list[conversation_pb2.Message] = []
        token = ""
        while True:
            request = hs.ListMessagesRequest(
                conversation_id=conversation_id, page_size=1000, page_token=token
            )
            response = await self._call(
                functools.partial(
                    self.stub.ListMessages,
                    request,
                    metadata=self._md(user),
                    timeout=UNARY_TIMEOUT_S,
                )
            )
            for message in response.messages:
                if message.run_id == run_id:
                    return before[-limit:] if limit else []
                before.append(message)
            token = response.next_page_token
            if not token:
                return before[-limit:] if limit else []

    # ----------------------------------------------------------------- run records
    async def record_run_start(
        self,
        user: str,
        request: hs.RecordRunStartRequest,
    ) -> hs.RecordRunStartResponse:
        """RecordRunStart: the run's conversation (when new), record, input messages and
        first events in one transaction (not retried: a lost answer would look like
        ALREADY_EXISTS on the retry).

        Raises:
            chorus.core.errors.NotFound: the conversation is not the caller's.
            chorus.core.errors.Aborted: reason CONVERSATION_BUSY.
        """
        return await self._call(
            lambda: self.stub.RecordRunStart(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            )
        )

    async def update_run(
        self, user: str, run: run_pb2.Run, paths: Sequence[str], *, lease_epoch: int = 0
    ) -> run_pb2.Run:
        """RecordRun updating the fields at `paths` (retried: setting fields is idempotent),
        fenced by the writer's `lease_epoch` (0: a writer holding no lease; a stale one is
        FailedPrecondition, reason LEASE_LOST)."""
        request = hs.RecordRunRequest(
            run=run, update_mask=field_mask_pb2.FieldMask(paths=paths), lease_epoch=lease_epoch
        )
        response = await self._call(
            lambda: self.stub.RecordRun(request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S),
            retry=True,
        )
        return response.run

    async def record_heartbeats(
        self, user: str, heartbeats: Sequence[hs.RunHeartbeat]
    ) -> list[run_pb2.Run]:
        """RecordRunHeartbeats: 1..1000 runs' heartbeats in one call, not retried (the next
        round is the retry). Returns the records found, as stored after the call, in request
        order; a run missing, or not visible to `user`, is left out.
        """
        request = hs.RecordRunHeartbeatsRequest(heartbeats=heartbeats)
        response = await self._call(
            lambda: self.stub.RecordRunHeartbeats(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            )
        )
        return list(response.runs)

    async def claim_run(
        self, run_id: str, owner_instance: str, lease_epoch: int, stale_after_s: float
    ) -> tuple[run_pb2.Run, run_pb2.RunCheckpoint | None]:
        """ClaimRun as the internal identity: the compare-and-set that makes this replica
        the run's owner. Returns the claimed record (new epoch, attempt) and the latest
        checkpoint (None: the run restarts from its input). Not retried: a lost answer
        would read as LEASE_LOST on the retry; the next sweep looks again.

        Raises:
            chorus.core.errors.FailedPrecondition: RUN_ENDED, LEASE_HELD or LEASE_LOST.
            chorus.core.errors.NotFound: no such run.
        """
        request = hs.ClaimRunRequest(
            run_id=run_id, owner_instance=owner_instance, lease_epoch=lease_epoch
        )
        request.stale_after.FromNanoseconds(int(stale_after_s * 1e9))
        response = await self._call(
            lambda: self.stub.ClaimRun(
                request, metadata=self._md(SYSTEM_USER), timeout=UNARY_TIMEOUT_S
            )
        )
        checkpoint = response.checkpoint if response.HasField("checkpoint") else None
        return response.run, checkpoint

    async def release_run(self, run_id: str, lease_epoch: int) -> run_pb2.Run:
        """ReleaseRun as the internal identity (retried: releasing twice is harmless), so
        another replica claims the run at once.

        Raises:
            chorus.core.errors.FailedPrecondition: LEASE_LOST (someone claimed it already).
        """
        request = hs.ReleaseRunRequest(run_id=run_id, lease_epoch=lease_epoch)
        response = await self._call(
            lambda: self.stub.ReleaseRun(
                request, metadata=self._md(SYSTEM_USER), timeout=UNARY_TIMEOUT_S
            ),
            retry=True,
        )
        return response.run

    async def get_run(self, user: str, run_id: str) -> run_pb2.Run:
        """GetRunRecord; NOT_FOUND for a missing or foreign run."""
        request = hs.GetRunRecordRequest(run_id=run_id)
        response = await self._call(
            lambda: self.stub.GetRunRecord(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            )
        )
        return response.run

    async def list_runs(
        self, user: str, request: hs.ListRunRecordsRequest
    ) -> hs.ListRunRecordsResponse:
        """ListRunRecords as `user` (the system user may set `all_owners`)."""
        return await self._call(
            lambda: self.stub.ListRunRecords(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            )
        )

    # ----------------------------------------------------------------- run events
    async def append_events(
        self,
        user: str,
        run_id: str,
        events: Sequence[run_pb2.RunEvent],
        *,
        lease_epoch: int = 0,
        checkpoint: run_pb2.RunCheckpoint | None = None,
    ) -> int:
        """AppendRunEvents, fenced by `lease_epoch` (0: unfenced), with the run's new
        `checkpoint` in the same transaction when given; returns the run's last stored seq.

        Raises:
            chorus.core.errors.FailedPrecondition: LEASE_LOST (another replica claimed the
                run), or a gap or a conflicting duplicate (another writer stored different
                events at these seqs).
        """
        request = hs.AppendRunEventsRequest(
            run_id=run_id, events=events, lease_epoch=lease_epoch, checkpoint=checkpoint
        )
        response = await self._call(
            lambda: self.stub.AppendRunEvents(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            ),
            retry=True,
        )
        return response.last_seq

    async def append_final_events(
        self,
        user: str,
        run_id: str,
        events: Sequence[run_pb2.RunEvent],
        run: run_pb2.Run,
        paths: Sequence[str],
        *,
        lease_epoch: int = 0,
        retry_s: float | None = None,
        checkpoint: run_pb2.RunCheckpoint | None = None,
    ) -> run_pb2.Run:
        """AppendRunEvents with the record's `paths` from `run` (and the run's new
        `checkpoint` when given), in one transaction: a run's last events (through the
        terminal one) and its final record are stored together; or a run that asks a person
        stores its question, checkpoint and status AWAITING_INPUT together (issue 21).
        Retried on UNAVAILABLE and DEADLINE_EXCEEDED (a repeat of both is accepted) for
        `retry_s` seconds (default: the client's; `math.inf`: until the store answers).
        Returns the stored record.

        Raises:
            chorus.core.errors.FailedPrecondition: another writer stored these seqs, or the
                record is already terminal with another status; nothing is stored.
        """
        request = hs.AppendRunEventsRequest(
            run_id=run_id,
            events=events,
            run=run,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            lease_epoch=lease_epoch,
            checkpoint=checkpoint,
        )
        response = await self._call(
            lambda: self.stub.AppendRunEvents(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            ),
            retry=True,
            retry_s=retry_s,
        )
        return response.run

    async def record_run_input(
        self, user: str, run_id: str, answer: run_pb2.RunEvent.InputReceived
    ) -> tuple[run_pb2.Run, run_pb2.RunEvent]:
        """RecordRunInput (issue 21): the answer to a waiting run's question, recorded with
        its `input_received` event in one transaction (first answer wins). Retried on
        UNAVAILABLE and DEADLINE_EXCEEDED: `answer.request_id` must be set, so a repeat of an
        answer that was stored returns it. Returns the stored record and event.

        Raises:
            chorus.core.errors.FailedPrecondition: INPUT_NOT_PENDING (unknown, stale or
                already answered `input_id`; nothing changed).
            chorus.core.errors.InvalidArgument: a malformed answer, or one of the wrong kind.
            chorus.core.errors.NotFound: no such run of `user`.
        """
        request = hs.RecordRunInputRequest(run_id=run_id, answer=answer)
        response = await self._call(
            lambda: self.stub.RecordRunInput(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            ),
            retry=bool(answer.request_id),
        )
        return response.run, response.event

    async def append_event_batches(
        self, user: str, batches: Sequence[tuple[str, int, Sequence[run_pb2.RunEvent]]]
    ) -> list[int | ChorusError]:
        """AppendRunEventBatches: many runs' batches `(run_id, lease_epoch, events)` in one
        call (retried on UNAVAILABLE: repeats are idempotent). Returns per batch, in order,
        the run's last stored seq or the error rejecting that batch (e.g.
        `FailedPrecondition` LEASE_LOST / SEQ_GAP / SEQ_CONFLICT).

        Raises:
            chorus.core.errors.ChorusError: the call as a whole failed; nothing was stored.
        """
        request = hs.AppendRunEventBatchesRequest(
            batches=[
                hs.AppendRunEventsRequest(run_id=run_id, events=events, lease_epoch=epoch)
                for run_id, epoch, events in batches
            ]
        )
        response = await self._call(
            lambda: self.stub.AppendRunEventBatches(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            ),
            retry=True,
        )
        return [
            from_status(r.error) if r.WhichOneof("result") == "error" else r.last_seq
            for r in response.results
        ]

    async def list_events(
        self, user: str, run_id: str, after_seq: int, page_size: int = 1000
    ) -> list[run_pb2.RunEvent]:
        """One page of stored events after `after_seq` (empty: none stored after it)."""
        request = hs.ListRunEventsRequest(run_id=run_id, after_seq=after_seq, page_size=page_size)
        response = await self._call(
            lambda: self.stub.ListRunEvents(
                request, metadata=self._md(user), timeout=UNARY_TIMEOUT_S
            )
        )
        return list(response.events)

    async def last_event(self, user: str, run_id: str, after_seq: int) -> run_pb2.RunEvent | None:
        """The last stored event of a run, reading from `after_seq` on (None: none after it)."""
        last: run_pb2.RunEvent | None = None
        while True:
            page = await self.list_events(user, run_id, after_seq, page_size=5000)
            if not page:
                return last
            last = page[-1]
            after_seq = last.seq

    async def watch_events(
        self, user: str, run_id: str, after_seq: int
    ) -> AsyncIterator[run_pb2.RunEvent]:
        """WatchRunEvents: stored events after `after_seq`, then live ones, until the terminal
        one; within the deadline of the RPC being served, if it has one."""
        remaining = time_remaining()
        call = self.stub.WatchRunEvents(
            hs.WatchRunEventsRequest(run_id=run_id, after_seq=after_seq),
            metadata=self._md(user),
            timeout=None if remaining is None else max(remaining, 0.001),
        )
        try:
            async for response in call:
                yield response.event
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
