"""The storage interface both back ends implement (PostgreSQL and the embedded SQLite).

Stores speak `chorus.v1` messages at their edge and keep the rules of `chorus.history.runs`
and `chorus.history.events` inside their transactions, so every write is all-or-nothing and
the rules hold under concurrent callers. Ownership: `owner` is the caller's identity; `None`
means the internal service identity acting across owners. A row of another owner is
reported exactly like a missing row.

Errors raised (as `chorus.core.errors` classes, so they reach clients as gRPC statuses):
`NotFound`, `Aborted` (reason CONVERSATION_BUSY, or a concurrent-create race),
`FailedPrecondition` (run-record and event-log rules) and `Unavailable` (reason
DATABASE_UNAVAILABLE) when the database cannot be reached.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chorus.core.errors import Aborted, AlreadyExists, ChorusError, NotFound, Unavailable
from chorus.history.events import Batch
from chorus.v1 import conversation_pb2, run_pb2


@dataclass(frozen=True, slots=True)
class RunFilter:
    """ListRunRecords filters.

    Attributes:
        owner: only this owner's runs; None for every owner.
        conversation_id: only runs of this conversation ("" for any).
        status: only this status (0 for any).
        heartbeat_before_us: only runs whose heartbeat (or creation, when they never sent
            one) is older than this time, in µs since the epoch.
        input_expire_before_us: only AWAITING_INPUT runs whose pending input expires before
            this time, in µs since the epoch (issue 21's expiry sweep).
    """

    owner: str | None
    conversation_id: str = ""
    status: int = 0
    heartbeat_before_us: int | None = None
    input_expire_before_us: int | None = None


@dataclass(frozen=True, slots=True)
class AppendedMessages:
    """Result of `Store.append_messages`.

    Attributes:
        conversation: the conversation after the append.
        messages: every message of the request, in request order, as stored.
        added: the messages this call stored (a subset of `messages`, in position order).
    """

    conversation: conversation_pb2.Conversation
    messages: list[conversation_pb2.Message]
    added: list[conversation_pb2.Message]


@dataclass(frozen=True, slots=True)
class AppendedEvents:
    """Result of `Store.append_events`.

    Attributes:
        last_seq: the run's highest stored seq after the call.
        first_new_seq: seq of `new_payloads[0]`.
        new_payloads: events this call stored (empty for an exact repeat).
        run: the run record after the call; None when the store did not read it (a batch
            of AppendRunEventBatches stored by PostgreSQL's one-statement path: only the
            run's `last_seq` changed, the cache is advanced instead of rewritten).
    """

    last_seq: int
    first_new_seq: int
    new_payloads: list[bytes]
    run: run_pb2.Run | None


BatchOutcome = AppendedEvents | ChorusError
"""Result of one batch of `Store.append_event_batches`: stored, or the error rejecting it."""


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """Run record fields written with an event batch (`Store.append_events`).

    Attributes:
        values: the new values (RecordRun's update rules, `chorus.history.runs.apply_update`).
        paths: the fields of `values` to write.
        now_us: the server's clock, µs since the epoch (default start / end times).
    """

    values: run_pb2.Run
    paths: set[str]
    now_us: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A run's checkpoint as stored (table `run_checkpoints`, one per run: the latest).

    Attributes:
        seq: `RunCheckpoint.seq`, the last seq it covers.
        data: the serialized `chorus.v1.RunCheckpoint`.
        now_us: the server's clock, µs since the epoch (the row's `update_time`).
    """

    seq: int
    data: bytes
    now_us: int


@dataclass(frozen=True, slots=True)
class EventWrite:
    """One run's batch for `Store.append_event_batches`.

    Attributes:
        run_id: the run (canonical UUID; distinct within a call).
        batch: its validated events.
        lease_epoch: the writer's epoch (AppendRunEventsRequest.lease_epoch; 0 skips the
            fence).
    """

    run_id: str
    batch: Batch
    lease_epoch: int = 0


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """Result of `Store.claim_run`.

    Attributes:
        run: the run after the claim.
        checkpoint: its latest checkpoint (serialized `RunCheckpoint`), None when none.
    """

    run: run_pb2.Run
    checkpoint: bytes | None


@dataclass(frozen=True, slots=True)
class StartedRun:
    """Result of `Store.record_run_start`.

    Attributes:
        run: the run as stored (`last_seq` = the last event stored).
        created: False when the caller's `spec.request_id` found an earlier run: nothing was
            written and the attributes below are empty.
        conversation: the run's conversation after the call.
        messages: every message of the request, in request order, as stored.
        added: the messages this call stored (a subset of `messages`, in position order).
        recent: the conversation's latest messages before the call's, oldest first.
        payloads: the events stored (seq 1 onwards).
    """

    run: run_pb2.Run
    created: bool
    conversation: conversation_pb2.Conversation | None = None
    messages: list[conversation_pb2.Message] = field(default_factory=list)
    added: list[conversation_pb2.Message] = field(default_factory=list)
    recent: list[conversation_pb2.Message] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RecordedInput:
    """Result of `Store.record_input` (RecordRunInput, issue 21).

    Attributes:
        run: the run record after the call.
        event: the `input_received` event as stored (this call's, or the first answer's
            for a repeat of its `request_id`).
        payloads: what this call stored — the event's serialized bytes, to publish on the
            live log — or empty for a repeat (nothing was written).
    """

    run: run_pb2.Run
    event: run_pb2.RunEvent
    payloads: list[bytes]


INPUT_ANSWERS_KIND = "input_received"
"""`run_events.kind` of a run's answers (RecordRunInput reads them by it, index
`run_events_inputs`)."""


def conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(
        f"conversation {conversation_id} not found", metadata={"conversation_id": conversation_id}
    )


def run_not_found(run_id: str, *, creating_hint: bool = False) -> NotFound:
    hint = " (to create it, set run.spec and run.conversation_id)" if creating_hint else ""
    return NotFound(f"run {run_id} not found{hint}", metadata={"run_id": run_id})


def conversation_busy(conversation_id: str, active_run_id: str) -> Aborted:
    return Aborted(
        f"conversation {conversation_id} already has an active run ({active_run_id})",
        reason="CONVERSATION_BUSY",
        metadata={"conversation_id": conversation_id, "active_run_id": active_run_id},
    )


def run_exists(run_id: str) -> AlreadyExists:
    return AlreadyExists(f"run {run_id} already exists", metadata={"run_id": run_id})


def conversation_exists(conversation_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"conversation {conversation_id} already exists",
        metadata={"conversation_id": conversation_id},
    )


def database_unavailable(kind: str, exc: BaseException) -> Unavailable:
    detail = str(exc) or type(exc).__name__
    return Unavailable(
        f"the {kind} database is unreachable ({detail}); retry later",
        reason="DATABASE_UNAVAILABLE",
    )


class Store(abc.ABC):
    """Conversations, messages, run records and run events, durably.

    Attributes:
        kind: `postgresql` or `sqlite` (for logs and health).
        on_unavailable: called (without arguments) whenever a call found the database
            unreachable; the health monitor uses it to report NOT_SERVING at once.
    """

    kind: str
    on_unavailable: Callable[[], None] | None = None

    @abc.abstractmethod
    async def ping(self) -> None:
        """A trivial query. Raises `Unavailable` when the database cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection."""

    # Conversations and messages

    @abc.abstractmethod
    async def create_conversation(
        self, conversation: conversation_pb2.Conversation, request_id: str
    ) -> tuple[conversation_pb2.Conversation, bool]:
        """Insert `conversation` (id, owner and times already set).

        Returns `(stored, created)`: with a non-empty `request_id` already used by the same
        owner, the conversation created first and False.
        """

    @abc.abstractmethod
    async def get_conversation(
        self, conversation_id: str, owner: str | None
    ) -> conversation_pb2.Conversation | None:
        """The conversation, or None when missing or another owner's."""

    @abc.abstractmethod
    async def list_conversations(
        self, owner: str, limit: int, after: tuple[int, str] | None
    ) -> list[conversation_pb2.Conversation]:
        """Up to `limit` conversations of `owner`, most recently updated first, after the
        keyset cursor `(update_time_us, id)`."""

    @abc.abstractmethod
    async def update_conversation(
        self,
        conversation_id: str,
        owner: str | None,
        values: conversation_pb2.Conversation,
        paths: set[str],
        now_us: int,
    ) -> conversation_pb2.Conversation | None:
        """Set the `paths` (title, model, team, metadata) from `values`; None when missing."""

    @abc.abstractmethod
    async def delete_conversation(
        self, conversation_id: str, owner: str | None
    ) -> list[str] | None:
        """Delete the conversation with its messages and its runs (with their events and
        checkpoints), all in one transaction (issue 23). A run started in the conversation
        concurrently is either deleted with it or refused (its start finds no
        conversation).

        Returns:
            The ids of the deleted runs; None when the conversation is missing (or another
            owner's) and nothing was deleted.
        """

    @abc.abstractmethod
    async def conversation_run_ids(self, conversation_id: str) -> list[str]:
        """The ids of every run of the conversation (any owner), in no particular order."""

    @abc.abstractmethod
    async def append_messages(
        self,
        conversation_id: str,
        owner: str | None,
        messages: Sequence[conversation_pb2.Message],
        now_us: int,
    ) -> AppendedMessages | None:
        """Append `messages` (ids set) at the end, atomically; None when the conversation is
        missing. Messages whose `client_message_id` is stored come back as stored."""

    @abc.abstractmethod
    async def list_messages(
        self,
        conversation_id: str,
        owner: str | None,
        after_position: int,
        limit: int,
        run_id: str = "",
    ) -> list[conversation_pb2.Message] | None:
        """Up to `limit` messages after `after_position`, oldest first (only `run_id`'s when
        given); None when the conversation is missing."""

    # Run records

    @abc.abstractmethod
    async def record_run(
        self,
        values: run_pb2.Run,
        paths: set[str],
        owner: str,
        is_system: bool,
        now_us: int,
        lease_epoch: int = 0,
    ) -> tuple[run_pb2.Run, bool]:
        """Create or update the run `values.id` (see `chorus.history.runs`).

        Creates when no run has that id and `values` has `spec` and `conversation_id`: the
        caller's `spec.request_id` already used returns that run; the conversation must be
        the caller's; an active status while the conversation has an active run is ABORTED
        CONVERSATION_BUSY. Otherwise updates `paths` (owner's run only, unless
        `is_system`), fenced by the writer's `lease_epoch` (`chorus.history.runs.
        check_lease`: a non-zero epoch other than the run's raises FAILED_PRECONDITION
        LEASE_LOST before anything is written; a create ignores it). Returns
        `(stored run, created)`.
        """

    @abc.abstractmethod
    async def record_heartbeats(
        self, beats: Sequence[run_pb2.Run], owner: str | None, now_us: int
    ) -> list[tuple[run_pb2.Run, bool] | None]:
        """Write many runs' heartbeats in one transaction (`chorus.history.runs.
        apply_heartbeats`): `beats` are `heartbeat_values` with distinct canonical ids.

        Returns per heartbeat, in order, `(stored run after the call, updated)` — an ended
        run comes back unchanged with `updated = False` — or None for a missing run or
        (unless `owner` is None) another owner's.

        Raises:
            Unavailable: the database is unreachable; nothing is written.
        """

    @abc.abstractmethod
    async def claim_run(
        self,
        run_id: str,
        owner_instance: str,
        lease_epoch: int,
        stale_after_us: int,
        now_us: int,
    ) -> ClaimedRun:
        """ClaimRun: one compare-and-set on the run's row, locked in one transaction
        (`chorus.history.runs.claim`), then its latest checkpoint read under that lock. Any
        owner's run (the caller is the internal service identity).

        Raises:
            NotFound: no such run.
            FailedPrecondition: RUN_ENDED, LEASE_LOST or LEASE_HELD; nothing is written.
            Unavailable: the database is unreachable.
        """

    @abc.abstractmethod
    async def release_run(
        self, run_id: str, lease_epoch: int, now_us: int
    ) -> tuple[run_pb2.Run, bool]:
        """ReleaseRun in one transaction on the locked row (`chorus.history.runs.release`).
        Returns `(the run after the call, whether it was written)`; an ended or already
        released run comes back unchanged. Any owner's run.

        Raises:
            NotFound: no such run.
            FailedPrecondition: LEASE_LOST; nothing is written.
            Unavailable: the database is unreachable.
        """

    @abc.abstractmethod
    async def record_input(
        self,
        run_id: str,
        owner: str | None,
        answer: run_pb2.RunEvent.InputReceived,
        now_us: int,
    ) -> RecordedInput:
        """RecordRunInput in one transaction on the locked run (`chorus.history.runs.
        answer_input`): read the run's stored answers, then append the `input_received`
        event (the append path of `append_events`), write the record (RUNNING,
        `pending_input` cleared, lease free, `last_seq`) and move the checkpoint's `seq` to
        the event's (when the run has one). A repeat of the first answer's `request_id`
        writes nothing and returns it. `owner` None: any owner's run (the internal
        service identity).

        Raises:
            NotFound: no such run (or another owner's).
            FailedPrecondition: INPUT_NOT_PENDING (or RUN_ENDED); nothing is written.
            InvalidArgument: the answer's kind does not fit the request.
            Unavailable: the database is unreachable.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str, owner: str | None) -> run_pb2.Run | None:
        """The run, or None when missing or another owner's."""

    @abc.abstractmethod
    async def delete_run(self, run_id: str, owner: str | None) -> bool:
        """Delete the run record with its events and checkpoint in one transaction (its
        conversation's messages stay). A write racing the delete either commits before it
        (and is deleted with the run) or finds no run (NotFound).

        Returns:
            False when the run is missing (or another owner's) and nothing was deleted.
        """

    @abc.abstractmethod
    async def list_runs(
        self, where: RunFilter, limit: int, after: tuple[int, str] | None
    ) -> list[run_pb2.Run]:
        """Up to `limit` runs, newest first, after the keyset cursor `(create_time_us, id)`."""

    # Run events

    @abc.abstractmethod
    async def append_events(
        self,
        run_id: str,
        owner: str | None,
        batch: Batch,
        update: RunUpdate | None = None,
        *,
        lease_epoch: int = 0,
        checkpoint: Checkpoint | None = None,
    ) -> AppendedEvents:
        """Store a batch atomically (gapless, idempotent repeat, conflict and end rules of
        `chorus.history.events`) and raise the run's `last_seq`; with `update`, write those
        record fields in the same transaction; with `checkpoint`, replace the run's
        checkpoint in it too (unless the stored one has a higher seq: a late retry). A
        non-zero `lease_epoch` must be the run's (the fence, checked first on the locked
        row).

        Raises:
            NotFound: no such run (or another owner's).
            FailedPrecondition: LEASE_LOST, SEQ_GAP, SEQ_CONFLICT, RUN_ENDED, or
                RUN_TERMINAL (the update would change a terminal status); nothing is stored.
            InvalidArgument: `checkpoint.seq` is beyond the run's last seq after the batch
                (field `checkpoint.seq`); nothing is stored.
        """

    @abc.abstractmethod
    async def append_event_batches(
        self, batches: Sequence[EventWrite], owner: str | None
    ) -> list[BatchOutcome]:
        """Store many runs' batches in one transaction, each under the rules of
        `append_events` (the lease fence included); a batch breaking a rule is rejected
        alone (its outcome is the `NotFound` or `FailedPrecondition` `append_events` would
        raise) and the others are stored. Run ids must be distinct.

        Returns one outcome per batch, in order.

        Raises:
            Unavailable: the database is unreachable; nothing is stored.
        """

    @abc.abstractmethod
    async def event_log_state(self, run_id: str) -> tuple[int, bool] | None:
        """`(highest stored seq, whether a terminal event is stored)`; None for no such run."""

    @abc.abstractmethod
    async def list_events(
        self,
        run_id: str,
        after_seq: int,
        limit: int,
        until_seq: int | None = None,
        kinds: Sequence[str] = (),
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` `(seq, serialized RunEvent)` with `after_seq < seq <= until_seq`, in
        seq order; with `kinds`, only events whose payload is one of them (the RunEvent
        `payload` field names). No ownership check: callers check the run first."""

    # Run start

    @abc.abstractmethod
    async def record_run_start(
        self,
        run: run_pb2.Run,
        conversation: conversation_pb2.Conversation | None,
        messages: Sequence[conversation_pb2.Message],
        events: Batch | None,
        recent_count: int,
        owner: str,
        is_system: bool,
        now_us: int,
    ) -> StartedRun:
        """RecordRunStart in one transaction: create `conversation` (id, owner and times
        set) when given, create the run `run` (as `record_run` creates), append `messages`
        to the run's conversation (as `append_messages`), store `events` (seq 1 onwards, as
        `append_events`) and read the conversation's `recent_count` latest messages before
        the appended ones. All or nothing.

        The caller's `run.spec.request_id` already used returns that run (`created`
        False) and writes nothing. Without `conversation`, the run joins the existing
        conversation `run.conversation_id`, which must be the caller's (any owner's when
        `is_system`).

        Raises:
            AlreadyExists: the run id or the conversation id exists.
            NotFound: the conversation to join is missing or another owner's.
            Aborted: CONVERSATION_BUSY, the conversation has an active run (and the new one
                is active).
            Unavailable: the database is unreachable.
        """
