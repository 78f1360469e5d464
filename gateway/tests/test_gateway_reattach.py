"""A watch whose orchestrator call fails reattaches (`chorus.gateway.watches`): the SSE
stream goes on after the last seq it was given — no error, no gap, no duplicate — while
final errors, a run whose id is not known yet and a spent reattach budget still end it.

The gRPC side is a real grpc.aio server on port 0 (`FakeRuns` of `test_gateway_sse.py`);
the HTTP side the ASGI interface with a socket the test controls. Reattaching across real
orchestrator replicas killed mid-run: `test_gateway_replicas.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import grpc
import pytest
from google.rpc import status_pb2
from test_gateway_sse import FakeRuns, Socket, _serve, serving

from chorus.core.errors import DeadlineExceeded, StatusError, Unavailable
from chorus.core.testing import wait_for
from chorus.gateway.api.routes import conversations
from chorus.gateway.settings import GatewaySettings
from chorus.gateway.watches import reattachable
from chorus.v1 import conversation_pb2, run_pb2


def seqs_of(socket: Socket) -> list[int]:
    return [
        int(line[4:])
        for write in socket.writes
        for line in write.decode().split("\n")
        if line.startswith("id: ")
    ]


class Sink:
    """A StreamSink that records what it was given."""

    def __init__(self) -> None:
        self.events: list[run_pb2.RunEvent] = []
        self.ended = asyncio.Event()
        self.error: BaseException | None = None

    def deliver(self, events: Sequence[run_pb2.RunEvent]) -> None:
        self.events.extend(events)

    def end(self, error: BaseException | None) -> None:
        self.error = error
        self.ended.set()


async def abort(servicer: FakeRuns, call: int, code: grpc.StatusCode, details: str) -> None:
    with contextlib.suppress(grpc.aio.AbortError):  # raised here, ends the call there
        await servicer.contexts[call].abort(code, details)


async def test_streams_of_a_failed_call_reattach_after_their_last_seq_without_error():
    servicer = FakeRuns(count=60, interval_s=0.01)
    server, channel, watches = await serving(servicer)
    try:
        sockets = [Socket(), Socket()]
        served = [await _serve(watches, s, run_id=f"r{i}") for i, s in enumerate(sockets)]
        await wait_for(lambda: all(s.events() >= 5 for s in sockets), timeout=20)
        await abort(servicer, 0, grpc.StatusCode.UNAVAILABLE, "replica going away")
        for task, _ in served:
            await asyncio.wait_for(task, 20)
        for socket in sockets:
            assert socket.ended
            assert not any(b"event: error" in w for w in socket.writes)
            assert seqs_of(socket) == list(range(1, servicer.count + 2))  # one terminal, last
            assert b"event: run_completed" in socket.writes[-2] + socket.writes[-1]
        assert servicer.calls == 2
        # the second call asked each run for what came after the seq its stream had
        reopened = [r for r in servicer.requests if r.WhichOneof("action") == "watch"][2:]
        assert sorted(r.watch.run_id for r in reopened) == ["r0", "r1"]
        assert all(r.watch.after_seq >= 5 for r in reopened)
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_a_run_started_by_the_stream_reattaches_once_its_id_is_known():
    servicer = FakeRuns(count=40, interval_s=0.01)
    server, channel, watches = await serving(servicer)
    try:
        sink = Sink()
        spec = run_pb2.RunSpec(template="duet", input="x")
        watches.open(sink, user="alice", request_id="req", run_id="", start=spec)
        await wait_for(lambda: len(sink.events) >= 3, timeout=20)
        for event in sink.events:
            assert event.seq > 0
        await abort(servicer, 0, grpc.StatusCode.UNAVAILABLE, "gone")
        await asyncio.wait_for(sink.ended.wait(), 20)
        assert sink.error is None
        assert [e.seq for e in sink.events] == list(range(1, servicer.count + 2))
        opened = [r.WhichOneof("action") for r in servicer.requests if r.WhichOneof("action")]
        assert opened[0] == "start" and opened[1] == "watch"
        reopened = next(r for r in servicer.requests if r.WhichOneof("action") == "watch")
        assert reopened.watch.run_id == "started" and reopened.watch.after_seq >= 3
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_a_reattached_run_started_to_cancel_on_disconnect_is_cancelled_when_its_client_leaves():
    servicer = FakeRuns(count=1000, interval_s=0.01, silent=True)
    server, channel, watches = await serving(servicer)
    try:
        sink = Sink()
        spec = run_pb2.RunSpec(template="duet", input="x")
        spec.on_disconnect = run_pb2.ON_DISCONNECT_CANCEL
        watch = watches.open(sink, user="alice", request_id="req-1", start=spec)
        await wait_for(lambda: len(sink.events) >= 3, timeout=20)
        watch.stop()  # before any reattach: the orchestrator applies on_disconnect itself
        await wait_for(
            lambda: "stop" in [r.WhichOneof("action") for r in servicer.requests], timeout=10
        )
        assert servicer.cancels == []

        sink = Sink()
        watch = watches.open(sink, user="alice", request_id="req-2", start=spec)
        await wait_for(lambda: len(sink.events) >= 3, timeout=20)
        await abort(servicer, 0, grpc.StatusCode.UNAVAILABLE, "gone")
        await wait_for(lambda: servicer.calls == 2 and watch.id, timeout=20)
        watch.stop()  # the client left after the reattach: the gateway cancels the run
        await wait_for(lambda: servicer.cancels, timeout=10)
        [(request, metadata)] = servicer.cancels
        assert request.run_id == "started" and request.reason == "client disconnected"
        assert metadata["x-chorus-user"] == "alice"
        assert metadata["x-request-id"] == "req-2"
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_a_final_error_of_the_call_is_not_retried():
    servicer = FakeRuns(count=500, interval_s=0.01)
    server, channel, watches = await serving(servicer)
    try:
        socket = Socket()
        task, _ = await _serve(watches, socket)
        await wait_for(lambda: socket.events() >= 3, timeout=20)
        await abort(servicer, 0, grpc.StatusCode.PERMISSION_DENIED, "no longer yours")
        await asyncio.wait_for(task, 10)
        assert socket.writes[-1].startswith(b"event: error\ndata: ")
        assert b'"status":"PERMISSION_DENIED"' in socket.writes[-1]
        assert servicer.calls == 1
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_an_unknown_run_is_not_retried():
    servicer = FakeRuns(count=5)
    server, channel, watches = await serving(servicer)
    try:
        sink = Sink()
        watches.open(sink, user="alice", request_id=None, run_id="missing")
        await asyncio.wait_for(sink.ended.wait(), 10)
        assert isinstance(sink.error, StatusError)
        assert sink.error.code == grpc.StatusCode.NOT_FOUND
        assert len([r for r in servicer.requests if r.WhichOneof("action") == "watch"]) == 1
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_the_stream_ends_with_the_error_once_the_reattach_budget_is_spent():
    servicer = FakeRuns(count=1000, interval_s=0.01, silent=True)
    server, channel, watches = await serving(servicer, reattach_s=0.6)
    try:
        socket = Socket()
        task, _ = await _serve(watches, socket)
        await wait_for(lambda: socket.events() >= 3, timeout=20)
        loop = asyncio.get_running_loop()
        await server.stop(0)  # no replica left
        lost = loop.time()
        await asyncio.wait_for(task, 20)
        assert loop.time() - lost >= 0.6
        assert socket.writes[-1].startswith(b"event: error\ndata: ")
        assert b'"status":"UNAVAILABLE"' in socket.writes[-1]
        seqs = seqs_of(socket)
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        watches.close()
        await channel.close()


async def test_a_client_that_leaves_while_its_watch_reattaches_stops_it():
    servicer = FakeRuns(count=1000, interval_s=0.01, silent=True)
    server, channel, watches = await serving(servicer, reattach_s=30)
    try:
        socket = Socket()
        task, _ = await _serve(watches, socket)
        await wait_for(lambda: socket.events() >= 3, timeout=20)
        await server.stop(0)
        await wait_for(lambda: watches.reattaching == 1, timeout=10)
        socket.gone.set()
        await asyncio.wait_for(task, 10)
        await wait_for(lambda: watches.reattaching == 0, timeout=10)
    finally:
        watches.close()
        await channel.close()


async def test_closing_the_watches_ends_reattaching_streams():
    servicer = FakeRuns(count=1000, interval_s=0.01, silent=True)
    server, channel, watches = await serving(servicer, reattach_s=30)
    try:
        sink = Sink()
        watches.open(sink, user="alice", request_id=None, run_id="r1")
        await wait_for(lambda: len(sink.events) >= 3, timeout=20)
        await server.stop(0)
        await wait_for(lambda: watches.reattaching == 1, timeout=10)
        watches.close()  # the gateway shuts down
        await asyncio.wait_for(sink.ended.wait(), 10)
        assert isinstance(sink.error, Unavailable)
    finally:
        watches.close()
        await channel.close()


@pytest.mark.parametrize(
    ("code", "details", "answered", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", False, True),
        (grpc.StatusCode.CANCELLED, "server shutting down", False, True),
        # gRPC's own INTERNAL for a broken stream: no rich status from a server.
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2", False, True),
        (
            grpc.StatusCode.INTERNAL,
            "Received unexpected EOS on DATA frame from server",
            False,
            True,
        ),
        # A Chorus server's INTERNAL (a bug): it carries grpc-status-details-bin.
        (grpc.StatusCode.INTERNAL, "bug", True, False),
        (grpc.StatusCode.NOT_FOUND, "no run", True, False),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad", True, False),
        (grpc.StatusCode.PERMISSION_DENIED, "no", True, False),
        (grpc.StatusCode.UNAUTHENTICATED, "who", False, False),
    ],
)
def test_which_call_errors_reattach(
    code: grpc.StatusCode, details: str, answered: bool, expected: bool
) -> None:
    trailing = grpc.aio.Metadata()
    if answered:
        status = status_pb2.Status(code=code.value[0], message=details)
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)
    assert reattachable(error) is expected


def test_a_watch_ended_unavailable_by_the_orchestrator_reattaches_other_codes_do_not() -> None:
    assert reattachable(StatusError(Unavailable("history unreachable").to_status()))
    assert not reattachable(StatusError(status_pb2.Status(code=5, message="no run")))
    assert not reattachable(ValueError("x"))


async def test_a_json_chat_waits_for_its_run_over_the_shared_call_and_survives_a_lost_replica():
    servicer = FakeRuns(count=40, interval_s=0.01)
    server, channel, watches = await serving(servicer)
    try:
        outcome = conversations._Outcome()
        spec = run_pb2.RunSpec(template="assistant", input="hi")
        watches.open(outcome, user="alice", request_id=None, start=spec)
        await asyncio.wait_for(outcome.started.wait(), 10)
        await abort(servicer, 0, grpc.StatusCode.UNAVAILABLE, "gone")
        await asyncio.wait_for(outcome.done.wait(), 20)
        assert outcome.error is None and outcome.run_id == "started"
        assert outcome.terminal is not None and outcome.terminal.HasField("run_completed")
        assert servicer.calls == 2
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_a_json_chat_that_outlives_its_timeout_names_the_run_and_stops_listening():
    servicer = FakeRuns(count=5, silent=True)  # the run never ends
    server, channel, watches = await serving(servicer)
    try:
        settings = GatewaySettings(_env_file=None, dev_mode=True, chat_timeout_s=0.3)  # type: ignore[call-arg]
        conversation = conversation_pb2.Conversation(id="c1", title="titled")
        spec = run_pb2.RunSpec(template="assistant", input="hi", conversation_id="c1")
        with pytest.raises(DeadlineExceeded) as caught:
            await conversations._chat_json(
                watches,
                "alice",
                spec,
                None,
                None,
                conversation,
                "hi",
                settings,  # type: ignore[arg-type]
            )
        assert caught.value.reason == "RUN_STILL_ACTIVE"
        assert "/api/v1/runs/started/events" in str(caught.value)
        await wait_for(
            lambda: "stop" in [r.WhichOneof("action") for r in servicer.requests], timeout=10
        )
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)
