"""Rules of a run's event log (AppendRunEvents): batches, gapless seqs, idempotent repeats.

Source: AppendRunEvents' comment in proto/chorus/v1/history_service.proto and docs/architecture.md §3
("exactly one terminal event ends every run, and nothing follows it"). Stored events are
the deterministic serialization of the `RunEvent` with its `run_id` filled in, so an exact
repeat of a batch compares equal byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chorus.core.errors import FailedPrecondition, InvalidArgument, Violations
from chorus.history import limits
from chorus.v1 import run_pb2

TERMINAL_PAYLOADS = frozenset({"run_completed", "run_failed", "run_cancelled"})
"""Payload names that end a run's event log."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated AppendRunEvents batch.

    Attributes:
        first_seq: seq of the first event (the others follow without gaps).
        payloads: the events' serialized bytes, in seq order.
        kinds: each event's payload name (`text_delta`, …).
        ends_run: the last event is terminal.
    """

    first_seq: int
    payloads: list[bytes]
    kinds: list[str]
    ends_run: bool

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.payloads) - 1


def prepare_batch(run_id: str, events: Sequence[run_pb2.RunEvent], max_event_bytes: int) -> Batch:
    """Validate a batch and serialize its events (each event's `run_id` is filled in).

    Raises:
        InvalidArgument: empty or oversized batch, seq < 1, seqs not consecutive, a foreign
            `run_id`, no payload, an event over `max_event_bytes`, or a terminal event that
            is not the batch's last.
    """
    v = Violations()
    if not events:
        v.add("events", "at least one event is required")
    elif len(events) > limits.MAX_EVENTS_PER_APPEND:
        v.add("events", f"at most {limits.MAX_EVENTS_PER_APPEND} events per call")
    v.raise_if_any()
    first = events[0].seq
    payloads: list[bytes] = []
    kinds: list[str] = []
    last_index = len(events) - 1
    for i, event in enumerate(events):
        if i == 0:
            if event.seq < 1:
                v.add("events[0].seq", "must be at least 1")
        elif event.seq != first + i:
            v.add(f"events[{i}].seq", f"must be {first + i} (seqs in a batch are consecutive)")
        if event.run_id and event.run_id != run_id:
            v.add(f"events[{i}].run_id", "must be empty or equal to run_id")
        kind = event.WhichOneof("payload")
        if kind is None:
            v.add(f"events[{i}]", "payload is required")
        elif kind in TERMINAL_PAYLOADS and i != last_index:
            v.add(f"events[{i}]", f"{kind} is terminal: nothing may follow it")
        if len(v.items) >= 20:  # enough to diagnose; keeps the error small
            break
        event.run_id = run_id
        data = event.SerializeToString(deterministic=True)
        if len(data) > max_event_bytes:
            v.add(f"events[{i}]", f"at most {max_event_bytes} bytes serialized")
        payloads.append(data)
        kinds.append(kind or "")
    v.raise_if_any("invalid run events")
    return Batch(first, payloads, kinds, kinds[-1] in TERMINAL_PAYLOADS)


def prepare_start(
    run_id: str, events: Sequence[run_pb2.RunEvent], max_event_bytes: int
) -> Batch | None:
    """Validate a run's first events (RecordRunStart) and serialize them; None when empty.

    The rules of `prepare_batch`, and the log must start at seq 1 with `run_started`
    (RecordRunStartRequest.events in proto/chorus/v1/history_service.proto).

    Raises:
        InvalidArgument: as `prepare_batch`, or `events[0].seq` is not 1, or `events[0]` is
            not `run_started`; every violation at once.
    """
    if not events:
        return None
    v = Violations()
    if events[0].seq > 1:  # below 1 is prepare_batch's violation
        v.add("events[0].seq", "must be 1 (a run's log starts at seq 1)")
    if events[0].WhichOneof("payload") not in (None, "run_started"):
        v.add("events[0]", "must be run_started (a run's log starts with it)")
    try:
        batch = prepare_batch(run_id, events, max_event_bytes)
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
        v.raise_if_any("invalid run events")
        raise
    v.raise_if_any("invalid run events")
    return batch


def overlap(stored_last: int, batch: Batch, run_id: str) -> int:
    """How many of the batch's events are already stored (its first ones).

    Raises:
        FailedPrecondition: reason SEQ_GAP when the batch starts after `stored_last + 1`.
    """
    if batch.first_seq > stored_last + 1:
        raise FailedPrecondition(
            f"run {run_id}: events must continue at seq {stored_last + 1}, "
            f"got seq {batch.first_seq} (a gap)",
            reason="SEQ_GAP",
            metadata={"expected_seq": str(stored_last + 1), "last_seq": str(stored_last)},
        )
    return max(0, min(stored_last, batch.last_seq) - batch.first_seq + 1)


def check_repeat(stored: Sequence[bytes], batch: Batch, run_id: str) -> None:
    """The already-stored prefix of the batch must equal what is stored, byte for byte.

    Raises:
        FailedPrecondition: reason SEQ_CONFLICT naming the first differing seq.
    """
    for i, data in enumerate(stored):
        if data != batch.payloads[i]:
            seq = batch.first_seq + i
            raise FailedPrecondition(
                f"run {run_id}: seq {seq} is already stored with different content",
                reason="SEQ_CONFLICT",
                metadata={"seq": str(seq)},
            )


def check_open(ended: bool, new_count: int, run_id: str, stored_last: int) -> None:
    """New events may not follow a stored terminal event.

    Raises:
        FailedPrecondition: reason RUN_ENDED.
    """
    if ended and new_count:
        raise FailedPrecondition(
            f"run {run_id}: its terminal event (seq {stored_last}) is stored; nothing may follow it",
            reason="RUN_ENDED",
            metadata={"last_seq": str(stored_last)},
        )


def check_checkpoint(seq: int, last_seq: int, run_id: str) -> None:
    """A checkpoint may only cover stored events: its `seq` at most the run's last seq
    after the batch (AppendRunEventsRequest.checkpoint).

    Raises:
        InvalidArgument: field `checkpoint.seq`.
    """
    if seq > last_seq:
        raise InvalidArgument(
            f"run {run_id}: checkpoint.seq {seq} is beyond the run's last seq {last_seq}",
            [
                (
                    "checkpoint.seq",
                    f"must not exceed the run's last seq after the batch ({last_seq})",
                )
            ],
        )
