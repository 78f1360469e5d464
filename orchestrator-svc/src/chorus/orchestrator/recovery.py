"""Liveness of runs across replicas: leases, heartbeats, cross-replica cancels, resume.

* **Leases.** A run is owned by one orchestrator instance under a lease in history-svc
  (`Run.owner_instance`, `heartbeat_time`, `lease_epoch`). The owner renews it with its
  heartbeats; every write it makes carries the epoch, and history-svc refuses writes of
  an old epoch (FAILED_PRECONDITION, LEASE_LOST) — so an owner frozen past its lease
  (SIGSTOP, a long pause, a cut network) cannot write into a run someone else took over.
* **Heartbeats.** Every `heartbeat_interval_s` this replica writes `heartbeat_time` (and
  turns, usage, last stored seq) into the record of every run it executes, in
  RecordRunHeartbeats calls of up to `HEARTBEATS_PER_CALL` runs spread evenly over the
  interval (a call holds its runs' rows while history-svc writes them, and those runs'
  appends wait: one call for 1,000 runs stalled every live stream each second). The
  answer is the stored records, which is how a cancel recorded by another replica
  (`cancellation`) reaches the run's owner, and how the owner learns that its lease was
  lost or that someone else ended its run.
* **Sweep.** At start and every `sweep_interval_s`, this replica looks for active runs
  whose lease is free — released by an owner that handed them over, or whose heartbeat is
  older than `lease_duration_s` (and, at start, those recorded under this replica's own
  `instance_id`, which cannot be alive). It claims each with one compare-and-set
  (HistoryService.ClaimRun; exactly one replica wins) and then: ends it `run_cancelled`
  when a cancel was recorded meanwhile, `run_failed` (UNAVAILABLE, RESUME_LIMIT,
  retryable) once its owner was lost more than `max_run_resumes` times, or resumes it from
  its last checkpoint (`RunManager.resume`, which emits `run_resumed`). Only resumes after
  a lost owner (reason OWNER_LOST: crash, freeze, cut network) count: a handoff (HANDOFF,
  a released lease) is a planned move — with rolling deploys a long run is handed over
  many times — and is counted as planned (`PLANNED_RESUMES_KEY`) in the checkpoint
  written with its `run_resumed`. The claimer's writes (the end of an orphan, its record)
  are fenced by the epoch it claimed; a refusal (LEASE_LOST) lets the run go quietly.
* **Waiting runs** (issue 21). A run that asked a person (RUN_STATUS_AWAITING_INPUT) has no
  lease and is never claimed. An answer (HistoryService.RecordRunInput) makes it RUNNING with
  a free lease: the replica that took the answer claims it at once
  (`continue_after_input`), or else any sweep does; it continues without `run_resumed`
  (reason INPUT_RECEIVED), and such resumes do not count toward `max_run_resumes`. Every
  `input_expiry_interval_s` the sweep also answers, as the system, the requests whose
  `expire_time` passed (`expired`; found by ListRunRecords `input_expire_before`, one
  indexed query however many runs wait), and continues those runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from chorus.core import identity
from chorus.core.errors import ChorusError, FailedPrecondition, NotFound, rpc_code
from chorus.core.logging import get_logger
from chorus.core.timestamps import now
from chorus.orchestrator import metrics
from chorus.orchestrator.events import is_terminal
from chorus.orchestrator.history import HistoryClient
from chorus.orchestrator.runs import (
    EXECUTING_STATUSES,
    HANDOFF,
    INPUT_RECEIVED,
    OWNER_LOST,
    PLANNED_RESUMES_KEY,
    STEP_KEY,
    LiveRun,
    checkpoint_envelope,
)

if TYPE_CHECKING:
    from chorus.orchestrator.manager import RunManager
from chorus.orchestrator.settings import Settings
from chorus.v1 import history_service_pb2 as hs
from chorus.v1 import run_pb2

log = get_logger("chorus.orchestrator.recovery")

HEARTBEATS_PER_CALL = 100
"""Heartbeats per RecordRunHeartbeats call (the contract allows 1,000). history-svc holds a
call's run rows locked for its whole transaction (read, rules, write), and every append of
those runs waits for it: at 1,000 live runs in one call, every stream stalled 100–200 ms
once a second, which set the 1,000 slow streams' lag p99 (bench/README.md, session 15).
Calls of 100, spread over the interval, stall a tenth of the runs for about a tenth as long,
for ~1.5 ms more of history-svc's CPU per extra call."""
LEASE_LOST = "LEASE_LOST"
"""ErrorInfo reason of a write refused for a stale lease epoch (another replica claimed
the run)."""
_STATUS_OF_TERMINAL = {
    "run_completed": run_pb2.RUN_STATUS_COMPLETED,
    "run_failed": run_pb2.RUN_STATUS_FAILED,
    "run_cancelled": run_pb2.RUN_STATUS_CANCELLED,
}


def _terminal_record(run_id: str, event: run_pb2.RunEvent) -> tuple[run_pb2.Run, list[str]]:
    """The record update that matches a stored terminal event."""
    kind = event.WhichOneof("payload")
    assert kind is not None
    run = run_pb2.Run(
        id=run_id, status=_STATUS_OF_TERMINAL[kind], last_seq=event.seq, end_time=event.time
    )
    paths = ["status", "last_seq", "end_time"]
    if kind == "run_completed":
        run.final_answer = event.run_completed.final_answer
        run.usage.CopyFrom(event.run_completed.usage)
        paths += ["final_answer", "usage"]
    elif kind == "run_failed":
        run.error.CopyFrom(event.run_failed.error)
        paths.append("error")
    else:
        run.cancellation.CopyFrom(event.run_cancelled.cancellation)
        paths.append("cancellation")
    return run, paths


def resume_limit_error(resumes: int) -> run_pb2.RunError:
    """The error of a run that lost its owner once more after `resumes` resumes."""
    return run_pb2.RunError(
        code=rpc_code(grpc.StatusCode.UNAVAILABLE),
        message=f"the run lost its orchestrator again after {resumes} resumes",
        retryable=True,
        reason="RESUME_LIMIT",
    )


async def end_orphan(
    history: HistoryClient, record: run_pb2.Run, terminal: run_pb2.RunEvent
) -> run_pb2.Run | None:
    """End a run this replica claimed without running it: append `terminal` after its last
    stored event (unless the log already ends), then make the record match the log's
    terminal event — both writes fenced by the claimed `record.lease_epoch`.

    Acts as the run's owner. Retries when another writer appends meanwhile.

    Returns:
        The stored record after the call; None when the lease was lost meanwhile (this
        replica was frozen or cut off past it and another one claimed the run: the run is
        theirs now, and nothing more was written).
    """
    user = record.owner
    for _ in range(5):
        start = max(record.last_seq - 1, 0)
        last = await history.last_event(user, record.id, start)
        if last is not None and is_terminal(last):
            final = last
        else:
            final = run_pb2.RunEvent()
            final.CopyFrom(terminal)
            final.run_id = record.id
            final.seq = (last.seq if last is not None else start) + 1
            final.time.CopyFrom(now())
            try:
                await history.append_events(
                    user, record.id, [final], lease_epoch=record.lease_epoch
                )
            except FailedPrecondition as exc:
                if exc.reason == LEASE_LOST:  # someone claimed it after us: theirs now
                    _lease_lost(record)
                    return None
                # someone appended meanwhile: look again
                record = await history.get_run(user, record.id)
                continue
        run, paths = _terminal_record(record.id, final)
        try:
            return await history.update_run(user, run, paths, lease_epoch=record.lease_epoch)
        except FailedPrecondition as exc:
            if exc.reason == LEASE_LOST:
                _lease_lost(record)
                return None
            return await history.get_run(user, record.id)  # someone else finished it
    raise FailedPrecondition(f"run {record.id} kept changing while being ended")


def _lease_lost(record: run_pb2.Run) -> None:
    """A claimer's write was refused LEASE_LOST: let the run go quietly (as a live run does
    when an append is refused)."""
    log.info("run_lease_lost", run_id=record.id, lease_epoch=record.lease_epoch)


class Liveness:
    """Heartbeats of this replica's runs and the recovery sweep.

    Args:
        settings: intervals, lease duration and resume limit.
        history: history-svc client.
        live_runs: returns the runs executing on this replica.
        manager: resumes the runs the sweep claims.
    """

    def __init__(
        self,
        settings: Settings,
        history: HistoryClient,
        live_runs: Callable[[], dict[str, LiveRun]],
        manager: RunManager,
    ) -> None:
        self._settings = settings
        self._history = history
        self._live_runs = live_runs
        self._manager = manager
        self._tasks: list[asyncio.Task[None]] = []
        self._created_ns = time.time_ns()  # before this process recorded any run
        self._next_expiry = 0.0  # monotonic time of the next look for expired inputs
        self.history_ready: Callable[[], Awaitable[None]] | None = None
        """Awaited before the first sweep: returns once history-svc reports SERVING (set
        by the app), so a stack starting all services at once does not log a failed sweep."""

    def start(self) -> None:
        """Start the heartbeat and sweep loops (the first sweep runs at once)."""
        self._tasks = [
            asyncio.create_task(
                self._loop(
                    self._heartbeat_round, self._settings.heartbeat_interval_s, fixed_rate=True
                )
            ),
            asyncio.create_task(self._sweep_loop()),
        ]

    async def stop(self) -> None:
        """Stop both loops."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @staticmethod
    def _as_system() -> None:
        identity.set_identity(identity.Identity(identity.SYSTEM_USER, "internal"))

    async def _loop(
        self, step: Callable[[], Awaitable[object]], interval: float, *, fixed_rate: bool = False
    ) -> None:
        """`step` every `interval` seconds: `interval` after the last one ended, or with
        `fixed_rate` `interval` after the last one began (at once when it overran) — the
        heartbeat round spreads its calls over the interval and so lasts about one itself:
        waiting a whole interval after it would stretch a run's heartbeat period to two."""
        self._as_system()
        clock = asyncio.get_running_loop()
        next_at = clock.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - clock.time()) if fixed_rate else interval)
            next_at = max(next_at + interval, clock.time())
            try:
                await step()
            except Exception as exc:  # a bad round must not end the loop
                log.warning(
                    "liveness_step_failed", step=getattr(step, "__name__", "?"), error=repr(exc)
                )

    async def _heartbeat_round(self) -> None:
        """`heartbeat_all`, its calls spread over the heartbeat interval."""
        await self.heartbeat_all(spread_s=self._settings.heartbeat_interval_s)

    async def _sweep_loop(self) -> None:
        self._as_system()
        if self.history_ready is not None:
            await self.history_ready()
        try:
            claimed = await self.sweep(startup=True)
        except Exception as exc:
            log.warning("startup_sweep_failed", error=repr(exc))
        else:
            log.info("startup_sweep_done", claimed=claimed)
        await self._loop(self.sweep, self._settings.sweep_interval_s)

    # ----------------------------------------------------------------- heartbeats
    async def heartbeat_all(self, spread_s: float = 0.0) -> None:
        """One heartbeat for every live run: one RecordRunHeartbeats call per
        `HEARTBEATS_PER_CALL` runs, as the internal service identity (the runs belong to
        many users); each run then acts on its stored record (`LiveRun.on_heartbeat`).
        The calls start `spread_s` / their number apart (the heartbeat loop spreads them
        over its interval; 0: all at once); returns when every call has been answered.

        A failed call is counted (`chorus_orchestrator_run_heartbeat_failures_total`, per run) and
        logged; its runs beat again next round. A run left out of the answer has been
        deleted: it stops without writing anything more (issue 23).
        """
        runs = list(self._live_runs().values())
        chunks = [
            runs[i : i + HEARTBEATS_PER_CALL] for i in range(0, len(runs), HEARTBEATS_PER_CALL)
        ]
        gap_s = spread_s / len(chunks) if chunks else 0.0
        calls: list[asyncio.Task[None]] = []
        try:
            for i, chunk in enumerate(chunks):
                if i and gap_s:
                    await asyncio.sleep(gap_s)
                calls.append(asyncio.create_task(self._heartbeat_chunk(chunk)))
            await asyncio.gather(*calls)
        finally:
            for call in calls:  # stopped meanwhile: no call outlives the loop
                call.cancel()

    async def _heartbeat_chunk(self, runs: list[LiveRun]) -> None:
        # Taken when the call goes: a run that ended or is being handed over since the
        # round began sends no heartbeat.
        runs = [r for r in runs if not r.log.ended and not r.releasing]
        if not runs:
            return
        try:
            stored = await self._history.record_heartbeats(
                identity.SYSTEM_USER, [run.heartbeat() for run in runs]
            )
        except ChorusError as exc:
            metrics.HEARTBEAT_FAILURES.inc(len(runs))
            log.warning("heartbeat_failed", runs=len(runs), code=exc.code.name, error=exc.message)
            return
        by_id = {record.id: record for record in stored}
        for run in runs:
            record = by_id.get(run.id)
            if record is None:  # deleted (RunService.DeleteRun, DeleteConversation)
                log.info("run_deleted_elsewhere", run_id=run.id)
                run.abandon()
                continue
            run.on_heartbeat(record)

    # ----------------------------------------------------------------- sweep
    async def _active_records(self, *, heartbeat_before: bool) -> list[run_pb2.Run]:
        stale_ns = time.time_ns() - int(self._settings.lease_duration_s * 1e9)
        cutoff = Timestamp(seconds=stale_ns // 1_000_000_000, nanos=stale_ns % 1_000_000_000)
        found: list[run_pb2.Run] = []
        for status in EXECUTING_STATUSES:
            token = ""
            while True:
                request = hs.ListRunRecordsRequest(
                    page_size=500, page_token=token, status=status, all_owners=True
                )
                if heartbeat_before:
                    request.heartbeat_before.CopyFrom(cutoff)
                response = await self._history.list_runs(identity.SYSTEM_USER, request)
                found.extend(response.runs)
                token = response.next_page_token
                if not token:
                    break
        return found

    async def sweep(self, *, startup: bool = False) -> int:
        """Claim the active runs whose lease is free and resume (or end) them; returns how
        many were claimed.

        With `startup`, active runs recorded under this process's own instance id before
        this process began are claimed too, whatever their heartbeat: nothing runs them. A
        run this process recorded since is left alone: its start may still be under way (its
        record is written before it joins the live runs).
        """
        live = self._live_runs()
        mine = self._settings.instance_id
        candidates = {r.id: r for r in await self._active_records(heartbeat_before=True)}
        if startup:
            for r in await self._active_records(heartbeat_before=False):
                if r.owner_instance == mine and r.create_time.ToNanoseconds() < self._created_ns:
                    candidates[r.id] = r
        claimed = 0
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self._settings.input_expiry_interval_s
            claimed += await self.expire_inputs()
        for record in candidates.values():
            if record.id in live or record.status not in EXECUTING_STATUSES:
                continue
            if not self._manager.has_capacity():
                break  # the others stay for a replica with room (or the next round)
            try:
                if await self._take_over(record):
                    claimed += 1
            except ChorusError as exc:
                log.warning("run_takeover_failed", run_id=record.id, error=exc.message)
        return claimed

    async def expire_inputs(self) -> int:
        """Answer, as the system, every waiting run's request whose `expire_time` passed
        (`InputReceived.expired`: an approval is denied with reason EXPIRED, a text request
        fails the run INPUT_EXPIRED) and continue those runs here while there is room;
        returns how many were continued here. An answer that lost to a person's (or to
        another replica's expiry) is skipped."""
        now_ns = time.time_ns()
        cutoff = Timestamp()
        cutoff.FromNanoseconds(now_ns)
        continued = 0
        token = ""
        while True:
            page = await self._history.list_runs(  # one indexed query (runs_input_expiry)
                identity.SYSTEM_USER,
                hs.ListRunRecordsRequest(
                    page_size=500,
                    page_token=token,
                    status=run_pb2.RUN_STATUS_AWAITING_INPUT,
                    all_owners=True,
                    input_expire_before=cutoff,
                ),
            )
            for record in page.runs:
                pending = record.pending_input
                if not pending.HasField("expire_time"):
                    continue
                if pending.expire_time.ToNanoseconds() > now_ns:
                    continue
                answer = run_pb2.RunEvent.InputReceived(
                    input_id=pending.input_id,
                    expired=True,
                    request_id=f"expired-{pending.input_id}",
                )
                try:
                    run, _ = await self._history.record_run_input(
                        identity.SYSTEM_USER, record.id, answer
                    )
                except (FailedPrecondition, NotFound) as exc:
                    log.info("input_expiry_skipped", run_id=record.id, reason=exc.reason)
                    continue
                metrics.RUN_INPUTS_EXPIRED.inc()
                log.info("run_input_expired", run_id=record.id, input_id=pending.input_id)
                if self._manager.has_capacity() and await self.continue_after_input(run):
                    continued += 1
            token = page.next_page_token
            if not token:
                return continued

    async def continue_after_input(self, record: run_pb2.Run) -> bool:
        """Claim a run that just received its answer (RUNNING, lease free) and continue it
        here; False when another replica got it first. Errors are logged, not raised: the
        run stays claimable for any sweep."""
        try:
            return await self._take_over(record)
        except ChorusError as exc:
            log.warning("run_takeover_failed", run_id=record.id, error=exc.message)
            return False

    async def _take_over(self, record: run_pb2.Run) -> bool:
        """Claim `record`'s run and resume or end it; False when another replica (or a
        live owner) has it."""
        released = record.heartbeat_time.ToNanoseconds() == 0 and not record.owner_instance
        try:
            run, checkpoint = await self._history.claim_run(
                record.id,
                self._settings.instance_id,
                record.lease_epoch,
                self._settings.lease_duration_s,
            )
        except (FailedPrecondition, NotFound) as exc:  # LEASE_HELD / LEASE_LOST / RUN_ENDED
            log.debug("run_claim_refused", run_id=record.id, reason=exc.reason)
            return False
        envelope = checkpoint_envelope(checkpoint)
        reason = HANDOFF if released else OWNER_LOST
        if (
            released
            and checkpoint is not None
            and STEP_KEY in envelope
            and run.last_seq == checkpoint.seq  # nothing after the answer yet
        ):
            reason = INPUT_RECEIVED
        else:
            metrics.RUNS_RECOVERED.inc()
        # Only losses of the owner count: resumes after a person's answer or a handoff are
        # planned (the checkpoint counts the earlier ones; this claim's is counted when the
        # run_resumed write stores it, `PLANNED_RESUMES_KEY`).
        losses = run.attempt - 1 - int(envelope.get(PLANNED_RESUMES_KEY, 0))
        if reason == HANDOFF:
            losses -= 1
        if run.HasField("cancellation"):  # a cancel recorded while nobody owned it wins
            terminal = run_pb2.RunEvent(
                run_cancelled=run_pb2.RunEvent.RunCancelled(cancellation=run.cancellation)
            )
            await end_orphan(self._history, run, terminal)
            log.warning("orphan_run_cancelled", run_id=run.id)
        elif losses > self._settings.max_run_resumes:
            terminal = run_pb2.RunEvent(
                run_failed=run_pb2.RunEvent.RunFailed(error=resume_limit_error(losses - 1))
            )
            await end_orphan(self._history, run, terminal)
            log.warning("run_resume_limit", run_id=run.id, attempt=run.attempt)
        else:
            await self._manager.resume(run, checkpoint, reason)
        return True
