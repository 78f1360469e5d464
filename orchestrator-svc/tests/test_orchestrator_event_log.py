"""The live run's event log: numbering, durability order, batching, buffering, waking, and
the coalescing of token deltas."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from chorus.core.testing import wait_for
from chorus.orchestrator.deltas import DeltaStream
from chorus.orchestrator.events import RunEventLog
from chorus.orchestrator.flusher import DeltaFlusher
from chorus.v1 import run_pb2

Event = run_pb2.RunEvent


class Store:
    """A writer that records batches; `gate` (when set) holds writes until opened.

    Called with one run's events it stands for AppendRunEvents (lifecycle writes); its
    `many` method stands for AppendRunEventBatches (the flusher), recording each call's
    runs in `calls` as the call begins (held by the gate or not) and rejecting the batches
    of the runs in `reject`. `order` records when each write begins and ends ("write" for a
    run write, "call" for the flusher's), so a test sees which overlapped.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.calls: list[list[str]] = []
        self.order: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.reject: dict[str, Exception] = {}
        self.entered = 0  # run writes begun (held by the gate or not)

    async def __call__(self, events: Sequence[run_pb2.RunEvent]) -> None:
        self.entered += 1
        self.order.append("write begins")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append([e.seq for e in events])
        self.order.append("write ends")

    async def many(
        self, batches: Sequence[tuple[str, int, Sequence[run_pb2.RunEvent]]]
    ) -> list[int | Exception]:
        self.calls.append([run_id for run_id, _, _ in batches])
        self.order.append("call begins")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        results: list[int | Exception] = []
        for run_id, _, events in batches:
            if run_id in self.reject:
                results.append(self.reject[run_id])
            else:
                self.batches.append([e.seq for e in events])
                results.append(events[-1].seq)
        self.order.append("call ends")
        return results

    @property
    def stored(self) -> list[int]:
        return [s for b in self.batches for s in b]


def delta(text: str = "x") -> run_pb2.RunEvent:
    return Event(agent="a", text_delta=Event.TextDelta(text=text))


def started(turn: int = 1) -> run_pb2.RunEvent:
    return Event(agent="a", agent_started=Event.AgentStarted(turn=turn))


def completed() -> run_pb2.RunEvent:
    return Event(run_completed=Event.RunCompleted(final_answer="done"))


def new_log(
    store: Store,
    *,
    keep: int = 64,
    flusher: DeltaFlusher | None = None,
    run_id: str = "run-1",
    on_rejected: Callable[[Exception], None] | None = None,
) -> RunEventLog:
    if flusher is None:
        flusher = DeltaFlusher(store.many)
    return RunEventLog(run_id, store, flusher=flusher, buffer_events=keep, on_rejected=on_rejected)


async def test_events_are_numbered_from_one_without_gaps_and_stamped() -> None:
    store = Store()
    log = new_log(store)
    await log.emit(Event(run_started=Event.RunStarted()))
    for _ in range(3):
        log.emit_delta(delta())
    await log.emit(completed(), durable=True)
    events = log.events_after(0)
    assert events is not None
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(e.run_id == "run-1" and e.time.seconds > 0 for e in events)
    assert store.stored == [1, 2, 3, 4, 5] and log.stored_seq == 5
    assert log.ended
    with pytest.raises(RuntimeError):
        log.emit_delta(delta())


async def started_tasks() -> None:
    """Return once every task created before this call has run its first step (up to its
    first await that suspends): asyncio runs ready tasks in the order they were scheduled,
    so a task created now runs after them. A condition on the loop's order, not a time."""

    async def last() -> None:
        return None

    await asyncio.create_task(last())


async def test_deltas_of_a_held_log_are_written_and_shown_only_once_it_is_released() -> None:
    # A new run's log is held while its opening write is under way: a prefetched model
    # call's deltas are numbered after the opening events (stored by that write) but
    # neither written (the run is not stored yet) nor shown until the log is released.
    store = Store()
    flusher = DeltaFlusher(store.many, tick_s=60)  # a tick no test would wait for
    log = RunEventLog("run-1", store, flusher=flusher, buffer_events=64, held=True)
    log.emit_stored(Event(run_started=Event.RunStarted()), started(1))
    waiter = asyncio.create_task(log.wait_beyond(2))
    log.emit_delta(delta("a"))
    log.emit_delta(delta("b"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert log.last_seq == 4 and log.stored_seq == 2 and store.calls == []
    assert log.events_after(2) == [] and not waiter.done()
    log.release()  # the opening write is stored: both go in one call, without the tick
    await asyncio.wait_for(waiter, 2)
    assert store.calls == [["run-1"]] and store.stored == [3, 4]
    assert [e.text_delta.text for e in log.events_after(2) or []] == ["a", "b"]
    log.close()
    await flusher.close()


async def test_a_lifecycle_event_waits_until_the_previous_one_is_stored() -> None:
    store = Store()
    store.gate = asyncio.Event()
    log = new_log(store)
    await log.emit(started(1))  # returns at once; its write is held by the gate
    assert log.last_seq == 1 and store.stored == []
    log.emit_delta(delta())  # deltas never wait
    await wait_for(lambda: store.entered == 1, timeout=2)  # the write of 1-2 is held
    began = asyncio.Event()

    async def emit_second() -> None:
        began.set()  # the emit below runs in this same loop step up to its first suspension
        await log.emit(Event(agent_finished=Event.AgentFinished(turn=1)))

    second = asyncio.create_task(emit_second())
    await asyncio.wait_for(began.wait(), 2)
    # The emit has run as far as it can without the first write: were it not waiting for
    # that write, it would have numbered its event (3) and returned in that step.
    assert not second.done() and log.last_seq == 2  # not emitted before 1 is stored
    store.gate.set()
    await second
    assert log.last_seq == 3
    await log.sync()
    assert store.stored == [1, 2, 3]


async def test_a_burst_of_deltas_is_stored_in_one_call_started_at_once() -> None:
    store = Store()
    log = new_log(store)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(200):
        log.emit_delta(delta())
    await wait_for(lambda: store.stored == list(range(1, 201)), timeout=2)
    assert loop.time() - start < 0.5
    assert len(store.batches) == 1  # one write for the burst, not one per token
    log.close()


async def test_a_failed_write_fails_the_next_lifecycle_event_and_is_retried_later() -> None:
    store = Store()
    store.fail = ConnectionError("history down")
    log = new_log(store)
    await log.emit(started())
    with pytest.raises(ConnectionError):
        await log.emit(Event(agent_finished=Event.AgentFinished(turn=1)))
    store.fail = None
    await log.sync()
    assert store.stored == [1]  # kept and written once history answers


async def test_the_buffer_drops_only_stored_events_and_reports_when_a_reader_is_behind() -> None:
    store = Store()
    store.gate = asyncio.Event()
    log = new_log(store, keep=64)
    for _ in range(300):
        log.emit_delta(delta())
    await log.emit(started())
    assert log.events_after(0) == []  # log before show: nothing unstored is readable
    store.gate.set()
    await log.sync()
    assert log.events_after(0) is None  # trimmed: read these from history
    tail = log.events_after(300)
    assert tail is not None and [e.seq for e in tail] == [301]
    assert log.events_after(301) == []


@pytest.mark.parametrize("run_id", ["6f1c7e0a-3b2d-4c5e-9f80-1a2b3c4d5e6f", "r", "x" * 200])
async def test_stored_events_read_back_from_the_buffer_equal_the_emitted_ones(run_id: str) -> None:
    # Stored events are kept serialized without their run id; reading puts it back.
    store = Store()
    log = new_log(store, keep=64, run_id=run_id)
    run = run_pb2.Run(id=run_id, owner="alice", spec=run_pb2.RunSpec(input="Go."))
    emitted = [Event(run_started=Event.RunStarted(run=run))]
    await log.emit(emitted[0])
    emitted += [delta(f" tok{i}") for i in range(10)]
    for event in emitted[1:]:
        log.emit_delta(event)
    await log.sync()
    store.gate = asyncio.Event()  # what follows stays unstored: not readable yet
    emitted += [delta(" late"), Event(agent="a", reasoning_delta=Event.ReasoningDelta(text="r"))]
    for event in emitted[-2:]:
        log.emit_delta(event)
    assert log.stored_seq == 11 and log.last_seq == 13
    for k in range(len(emitted) + 2):
        assert log.events_after(k) == emitted[:11][k:], f"after {k}"
    assert all(e.run_id == run_id for e in log.events_after(0) or [])
    store.gate.set()
    await log.sync()
    assert log.events_after(0) == emitted
    log.close()


async def test_the_buffer_keeps_the_last_stored_events_up_to_half_as_many_again() -> None:
    store = Store()
    log = new_log(store, keep=64)
    for n in range(1, 201):
        await log.emit(started(n))
        await log.sync()
        kept = log.events_after(max(0, n - 64))  # the last 64 are always there
        assert kept is not None and [e.agent_started.turn for e in kept] == list(
            range(max(1, n - 63), n + 1)
        )
    assert log.events_after(200 - 97) is None  # trimmed in chunks: at most 96 kept
    log.close()


async def test_watchers_wake_only_once_an_event_is_stored() -> None:
    store = Store()
    store.gate = asyncio.Event()
    log = new_log(store)
    waiter = asyncio.create_task(log.wait_beyond(0))
    log.emit_delta(delta())
    await wait_for(lambda: store.calls == [["run-1"]], timeout=2)  # the write began, held
    assert not waiter.done() and log.events_after(0) == []
    store.gate.set()
    await asyncio.wait_for(waiter, 1)
    assert [e.seq for e in log.events_after(0) or []] == [1]
    log.close()


async def test_watchers_wake_on_new_events_and_when_the_log_closes() -> None:
    log = new_log(Store())
    waiter = asyncio.create_task(log.wait_beyond(0))
    await started_tasks()
    assert not waiter.done()
    log.emit_delta(delta())
    await asyncio.wait_for(waiter, 1)
    waiter = asyncio.create_task(log.wait_beyond(1))
    cancelled_watcher = asyncio.create_task(log.wait_beyond(1))
    await started_tasks()
    cancelled_watcher.cancel()  # one watcher leaving does not affect the others
    await started_tasks()
    log.close()
    await asyncio.wait_for(waiter, 1)


async def test_a_watcher_resumes_in_the_loop_turn_after_its_event_is_stored() -> None:
    """Every loop turn between a stored event and its watcher is latency on every delta's
    way to the screen (3–10 ms a turn while a burst of runs starts): one turn, no more."""
    log = new_log(Store())
    watchers = [asyncio.create_task(log.wait_beyond(0)) for _ in range(3)]
    await started_tasks()
    log.emit_stored(started())
    await asyncio.sleep(0)  # one turn: the watchers' wake-ups run in it
    assert all(w.done() for w in watchers)
    log.close()


async def test_one_call_carries_the_deltas_of_every_run_marked_in_one_loop_step() -> None:
    store = Store()
    flusher = DeltaFlusher(store.many)
    logs = [new_log(store, flusher=flusher, run_id=f"run-{i}") for i in range(50)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for log in logs:
        log.emit_delta(delta())
        log.emit_delta(delta())
    await wait_for(lambda: all(log.stored_seq == 2 for log in logs), timeout=2)
    assert loop.time() - start < 0.5
    assert len(store.calls) == 1 and sorted(store.calls[0]) == sorted(g.run_id for g in logs)
    await flusher.close()


async def test_deltas_arriving_during_a_call_go_together_in_the_next_one() -> None:
    # A group commit: one call in flight at a time; what arrives meanwhile waits for it.
    store = Store()
    store.gate = asyncio.Event()
    flusher = DeltaFlusher(store.many, max_in_flight=1)
    logs = [new_log(store, flusher=flusher, run_id=f"run-{i}") for i in range(3)]
    logs[0].emit_delta(delta())
    await wait_for(lambda: store.calls == [["run-0"]], timeout=2)  # the first call is held
    for log in logs:
        for _ in range(5):
            log.emit_delta(delta())
    store.gate.set()
    await wait_for(lambda: all(not log.has_pending for log in logs), timeout=2)
    # Nothing more was sent while the call was in flight: a call started meanwhile (its
    # task is created by the first mark above, so it starts before the first call ends)
    # would have taken run-1 and run-2 without run-0, whose batch was in flight; calls are
    # recorded as they begin, and the second began once the first had ended.
    assert store.order == ["call begins", "call ends", "call begins", "call ends"]
    assert [sorted(c) for c in store.calls] == [["run-0"], ["run-0", "run-1", "run-2"]]
    assert [log.stored_seq for log in logs] == [6, 5, 5]
    await flusher.close()


async def test_calls_in_flight_at_once_never_carry_two_batches_of_one_run() -> None:
    store = Store()
    store.gate = asyncio.Event()
    flusher = DeltaFlusher(store.many, max_in_flight=3)
    first, second = (new_log(store, flusher=flusher, run_id=f"run-{i}") for i in range(2))
    first.emit_delta(delta())
    await wait_for(lambda: store.calls == [["run-0"]], timeout=2)  # call 1: run-0, held
    first.emit_delta(delta())
    second.emit_delta(delta())
    await wait_for(lambda: len(store.calls) == 2, timeout=2)  # call 2 began, held too
    # it took every marked run, and run-0's second delta waits its turn (no call takes a
    # run's batch while one of its batches is in flight, so none will before call 1 ends)
    assert store.calls[1] == ["run-1"]
    assert first.has_pending and first.stored_seq == 0 and not store.batches
    store.gate.set()
    await wait_for(lambda: not first.has_pending and not second.has_pending, timeout=2)
    assert [b for b in store.batches if len(b) == 1] == store.batches  # one delta a batch
    assert sorted(store.batches) == [[1], [1], [2]] and first.stored_seq == 2
    await flusher.close()


async def test_deltas_within_the_tick_wait_for_its_end_and_go_in_one_call() -> None:
    tick = 0.3
    store = Store()
    flusher = DeltaFlusher(store.many, tick_s=tick)
    logs = [new_log(store, flusher=flusher, run_id=f"run-{i}") for i in range(3)]
    loop = asyncio.get_running_loop()
    for log in logs:  # each run's first delta: at once, in one call
        log.emit_delta(delta())
    started = loop.time()
    await wait_for(lambda: all(log.stored_seq == 1 for log in logs), timeout=2)
    for log in logs:  # the next tokens, one run per loop turn: within the tick
        log.emit_delta(delta())
        await asyncio.sleep(0)
    await wait_for(lambda: all(log.stored_seq == 2 for log in logs), timeout=2)
    assert loop.time() - started >= tick * 0.9  # they waited for the tick's end
    assert [sorted(call) for call in store.calls] == [[g.run_id for g in logs]] * 2
    await flusher.close()


async def test_the_first_delta_of_a_turn_does_not_wait_for_the_tick() -> None:
    store = Store()
    flusher = DeltaFlusher(store.many, tick_s=60)  # a tick no test would wait for
    busy, quiet = (new_log(store, flusher=flusher, run_id=f"run-{i}") for i in range(2))
    busy.emit_delta(delta())
    await wait_for(lambda: busy.stored_seq == 1, timeout=2)
    busy.emit_delta(delta())  # a stream's next token within the tick: held
    for _ in range(10):
        await asyncio.sleep(0)
    assert busy.stored_seq == 1
    quiet.emit_delta(delta())  # another run's first delta: at once, with what was held
    await wait_for(lambda: quiet.stored_seq == 1 and busy.stored_seq == 2, timeout=5)
    assert [sorted(call) for call in store.calls] == [["run-0"], ["run-0", "run-1"]]
    await flusher.close()


async def test_calls_are_split_at_the_flushers_batch_and_event_limits() -> None:
    store = Store()
    flusher = DeltaFlusher(store.many, max_batches=3, max_events=4)
    logs = [new_log(store, flusher=flusher, run_id=f"run-{i}") for i in range(5)]
    for log in logs:
        log.emit_delta(delta())
    logs[0].emit_delta(delta())
    await wait_for(lambda: all(not log.has_pending for log in logs), timeout=2)
    assert sorted(len(c) for c in store.calls) == [2, 3]  # 6 events: at most 3 runs / 4 events
    assert sum(len(b) for b in store.batches) == 6


async def test_a_rejected_batch_is_reported_to_its_run_and_the_others_are_stored() -> None:
    store = Store()
    flusher = DeltaFlusher(store.many)
    rejected: list[Exception] = []
    bad = new_log(store, flusher=flusher, run_id="bad", on_rejected=rejected.append)
    good = new_log(store, flusher=flusher, run_id="good")
    store.reject["bad"] = RuntimeError("SEQ_CONFLICT")
    bad.emit_delta(delta())
    good.emit_delta(delta())
    await wait_for(lambda: rejected and good.stored_seq == 1, timeout=2)
    assert bad.stored_seq == 0 and bad.has_pending  # kept: the next lifecycle write retries
    assert not bad.writing


async def test_a_failed_call_keeps_the_deltas_and_the_flusher_retries_them() -> None:
    store = Store()
    store.fail = ConnectionError("history down")
    log = new_log(store)
    log.emit_delta(delta())
    await wait_for(lambda: not log.writing and log.has_pending, timeout=2)
    store.fail = None
    await wait_for(lambda: log.stored_seq == 1, timeout=2)
    assert store.stored == [1]


async def test_a_lifecycle_write_waits_for_the_runs_delta_batch_in_flight() -> None:
    store = Store()
    store.gate = asyncio.Event()
    log = new_log(store)
    log.emit_delta(delta())
    await wait_for(lambda: store.calls == [["run-1"]], timeout=2)  # the flusher's batch, held
    await log.emit(started())  # its write's task is created, to start in the next step
    await started_tasks()  # it has: it waits for the batch in flight
    assert store.entered == 0 and store.order == ["call begins"]
    finishing = asyncio.create_task(log.sync())
    store.gate.set()
    await asyncio.wait_for(finishing, 2)
    assert store.order == ["call begins", "call ends", "write begins", "write ends"]
    assert store.stored == [1, 2] and store.batches == [[1], [2]]


async def test_deltas_emitted_during_a_lifecycle_write_are_left_to_the_flusher() -> None:
    store = Store()
    store.gate = asyncio.Event()
    log = new_log(store)
    log.emit_delta(delta())
    await log.emit(started())  # its write (seq 1-2) is held by the gate
    await wait_for(lambda: store.entered == 1, timeout=2)
    for _ in range(3):
        log.emit_delta(delta())  # a live stream goes on meanwhile
    store.gate.set()
    await wait_for(lambda: log.stored_seq == 5, timeout=2)
    # one run write for the lifecycle event, then the flusher's call: not a write per
    # round trip of this run's own loop
    assert store.batches == [[1, 2], [3, 4, 5]]
    assert len(store.calls) == 1
    log.close()


async def test_the_terminal_event_is_stored_by_the_final_writer_with_the_pending_events() -> None:
    store = Store()
    final = Store()
    log = new_log(store)
    await log.emit(started())
    await wait_for(lambda: log.stored_seq == 1, timeout=2)
    log.emit_delta(delta())
    log.emit_delta(delta())
    finished = Event(agent="a", agent_finished=Event.AgentFinished(turn=1))
    await log.end(finished, completed(), final_writer=final)
    assert store.batches == [[1]]  # agent_started, through the run's own writer
    # the deltas, the last lifecycle event and the terminal one, in one write
    assert final.batches == [[2, 3, 4, 5]]
    assert log.ended and log.stored_seq == 5
    with pytest.raises(RuntimeError):
        await log.end(completed(), final_writer=final)
    for not_an_end in ([started()], [completed(), started()], [completed(), completed()]):
        with pytest.raises(ValueError):
            await new_log(Store()).end(*not_an_end, final_writer=final)
    log.close()


async def test_the_flusher_never_takes_the_end_from_its_own_write() -> None:
    store = Store()
    final = Store()
    flusher = DeltaFlusher(store.many)
    log = new_log(store, flusher=flusher)
    log.emit_delta(delta())
    ending = asyncio.create_task(log.end(completed(), final_writer=final))
    await asyncio.sleep(0)  # one loop step: the end is published, its write only scheduled
    assert log.ended and log.has_pending
    await flusher.flush()  # the flusher's call starts right then
    await ending
    # the flusher left the end to the end's write, which stored it with the record; the
    # delta went with one of them (the flusher's own call may have started first)
    assert final.batches[-1][-1] == 2
    assert [seq for batch in store.batches + final.batches for seq in batch] == [1, 2]
    log.close()


class Sink:
    def __init__(self) -> None:
        self.events: list[run_pb2.RunEvent] = []
        self.ended = False

    def emit_delta(self, event: run_pb2.RunEvent) -> None:
        self.events.append(event)

    @property
    def texts(self) -> list[tuple[str, str]]:
        return [
            (str(e.WhichOneof("payload")), getattr(e, str(e.WhichOneof("payload"))).text)
            for e in self.events
        ]


async def test_deltas_are_not_coalesced_when_the_window_is_zero() -> None:
    sink = Sink()
    stream = DeltaStream(sink, "a", 0.0)  # type: ignore[arg-type]
    for piece in ("a", "b", "c"):
        stream.text(piece)
    assert sink.texts == [("text_delta", "a"), ("text_delta", "b"), ("text_delta", "c")]


async def test_a_burst_of_deltas_becomes_one_event_after_the_first_which_is_never_delayed() -> None:
    sink = Sink()
    stream = DeltaStream(sink, "a", 0.05)  # type: ignore[arg-type]
    stream.text("Hel")
    assert sink.texts == [("text_delta", "Hel")]  # first piece at once
    stream.text("lo")
    stream.text(" wor")
    assert sink.texts == [("text_delta", "Hel")]
    stream.reasoning("hmm")  # a change of kind flushes first, keeping the order
    assert sink.texts == [("text_delta", "Hel"), ("text_delta", "lo wor")]
    stream.text("ld")
    assert sink.texts[2:] == [("reasoning_delta", "hmm")]
    await wait_for(lambda: len(sink.events) == 4, timeout=1)  # the timer sends the rest
    assert sink.texts[3] == ("text_delta", "ld")
    stream.text("!")
    stream.flush()
    assert sink.texts[-1] == ("text_delta", "!")
    assert all(e.agent == "a" for e in sink.events)
