"""Rules of run records (RecordRun, RecordRunHeartbeats, RecordRunInput): what a create
stores, how an update or a heartbeat merges, and how an answer to a waiting run is recorded.

Pure functions over `chorus.v1.Run` messages; both stores call them inside their
transaction, after reading the stored row under a lock, so the rules hold under concurrency.
Source of the rules: RecordRun's comment in proto/chorus/v1/history_service.proto and the
run semantics of docs/architecture.md §4. Leases (`lease_epoch`, `attempt`, ClaimRun, ReleaseRun and
the fencing of appends, record updates and heartbeats) follow the comments of `Run.lease_epoch`, ClaimRun
and ReleaseRun there (issue 18, "Durable runs"). A run waiting for a person
(RUN_STATUS_AWAITING_INPUT, `Run.pending_input`, RecordRunInput) follows the comments of
RecordRunInput and AppendRunEvents there and of the status in run.proto (issue 21, human in
the loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from chorus.core.errors import FailedPrecondition, InvalidArgument
from chorus.history.timeutil import set_ts, ts_to_us
from chorus.v1 import history_service_pb2, run_pb2

UPDATABLE_PATHS = (
    "status",
    "turns",
    "final_answer",
    "error",
    "cancellation",
    "usage",
    "last_seq",
    "owner_instance",
    "heartbeat_time",
    "start_time",
    "end_time",
    "pending_input",
)
"""RecordRun update-mask paths; `spec`, `conversation_id`, `owner` and times of creation are
immutable."""

HEARTBEAT_PATHS = ("heartbeat_time", "owner_instance", "turns", "usage", "last_seq")
"""The fields a heartbeat writes (RecordRunHeartbeats' comment)."""

ACTIVE = frozenset(
    {run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_AWAITING_INPUT}
)
"""Statuses of a run that is not over: its conversation is busy (one active run per
conversation), watchers keep following it. AWAITING_INPUT is active (issue 21)."""
AWAITING = run_pb2.RUN_STATUS_AWAITING_INPUT
TERMINAL = frozenset(
    {run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED}
)
_MESSAGE_PATHS = frozenset(
    {"error", "cancellation", "usage", "heartbeat_time", "start_time", "end_time", "pending_input"}
)
EXPIRED_REASON = "EXPIRED"
"""`ApprovalDecision.reason` of an approval that expired unanswered (issue 21)."""


def prepare_new(run: run_pb2.Run, owner: str, now_us: int) -> run_pb2.Run:
    """The record to insert for a create: owner set, status QUEUED unless given, times filled.

    `last_seq` starts at 0 (events are appended with AppendRunEvents); `start_time` and
    `end_time` default to now for RUNNING and terminal statuses; a RUNNING run's
    `lease_epoch` and `attempt` default to 1 (its first lease and execution).
    """
    out = run_pb2.Run()
    out.CopyFrom(run)
    out.owner = owner
    out.last_seq = 0
    if out.status == run_pb2.RUN_STATUS_UNSPECIFIED:
        out.status = run_pb2.RUN_STATUS_QUEUED
    _start_lease(out)
    _waiting_rules(out, out.status == AWAITING)
    if not out.HasField("create_time"):
        set_ts(out.create_time, now_us)
    _default_times(out, now_us)
    set_ts(out.update_time, now_us)
    return out


def apply_update(
    stored: run_pb2.Run, values: run_pb2.Run, paths: Iterable[str], now_us: int
) -> run_pb2.Run:
    """`stored` with the masked fields taken from `values`.

    * A terminal status is final: changing it raises FAILED_PRECONDITION (reason
      RUN_TERMINAL); re-sending the same terminal status is accepted.
    * The first cancellation is kept: a later one does not replace who cancelled and why.
    * `last_seq` never decreases (AppendRunEvents moves it too).
    * Reaching RUNNING sets `start_time`, reaching a terminal status sets `end_time`, when
      the caller did not give them; reaching RUNNING also starts the lease (`lease_epoch`
      and `attempt` 1 when still 0). `lease_epoch` and `attempt` are not updatable: only
      ClaimRun moves them.
    * Writing the status AWAITING_INPUT releases the lease as ReleaseRun does (issue 21: a
      waiting run has no owner); `pending_input` is kept only while the run is
      AWAITING_INPUT — any other status clears it in the same write.

    Raises:
        FailedPrecondition: a terminal status would change.
    """
    paths = set(paths)
    if "status" in paths and stored.status in TERMINAL and values.status != stored.status:
        raise FailedPrecondition(
            f"run {stored.id} is {run_pb2.RunStatus.Name(stored.status)}: a terminal status is final",
            reason="RUN_TERMINAL",
            metadata={"status": run_pb2.RunStatus.Name(stored.status)},
        )
    out = run_pb2.Run()
    out.CopyFrom(stored)
    for path in paths:
        if path == "last_seq":
            out.last_seq = max(stored.last_seq, values.last_seq)
        elif path == "cancellation":
            if not stored.HasField("cancellation") and values.HasField("cancellation"):
                out.cancellation.CopyFrom(values.cancellation)
        elif path in _MESSAGE_PATHS:
            if values.HasField(path):
                getattr(out, path).CopyFrom(getattr(values, path))
            else:
                out.ClearField(path)
        else:
            setattr(out, path, getattr(values, path))
    if out.status == run_pb2.RUN_STATUS_RUNNING and stored.status != run_pb2.RUN_STATUS_RUNNING:
        _start_lease(out)
    _waiting_rules(out, "status" in paths and values.status == AWAITING)
    _default_times(out, now_us)
    # Strictly increasing per write (the row is locked), so it versions cached copies.
    set_ts(out.update_time, max(now_us, (ts_to_us(stored.update_time) or 0) + 1))
    return out


def heartbeat_values(beat: history_service_pb2.RunHeartbeat, now_us: int) -> run_pb2.Run:
    """The run fields a heartbeat writes (`HEARTBEAT_PATHS`), `heartbeat_time` = `now_us`.

    `id` is the heartbeat's `run_id` as given (callers canonicalize it); an unset `usage`
    writes an empty one, as RecordRun does for a masked `usage` it is not given.
    `lease_epoch` carries the sender's epoch for the fence of `apply_heartbeats` (it is
    not written).
    """
    out = run_pb2.Run(
        id=beat.run_id,
        owner_instance=beat.owner_instance,
        turns=beat.turns,
        last_seq=beat.last_seq,
        lease_epoch=beat.lease_epoch,
    )
    if beat.HasField("usage"):
        out.usage.CopyFrom(beat.usage)
    set_ts(out.heartbeat_time, now_us)
    return out


def apply_heartbeats(
    beats: Sequence[run_pb2.Run], stored: Mapping[str, run_pb2.Run], now_us: int
) -> list[tuple[run_pb2.Run, bool] | None]:
    """The outcome of each heartbeat (values from `heartbeat_values`) on the `stored` runs
    (by id, read under a lock), in order: `(run after the heartbeat, True)`; for an ended
    run, or a heartbeat whose non-zero `lease_epoch` is not the run's (its sender lost the
    lease: RunHeartbeat.lease_epoch) or whose lease was released (ReleaseRun: a late
    heartbeat of the owner that gave the run up must not make it look owned again and
    delay its claim), or a run AWAITING_INPUT (issue 21: the owner that parked it must not
    take its lease back), `(the stored run, False)` — the heartbeat does not change it; None
    for a run not in `stored` (missing, or hidden from the caller).

    The update is `apply_update` with `HEARTBEAT_PATHS`, so `last_seq` never decreases and
    `update_time` strictly increases, as for RecordRun.
    """
    out: list[tuple[run_pb2.Run, bool] | None] = []
    for values in beats:
        run = stored.get(values.id)
        if run is None:
            out.append(None)
        elif (
            run.status in TERMINAL
            or run.status == AWAITING
            or not lease_matches(run, values.lease_epoch)
            or (values.lease_epoch and released(run))
        ):
            out.append((run, False))
        else:
            out.append((apply_update(run, values, HEARTBEAT_PATHS, now_us), True))
    return out


def lease_matches(stored: run_pb2.Run, lease_epoch: int) -> bool:
    """Whether a writer's `lease_epoch` lets it write into `stored`: 0 (a writer holding no
    lease, the check skipped) or the run's own epoch."""
    return lease_epoch == 0 or lease_epoch == stored.lease_epoch


def lease_lost(stored: run_pb2.Run, given: int) -> FailedPrecondition:
    """FAILED_PRECONDITION, reason LEASE_LOST: `given` is not the run's epoch (another
    replica claimed the run). ErrorInfo metadata: `run_id`, `lease_epoch` (the stored one)."""
    return FailedPrecondition(
        f"run {stored.id}: lease epoch {given} is not the run's ({stored.lease_epoch}); "
        f"the lease was lost (another owner claimed the run)",
        reason="LEASE_LOST",
        metadata={"run_id": stored.id, "lease_epoch": str(stored.lease_epoch)},
    )


def check_lease(stored: run_pb2.Run, lease_epoch: int) -> None:
    """The fence of AppendRunEvents and RecordRun updates (their requests' `lease_epoch`),
    checked on the row read under lock, before anything is written.

    Raises:
        FailedPrecondition: reason LEASE_LOST (`lease_lost`).
    """
    if not lease_matches(stored, lease_epoch):
        raise lease_lost(stored, lease_epoch)


def heartbeat_us(run: run_pb2.Run) -> int:
    """The run's last sign of life, µs since the epoch: `heartbeat_time` when set — 0 for a
    released lease (set to the Unix epoch) — else `create_time` (as ListRunRecords'
    `heartbeat_before`, `coalesce(heartbeat_time, create_time)`)."""
    ts = run.heartbeat_time if run.HasField("heartbeat_time") else run.create_time
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def released(run: run_pb2.Run) -> bool:
    """The lease was given up by ReleaseRun: no owner, heartbeat at the Unix epoch."""
    return not run.owner_instance and run.HasField("heartbeat_time") and heartbeat_us(run) == 0


def claim(
    stored: run_pb2.Run,
    ended: bool,
    owner_instance: str,
    lease_epoch: int,
    stale_after_us: int,
    now_us: int,
) -> run_pb2.Run:
    """ClaimRun's compare-and-set on `stored` (read under lock): the run after the claim.

    The lease is free when it was released (`released`), its heartbeat (`heartbeat_us`) is
    more than `stale_after_us` older than `now_us` (history-svc's clock), or its owner is
    `owner_instance` itself (a restart under the same instance id). Then `owner_instance`
    is the claimer, `heartbeat_time` = `update_time` = now (strictly later than before),
    `lease_epoch` + 1 and `attempt` + 1 (a stored 0 — a run recorded before leases — counts
    as its first execution).

    Raises:
        FailedPrecondition: reason RUN_ENDED (terminal status, or `ended`: its terminal
            event is stored), INPUT_PENDING (the run is AWAITING_INPUT: RecordRunInput
            makes it claimable, issue 21), LEASE_LOST (`lease_epoch` is not the stored
            one) or LEASE_HELD (the owner is alive); checked in that order.
    """
    if stored.status in TERMINAL or ended:
        raise _run_ended(stored)
    if stored.status == AWAITING:
        raise FailedPrecondition(
            f"run {stored.id} waits for input ({stored.pending_input.input_id!r}): "
            f"it is claimable once RecordRunInput answered it",
            reason="INPUT_PENDING",
            metadata={
                "run_id": stored.id,
                "input_id": stored.pending_input.input_id,
                "lease_epoch": str(stored.lease_epoch),
            },
        )
    if lease_epoch != stored.lease_epoch:
        raise lease_lost(stored, lease_epoch)
    age_us = now_us - heartbeat_us(stored)
    if not (released(stored) or age_us > stale_after_us or stored.owner_instance == owner_instance):
        raise FailedPrecondition(
            f"run {stored.id} is owned by {stored.owner_instance!r}, whose heartbeat is "
            f"{max(age_us, 0) / 1e6:.3f} s old (not older than stale_after)",
            reason="LEASE_HELD",
            metadata={
                "run_id": stored.id,
                "owner_instance": stored.owner_instance,
                "lease_epoch": str(stored.lease_epoch),
                "heartbeat_age_ms": str(max(age_us, 0) // 1000),
            },
        )
    out = run_pb2.Run()
    out.CopyFrom(stored)
    out.owner_instance = owner_instance
    out.lease_epoch = stored.lease_epoch + 1
    out.attempt = max(stored.attempt, 1) + 1
    set_ts(out.heartbeat_time, now_us)
    set_ts(out.update_time, max(now_us, (ts_to_us(stored.update_time) or 0) + 1))
    return out


def release(stored: run_pb2.Run, ended: bool, lease_epoch: int, now_us: int) -> run_pb2.Run | None:
    """ReleaseRun on `stored` (read under lock): the run after the release, or None when it
    stays unchanged — the run ended (`ended`: its terminal event is stored), or its lease
    is released already. Released: `owner_instance` empty, `heartbeat_time` at the Unix
    epoch (so ListRunRecords' `heartbeat_before` and ClaimRun find it free at once),
    `update_time` moved forward; the epoch stays (the next claimer compares it).

    Raises:
        FailedPrecondition: reason LEASE_LOST, `lease_epoch` is not the stored one.
    """
    if stored.status in TERMINAL or ended:
        return None
    if lease_epoch != stored.lease_epoch:
        raise lease_lost(stored, lease_epoch)
    if released(stored):
        return None
    out = run_pb2.Run()
    out.CopyFrom(stored)
    _free_lease(out)
    set_ts(out.update_time, max(now_us, (ts_to_us(stored.update_time) or 0) + 1))
    return out


def _free_lease(run: run_pb2.Run) -> None:
    """The lease as ReleaseRun leaves it: no owner, `heartbeat_time` present and zero
    (1970-01-01T00:00:00Z); the epoch stays for the next claimer to compare."""
    run.owner_instance = ""
    run.heartbeat_time.Clear()
    run.heartbeat_time.SetInParent()


def _waiting_rules(run: run_pb2.Run, parked: bool) -> None:
    """Issue 21: `pending_input` only while AWAITING_INPUT; `parked` (the write sets that
    status) frees the lease."""
    if run.status != AWAITING:
        run.ClearField("pending_input")
    elif parked:
        _free_lease(run)


def _run_ended(stored: run_pb2.Run) -> FailedPrecondition:
    return FailedPrecondition(
        f"run {stored.id} has ended ({run_pb2.RunStatus.Name(stored.status)}): "
        f"there is nothing to claim",
        reason="RUN_ENDED",
        metadata={"run_id": stored.id, "status": run_pb2.RunStatus.Name(stored.status)},
    )


def _start_lease(run: run_pb2.Run) -> None:
    """A RUNNING run's first lease: `lease_epoch` and `attempt` 1 unless already set."""
    if run.status == run_pb2.RUN_STATUS_RUNNING:
        if run.lease_epoch == 0:
            run.lease_epoch = 1
        if run.attempt == 0:
            run.attempt = 1


def _default_times(run: run_pb2.Run, now_us: int) -> None:
    if run.status == run_pb2.RUN_STATUS_RUNNING and not run.HasField("start_time"):
        set_ts(run.start_time, now_us)
    if run.status in TERMINAL and not run.HasField("end_time"):
        set_ts(run.end_time, now_us)


@dataclass(frozen=True, slots=True)
class AnsweredInput:
    """Outcome of `answer_input` (RecordRunInput, issue 21).

    Attributes:
        run: the run after the call (as stored when `new` is False).
        event: the `input_received` event: the new one, or the one stored first (a repeat).
        new: the event is to be stored and `run` written (False: an idempotent repeat,
            nothing is written).
    """

    run: run_pb2.Run
    event: run_pb2.RunEvent
    new: bool


def answer_input(
    stored: run_pb2.Run,
    answer: run_pb2.RunEvent.InputReceived,
    answered: Sequence[run_pb2.RunEvent],
    next_seq: int,
    now_us: int,
) -> AnsweredInput:
    """RecordRunInput's rule on `stored` (read under the run's lock; RecordRunInput's
    comment in proto/chorus/v1/history_service.proto): first answer wins.

    `answered` are the run's stored `input_received` events, `next_seq` the seq after its
    stored log. An earlier answer to `answer.input_id` is returned as it is when `answer`
    repeats its non-empty `request_id` (nothing to write). Otherwise the run must wait for
    exactly this input; the answer's kind must fit the request. The new event is `{run_id,
    seq = next_seq, time = now, agent = pending_input.agent, input_received = answer}` (an
    expired approval is a denial with reason `EXPIRED`); the run becomes RUNNING with
    `pending_input` cleared, its lease free (as ReleaseRun leaves it; the epoch stays, for
    the next claimer) and `last_seq` = `next_seq`.

    Raises:
        FailedPrecondition: reason INPUT_NOT_PENDING (answered already, or not the input
            the run waits for); metadata `run_id`, `status`, `pending_input_id`.
        InvalidArgument: the answer's kind does not fit the request (field
            `answer.decision` for a text request, `answer.text` for an approval).
    """
    for earlier in answered:
        if earlier.input_received.input_id == answer.input_id:
            if answer.request_id and earlier.input_received.request_id == answer.request_id:
                return AnsweredInput(stored, earlier, False)
            raise _input_not_pending(stored, answer.input_id, "it was answered already")
    pending = stored.pending_input
    if stored.status != AWAITING or pending.input_id != answer.input_id:
        raise _input_not_pending(stored, answer.input_id, "the run does not wait for it")
    given = answer.WhichOneof("answer")
    if pending.kind == run_pb2.INPUT_KIND_TEXT and given == "decision":
        raise InvalidArgument(
            f"input {pending.input_id!r} asks for text, not a decision",
            [("answer.decision", "a text request is answered with text")],
        )
    if pending.kind == run_pb2.INPUT_KIND_APPROVAL and given == "text":
        raise InvalidArgument(
            f"input {pending.input_id!r} asks for an approval, not text",
            [("answer.text", "an approval is answered with a decision")],
        )
    event = run_pb2.RunEvent(run_id=stored.id, seq=next_seq, agent=pending.agent)
    set_ts(event.time, now_us)
    event.input_received.CopyFrom(answer)
    if answer.expired and pending.kind == run_pb2.INPUT_KIND_APPROVAL:
        event.input_received.decision.CopyFrom(
            run_pb2.ApprovalDecision(approved=False, reason=EXPIRED_REASON)
        )
    out = run_pb2.Run()
    out.CopyFrom(stored)
    out.status = run_pb2.RUN_STATUS_RUNNING
    out.ClearField("pending_input")
    _free_lease(out)
    out.last_seq = max(stored.last_seq, next_seq)
    set_ts(out.update_time, max(now_us, (ts_to_us(stored.update_time) or 0) + 1))
    return AnsweredInput(out, event, True)


def _input_not_pending(stored: run_pb2.Run, input_id: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"run {stored.id}: input {input_id!r} is not pending ({why}); the run is "
        f"{run_pb2.RunStatus.Name(stored.status)}",
        reason="INPUT_NOT_PENDING",
        metadata={
            "run_id": stored.id,
            "status": run_pb2.RunStatus.Name(stored.status),
            "pending_input_id": stored.pending_input.input_id,
        },
    )


def moved_checkpoint(data: bytes, seq: int) -> bytes:
    """A serialized `RunCheckpoint` with its `seq` moved to `seq` (RecordRunInput: the run
    continues from its answer)."""
    checkpoint = run_pb2.RunCheckpoint.FromString(data)
    checkpoint.seq = seq
    return checkpoint.SerializeToString(deterministic=True)
