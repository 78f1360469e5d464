"""Rules of run records (RecordRun, RecordRunHeartbeats): what a create stores and how an
update or a heartbeat merges.

Pure functions over `chorus.v1.Run` messages; both stores call them inside their
transaction, after reading the stored row under a lock, so the rules hold under concurrency.
Source of the rules: RecordRun's comment in proto/chorus/v1/history_service.proto and the
run semantics of DESIGN.md §4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from chorus.core.errors import FailedPrecondition
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
)
"""RecordRun update-mask paths; `spec`, `conversation_id`, `owner` and times of creation are
immutable."""

HEARTBEAT_PATHS = ("heartbeat_time", "owner_instance", "turns", "usage", "last_seq")
"""The fields a heartbeat writes (RecordRunHeartbeats' comment)."""

ACTIVE = frozenset({run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING})
TERMINAL = frozenset(
    {run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED}
)
_MESSAGE_PATHS = frozenset(
    {"error", "cancellation", "usage", "heartbeat_time", "start_time", "end_time"}
)


def prepare_new(run: run_pb2.Run, owner: str, now_us: int) -> run_pb2.Run:
    """The record to insert for a create: owner set, status QUEUED unless given, times filled.

    `last_seq` starts at 0 (events are appended with AppendRunEvents); `start_time` and
    `end_time` default to now for RUNNING and terminal statuses.
    """
    out = run_pb2.Run()
    out.CopyFrom(run)
    out.owner = owner
    out.last_seq = 0
    if out.status == run_pb2.RUN_STATUS_UNSPECIFIED:
        out.status = run_pb2.RUN_STATUS_QUEUED
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
      the caller did not give them.

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
    _default_times(out, now_us)
    # Strictly increasing per write (the row is locked), so it versions cached copies.
    set_ts(out.update_time, max(now_us, (ts_to_us(stored.update_time) or 0) + 1))
    return out


def heartbeat_values(beat: history_service_pb2.RunHeartbeat, now_us: int) -> run_pb2.Run:
    """The run fields a heartbeat writes (`HEARTBEAT_PATHS`), `heartbeat_time` = `now_us`.

    `id` is the heartbeat's `run_id` as given (callers canonicalize it); an unset `usage`
    writes an empty one, as RecordRun does for a masked `usage` it is not given.
    """
    out = run_pb2.Run(
        id=beat.run_id,
        owner_instance=beat.owner_instance,
        turns=beat.turns,
        last_seq=beat.last_seq,
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
    run `(the stored run, False)` — a heartbeat does not change it; None for a run not in
    `stored` (missing, or hidden from the caller).

    The update is `apply_update` with `HEARTBEAT_PATHS`, so `last_seq` never decreases and
    `update_time` strictly increases, as for RecordRun.
    """
    out: list[tuple[run_pb2.Run, bool] | None] = []
    for values in beats:
        run = stored.get(values.id)
        if run is None:
            out.append(None)
        elif run.status in TERMINAL:
            out.append((run, False))
        else:
            out.append((apply_update(run, values, HEARTBEAT_PATHS, now_us), True))
    return out


def _default_times(run: run_pb2.Run, now_us: int) -> None:
    if run.status == run_pb2.RUN_STATUS_RUNNING and not run.HasField("start_time"):
        set_ts(run.start_time, now_us)
    if run.status in TERMINAL and not run.HasField("end_time"):
        set_ts(run.end_time, now_us)
