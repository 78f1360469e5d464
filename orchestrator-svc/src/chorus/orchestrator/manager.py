"""The runs of RunService: creating them, finding them, watching, cancelling and steering.

A run executes on the replica that created it (a `LiveRun`); every other call works on any
replica, through history-svc: the run record (status, `cancellation`, heartbeat) and the
event log are the shared state (docs/architecture.md §9). Calls act for the caller
(`current_identity()`); another user's run is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Mapping

import grpc

from chorus.core import deadlines, identity
from chorus.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from chorus.core.logging import get_logger
from chorus.core.timestamps import now
from chorus.orchestrator import metrics
from chorus.orchestrator.auth import CallAuth
from chorus.orchestrator.catalog import CatalogCache
from chorus.orchestrator.chat_streams import ChatStreams
from chorus.orchestrator.events import is_terminal
from chorus.orchestrator.flusher import DeltaFlusher
from chorus.orchestrator.history import UNARY_TIMEOUT_S, HistoryClient
from chorus.orchestrator.recovery import Liveness, end_orphan
from chorus.orchestrator.runs import ACTIVE_STATUSES, LiveRun, Resume, RunDeps, step_start
from chorus.orchestrator.settings import Settings
from chorus.orchestrator.tools.registry import ToolRegistry
from chorus.orchestrator.validation import resolve_agent_update, resolve_run_spec
from chorus.v1 import (
    conversation_pb2,
    run_pb2,
    team_pb2,
)
from chorus.v1 import (
    history_service_pb2 as hs,
)
from chorus.v1 import (
    run_service_pb2 as rs,
)

log = get_logger("chorus.orchestrator.manager")

MAX_REASON_CHARS = 1000
"""`CancelRunRequest.reason` limit (and `ApprovalDecision.reason`'s)."""
MAX_INPUT_TEXT_BYTES = 64 * 1024
"""`SubmitRunInputRequest.text` limit."""
MAX_INPUT_ID_CHARS = 128
"""`SubmitRunInputRequest.input_id` limit."""
MAX_REQUEST_ID_CHARS = 128
"""`SubmitRunInputRequest.request_id` limit (AIP-155)."""
_STATUS_WORD = {
    run_pb2.RUN_STATUS_COMPLETED: "completed",
    run_pb2.RUN_STATUS_FAILED: "failed",
    run_pb2.RUN_STATUS_CANCELLED: "cancelled",
}


def check_run_id(run_id: str, field: str = "run_id") -> None:
    """INVALID_ARGUMENT unless `run_id` is a UUID."""
    if not run_id:
        raise InvalidArgument(f"{field} is required", [(field, "required")])
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID", [(field, "must be a UUID")]) from None


def _title(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= 80 else first[:79] + "…"


def _already(run: run_pb2.Run) -> str:
    word = _STATUS_WORD.get(run.status)
    return f"run already {word}" if word else "cancel already requested"


def _is_stale(run: run_pb2.Run, stale_after_s: float) -> bool:
    beat = run.heartbeat_time.seconds + run.heartbeat_time.nanos / 1e9
    return time.time() - beat > stale_after_s


class RunManager:
    """All runs this replica serves.

    Args:
        settings: the service's settings.
        history: history-svc client.
        chats: the StreamChats call to provider-svc every model call goes over.
        auth: metadata of the orchestrator's own calls.
        catalog: provider-svc's models, for validation.
        tools: the tool registry.
        templates: the team templates by name.
    """

    def __init__(
        self,
        settings: Settings,
        history: HistoryClient,
        chats: ChatStreams,
        auth: CallAuth,
        catalog: CatalogCache,
        tools: ToolRegistry,
        templates: Mapping[str, team_pb2.TeamTemplate],
    ) -> None:
        self._settings = settings
        self._history = history
        self._catalog = catalog
        self._tools = tools
        self._templates = dict(templates)
        self.flusher = DeltaFlusher(
            functools.partial(history.append_event_batches, identity.SYSTEM_USER)
        )
        self._deps = RunDeps(
            settings=settings,
            history=history,
            flusher=self.flusher,
            chats=chats,
            auth=auth,
            tools=tools,
            end_slots=asyncio.Semaphore(settings.max_ending_runs),
        )
        self._runs: dict[str, LiveRun] = {}
        self._start_slots = asyncio.Semaphore(settings.max_starting_runs)
        self._accepting = True
        self.liveness = Liveness(settings, history, lambda: self._runs, self)

    # ----------------------------------------------------------------- lookups
    @property
    def live_runs(self) -> dict[str, LiveRun]:
        """Runs executing on this replica, by id."""
        return self._runs

    def local(self, user: str, run_id: str) -> LiveRun | None:
        """The caller's run if it executes here."""
        live = self._runs.get(run_id)
        return live if live is not None and live.owner == user else None

    def templates(self) -> list[team_pb2.TeamTemplate]:
        """The team templates, by name."""
        return [self._templates[name] for name in sorted(self._templates)]

    # ----------------------------------------------------------------- create
    async def create(self, user: str, spec: run_pb2.RunSpec) -> tuple[run_pb2.Run, LiveRun | None]:
        """Validate `spec`, record the run and start it in the background. At most
        `max_starting_runs` starts are under way at once; the others wait their turn.

        Returns:
            The run (RUNNING, or the earlier run when `spec.request_id` matched one) and its
            `LiveRun` when it executes on this replica.

        Raises:
            InvalidArgument: a bad spec (nothing is stored).
            NotFound: `spec.conversation_id` names no conversation of the caller.
            Aborted: reason CONVERSATION_BUSY (another active run in the conversation).
            ResourceExhausted: this replica runs `max_active_runs` runs already.
            Unavailable: shutting down, or provider-svc / history-svc unreachable.
        """
        # A caller that goes away mid-way must not leave a recorded run that never starts:
        # once begun, creation completes (a retry with the same request_id finds the run).
        return await asyncio.shield(self._create(user, spec))

    async def _create(self, user: str, spec: run_pb2.RunSpec) -> tuple[run_pb2.Run, LiveRun | None]:
        self._check_capacity()
        metrics.RUN_STARTS_WAITING.inc()
        try:
            await self._start_slots.acquire()
        finally:
            metrics.RUN_STARTS_WAITING.dec()
        try:
            self._check_capacity()  # again: other starts may have filled it meanwhile
            return await self._start(user, spec)
        finally:
            self._start_slots.release()

    def _check_capacity(self) -> None:
        if not self._accepting:
            raise Unavailable("the orchestrator is shutting down", reason="SHUTTING_DOWN")
        if len(self._runs) >= self._settings.max_active_runs:
            raise ResourceExhausted(
                f"this orchestrator runs {len(self._runs)} runs already (the limit)",
                retry_after_s=1.0,
                reason="TOO_MANY_ACTIVE_RUNS",
            )

    async def _start(self, user: str, spec: run_pb2.RunSpec) -> tuple[run_pb2.Run, LiveRun | None]:
        resolved = resolve_run_spec(
            spec,
            templates=self._templates,
            tools=self._tools,
            catalog=await self._catalog.get(),
            settings=self._settings,
        )
        created_at = now()
        conversation: conversation_pb2.Conversation | None = None
        if not resolved.conversation_id:  # a new conversation; the id is ours (AIP-133)
            conversation = conversation_pb2.Conversation(
                id=str(uuid.uuid4()), title=_title(resolved.input), team=resolved.template
            )
        record = run_pb2.Run(
            id=str(uuid.uuid4()),
            owner=user,
            spec=resolved,
            conversation_id=conversation.id if conversation else resolved.conversation_id,
            status=run_pb2.RUN_STATUS_RUNNING,
            owner_instance=self._settings.instance_id,
            lease_epoch=1,  # this replica's lease, from the start (history-svc's rule too)
            attempt=1,
            heartbeat_time=created_at,
            create_time=created_at,
            start_time=created_at,
        )
        live = LiveRun(record, self._deps, new_conversation=conversation is not None)
        live.prefetch_first_call()  # its model call, meanwhile: TTFT is the slower of the two
        # One write before the run's task starts: conversation, record, input, run_started.
        try:
            started = await self._history.record_run_start(user, live.start_request(conversation))
        except BaseException:
            live.drop_prefetch()
            raise
        if not started.created:
            live.drop_prefetch()
            log.info("run_request_repeated", run_id=started.run.id, request_id=resolved.request_id)
            earlier = self.local(user, started.run.id)
            return (earlier.snapshot() if earlier is not None else started.run), earlier
        live.started(started.run, started.recent_messages)
        if live.log.has_pending:
            # A prefetched call's deltas, released to the flusher: its task (scheduled
            # already) makes their gRPC call now, whose own task then sends it before the
            # run's task builds the team (asyncio runs ready tasks in order): the first
            # delta's write is on the path to the first token, the team is not.
            await asyncio.sleep(0)
        self._runs[live.id] = live
        live.task = asyncio.create_task(self._execute(live), name=f"run-{live.id}")
        return live.snapshot(), live

    def has_capacity(self) -> bool:
        """Whether this replica accepts another run now (new or resumed)."""
        return self._accepting and len(self._runs) < self._settings.max_active_runs

    async def resume(
        self, record: run_pb2.Run, checkpoint: run_pb2.RunCheckpoint | None, reason: str
    ) -> LiveRun:
        """Continue a run this replica just claimed (HistoryService.ClaimRun): from its
        checkpoint, or from its input when it has none. The `agent_updated` events stored
        after the checkpoint are staged again; a SINGLE team's context is read again; a run
        that parked mid-step (issue 21) redoes that step from its turn boundary with the
        answers (`input_received`) stored since.

        Raises:
            chorus.core.errors.ChorusError: history-svc failed while reading what the run
                needs (the lease then expires again and a later sweep retries).
        """
        from_seq = checkpoint.seq if checkpoint is not None else 0
        updates: list[run_pb2.RunEvent] = []
        answers: list[run_pb2.RunEvent] = []
        async for event in self._stored_events(record.owner, record.id, step_start(checkpoint)):
            if event.HasField("agent_updated"):
                updates.append(event)
            elif event.HasField("input_received"):
                answers.append(event)
        context: list[conversation_pb2.Message] = []
        if record.spec.team.kind == team_pb2.TEAM_KIND_SINGLE:
            context = await self._history.context_before_run(
                record.owner, record.conversation_id, record.id, self._settings.context_messages
            )
        live = LiveRun(
            record, self._deps, resume=Resume(checkpoint, reason, updates, context, answers)
        )
        self._runs[live.id] = live
        live.task = asyncio.create_task(self._execute(live), name=f"run-{live.id}")
        log.warning(
            "run_resumed",
            run_id=live.id,
            attempt=record.attempt,
            from_seq=from_seq,
            stored_seq=record.last_seq,
            reason=reason,
        )
        return live

    async def _stored_events(
        self, user: str, run_id: str, after_seq: int
    ) -> AsyncIterator[run_pb2.RunEvent]:
        while True:
            page = await self._history.list_events(user, run_id, after_seq)
            if not page:
                return
            for event in page:
                yield event
            after_seq = page[-1].seq

    async def _execute(self, live: LiveRun) -> None:
        try:
            await live.execute()
        finally:
            self._runs.pop(live.id, None)

    # ----------------------------------------------------------------- read
    async def get(self, user: str, run_id: str) -> run_pb2.Run:
        """The run (NOT_FOUND for an unknown or foreign one)."""
        check_run_id(run_id)
        live = self.local(user, run_id)
        if live is not None:
            return live.snapshot()
        return await self._history.get_run(user, run_id)

    async def list(self, user: str, request: rs.ListRunsRequest) -> rs.ListRunsResponse:
        """The caller's runs, newest first, with live values for runs executing here."""
        response = await self._history.list_runs(
            user,
            hs.ListRunRecordsRequest(
                page_size=request.page_size,
                page_token=request.page_token,
                conversation_id=request.conversation_id,
                status=request.status,
            ),
        )
        runs = []
        for run in response.runs:
            live = self.local(user, run.id)
            runs.append(live.snapshot() if live is not None else run)
        return rs.ListRunsResponse(runs=runs, next_page_token=response.next_page_token)

    # ----------------------------------------------------------------- watch
    async def watch(
        self, user: str, run_id: str, after_seq: int
    ) -> AsyncIterator[run_pb2.RunEvent]:
        """The run's events with seq greater than `after_seq`, live until the terminal one.

        Runs executing here are tailed from memory; others through history-svc.
        """
        check_run_id(run_id)
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative", [("after_seq", "must be ≥ 0")])
        metrics.WATCHERS.inc()
        try:
            live = self.local(user, run_id)
            cursor = after_seq
            if live is not None:
                async for event in self._watch_local(live, cursor):
                    yield event
                    cursor = event.seq
                if live.log.ended:
                    return
            # Not here, or let go without a terminal event: history-svc has the rest.
            async for event in self._watch_stored(user, run_id, cursor):
                yield event
        finally:
            metrics.WATCHERS.dec()

    async def _watch_local(self, live: LiveRun, after_seq: int) -> AsyncIterator[run_pb2.RunEvent]:
        """Events of a run executing here, from memory (history-svc when behind), up to and
        including the terminal one — or until the run is let go without one."""
        log_ = live.log
        cursor = after_seq
        while True:
            batch = log_.events_after(cursor)
            if batch is None:  # fell behind the buffer: read the stored log
                metrics.WATCHER_CATCHUPS.inc()
                stored = await self._history.list_events(live.owner, live.id, cursor)
                if not stored:
                    raise Unavailable("run events missing from history-svc", reason="EVENT_LOG_GAP")
                for event in stored:
                    yield event
                    if is_terminal(event):
                        return
                cursor = stored[-1].seq
                continue
            if batch:
                last = batch[-1]
                for event in batch[:-1]:
                    yield event
                if log_.ended and last.seq == log_.last_seq:  # the terminal event
                    # Deliver the end once the record says so too: a client that reacts by
                    # starting the conversation's next run must not find it busy.
                    await live.done.wait()
                    yield last
                    return
                yield last
                cursor = last.seq
                continue
            if log_.closed:  # let go without a terminal event: history-svc has the rest
                return
            await log_.wait_beyond(cursor)

    async def _watch_stored(
        self, user: str, run_id: str, after_seq: int
    ) -> AsyncIterator[run_pb2.RunEvent]:
        record = await self._history.get_run(user, run_id)
        if record.status not in ACTIVE_STATUSES and after_seq > record.last_seq:
            # Nobody was shown an event the log does not hold (log before show): a seq
            # beyond an ended run's last one is the client's mistake, not an empty answer.
            raise OutOfRange(
                f"after_seq {after_seq} is beyond the run's last event ({record.last_seq})",
                [("after_seq", f"must be at most {record.last_seq}")],
            )
        if record.status in ACTIVE_STATUSES:
            async for event in self._history.watch_events(user, run_id, after_seq):
                yield event
                if is_terminal(event):
                    return
            return
        cursor = after_seq
        while True:  # an ended run: its stored log is complete
            page = await self._history.list_events(user, run_id, cursor)
            if not page:
                return
            for event in page:
                yield event
            cursor = page[-1].seq

    # ----------------------------------------------------------------- cancel
    async def cancel(self, user: str, run_id: str, reason: str) -> tuple[run_pb2.Run, bool, str]:
        """Cancel a run on any replica; returns `(run, cancelled, message)`.

        On this replica the call waits up to `cancel_wait_s` for the run to end. On another
        replica the cancel is recorded in the run record and the owner picks it up with its
        next heartbeat; a run whose owner stopped heartbeating is ended here at once.
        """
        check_run_id(run_id)
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidArgument(
                "reason is too long", [("reason", f"at most {MAX_REASON_CHARS} characters")]
            )
        cancellation = run_pb2.Cancellation(requested_by=user, reason=reason, request_time=now())
        live = self.local(user, run_id)
        if live is not None:
            if not live.request_cancel(cancellation):
                await self._settle(live)
                snapshot = live.snapshot()
                if snapshot.status != run_pb2.RUN_STATUS_AWAITING_INPUT:
                    return snapshot, False, _already(snapshot)
                # It parked meanwhile: cancel it as a waiting run (below).
            else:
                log.info("run_cancel_requested", run_id=run_id, by=user, reason=reason)
                await self._settle(live)
                snapshot = live.snapshot()
                if snapshot.status == run_pb2.RUN_STATUS_CANCELLED:
                    return snapshot, True, "run cancelled"
                if snapshot.status != run_pb2.RUN_STATUS_AWAITING_INPUT:
                    return snapshot, True, "cancel requested"
        record = await self._history.get_run(user, run_id)
        if record.status not in ACTIVE_STATUSES:
            return record, False, _already(record)
        if record.status == run_pb2.RUN_STATUS_AWAITING_INPUT:
            ended = await self._cancel_waiting(user, record, cancellation)
            if ended is not None:
                return ended, True, "run cancelled while it waited for input"
            record = await self._history.get_run(user, run_id)  # answered meanwhile
            if record.status not in ACTIVE_STATUSES:
                return record, False, _already(record)
        if record.HasField("cancellation"):
            return record, False, "cancel already requested"
        if _is_stale(record, self._settings.lease_duration_s):  # nobody owns it: end it here
            try:
                claimed, _ = await self._history.claim_run(
                    run_id,
                    self._settings.instance_id,
                    record.lease_epoch,
                    self._settings.lease_duration_s,
                )
            except (FailedPrecondition, NotFound):  # claimed or ended meanwhile: forward
                record = await self._history.get_run(user, run_id)
            else:
                terminal = run_pb2.RunEvent(
                    run_cancelled=run_pb2.RunEvent.RunCancelled(cancellation=cancellation)
                )
                ended = await end_orphan(self._history, claimed, terminal)
                if ended is not None:
                    return ended, True, "run cancelled (its orchestrator had stopped)"
                # Claimed by another replica meanwhile (this one paused past the lease):
                # forward the cancel to it.
                record = await self._history.get_run(user, run_id)
            if record.status not in ACTIVE_STATUSES:
                return record, False, _already(record)
        try:
            record = await self._history.update_run(
                user, run_pb2.Run(id=run_id, cancellation=cancellation), ["cancellation"]
            )
        except FailedPrecondition:  # it ended meanwhile
            record = await self._history.get_run(user, run_id)
            return record, False, _already(record)
        log.info("run_cancel_forwarded", run_id=run_id, owner_instance=record.owner_instance)
        return record, True, "cancel requested; the replica running the run stops it shortly"

    async def _cancel_waiting(
        self, user: str, record: run_pb2.Run, cancellation: run_pb2.Cancellation
    ) -> run_pb2.Run | None:
        """End a run that waits for input (nobody executes it) with `run_cancelled`: one
        AppendRunEvents after its last event, with the final record, fenced by its lease
        epoch. Returns the stored record; None when an answer (or a claim) got there first —
        the run is executing again, and the cancel is then forwarded like any other."""
        terminal = run_pb2.RunEvent(
            run_id=record.id,
            seq=record.last_seq + 1,
            time=now(),
            run_cancelled=run_pb2.RunEvent.RunCancelled(cancellation=cancellation),
        )
        final = run_pb2.Run(
            id=record.id,
            status=run_pb2.RUN_STATUS_CANCELLED,
            cancellation=cancellation,
            last_seq=terminal.seq,
            end_time=terminal.time,
        )
        try:
            stored = await self._history.append_final_events(
                user,
                record.id,
                [terminal],
                final,
                ["status", "cancellation", "last_seq", "end_time"],
                lease_epoch=record.lease_epoch,
            )
        except FailedPrecondition as exc:
            log.info("waiting_run_cancel_raced", run_id=record.id, reason=exc.reason)
            return None
        log.info("waiting_run_cancelled", run_id=record.id, by=cancellation.requested_by)
        return stored

    # ----------------------------------------------------------------- input (issue 21)
    async def submit_input(
        self, user: str, request: rs.SubmitRunInputRequest
    ) -> tuple[run_pb2.Run, run_pb2.RunEvent]:
        """RunService.SubmitRunInput: record the answer (HistoryService.RecordRunInput, first
        answer wins) and continue the run here, claiming it at once when this replica has
        room (else any replica's sweep claims it within `sweep_interval_s`).

        Returns:
            The run after the answer and the stored `input_received` event.

        Raises:
            InvalidArgument: a bad id, a missing, empty or oversized answer, a reason or
                request id too long, or an answer of the wrong kind for the request.
            NotFound: an unknown run, or another user's.
            FailedPrecondition: INPUT_NOT_PENDING — the input id is unknown, stale or
                already answered; nothing changed.
        """
        check_run_id(request.run_id)
        violations: list[tuple[str, str]] = []
        if not request.input_id:
            violations.append(("input_id", "required"))
        elif len(request.input_id) > MAX_INPUT_ID_CHARS:
            violations.append(("input_id", f"at most {MAX_INPUT_ID_CHARS} characters"))
        kind = request.WhichOneof("answer")
        if kind is None:
            violations.append(("text", "required: `text` or `decision`"))
        elif kind == "text":
            size = len(request.text.encode())
            if not request.text.strip():
                violations.append(("text", "must not be empty"))
            elif size > MAX_INPUT_TEXT_BYTES:
                violations.append(("text", f"at most {MAX_INPUT_TEXT_BYTES} bytes"))
        elif len(request.decision.reason) > MAX_REASON_CHARS:
            violations.append(("decision.reason", f"at most {MAX_REASON_CHARS} characters"))
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            violations.append(("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters"))
        if violations:
            raise InvalidArgument("invalid input", violations)
        answer = run_pb2.RunEvent.InputReceived(
            input_id=request.input_id,
            by=user,
            # Our own retries of the write need a key even when the client gave none.
            request_id=request.request_id or f"auto-{uuid.uuid4()}",
        )
        if kind == "text":
            answer.text = request.text
        else:
            answer.decision.CopyFrom(request.decision)
        run, event = await self._history.record_run_input(user, request.run_id, answer)
        log.info("run_input_received", run_id=run.id, input_id=request.input_id, answer_kind=kind)
        if run.status == run_pb2.RUN_STATUS_RUNNING and self.has_capacity():
            await self.liveness.continue_after_input(run)
            live = self.local(user, run.id)
            if live is not None:
                run = live.snapshot()
        return run, event

    async def _settle(self, live: LiveRun) -> None:
        wait_s = self._settings.cancel_wait_s
        remaining = deadlines.time_remaining()
        if remaining is not None:  # answer within the caller's deadline
            wait_s = min(wait_s, max(remaining - 0.2, 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await live.done.wait()

    # ----------------------------------------------------------------- delete
    async def delete(self, user: str, run_id: str) -> None:
        """Delete a run (RunService.DeleteRun, issue 23): cancel it when active, then delete
        its record, events and checkpoint in history-svc (HistoryService.DeleteRunRecord,
        one transaction).

        The cancel is CancelRun's: on this replica the run is stopped and awaited (up to
        `cancel_wait_s`); on another replica it is recorded and awaited the same time while
        the owner ends it with `run_cancelled` at its next heartbeat. A run still ending
        when the record is deleted is let go without writing more (this replica), or
        learns of the delete from its next heartbeat or write (another replica): nothing
        can bring the run back, since every write and claim of a missing run is NOT_FOUND.

        Raises:
            InvalidArgument: `run_id` is not a UUID.
            NotFound: an unknown, another user's or already deleted run.
        """
        check_run_id(run_id)
        live = self.local(user, run_id)
        if live is not None:
            cancellation = run_pb2.Cancellation(
                requested_by=user, reason="run deleted", request_time=now()
            )
            if live.request_cancel(cancellation):
                log.info("run_cancel_requested", run_id=run_id, by=user, reason="run deleted")
            await self._settle(live)
        else:
            record = await self._history.get_run(user, run_id)
            if record.status in ACTIVE_STATUSES:
                await self.cancel(user, run_id, "run deleted")
                await self._settle_remote(user, run_id)
        request = hs.DeleteRunRecordRequest(run_id=run_id)
        try:
            await self._history.stub.DeleteRunRecord(
                request,
                metadata=self._deps.auth.metadata(user, identity.current_request_id()),
                timeout=UNARY_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        live = self.local(user, run_id)
        if live is not None:  # still ending: it writes nothing more, and is no longer served
            live.abandon()
            self._runs.pop(run_id, None)
        log.info("run_deleted", run_id=run_id, by=user)

    async def _settle_remote(self, user: str, run_id: str) -> None:
        """Wait (at most `cancel_wait_s`, within the caller's deadline) until another
        replica's run has ended after a cancel, polling its record."""
        wait_s = self._settings.cancel_wait_s
        remaining = deadlines.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, max(remaining - 1.0, 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while True:  # the owner's heartbeat brings the cancel (every ~1 s)
                    record = await self._history.get_run(user, run_id)
                    if record.status not in ACTIVE_STATUSES:
                        return
                    await asyncio.sleep(0.2)

    def cancel_on_disconnect(self, user: str, run_id: str) -> None:
        """A StreamRun client with `on_disconnect = CANCEL` went away: cancel its run."""
        cancellation = run_pb2.Cancellation(
            requested_by=user, reason="client disconnected", request_time=now()
        )
        live = self.local(user, run_id)
        if live is not None:
            if live.request_cancel(cancellation):
                log.info("run_cancelled_on_disconnect", run_id=run_id)
            return
        task = asyncio.create_task(self.cancel(user, run_id, "client disconnected"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ----------------------------------------------------------------- steer
    async def update_agent(
        self, user: str, request: rs.UpdateRunAgentRequest
    ) -> team_pb2.AgentSpec:
        """Stage a change of an agent's prompt / temperature / model; emits `agent_updated`.

        Raises:
            InvalidArgument: bad ids, mask or values.
            NotFound: unknown run, or no such agent in it (reason AGENT_NOT_FOUND).
            FailedPrecondition: the run has ended (RUN_ENDED) or executes on another
                replica (RUN_ON_OTHER_REPLICA; the change must reach the replica running it).
        """
        check_run_id(request.run_id)
        if not request.agent_name:
            raise InvalidArgument("agent_name is required", [("agent_name", "required")])
        live = self.local(user, request.run_id)
        if live is None:
            record = await self._history.get_run(user, request.run_id)
            if record.status not in ACTIVE_STATUSES:
                raise FailedPrecondition(
                    f"run {_STATUS_WORD[record.status]}: it can no longer be changed",
                    reason="RUN_ENDED",
                )
            if record.status == run_pb2.RUN_STATUS_AWAITING_INPUT:
                raise FailedPrecondition(
                    f"the run waits for input {record.pending_input.input_id!r}: answer it "
                    "(SubmitRunInput) first; no orchestrator holds the run meanwhile",
                    reason="RUN_AWAITING_INPUT",
                    metadata={"input_id": record.pending_input.input_id},
                )
            raise FailedPrecondition(
                f"run executes on orchestrator instance {record.owner_instance!r}; "
                "UpdateRunAgent must reach that replica",
                reason="RUN_ON_OTHER_REPLICA",
                metadata={"owner_instance": record.owner_instance},
            )
        if live.stopping:
            raise FailedPrecondition("the run has ended or is ending", reason="RUN_ENDED")
        state = live.states.get(request.agent_name)
        if state is None:
            raise NotFound(
                f"no agent named {request.agent_name!r} in this run (agents: "
                f"{', '.join(live.states)})",
                reason="AGENT_NOT_FOUND",
            )
        paths = list(request.update_mask.paths)
        catalog = await self._catalog.get() if "model" in paths else None
        after = resolve_agent_update(state.latest, request.agent, paths, catalog=catalog)
        state.pending = after
        event = run_pb2.RunEvent(
            agent=request.agent_name,
            agent_updated=run_pb2.RunEvent.AgentUpdated(agent=after, fields=paths, updated_by=user),
        )
        try:
            await live.log.emit(event, durable=True)
        except RuntimeError:  # ended between the check and the event
            raise FailedPrecondition("the run has ended", reason="RUN_ENDED") from None
        log.info("run_agent_updated", run_id=live.id, agent=request.agent_name, fields=paths)
        return after

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start heartbeats and the recovery sweep."""
        self.liveness.start()

    async def hand_over(self, timeout_s: float) -> None:
        """SIGTERM (issue 18, "Handoff"): accept no new runs; let every live run reach its
        next turn boundary within `timeout_s` (its checkpoint stored), then release its
        lease so another replica claims it at once; at the deadline stop the turns still
        under way (those turns are lost, not the runs) and release those leases too."""
        self._accepting = False
        runs = list(self._runs.values())
        for live in runs:
            live.request_handoff()
        tasks = [r.task for r in runs if r.task is not None]
        if not tasks:
            return
        log.info("handing_over_runs", runs=len(tasks), timeout_s=timeout_s)
        # Keep a margin for the releases of the runs stopped at the deadline.
        margin = min(2.0, timeout_s / 2)
        _, pending = await asyncio.wait(tasks, timeout=max(timeout_s - margin, 0.0))
        if pending:
            for live in runs:
                if live.task in pending:
                    live.handoff_now()
            _, pending = await asyncio.wait(pending, timeout=margin)
            for task in pending:
                task.cancel()
        log.info("runs_handed_over", runs=len(tasks), cut_at_deadline=len(pending))

    async def shutdown(self, timeout_s: float) -> None:
        """Hand the live runs over (`hand_over`, if not done already) and stop the
        background loops."""
        await self.hand_over(timeout_s)
        await self.flusher.close()
        await self.liveness.stop()
