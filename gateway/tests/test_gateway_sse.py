"""The SSE writer against a real gRPC WatchRuns call, with a socket the test controls:
several events per write while the client does not drain, a watch paused at the buffer
bound and resumed once drained, the watch stopped when the client leaves, errors before
and after the first event, and (reattach off) a broken call that ends its streams and is
replaced. Reattaching watches: `test_gateway_reattach.py`.

The HTTP side is the ASGI interface itself (`send` / `receive`), so the test decides when
the "socket" drains; the gRPC side is a real grpc.aio server on port 0 whose WatchRuns
sends one event per message (the orchestrator's own WatchRuns is tested in
orchestrator-svc).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chorus.core.errors import NotFound, StatusError
from chorus.core.identity import SYSTEM_USER, USER_KEY
from chorus.core.server import GrpcServer, ServiceBinding
from chorus.core.settings import CoreSettings
from chorus.core.testing import wait_for
from chorus.gateway import sse
from chorus.gateway.watches import RunWatches
from chorus.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

Update = run_service_pb2.WatchRunsResponse.Update


class FakeRuns(run_service_pb2_grpc.RunServiceServicer):
    """WatchRuns: each watched run streams `count` text deltas (`interval_s` apart) then
    `run_completed`, one event per message, honouring pause / resume / stop (a started run
    is run `started`); a run named `missing` ends its watch with NOT_FOUND; `silent` runs stay open after their events.
    Records every request."""

    def __init__(self, count: int, interval_s: float = 0.0, *, silent: bool = False) -> None:
        self.count = count
        self.interval_s = interval_s
        self.silent = silent
        self.requests: list[run_service_pb2.WatchRunsRequest] = []
        self.sent: dict[int, int] = {}
        self.calls = 0
        self.contexts: list[grpc.aio.ServicerContext] = []
        self.cancels: list[tuple[run_service_pb2.CancelRunRequest, dict[str, Any]]] = []

    async def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.CancelRunResponse:
        self.cancels.append((request, dict(context.invocation_metadata() or ())))
        return run_service_pb2.CancelRunResponse(cancelled=True, message="cancel requested")

    def actions(self, watch_id: int) -> list[str]:
        return [str(r.WhichOneof("action")) for r in self.requests if r.watch_id == watch_id]

    async def WatchRuns(
        self,
        request_iterator: AsyncIterator[run_service_pb2.WatchRunsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
        self.calls += 1
        self.contexts.append(context)
        out: asyncio.Queue[Update] = asyncio.Queue(maxsize=1)  # fed as fast as sent
        gates: dict[int, asyncio.Event] = {}
        tasks: dict[int, asyncio.Task[None]] = {}

        async def feed(watch_id: int, run_id: str, after_seq: int) -> None:
            if run_id == "missing":
                await out.put(Update(watch_id=watch_id, status=NotFound("no run").to_status()))
                return
            for seq in range(after_seq + 1, self.count + 1):
                await gates[watch_id].wait()
                event = run_pb2.RunEvent(run_id=run_id, seq=seq, agent="Ada")
                event.text_delta.text = f"token {seq} "
                self.sent[watch_id] = seq
                await out.put(Update(watch_id=watch_id, events=[event]))
                if self.interval_s:
                    await asyncio.sleep(self.interval_s)  # the pace of a slow model
            if self.silent:
                return
            end = run_pb2.RunEvent(run_id=run_id, seq=self.count + 1)
            end.run_completed.final_answer = "done"
            await out.put(Update(watch_id=watch_id, events=[end], status={"code": 0}))

        async def read() -> None:
            async for request in request_iterator:
                self.requests.append(request)
                action, watch_id = request.WhichOneof("action"), request.watch_id
                if action in ("watch", "start"):
                    gates[watch_id] = asyncio.Event()
                    gates[watch_id].set()
                    run_id = request.watch.run_id if action == "watch" else "started"
                    tasks[watch_id] = asyncio.create_task(
                        feed(watch_id, run_id, request.watch.after_seq)
                    )
                elif action == "pause":
                    gates[watch_id].clear()
                elif action == "resume":
                    gates[watch_id].set()
                elif action == "stop":
                    tasks[watch_id].cancel()

        reader = asyncio.create_task(read())
        try:
            while True:
                yield run_service_pb2.WatchRunsResponse(updates=[await out.get()])
        finally:
            reader.cancel()
            for task in tasks.values():
                task.cancel()


async def serving(
    servicer: FakeRuns, *, reattach_s: float = 60.0
) -> tuple[GrpcServer, grpc.aio.Channel, RunWatches]:
    server = GrpcServer(
        [
            ServiceBinding(
                "chorus.v1.RunService",
                servicer,
                run_service_pb2_grpc.add_RunServiceServicer_to_server,
            )
        ],
        CoreSettings(dev_mode=True, instance_id="test"),
        0,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    return server, channel, RunWatches(stub, [(USER_KEY, SYSTEM_USER)], reattach_s=reattach_s)


@pytest.fixture
async def firehose() -> AsyncIterator[tuple[FakeRuns, RunWatches]]:
    servicer = FakeRuns(count=2000)
    server, channel, watches = await serving(servicer)
    try:
        yield servicer, watches
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


class Socket:
    """The client side of an ASGI HTTP response: records writes; `drain` gates them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.status: int | None = None
        self.drain = asyncio.Event()
        self.drain.set()
        self.gone = asyncio.Event()
        self.ended = False
        self.held = b""

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            return
        self.held = message.get("body", b"")  # offered, waiting for the socket to drain
        await self.drain.wait()
        self.held = b""
        self.writes.append(message.get("body", b""))
        self.ended = not message.get("more_body", False)

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def events(self) -> int:
        return sum(w.count(b"\nid: ") for w in self.writes)


async def _serve(watches: RunWatches, socket: Socket, **kw: Any) -> Any:
    response = await sse.open_event_stream(
        watches,
        user="alice",
        run_id=kw.get("run_id", "r1"),
        after_seq=kw.get("after", 0),
        first_event_wait_s=2,
        keepalive_s=kw.get("keepalive_s", 15),
        max_buffered=kw.get("max_buffered", 100_000),
        flush_interval_s=kw.get("flush_interval_s", 0.0),
    )
    return asyncio.create_task(response({"type": "http"}, socket.receive, socket.send)), response


async def test_events_are_batched_while_the_client_does_not_drain(firehose):
    servicer, watches = firehose
    socket = Socket()
    socket.drain.clear()  # the first write blocks: the socket is "full"
    task, response = await _serve(watches, socket)
    await wait_for(lambda: response.pump.finished, timeout=20)  # all read, nothing written
    socket.drain.set()
    await asyncio.wait_for(task, 20)
    assert socket.status == 200 and socket.ended
    assert socket.events() == servicer.count + 1
    assert len(socket.writes) <= 6, f"{len(socket.writes)} writes for {socket.events()} events"
    # the call announced its response window first, then opened the watch for alice
    window, opening = servicer.requests[:2]
    assert window.response_window == 1 and not window.WhichOneof("action")
    assert opening.user == "alice" and opening.WhichOneof("action") == "watch"
    # every response read was acknowledged
    await wait_for(lambda: sum(r.acknowledged for r in servicer.requests) == servicer.count + 1)


async def test_a_fast_stream_is_flushed_at_most_once_per_interval(firehose):
    servicer, watches = firehose
    socket = Socket()
    task, _ = await _serve(watches, socket, flush_interval_s=0.2)
    await asyncio.wait_for(task, 20)
    assert socket.events() == servicer.count + 1
    assert len(socket.writes) < servicer.count / 20, f"{len(socket.writes)} writes"


async def test_the_first_events_of_a_stream_are_never_held_back(firehose):
    servicer, watches = firehose
    socket = Socket()
    # 5 deltas and the end, with writes paced at one per 10 s after the burst allowance.
    task, _ = await _serve(watches, socket, flush_interval_s=10.0, after=servicer.count - 5)
    await asyncio.wait_for(task, 5)  # not 10 s: nothing waited for the pacing
    assert socket.events() == 6


def _delta(seq: int) -> run_pb2.RunEvent:
    event = run_pb2.RunEvent(run_id="r1", seq=seq, agent="Ada")
    event.text_delta.text = f"token {seq} "
    return event


async def test_after_a_burst_the_first_frame_after_a_quiet_interval_goes_out_at_once():
    pump = sse._Pump(max_buffered=100, flush_interval_s=10.0)
    try:
        for seq in range(1, sse.FLUSH_BURST + 1):  # the burst allowance, written at once
            pump.deliver([_delta(seq)])
            assert b"id: %d" % seq in await asyncio.wait_for(pump.take(15), 5)
        # the allowance spent: a frame now waits for the interval (10 s) ...
        pump.deliver([_delta(sse.FLUSH_BURST + 1)])
        held = asyncio.create_task(pump.take(15))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not held.done()
        held.cancel()
        # ... unless the stream was quiet for an interval, as the clock would say after
        # ten quiet seconds (moved here instead of waited for)
        pump._credit_time -= 10.0
        assert b"id: 9" in await asyncio.wait_for(pump.take(15), 5)
    finally:
        pump.close()


async def test_a_stream_whose_events_are_all_buffered_is_one_write_with_the_retry_line():
    # each body message is a socket write: the `retry:` line leaves with the first events,
    # and the last events with the end of the body
    servicer = FakeRuns(count=3)
    server, channel, watches = await serving(servicer)
    try:
        response = await sse.open_event_stream(
            watches,
            user="alice",
            run_id="r1",
            first_event_wait_s=2,
            keepalive_s=15,
            max_buffered=100,
        )
        assert isinstance(response, sse.EventStreamResponse)
        await wait_for(lambda: response.pump.finished, timeout=20)
        socket = Socket()
        await asyncio.wait_for(response({"type": "http"}, socket.receive, socket.send), 10)
        assert socket.status == 200 and socket.ended
        assert len(socket.writes) == 1, socket.writes
        assert socket.writes[0].startswith(b"retry: 2000\n\nevent: text_delta\nid: 1\n")
        assert b"event: run_completed\nid: 4\n" in socket.writes[0]
        assert socket.events() == servicer.count + 1
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_a_full_buffer_pauses_the_watch_until_the_writer_drains_it():
    servicer = FakeRuns(count=20_000)
    server, channel, watches = await serving(servicer)
    try:
        socket = Socket()
        socket.drain.clear()
        task, response = await _serve(watches, socket, max_buffered=50)
        watch_id = response.pump.watch.id
        await wait_for(lambda: "pause" in servicer.actions(watch_id), timeout=20)
        # what was in flight when the pause arrived lands; then nothing more is sent
        held = lambda: len(response.pump.frames) + socket.held.count(b"\nid: ")  # noqa: E731
        await wait_for(lambda: held() == servicer.sent[watch_id], timeout=20)
        assert held() < servicer.count / 4
        socket.drain.set()
        await asyncio.wait_for(task, 30)
        assert "resume" in servicer.actions(watch_id)
        assert socket.events() == servicer.count + 1
        seqs = [
            int(line[4:])
            for write in socket.writes
            for line in write.decode().split("\n")
            if line.startswith("id: ")
        ]
        assert seqs == list(range(1, servicer.count + 2))  # no gap, no duplicate
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_client_disconnect_stops_the_watch_and_the_call_serves_the_next_stream(firehose):
    servicer, watches = firehose
    socket = Socket()
    socket.drain.clear()
    task, response = await _serve(watches, socket, max_buffered=10)
    watch_id = response.pump.watch.id
    await wait_for(lambda: len(response.pump.frames) >= 10, timeout=20)
    socket.gone.set()  # the browser went away
    socket.drain.set()
    await asyncio.wait_for(task, 10)
    await wait_for(lambda: "stop" in servicer.actions(watch_id), timeout=10)
    assert servicer.sent[watch_id] < servicer.count
    # the next stream goes over the same call
    other = Socket()
    task, _ = await _serve(watches, other, after=servicer.count - 3)
    await asyncio.wait_for(task, 10)
    assert other.events() == 4 and servicer.calls == 1


async def test_missing_run_raises_before_any_response(firehose):
    _, watches = firehose
    with pytest.raises(StatusError) as caught:
        await _serve(watches, Socket(), run_id="missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.to_status().message == "no run"


async def test_without_reattach_a_broken_call_ends_its_streams_with_an_error_and_a_new_call_serves_the_next():
    servicer = FakeRuns(count=50, interval_s=0.01, silent=True)
    server, channel, watches = await serving(servicer, reattach_s=0)
    try:
        sockets = [Socket(), Socket()]
        served = [await _serve(watches, s, run_id=f"r{i}") for i, s in enumerate(sockets)]
        await wait_for(lambda: all(s.events() >= 3 for s in sockets), timeout=20)
        with contextlib.suppress(grpc.aio.AbortError):  # raised here, ends the call there
            await servicer.contexts[0].abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        for (task, _), socket in zip(served, sockets, strict=True):
            await asyncio.wait_for(task, 10)
            assert socket.ended and socket.writes[-1].startswith(b"event: error\ndata: ")
            assert b'"status":"UNAVAILABLE"' in socket.writes[-1]
        fresh = Socket()
        await _serve(watches, fresh, after=45)
        await wait_for(lambda: fresh.events() == 5, timeout=20)
        assert servicer.calls == 2
        fresh.gone.set()
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)


async def test_keepalives_go_out_only_when_the_stream_is_idle():
    servicer = FakeRuns(count=40, interval_s=0.02, silent=True)
    server, channel, watches = await serving(servicer)
    socket = Socket()
    try:
        task, response = await _serve(watches, socket, keepalive_s=0.4, max_buffered=1000)
        # 40 events 20 ms apart (0.8 s in all, twice the keepalive interval): none between
        await wait_for(lambda: socket.events() == 40, timeout=20)
        assert sse.KEEPALIVE not in socket.writes
        # then silence: keepalives, one per interval
        await wait_for(lambda: socket.writes.count(sse.KEEPALIVE) >= 2, timeout=20)
        assert socket.writes[-1] == sse.KEEPALIVE
        socket.gone.set()
        await asyncio.wait_for(task, 10)
        assert response.pump.closed and response.pump._keepalive_timer is None
    finally:
        watches.close()
        await channel.close()
        await server.stop(0)
