"""One run executing on this replica: its task, its team, its events, its end.

`LiveRun.execute` is the run's own task, independent of every client stream (docs/architecture.md §4):

1. before the task starts, one write (`start_request`, HistoryService.RecordRunStart)
   stores the new conversation, the RUNNING record (lease epoch 1), the input message and
   `run_started` (with the first turn's `agent_started` when the first speaker is known),
   and reads the conversation context of a SINGLE team — or, for a run this
   replica claimed after its owner was lost (`LiveRun(..., resume=...)`), the task first
   stores `run_resumed` and loads the last checkpoint;
2. drive a fresh team one agent turn per step (`chorus.orchestrator.teams.TeamRunner`);
   agents report turns, tool calls and messages through the `RunHooks` methods below, model
   clients push deltas into the event log; at every turn boundary the team's state is
   saved and stored as the run's checkpoint in the same write as the turn's closing events
   (`message_completed`, `agent_finished`, `progress`) — issue 18, "Checkpoints";
3. end with exactly one terminal event — `run_completed`, `run_failed` (provider code and
   retryable flag, or INTERNAL) or `run_cancelled` — stored with the run record's final
   status in one write; or, when the process hands its runs over (SIGTERM), stop at a
   turn boundary and release the lease without a terminal event.

Every write carries the run's lease epoch: history-svc refuses it once another replica
claimed the run (FAILED_PRECONDITION, LEASE_LOST), and the run then lets go quietly.

A stop request (cancel, process shutdown, or "another writer owns this run now") sets one
event; the driver then cancels the team's autogen token, which cancels the in-flight
provider call, and the team stops within milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseChatMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FunctionExecutionResult,
    LLMMessage,
    UserMessage,
)
from autogen_core.tools import BaseTool

from chorus.core import deadlines, identity, tracing
from chorus.core.errors import ChorusError, FailedPrecondition, NotFound, rpc_code
from chorus.core.logging import get_logger
from chorus.core.timestamps import now
from chorus.orchestrator import metrics
from chorus.orchestrator.auth import CallAuth
from chorus.orchestrator.chat_streams import ChatStreams
from chorus.orchestrator.deltas import DeltaStream
from chorus.orchestrator.events import RunEventLog
from chorus.orchestrator.flusher import DeltaFlusher
from chorus.orchestrator.history import HistoryClient
from chorus.orchestrator.model_client import ProviderChatClient, add_usage
from chorus.orchestrator.settings import Settings
from chorus.orchestrator.teams import (
    AgentState,
    InputExpired,
    TeamParts,
    TeamRunner,
    build_runner,
    system_messages,
)
from chorus.orchestrator.tools.registry import ToolContext, ToolRegistry
from chorus.v1 import (
    chat_pb2,
    conversation_pb2,
    history_service_pb2,
    run_pb2,
    team_pb2,
)
from chorus.v1 import history_service_pb2 as hs

log = get_logger("chorus.orchestrator.runs")

MAX_RESULT_CHARS = 64 * 1024
"""`ToolCallFinished.result` limit."""
MAX_ARTIFACT_BYTES = 1024 * 1024
"""`Artifact.data` limit."""
ACTIVE_STATUSES = frozenset(
    {run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_AWAITING_INPUT}
)
"""Statuses of runs that have not ended."""
EXECUTING_STATUSES = frozenset({run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING})
"""Active statuses under a lease (an AWAITING_INPUT run has none: nobody executes it)."""
DEFAULT_INPUT_TIMEOUT_S = 24 * 3600.0
"""How long a request for input waits when the team sets no `input_timeout` (issue 21)."""
INPUT_RECEIVED = "INPUT_RECEIVED"
"""Resume reason of a run continuing after a person's answer (no `run_resumed` event)."""
HANDOFF = "HANDOFF"
"""`RunResumed.reason` of a run whose owner released it (SIGTERM handoff): planned."""
OWNER_LOST = "OWNER_LOST"
"""`RunResumed.reason` of a run whose owner's lease expired (crash, freeze): a loss,
counted toward `max_run_resumes`."""
STEP_KEY = "step"
"""Key of a parked run's checkpoint envelope (`RunCheckpoint.team_state` JSON) holding the
step under way when the run asked for input: `{"boundary_seq": the last turn boundary's
seq, "awaiting": the input id asked for, "calls": {client label: [completed model calls
of the step]}, "tools": {tool call id: [result text, is_error]}}` — the run continues by
redoing the step from that boundary silently, its model calls answered from `calls` and
its completed tool calls from `tools` (none is paid or run twice), up to the question
(docs/human-in-the-loop.md)."""
SELECTION_KEY = "selection"
"""Key of a checkpoint envelope holding the orchestrator's model calls completed in the step
under way before its agent's turn began — a selector's choice of speaker, MagenticOne's
facts, plan, progress ledger — as `[completed call, ...]` (the shape of `STEP_KEY`'s
`calls`). Stored with that turn's `agent_started` (the checkpoint's `seq` stays its turn
boundary's), so a run resumed after losing the turn answers those calls from it: the turn
is given to the speaker chosen before, and no completed orchestrator call is paid twice."""
ORCHESTRATOR_LABEL = "orchestrator"
"""The label (`CallJournal`) of a selector's or MagenticOne's orchestrator model client."""
PLANNED_RESUMES_KEY = "planned_resumes"
"""Key of the checkpoint envelope counting the run's planned resumes — after a person's
answer (counted in the parked checkpoint) or a handoff (counted in the checkpoint stored
with that resume's `run_resumed`): they do not count toward `max_run_resumes`."""
_TEAM_STOP_TIMEOUT_S = 5.0
_RELEASE_TIMEOUT_S = 5.0
_Event = run_pb2.RunEvent
_FINAL_PATHS_BASE = ("status", "turns", "usage", "last_seq", "end_time")
_FIRST_SPEAKER_KNOWN = frozenset(
    {team_pb2.TEAM_KIND_SINGLE, team_pb2.TEAM_KIND_ROUND_ROBIN, team_pb2.TEAM_KIND_SEQUENTIAL}
)
"""Team kinds whose first turn is their first agent's (a selector or MagenticOne asks its
model): that turn's `agent_started` goes with the run's opening write."""
_STORE_OUTAGE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes of a history-svc call that failed after the client's retries (a store outage)."""
TRACE_STATE_KEY = "trace"
"""Key of the checkpoint's team state (`RunCheckpoint.team_state` JSON) holding the W3C
trace context of the run's span when tracing is on: a resumed run continues that trace."""


class StopKind(enum.Enum):
    """Why a run is asked to stop before its team finished."""

    CANCEL = "cancel"
    """CancelRun (or a StreamRun client gone with `on_disconnect = CANCEL`)."""
    ABANDON = "abandon"
    """Another replica owns the run now (its lease was lost) or another writer ended it:
    stop without writing anything more."""
    HANDOFF = "handoff"
    """This process is stopping: stop at a turn boundary (or at the deadline, losing the
    turn under way), release the lease, and let another replica continue the run."""
    PARK = "park"
    """The run asks a person (issue 21): store `input_requested` with the checkpoint,
    status AWAITING_INPUT, release the lease and let go until someone answers."""


class RunHandedOff(Exception):
    """The run stopped for a handoff; its lease is released (or expires)."""


class RunParked(Exception):
    """The run waits for input: its checkpoint is stored and its lease released."""


def checkpoint_envelope(checkpoint: run_pb2.RunCheckpoint | None) -> dict[str, Any]:
    """The checkpoint's `team_state` JSON object (`{}` for none): the team runner's state
    (absent when the run parked before its first turn boundary) plus the keys
    `TRACE_STATE_KEY`, `STEP_KEY` and `PLANNED_RESUMES_KEY`."""
    if checkpoint is None or not checkpoint.team_state:
        return {}
    envelope = json.loads(checkpoint.team_state)
    return envelope if isinstance(envelope, dict) else {}


def step_start(checkpoint: run_pb2.RunCheckpoint | None) -> int:
    """The seq from which a resumed run redoes its work: the checkpoint's, or for a run that
    parked mid-step, that step's turn boundary (0: the run's start)."""
    if checkpoint is None:
        return 0
    step = checkpoint_envelope(checkpoint).get(STEP_KEY)
    return int(step["boundary_seq"]) if isinstance(step, dict) else checkpoint.seq


@dataclass(frozen=True)
class Resume:
    """How a claimed run continues (HistoryService.ClaimRun's answer).

    Attributes:
        checkpoint: the last checkpoint; None restarts the team from the input.
        reason: `RunResumed.reason` (OWNER_LOST or HANDOFF), or INPUT_RECEIVED.
        updates: `agent_updated` events stored after the checkpoint (UpdateRunAgent changes
            made during the interrupted turn), applied again as staged changes.
        context: a SINGLE team's earlier conversation messages (its agent's context).
        answers: `input_received` events stored since the step's turn boundary
            (`step_start`): the answers the redone step finds when it asks again.
    """

    checkpoint: run_pb2.RunCheckpoint | None
    reason: str
    updates: Sequence[run_pb2.RunEvent] = ()
    context: Sequence[conversation_pb2.Message] = ()
    answers: Sequence[run_pb2.RunEvent] = ()


class RunAbandoned(Exception):
    """The run's log or record was ended by another writer; this replica must let go."""


@dataclass(frozen=True)
class RunDeps:
    """Process-wide collaborators of every run."""

    settings: Settings
    history: HistoryClient
    flusher: DeltaFlusher
    chats: ChatStreams
    auth: CallAuth
    tools: ToolRegistry
    end_slots: asyncio.Semaphore
    """`max_ending_runs` slots: a run's closing writes hold one."""


def context_messages(messages: Sequence[conversation_pb2.Message], agent: str) -> list[LLMMessage]:
    """Stored conversation messages → the model context of a SINGLE team's agent.

    The agent's own replies become assistant messages, everyone else's user messages;
    tool traffic and empty messages are left out (the replies already carry their results).
    """
    out: list[LLMMessage] = []
    for m in messages:
        if not m.content:
            continue
        if m.role == chat_pb2.ROLE_ASSISTANT and (not m.agent or m.agent == agent):
            out.append(AssistantMessage(content=m.content, source=agent))
        elif m.role in (chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT):
            out.append(UserMessage(content=m.content, source=m.agent or "user"))
    return out


class LiveRun:
    """A run executing on this replica.

    Args:
        record: the run to start (RUNNING, spec resolved), not stored yet: see
            `start_request`; or, with `resume`, the record as claimed (new lease epoch and
            attempt, `last_seq` the last stored event).
        deps: process-wide collaborators.
        new_conversation: the conversation was created for this run, so it holds no earlier
            messages to read as context.
        resume: continue a run this replica claimed, from its checkpoint.
    """

    def __init__(
        self,
        record: run_pb2.Run,
        deps: RunDeps,
        *,
        new_conversation: bool = False,
        resume: Resume | None = None,
    ) -> None:
        self.id = record.id
        self._new_conversation = new_conversation
        self.owner = record.owner
        self.spec = record.spec
        self.record = record
        self._deps = deps
        self._settings = deps.settings
        self._history = deps.history
        self.log = RunEventLog(
            record.id,
            self._write_events,
            flusher=deps.flusher,
            buffer_events=deps.settings.watcher_buffer_events,
            next_seq=record.last_seq + 1 if resume is not None else 1,
            lease_epoch=record.lease_epoch,
            held=resume is None,  # until the opening write is stored (`started`)
            on_rejected=self._events_rejected,
        )
        self.status: run_pb2.RunStatus = record.status
        self.turns = 0
        self.usage = chat_pb2.Usage()
        self.cancellation: run_pb2.Cancellation | None = None
        self.states = {a.name: AgentState(spec=a) for a in record.spec.team.agents}
        self.speakers: list[str] = []
        self.token = CancellationToken()
        self.done = asyncio.Event()
        """Set once the run's task is over."""
        self._stop = asyncio.Event()
        self._stop_kind: StopKind | None = None
        self._provider_error: run_pb2.RunError | None = None
        self._end_retry_s: float | None = None  # the end's write: the client's retry limit
        self._orchestrator_usage = chat_pb2.Usage()
        self._messages = 0
        self._seen_messages: set[str] = set()
        self._seen_lock = asyncio.Lock()
        self._context: list[LLMMessage] = []
        self._single = record.spec.team.kind == team_pb2.TEAM_KIND_SINGLE
        self._closing: tuple[run_pb2.RunEvent, ...] = ()  # a SINGLE turn's closing events
        self.task: asyncio.Task[None] | None = None
        self._request_id = identity.current_request_id()  # of the RPC that created the run
        self._first_client: ProviderChatClient | None = None  # holds a prefetched call
        self._resume = resume
        self._runner: TeamRunner | None = None
        self._last_message = ""
        self._handoff = False
        self.releasing = False
        """Set once the run gives its lease up (handoff): heartbeats leave it alone."""
        # The first turn's agent_started goes with the opening write (`start_request`)
        # when the first speaker is known before the run starts.
        self._opening_turn = resume is None and record.spec.team.kind in _FIRST_SPEAKER_KNOWN
        self._resume_state: dict[str, Any] | None = None  # the checkpoint's, parsed once
        self._trace_carrier: dict[str, str] = {}
        # Human in the loop (issue 21):
        self._approval_tools = self._tools_requiring_approval()
        self._humans = frozenset(a.name for a in record.spec.team.agents if a.human)
        self._boundary: run_pb2.RunCheckpoint | None = None  # the last turn boundary's
        self._step_calls: dict[str, list[dict[str, Any]]] = {}  # this step's model calls
        self._step_tools: dict[str, list[Any]] = {}  # its tool results: [text, is_error]
        self._replay_tools: dict[str, list[Any]] = {}  # of them, still to replay
        self._replay: dict[str, deque[dict[str, Any]]] = {}  # of them, still to replay
        self._muted = False  # redoing a parked step: its events are in the log already
        self._awaiting: str | None = None  # the input whose answer ends the replay
        self._answers: dict[str, run_pb2.RunEvent.InputReceived] = {}  # by input id
        self._approvals: dict[str, run_pb2.RunEvent.InputReceived] = {}  # by tool call id
        self._turn_inputs = 0  # requests for input made in the current turn
        self._planned_resumes = 0
        self._park_request: run_pb2.RunEvent.InputRequested | None = None
        self._parking = False
        self._input_error: run_pb2.RunError | None = None
        if resume is not None:
            self._restore(resume)
        self._span = self._start_span() if tracing.enabled() else None
        if self._span is not None and resume is None:  # stored with the run's opening write
            self.record.trace_context.update(tracing.carrier_of(self._span))

    def _start_span(self) -> Any:
        """The run's span (this execution's): a child of the request that started the run;
        for a resumed run a child of the interrupted execution's span, linked to it, so the
        whole run stays one trace."""
        kind = team_pb2.TeamKind.Name(self.spec.team.kind).removeprefix("TEAM_KIND_")
        attributes: dict[str, Any] = {
            "chorus.run.id": self.id,
            "chorus.run.attempt": self.record.attempt or 1,
            "chorus.team.kind": kind,
            tracing.GEN_AI_CONVERSATION_ID: self.record.conversation_id,
        }
        if self.spec.template:
            attributes["chorus.team.template"] = self.spec.template
        name = f"run {self.spec.template or kind.lower()}"
        resume = self._resume
        if resume is None:
            return tracing.start_span(name, attributes=attributes)
        attributes["chorus.run.resume_reason"] = resume.reason
        carrier = self._trace_carrier
        return tracing.start_span(
            name,
            attributes=attributes,
            parent=tracing.extract(carrier),  # an empty carrier: a new trace
            links=tracing.link_to(carrier, **{"chorus.link": "resumed_from"}),
        )

    def _end_span(self) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        status = run_pb2.RunStatus.Name(self.status).removeprefix("RUN_STATUS_")
        if self._handoff and self.status in ACTIVE_STATUSES:
            status = "HANDED_OFF"
        span.set_attribute("chorus.run.status", status)
        span.set_attribute("chorus.run.turns", self.turns)
        if self.status == run_pb2.RUN_STATUS_FAILED:
            error = self.record.error if self.record.HasField("error") else self._provider_error
            reason = error.reason if error is not None and error.reason else "RUN_FAILED"
            span.set_attribute(tracing.ERROR_TYPE, reason)
            span.set_status(
                tracing.trace.Status(
                    tracing.trace.StatusCode.ERROR, error.message[:500] if error else ""
                )
            )
        span.end()

    def _restore(self, resume: Resume) -> None:
        """Take the run's progress from its checkpoint (and the changes staged after it)."""
        # The first execution's trace (a run lost before its first checkpoint), unless the
        # checkpoint carries a later one.
        self._trace_carrier = dict(self.record.trace_context)
        cp = resume.checkpoint
        if cp is not None:
            envelope = checkpoint_envelope(cp)
            stored = envelope.pop(TRACE_STATE_KEY, None)
            if isinstance(stored, dict):
                self._trace_carrier = {k: v for k, v in stored.items() if isinstance(v, str)}
            self._planned_resumes = int(envelope.pop(PLANNED_RESUMES_KEY, 0))
            step = envelope.pop(STEP_KEY, None)
            selection = envelope.pop(SELECTION_KEY, None)
            self._resume_state = envelope
            self._boundary = run_pb2.RunCheckpoint()
            self._boundary.CopyFrom(cp)
            if step is not None or selection is not None:  # the boundary's own state
                self._boundary.team_state = json.dumps(
                    {
                        k: v
                        for k, v in checkpoint_envelope(cp).items()
                        if k not in (STEP_KEY, SELECTION_KEY)
                    },
                    separators=(",", ":"),
                ).encode()
            if isinstance(selection, list) and not isinstance(step, dict):
                # The lost turn's speaker was chosen already: the redone step asks again
                # and gets the same answers.
                self._replay = {ORCHESTRATOR_LABEL: deque(selection)}
            if isinstance(step, dict):  # parked mid-step: redo it up to the question
                self._boundary.seq = int(step["boundary_seq"])
                self._replay = {
                    label: deque(calls) for label, calls in dict(step.get("calls", {})).items()
                }
                self._replay_tools = dict(step.get("tools", {}))
                self._awaiting = str(step["awaiting"])
                self._muted = True
            self.turns = cp.turns
            self.usage.CopyFrom(cp.usage)
            self.speakers = list(cp.speakers)
            self._messages = cp.message_count
            self._last_message = cp.last_message
            for spec in cp.agents:
                if spec.name in self.states:
                    self.states[spec.name].spec = spec
            for spec in cp.pending_agents:
                if spec.name in self.states:
                    self.states[spec.name].pending = spec
        for event in resume.updates:
            state = self.states.get(event.agent)
            if state is not None:
                state.pending = event.agent_updated.agent
        if resume.context:
            self._context = context_messages(resume.context, self.spec.team.agents[0].name)
        for event in resume.answers:
            self._answers[event.input_received.input_id] = event.input_received

    # ------------------------------------------------------------------ control
    @property
    def stopping(self) -> bool:
        """A stop was requested or the terminal event was emitted."""
        return self._stop.is_set() or self.log.ended

    def request_cancel(self, cancellation: run_pb2.Cancellation) -> bool:
        """Ask the run to end with `run_cancelled`; False when it is already ending."""
        if self.stopping:
            return False
        self.cancellation = cancellation
        self._stop_kind = StopKind.CANCEL
        self._stop.set()
        return True

    def request_handoff(self) -> None:
        """Stop at the next turn boundary, after its checkpoint is stored, and release the
        lease (this process is stopping; another replica continues the run)."""
        self._handoff = True

    def handoff_now(self) -> None:
        """The handoff's deadline passed: stop the turn under way (it is lost, not the
        run) and release the lease."""
        if not self.stopping:
            self._handoff = True
            self._stop_kind = StopKind.HANDOFF
            self._stop.set()

    def abandon(self) -> None:
        """Stop without writing anything more: another writer ended the run."""
        if not self.log.ended:
            self._stop_kind = StopKind.ABANDON
            self._stop.set()

    def snapshot(self) -> run_pb2.Run:
        """The run record with this replica's live values (status, turns, usage, last seq)."""
        run = run_pb2.Run()
        run.CopyFrom(self.record)
        if self.record.status in ACTIVE_STATUSES:
            run.status = self.status
            run.turns = self.turns
            run.usage.CopyFrom(self.usage)
            run.last_seq = max(run.last_seq, self.log.last_seq)
            if self.cancellation is not None and not run.HasField("cancellation"):
                run.cancellation.CopyFrom(self.cancellation)
        return run

    def heartbeat(self) -> history_service_pb2.RunHeartbeat:
        """This run's heartbeat: this replica's instance id and the run's turns, usage and
        last stored seq (history-svc stamps `heartbeat_time` with its own clock)."""
        return history_service_pb2.RunHeartbeat(
            run_id=self.id,
            owner_instance=self._settings.instance_id,
            turns=self.turns,
            usage=self.usage,
            last_seq=self.log.stored_seq,
            lease_epoch=self.log.lease_epoch,
        )

    def on_heartbeat(self, stored: run_pb2.Run) -> None:
        """React to the record a heartbeat returned: a cross-replica cancel, a lease lost to
        another replica (this one was frozen or cut off past it), or an end written by
        someone else."""
        if stored.lease_epoch != self.log.lease_epoch and not self.log.ended:
            log.warning("run_lease_lost", run_id=self.id, lease_epoch=stored.lease_epoch)
            self.abandon()
        elif stored.status not in ACTIVE_STATUSES and not self.log.ended:
            log.warning("run_ended_elsewhere", run_id=self.id, status=stored.status)
            self.abandon()
        elif stored.HasField("cancellation") and self.request_cancel(stored.cancellation):
            log.info("run_cancel_received", run_id=self.id, by=stored.cancellation.requested_by)

    # ------------------------------------------------------------------ persistence
    async def _write_events(
        self,
        events: Sequence[run_pb2.RunEvent],
        checkpoint: run_pb2.RunCheckpoint | None = None,
    ) -> None:
        try:
            await self._history.append_events(
                self.owner,
                self.id,
                events,
                lease_epoch=self.log.lease_epoch,
                checkpoint=checkpoint,
            )
        except (FailedPrecondition, NotFound) as exc:
            # LEASE_LOST: another replica claimed the run (we were frozen or cut off past
            # the lease); or someone else wrote these seqs; NOT_FOUND: the run was deleted.
            self.abandon()
            raise RunAbandoned(exc.message) from None

    def _events_rejected(self, exc: Exception) -> None:
        """history-svc rejected a delta batch of the flusher (as `_write_events` would)."""
        if isinstance(exc, FailedPrecondition | NotFound):
            # Someone else (a recovery sweep that took us for dead) wrote these seqs, or
            # the run was deleted.
            self.abandon()

    async def _end_with(
        self, event: run_pb2.RunEvent, status: run_pb2.RunStatus, **fields: Any
    ) -> None:
        """Emit the terminal `event` and store it with the final record (`status`, turns,
        usage, last seq, end time and `fields`) in one write; then the run is `status`."""
        paths = [*_FINAL_PATHS_BASE, *fields]

        async def write_end(events: Sequence[run_pb2.RunEvent]) -> None:
            final = run_pb2.Run(
                id=self.id,
                status=status,
                turns=self.turns,
                usage=self.usage,
                last_seq=self.log.last_seq,
                end_time=now(),
                **fields,
            )
            try:
                self.record = await self._history.append_final_events(
                    self.owner,
                    self.id,
                    events,
                    final,
                    paths,
                    lease_epoch=self.log.lease_epoch,
                    retry_s=self._end_retry_s,
                )
            except (FailedPrecondition, NotFound) as exc:
                # Someone else (a recovery sweep that took us for dead) wrote these seqs or
                # ended the record; or the run was deleted.
                self.abandon()
                raise RunAbandoned(exc.message) from None

        # The closing events stay until the end is published: an end that fails before it
        # (an earlier write failed) is retried as run_failed, with them.
        async with self._end_slot():
            while True:
                try:
                    await self.log.end(*self._closing, event, final_writer=write_end)
                    break
                except ChorusError as exc:
                    # After a store outage an earlier write's failure is raised (once) here,
                    # before the end is published; the end itself then waits for the store.
                    if (
                        self._end_retry_s is None
                        or exc.code not in _STORE_OUTAGE_CODES
                        or self.log.ended
                    ):
                        raise
        self.status = status

    # ------------------------------------------------------------------ RunHooks
    async def messages_seen(self, messages: Sequence[BaseChatMessage]) -> None:
        """See `chorus.orchestrator.teams.RunHooks`."""
        # One at a time: an agent that sees a message the run's stream is still reporting
        # waits here, so the message precedes the agent's turn in the log.
        async with self._seen_lock:
            await self._emit_closing()
            for message in messages:
                if (
                    message.source in self.states
                    or message.source == "user"  # the input, appended at the start
                    or message.id in self._seen_messages
                ):
                    continue
                self._seen_messages.add(message.id)
                await self.message_completed(message.source, message)

    async def begin_turn(self, agent: str) -> int:
        """See `chorus.orchestrator.teams.RunHooks`."""
        await self._emit_closing()
        self.turns += 1
        self._turn_inputs = 0
        if agent not in self.speakers:
            self.speakers.append(agent)
        if self._opening_turn:
            self._opening_turn = False
            if agent == self.spec.team.agents[0].name:
                return 1  # its agent_started went with the run's opening write
        if not self._muted:
            started = _Event(agent=agent, agent_started=_Event.AgentStarted(turn=self.turns))
            calls = list(self._step_calls.get(ORCHESTRATOR_LABEL, ()))
            if not calls:  # ROUND_ROBIN, GraphFlow, SINGLE; a selector that did not ask
                await self.log.emit(started)
            else:
                # The boundary's own write (which sets its seq) is stored before this one
                # starts; by then `_boundary` may be the next turn's already.
                boundary = self._boundary

                async def write_selection(batch: Sequence[run_pb2.RunEvent]) -> None:
                    await self._write_events(batch, self._selection_checkpoint(boundary, calls))

                await self.log.emit(started, writer=write_selection)
        return self.turns

    def _selection_checkpoint(
        self, boundary: run_pb2.RunCheckpoint | None, calls: list[dict[str, Any]]
    ) -> run_pb2.RunCheckpoint:
        """The checkpoint of the turn boundary `boundary` (stored; None: the run's start)
        plus the orchestrator's `calls` completed in the step since (`SELECTION_KEY`)."""
        checkpoint = run_pb2.RunCheckpoint()
        if boundary is not None:
            checkpoint.CopyFrom(boundary)
        else:  # the run's start
            checkpoint.agents.extend(self.spec.team.agents)
        envelope = checkpoint_envelope(checkpoint)
        envelope[SELECTION_KEY] = calls
        if self._planned_resumes:
            envelope[PLANNED_RESUMES_KEY] = self._planned_resumes
        if self._span is not None:
            envelope.setdefault(TRACE_STATE_KEY, tracing.carrier_of(self._span))
        checkpoint.team_state = json.dumps(envelope, separators=(",", ":")).encode()
        return checkpoint

    async def tool_calls_started(self, agent: str, calls: Sequence[FunctionCall]) -> None:
        """See `chorus.orchestrator.teams.RunHooks`."""
        if self._muted:
            return
        for call in calls:
            await self.log.emit(
                _Event(
                    agent=agent,
                    tool_call_started=_Event.ToolCallStarted(
                        call=chat_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)
                    ),
                )
            )

    async def tool_calls_finished(
        self,
        agent: str,
        calls: Sequence[FunctionCall],
        results: Sequence[FunctionExecutionResult],
    ) -> None:
        """See `chorus.orchestrator.teams.RunHooks`."""
        for result in results:  # the step's journal: a redo of the step never runs them again
            self._step_tools[result.call_id] = [result.content, result.is_error]
        if self._muted:
            return
        for call, result in zip(calls, results, strict=False):
            await self.log.emit(
                _Event(
                    agent=agent,
                    tool_call_finished=_Event.ToolCallFinished(
                        call=chat_pb2.ToolCall(
                            id=call.id, name=call.name, arguments=call.arguments
                        ),
                        result=result.content[:MAX_RESULT_CHARS],
                        success=not result.is_error,
                    ),
                )
            )

    async def message_completed(self, agent: str, message: BaseChatMessage) -> None:
        """A message outside the agents' turns (an orchestrator's) is complete."""
        usage, self._orchestrator_usage = self._orchestrator_usage, chat_pb2.Usage()
        if self._muted:  # stored (message and event) before the run parked
            self._messages += 1
            return
        await self.log.emit(await self._message_event(agent, message.to_text(), usage))

    async def turn_completed(self, agent: str, turn: int, message: BaseChatMessage) -> None:
        """See `chorus.orchestrator.teams.RunHooks`."""
        self._unmute("the turn ended before the question it was redone for")
        usage = self.states[agent].turn_usage
        if agent not in self._humans:  # a person's reply (APPROVE, notes) is no answer
            self._last_message = message.to_text()
        if self._single:  # the run's last message: a closing write
            async with self._end_slot():
                event = await self._message_event(agent, message.to_text(), usage)
        else:
            event = await self._message_event(agent, message.to_text(), usage)
        await self._close_turn(event, *self._turn_end(agent, turn))

    @contextlib.asynccontextmanager
    async def _end_slot(self) -> AsyncIterator[None]:
        """Hold one of the `max_ending_runs` end slots (waiting for one when all are held)."""
        slots = self._deps.end_slots
        if slots.locked():
            metrics.RUN_ENDS_WAITING.inc()
            try:
                await slots.acquire()
            finally:
                metrics.RUN_ENDS_WAITING.dec()
        else:
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    async def end_turn(self, agent: str, turn: int) -> None:
        """See `chorus.orchestrator.teams.RunHooks`."""
        self._unmute("the turn ended before the question it was redone for")
        await self._close_turn(*self._turn_end(agent, turn))

    # ------------------------------------------------------------------ input (issue 21)
    def _tools_requiring_approval(self) -> dict[str, frozenset[str]]:
        """Per agent, the tools whose calls wait for approval: the agent's and the team's
        `tools_requiring_approval`, and the registry's always-approved tools it has."""
        team = self.spec.team
        out: dict[str, frozenset[str]] = {}
        for spec in team.agents:
            names = set(spec.tools_requiring_approval) | set(team.tools_requiring_approval)
            for name in spec.tools:
                entry = self._deps.tools.get(name)
                if entry is not None and entry.requires_approval:
                    names.add(name)
            out[spec.name] = frozenset(names & set(spec.tools))
        return out

    def _unmute(self, why: str) -> None:
        """End the silent redo of a parked step (it should end at the question)."""
        if self._muted:
            log.warning("run_replay_diverged", reason=why, awaiting=self._awaiting)
            self._muted = False
            self._awaiting = None

    async def approve_tool_calls(self, agent: str, calls: Sequence[FunctionCall]) -> None:
        """See `chorus.orchestrator.teams.RunHooks`: one APPROVAL request per call of a tool
        that needs approval, in order, each answered before the next is asked."""
        needed = self._approval_tools.get(agent, frozenset())
        for call in calls:
            if call.name not in needed:
                continue
            answer = await self._request_input(
                agent,
                run_pb2.INPUT_KIND_APPROVAL,
                f"{agent} wants to call {call.name}. Approve?",
                chat_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments),
            )
            self._approvals[call.id] = answer

    def tool_result_instead(self, call_id: str | None) -> tuple[str, bool] | None:
        """See `chorus.orchestrator.teams.RunHooks`: while a parked step is redone, a call
        that ran before the question returns its recorded result (a tool is never run twice
        for one call); a denied or expired approval returns the denial as an error."""
        if not call_id:
            return None
        recorded = self._replay_tools.pop(call_id, None)
        if recorded is not None:
            return str(recorded[0]), bool(recorded[1])
        answer = self._approvals.get(call_id)
        if answer is None or (answer.HasField("decision") and answer.decision.approved):
            return None
        if answer.expired:
            return "not run: nobody approved this call before its request expired (EXPIRED)", True
        reason = answer.decision.reason
        denial = f"not run: denied by {answer.by or 'a person'}" + (f": {reason}" if reason else "")
        return denial, True

    async def human_input(self, agent: str) -> str:
        """See `chorus.orchestrator.teams.RunHooks`: a TEXT request whose prompt is the human
        agent's `system_prompt`."""
        prompt = self.states[agent].spec.system_prompt or f"{agent}, it is your turn."
        answer = await self._request_input(agent, run_pb2.INPUT_KIND_TEXT, prompt)
        if answer.expired or answer.WhichOneof("answer") != "text":
            self._input_error = run_pb2.RunError(
                code=rpc_code(grpc.StatusCode.DEADLINE_EXCEEDED),
                message=f"nobody answered {agent}'s request {answer.input_id} before it expired",
                reason="INPUT_EXPIRED",
            )
            raise InputExpired(self._input_error.message)
        return answer.text

    async def _request_input(
        self,
        agent: str,
        kind: run_pb2.InputKind,
        prompt: str,
        tool_call: chat_pb2.ToolCall | None = None,
    ) -> run_pb2.RunEvent.InputReceived:
        """The answer to this turn's next request for input: known already (given before
        the run parked, or earlier in a redone step), or else the run parks — this never
        returns then; the step is cancelled once the question is stored."""
        self._turn_inputs += 1
        input_id = f"turn{self.turns}-{self._turn_inputs}"
        if self._muted and input_id == self._awaiting:
            self._muted = False  # the redone step reached its question: live from here
            self._awaiting = None
        answer = self._answers.get(input_id)
        if answer is not None:
            return answer
        self._unmute(f"a question ({input_id}) before the awaited one")
        if not self._stop.is_set():
            team = self.spec.team
            timeout_s = (
                team.input_timeout.ToNanoseconds() / 1e9
                if team.HasField("input_timeout")
                else DEFAULT_INPUT_TIMEOUT_S
            )
            expire = now()
            expire.FromNanoseconds(expire.ToNanoseconds() + int(timeout_s * 1e9))
            self._park_request = run_pb2.RunEvent.InputRequested(
                input_id=input_id,
                kind=kind,
                prompt=prompt,
                tool_call=tool_call,
                expire_time=expire,
                agent=agent,
            )
            self._stop_kind = StopKind.PARK
            self._stop.set()
        await asyncio.get_running_loop().create_future()  # cancelled with the step
        raise AssertionError("unreachable: the step is cancelled")

    def _park_checkpoint(self, input_id: str) -> run_pb2.RunCheckpoint:
        """The checkpoint of a run that asks: its last turn boundary's (the team state and
        counters) plus the step under way — its completed model calls and the question —
        so that the run continues by redoing the step up to the question (`STEP_KEY`)."""
        checkpoint = run_pb2.RunCheckpoint()
        if self._boundary is not None:
            checkpoint.CopyFrom(self._boundary)
        else:  # the run's start
            checkpoint.agents.extend(self.spec.team.agents)
        envelope = checkpoint_envelope(checkpoint)
        envelope[STEP_KEY] = {
            "boundary_seq": checkpoint.seq,
            "awaiting": input_id,
            "calls": self._step_calls,
            "tools": self._step_tools,
        }
        envelope[PLANNED_RESUMES_KEY] = self._planned_resumes + 1
        if self._span is not None:
            envelope.setdefault(TRACE_STATE_KEY, tracing.carrier_of(self._span))
        checkpoint.team_state = json.dumps(envelope, separators=(",", ":")).encode()
        return checkpoint

    async def _park(self) -> None:
        """Store `input_requested` with the parked checkpoint and the record's status
        AWAITING_INPUT (history-svc releases the lease in that write), in one
        AppendRunEvents; then the run lets go (issue 21, "waiting costs nothing")."""
        request = self._park_request
        assert request is not None
        self._parking = True
        checkpoint = self._park_checkpoint(request.input_id)
        paths = ["status", "pending_input", "turns", "usage", "last_seq"]

        async def write_park(events: Sequence[run_pb2.RunEvent]) -> None:
            checkpoint.seq = events[-1].seq
            waiting = run_pb2.Run(
                id=self.id,
                status=run_pb2.RUN_STATUS_AWAITING_INPUT,
                pending_input=request,
                turns=self.turns,
                usage=self.usage,
                last_seq=events[-1].seq,
            )
            try:
                self.record = await self._history.append_final_events(
                    self.owner,
                    self.id,
                    events,
                    waiting,
                    paths,
                    lease_epoch=self.log.lease_epoch,
                    checkpoint=checkpoint,
                )
            except (FailedPrecondition, NotFound) as exc:
                self.abandon()
                raise RunAbandoned(exc.message) from None

        await self.log.emit(
            _Event(agent=request.agent, input_requested=request), durable=True, writer=write_park
        )
        self.status = run_pb2.RUN_STATUS_AWAITING_INPUT
        metrics.RUNS_AWAITING_INPUT.inc()

    # ------------------------------------------------------------------ CallJournal
    def replay_call(self, label: str) -> tuple[CreateResult, chat_pb2.Usage] | None:
        """See `chorus.orchestrator.model_client.CallJournal`."""
        queue = self._replay.get(label)
        if not queue:
            self._unmute(f"a model call of {label} beyond the recorded ones")
            return None
        entry = queue.popleft()
        self._step_calls.setdefault(label, []).append(entry)
        usage = chat_pb2.Usage.FromString(base64.b64decode(entry["usage"]))
        return CreateResult.model_validate(entry["result"]), usage

    def record_call(self, label: str, result: CreateResult, usage: chat_pb2.Usage) -> None:
        """See `chorus.orchestrator.model_client.CallJournal`."""
        self._step_calls.setdefault(label, []).append(
            {
                "result": result.model_dump(mode="json"),
                "usage": base64.b64encode(usage.SerializeToString()).decode(),
            }
        )

    async def _close_turn(self, *events: run_pb2.RunEvent) -> None:
        """Keep the events that close a turn for the write that follows the turn: the turn
        boundary's checkpoint write, or the run's end (a SINGLE team's one turn is the run).
        Anything the team reports before that emits them first (`_emit_closing`)."""
        await self._emit_closing()
        self._closing = events

    async def _emit_closing(self, checkpoint: run_pb2.RunCheckpoint | None = None) -> None:
        """Emit the kept closing events of the last turn (with `checkpoint`: in its write)."""
        events, self._closing = self._closing, ()
        if not events:
            return
        if checkpoint is None:
            await self.log.emit(*events)
            return

        async def write_checkpoint(batch: Sequence[run_pb2.RunEvent]) -> None:
            checkpoint.seq = batch[-1].seq
            await self._write_events(batch, checkpoint)

        await self.log.emit(*events, writer=write_checkpoint)

    def _turn_end(self, agent: str, turn: int) -> tuple[run_pb2.RunEvent, run_pb2.RunEvent]:
        return (
            _Event(agent=agent, agent_finished=_Event.AgentFinished(turn=turn)),
            _Event(progress=_Event.Progress(turn=turn, max_turns=self.spec.max_turns)),
        )

    async def _message_event(
        self, agent: str, text: str, usage: chat_pb2.Usage
    ) -> run_pb2.RunEvent:
        """The `message_completed` event of a message, stored in the conversation first."""
        self._messages += 1
        # A resumed run redoes the interrupted turn: its message must not be taken for the
        # interrupted attempt's (AppendMessages returns a stored client_message_id as is).
        attempt = self.record.attempt
        prefix = f"{self.id}/a{attempt}" if attempt > 1 else self.id
        message = conversation_pb2.Message(
            client_message_id=f"{prefix}/m{self._messages}",
            role=chat_pb2.ROLE_ASSISTANT,
            agent=agent,
            content=text,
            usage=usage,
            run_id=self.id,
        )
        if text:  # history keeps only messages with content or tool calls
            stored = await self._history.append_messages(
                self.owner, self.record.conversation_id, [message]
            )
            message = stored[0]
        return _Event(agent=agent, message_completed=_Event.MessageCompleted(message=message))

    async def _emit_artifact(self, agent: str, name: str, mime_type: str, data: bytes) -> None:
        if len(data) > MAX_ARTIFACT_BYTES:
            raise ValueError(f"artifact {name!r} exceeds {MAX_ARTIFACT_BYTES} bytes")
        if self._muted:  # a redone tool call's artifact is in the log already
            return
        await self.log.emit(
            _Event(agent=agent, artifact=_Event.Artifact(name=name, mime_type=mime_type, data=data))
        )

    # ------------------------------------------------------------------ model clients
    def _on_agent_usage(self, state: AgentState, usage: chat_pb2.Usage) -> None:
        add_usage(self.usage, usage)
        add_usage(state.turn_usage, usage)

    def _on_orchestrator_usage(self, usage: chat_pb2.Usage) -> None:
        add_usage(self.usage, usage)
        add_usage(self._orchestrator_usage, usage)

    def _on_provider_error(self, error: run_pb2.RunError) -> None:
        if self._provider_error is None:
            self._provider_error = error

    def _agent_client(self, state: AgentState) -> ProviderChatClient:
        if self._first_client is not None:  # the SINGLE agent's, with its prefetched call
            return self._first_client
        name = state.spec.name
        coalesce = self._settings.delta_coalesce_s
        return ProviderChatClient(
            chats=self._deps.chats,
            user=self.owner,
            request_id=self._request_id,
            spec=lambda: state.spec,
            labels={"run_id": self.id, "agent": name},
            deltas=lambda: DeltaStream(self.log, name, coalesce),
            on_usage=lambda usage: self._on_agent_usage(state, usage),
            on_error=self._on_provider_error,
            timeout_s=self._settings.model_call_timeout_s,
            journal=self,
        )

    def _orchestrator_client(self) -> ProviderChatClient:
        team = self.spec.team
        spec = team_pb2.AgentSpec(name="orchestrator")
        first = next(a for a in team.agents if not a.human)  # validation: there is one
        spec.model.CopyFrom(
            team.orchestrator_model if team.HasField("orchestrator_model") else first.model
        )
        if first.HasField("simulator"):
            spec.simulator.CopyFrom(first.simulator)
        return ProviderChatClient(
            chats=self._deps.chats,
            user=self.owner,
            request_id=self._request_id,
            spec=lambda: spec,
            labels={"run_id": self.id, "agent": ORCHESTRATOR_LABEL},
            deltas=None,
            on_usage=self._on_orchestrator_usage,
            on_error=self._on_provider_error,
            timeout_s=self._settings.model_call_timeout_s,
            journal=self,
        )

    def _agent_tools(self, spec: team_pb2.AgentSpec) -> list[BaseTool[Any, Any]]:
        name = spec.name

        async def emit_artifact(file: str, mime_type: str, data: bytes) -> None:
            await self._emit_artifact(name, file, mime_type, data)

        return self._deps.tools.build(spec.tools, ToolContext(self.id, name, emit_artifact))

    # ------------------------------------------------------------------ the task
    async def execute(self) -> None:
        """The run's task: start, drive the team, end with one terminal event."""
        deadlines.clear_deadline()  # the run outlives the RPC that created it
        identity.set_identity(identity.Identity(self.owner, "run-owner"))
        structlog.contextvars.bind_contextvars(run_id=self.id, user=self.owner)
        metrics.RUNS_ACTIVE.inc()
        kind = team_pb2.TeamKind.Name(self.spec.team.kind)
        metrics.RUNS_STARTED.labels(kind).inc()
        with tracing.use(self._span):
            await self._execute(kind)

    async def _execute(self, kind: str) -> None:
        log.info("run_started", team_kind=kind, template=self.spec.template or None)
        try:
            runner = await self._start()
            result = None if runner is None else await self._drive(runner)
            await self._end(result)
        except RunAbandoned as exc:
            log.warning("run_abandoned", reason=str(exc))
        except RunHandedOff:
            log.info("run_handed_off", turns=self.turns, stored_seq=self.log.stored_seq)
        except RunParked:
            log.info("run_awaiting_input", input_id=self.record.pending_input.input_id)
        except Exception as exc:
            try:
                await self.fail_from(exc)
            except RunAbandoned as abandoned:
                log.warning("run_abandoned", reason=str(abandoned))
            except RunHandedOff:
                log.info("run_handed_off", turns=self.turns, stored_seq=self.log.stored_seq)
            except Exception as end_exc:  # history-svc unreachable even for the end
                log.error("run_end_not_recorded", error=repr(end_exc), cause=repr(exc))
        finally:
            self.drop_prefetch()  # the team never made its first call (stopped before)
            self.log.close()
            metrics.RUNS_ACTIVE.dec()
            if self.status != run_pb2.RUN_STATUS_AWAITING_INPUT:
                metrics.RUNS_ENDED.labels(run_pb2.RunStatus.Name(self.status)).inc()
            log.info("run_ended", status=run_pb2.RunStatus.Name(self.status), turns=self.turns)
            self._end_span()
            self.done.set()

    # ------------------------------------------------------------------ the start
    def start_request(
        self, conversation: conversation_pb2.Conversation | None
    ) -> hs.RecordRunStartRequest:
        """The run's opening write (HistoryService.RecordRunStart): the new `conversation`
        (None to join the run's existing one), the record, the input message and
        `run_started` (seq 1, counted as stored from now on) — plus, for a team whose first
        speaker is known up front (SINGLE, ROUND_ROBIN, SEQUENTIAL: its first agent), that
        agent's `agent_started` (seq 2: its turn starts with the run; no write of its own
        before the turn's first delta) and, for a SINGLE team in an existing conversation,
        a read of the earlier messages that are the agent's context."""
        opening = [_Event(run_started=_Event.RunStarted(run=self.snapshot()))]
        if self._opening_turn:  # the first agent's turn starts with the run
            name = self.spec.team.agents[0].name
            opening.append(_Event(agent=name, agent_started=_Event.AgentStarted(turn=1)))
        return hs.RecordRunStartRequest(
            run=self.record,
            conversation=conversation,
            messages=[
                conversation_pb2.Message(
                    client_message_id=f"{self.id}/input",
                    role=chat_pb2.ROLE_USER,
                    content=self.spec.input,
                    run_id=self.id,
                )
            ],
            events=self.log.emit_stored(*opening),
            recent_message_count=(
                self._settings.context_messages
                if self._single and not self._new_conversation
                else 0
            ),
        )

    def started(self, record: run_pb2.Run, earlier: Sequence[conversation_pb2.Message]) -> None:
        """The opening write is stored: `record` as stored, `earlier` the conversation's
        messages before the input (the context of a SINGLE team's agent)."""
        self.record = record
        self.log.lease_epoch = record.lease_epoch
        self.log.release()  # a prefetched call's first deltas: their write starts now
        if earlier:
            self._context = context_messages(earlier, self.spec.team.agents[0].name)

    def prefetch_first_call(self) -> None:
        """Open the first model call of a SINGLE team's agent now, before the opening write
        is stored, when its request is known up front: a new conversation (no context to
        read), no `request_id` (a repeat would find an earlier run and waste the call) and
        the `prefetch_first_model_call` setting. The request is what the agent sends first —
        its system prompt, the input as the user's message, its tools. The call is read at
        once: its deltas go to the run's log as they arrive, held there until the opening
        write is stored (`started`), so that the first delta's write starts with the opening
        write's answer — not once the team is built and its agent asks — and the agent's
        first call takes it up (`ProviderChatClient.prefetch`). The caller must
        `drop_prefetch` when the run does not start."""
        if not (
            self._single
            and self._new_conversation
            and not self.spec.request_id
            and self._settings.prefetch_first_model_call
        ):
            return
        spec = self.spec.team.agents[0]
        client = self._agent_client(self.states[spec.name])
        tools = [tool.schema for tool in self._agent_tools(spec)]
        with tracing.use(self._span):  # the call belongs to the run
            client.prefetch(
                [*system_messages(spec), UserMessage(content=self.spec.input, source="user")],
                tools,
            )
        self._first_client = client

    def drop_prefetch(self) -> None:
        """Cancel the prefetched first model call unless the agent took it up."""
        if self._first_client is not None:
            self._first_client.drop_prefetch()
            self._first_client = None
        if self.task is None and self._span is not None:  # the run never started
            self._span.set_attribute("chorus.run.status", "NOT_STARTED")
            self._span.end()
            self._span = None

    async def _start(self) -> TeamRunner | None:
        """A fresh team; for a resumed run, after storing `run_resumed`, with the state of
        the last checkpoint loaded."""
        if self._stop.is_set():
            return None
        runner = build_runner(
            self.spec.team,
            self.spec.max_turns,
            TeamParts(
                hooks=self,
                states=self.states,
                agent_client=self._agent_client,
                orchestrator_client=self._orchestrator_client,
                tools=self._agent_tools,
                tool_timeout_s=self._settings.tool_timeout_s,
                max_tool_iterations=self._settings.max_tool_iterations,
                context=self._context,
                tool_gate=self.tool_result_instead,
            ),
        )
        self._runner = runner
        resume = self._resume
        if resume is not None:
            checkpoint = resume.checkpoint
            if resume.reason != INPUT_RECEIVED:  # after an answer the run simply goes on
                resumed = _Event(
                    run_resumed=_Event.RunResumed(
                        attempt=self.record.attempt,
                        from_seq=checkpoint.seq if checkpoint is not None else 0,
                        reason=resume.reason,
                    )
                )
                if resume.reason == HANDOFF:
                    await self._emit_counted_handoff(resumed)
                else:
                    await self.log.emit(resumed, durable=True)
            state, self._resume_state = self._resume_state, None
            if state and "format" in state:  # no runner state: parked in the first step
                await runner.load_state(state)
        return runner

    async def _emit_counted_handoff(self, resumed: run_pb2.RunEvent) -> None:
        """Store `run_resumed` of a handoff with the claimed checkpoint counting this resume
        as planned (`PLANNED_RESUMES_KEY` + 1; seq, state and step unchanged — a run with
        no checkpoint gets one at seq 0, its start), so that no later claim takes the
        handoff for a lost owner. Until this write is stored the claim counts as a loss:
        a claimer lost in between was lost indeed."""
        self._planned_resumes += 1
        stored = self._resume.checkpoint if self._resume is not None else None
        counted = run_pb2.RunCheckpoint()
        if stored is not None:
            counted.CopyFrom(stored)
        else:  # the run's start, as a parked run's first-step checkpoint has it
            counted.agents.extend(self.spec.team.agents)
        envelope = checkpoint_envelope(stored)
        envelope[PLANNED_RESUMES_KEY] = self._planned_resumes
        counted.team_state = json.dumps(envelope, separators=(",", ":")).encode()

        async def write_counted(batch: Sequence[run_pb2.RunEvent]) -> None:
            await self._write_events(batch, counted)

        await self.log.emit(resumed, durable=True, writer=write_counted)

    async def _steps(self, runner: TeamRunner) -> TaskResult | None:
        """Drive the team one agent turn per step, storing a checkpoint at every turn
        boundary; returns the team's result, or None when a handoff stopped it at a
        boundary."""
        # A runner that loaded a checkpoint's state continues; a fresh one starts the task.
        task: str | None = None if runner.started else self.spec.input
        while True:
            result: TaskResult | None = None
            async for item in runner.step(task, self.token):
                if isinstance(item, TaskResult):
                    result = item
                elif isinstance(item, BaseChatMessage):
                    # An orchestrator's own message (plan, instruction, final answer).
                    await self.messages_seen([item])
                    self._last_message = item.to_text()
            task = None
            if result is None:
                raise RuntimeError("the team ended a step without a result")
            if runner.ended(result):
                return result
            await self._emit_closing(await self._checkpoint(runner))
            if self._handoff:
                return None

    async def _checkpoint(self, runner: TeamRunner) -> run_pb2.RunCheckpoint:
        """The run's state at a turn boundary (`seq` is set by the write that stores it);
        the next step starts a new journal of model calls and answers."""
        state = await runner.save_state()
        if self._span is not None:  # a resumed run continues this trace
            state[TRACE_STATE_KEY] = tracing.carrier_of(self._span)
        if self._planned_resumes:
            state[PLANNED_RESUMES_KEY] = self._planned_resumes
        self._step_calls = {}
        self._step_tools = {}
        self._replay = {}  # a replay never reaches past its step
        self._answers.clear()
        self._approvals.clear()
        self._boundary = run_pb2.RunCheckpoint(
            team_state=json.dumps(state, separators=(",", ":")).encode(),
            agents=[s.spec for s in self.states.values()],
            pending_agents=[s.pending for s in self.states.values() if s.pending is not None],
            turns=self.turns,
            usage=self.usage,
            message_count=self._messages,
            speakers=self.speakers,
            last_message=self._last_message,
        )
        return self._boundary

    async def _drive(self, runner: TeamRunner) -> TaskResult | None:
        steps = asyncio.create_task(self._steps(runner), name=f"run-{self.id}-team")
        stop = asyncio.create_task(self._stop.wait(), name=f"run-{self.id}-stop")
        try:
            await asyncio.wait({steps, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if steps.done():
            return steps.result()
        self.token.cancel()  # cancels the in-flight provider call and the agents' handlers
        steps.cancel()
        await asyncio.wait({steps}, timeout=_TEAM_STOP_TIMEOUT_S)
        if not steps.done():
            log.warning("team_did_not_stop", timeout_s=_TEAM_STOP_TIMEOUT_S)
        elif not steps.cancelled() and steps.exception() is not None:
            log.info("team_stopped_with_error", error=repr(steps.exception()))
        return None

    async def _end(self, result: TaskResult | None) -> None:
        self.drop_prefetch()  # a stop before the agent took it up: no deltas after the end
        if result is not None:
            await self._complete(result)
        elif self._stop_kind is StopKind.CANCEL:
            await self._cancelled()
        elif self._stop_kind is StopKind.ABANDON:
            raise RunAbandoned("another replica owns the run now, or it ended elsewhere")
        elif self._stop_kind is StopKind.PARK:
            await self._park()
            raise RunParked()
        elif self._handoff:  # at a turn boundary, or the deadline stopped the turn
            await self._release()
            raise RunHandedOff()
        else:
            raise RuntimeError("the team stopped without a result or a stop request")

    async def _release(self) -> None:
        """Store what is pending (the last checkpoint's write above all), then release the
        lease so another replica claims the run at once. A lease already lost, or a store
        that does not answer, leaves the claim to the lease's expiry."""
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT_S):
                await self.log.sync()
                self.releasing = True  # no heartbeat may renew the lease from now on
                await self._history.release_run(self.id, self.log.lease_epoch)
        except (ChorusError, RunAbandoned, TimeoutError) as exc:
            log.warning("run_release_failed", error=repr(exc))

    async def _complete(self, result: TaskResult) -> None:
        messages = [m for m in result.messages if isinstance(m, BaseChatMessage)]
        # The final answer is the last model agent's message: a human agent's (an editor's
        # APPROVE) ends the run but answers nothing.
        final = next(
            (m for m in reversed(messages) if m.source != "user" and m.source not in self._humans),
            None,
        )
        # A step's result holds that step's messages only: the last turn's may be earlier.
        final_answer = final.to_text() if final is not None else self._last_message
        await self._end_with(
            _Event(
                run_completed=_Event.RunCompleted(
                    final_answer=final_answer,
                    agents=self.speakers,
                    usage=self.usage,
                    stop_reason=self._runner.stop_reason(result) if self._runner else "completed",
                )
            ),
            run_pb2.RUN_STATUS_COMPLETED,
            final_answer=final_answer,
        )

    async def _cancelled(self) -> None:
        assert self.cancellation is not None
        await self._end_with(
            _Event(run_cancelled=_Event.RunCancelled(cancellation=self.cancellation)),
            run_pb2.RUN_STATUS_CANCELLED,
            cancellation=self.cancellation,
        )

    async def _fail(self, error: run_pb2.RunError) -> None:
        if self.log.ended:
            return
        await self._end_with(
            _Event(run_failed=_Event.RunFailed(error=error)), run_pb2.RUN_STATUS_FAILED, error=error
        )

    async def fail_from(self, exc: BaseException) -> None:
        """End the run because starting or driving it raised `exc`.

        A stop requested meanwhile wins (the error is its consequence); a provider error the
        model client reported gives its code and retryable flag; a history-svc or other
        Chorus error keeps its code (retryable when UNAVAILABLE); anything else is a bug
        reported as INTERNAL without internals.
        """
        self.drop_prefetch()
        if self._stop_kind is StopKind.PARK and self._parking:
            self._stop_kind = None  # storing the question failed: the run fails instead
        if self._stop_kind is not None or self._handoff:
            await self._end(None)
            return
        if self._input_error is not None:
            await self._fail(self._input_error)
            return
        if self._provider_error is not None:
            await self._fail(self._provider_error)
            return
        outage = self._history.outage
        if outage is not None and not isinstance(exc, ChorusError):
            exc = outage  # what the team's error wraps (autogen re-raises it as text)
        if isinstance(exc, ChorusError):
            log.warning("run_dependency_failed", code=exc.code.name, error=exc.message)
            if exc.code in _STORE_OUTAGE_CODES:
                # history-svc or its database stayed away past CHORUS_STORE_OUTAGE_LIMIT_S:
                # the run fails, and its end is written whenever the store answers again
                # (issue 18, "Outages pause, they don't fail")
                self._end_retry_s = math.inf
            error = run_pb2.RunError(
                code=rpc_code(exc.code),
                message=exc.message,
                reason=exc.reason,
                retryable=exc.code == grpc.StatusCode.UNAVAILABLE,
            )
        else:
            log.error("team_failed", error=repr(exc), exc_info=exc)
            error = run_pb2.RunError(
                code=rpc_code(grpc.StatusCode.INTERNAL),
                message=f"the team failed unexpectedly (run {self.id}; see the orchestrator log)",
                reason="TEAM_ERROR",
            )
        await self._fail(error)
