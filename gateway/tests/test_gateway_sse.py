"""The SSE writer against a real gRPC stream, with a socket the test controls: several
events per write while the client does not drain, bounded buffering, and the upstream call
cancelled when the client leaves.

The HTTP side is the ASGI interface itself (`send` / `receive`), so the test decides when
the "socket" drains; the gRPC side is a real grpc.aio server on port 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chorus.core.server import GrpcServer, ServiceBinding
from chorus.core.settings import CoreSettings
from chorus.core.testing import wait_for
from chorus.gateway import sse
from chorus.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc


class FirehoseRuns(run_service_pb2_grpc.RunServiceServicer):
    """WatchRun streams `count` text deltas then `run_completed`, as fast as it can; a run
    named `missing` is NOT_FOUND; it records when a stream is cancelled."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.cancelled = asyncio.Event()

    async def WatchRun(
        self, request: run_service_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[run_service_pb2.WatchRunResponse]:
        if request.run_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "run missing not found")
        try:
            for seq in range(request.after_seq + 1, self.count + 1):
                event = run_pb2.RunEvent(run_id=request.run_id, seq=seq, agent="Ada")
                event.text_delta.text = f"token {seq} "
                self.sent = seq
                yield run_service_pb2.WatchRunResponse(event=event)
            end = run_pb2.RunEvent(run_id=request.run_id, seq=self.count + 1)
            end.run_completed.final_answer = "done"
            yield run_service_pb2.WatchRunResponse(event=end)
        except BaseException:
            self.cancelled.set()
            raise


@pytest.fixture
async def firehose() -> AsyncIterator[tuple[FirehoseRuns, run_service_pb2_grpc.RunServiceStub]]:
    servicer = FirehoseRuns(count=2000)
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
    try:
        yield servicer, run_service_pb2_grpc.RunServiceStub(channel)
    finally:
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

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            return
        await self.drain.wait()
        self.writes.append(message.get("body", b""))
        self.ended = not message.get("more_body", False)

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def events(self) -> int:
        return sum(w.count(b"\nid: ") for w in self.writes)


async def _serve(stub: run_service_pb2_grpc.RunServiceStub, socket: Socket, **kw: Any) -> Any:
    response = await sse.open_event_stream(
        stub.WatchRun(run_service_pb2.WatchRunRequest(run_id="r1", after_seq=kw.get("after", 0))),
        first_event_wait_s=2,
        keepalive_s=15,
        max_buffered=kw.get("max_buffered", 100_000),
        flush_interval_s=kw.get("flush_interval_s", 0.0),
    )
    return asyncio.create_task(response({"type": "http"}, socket.receive, socket.send)), response


async def test_events_are_batched_while_the_client_does_not_drain(firehose):
    servicer, stub = firehose
    socket = Socket()
    socket.drain.clear()  # the first write blocks: the socket is "full"
    task, response = await _serve(stub, socket)
    await wait_for(lambda: response.pump.finished, timeout=20)  # all read, nothing written
    socket.drain.set()
    await asyncio.wait_for(task, 20)
    assert socket.status == 200 and socket.ended
    assert socket.events() == servicer.count + 1
    assert len(socket.writes) <= 6, f"{len(socket.writes)} writes for {socket.events()} events"


async def test_a_fast_stream_is_flushed_at_most_once_per_interval(firehose):
    servicer, stub = firehose
    socket = Socket()
    task, _ = await _serve(stub, socket, flush_interval_s=0.2)
    await asyncio.wait_for(task, 20)
    assert socket.events() == servicer.count + 1
    assert len(socket.writes) < servicer.count / 20, f"{len(socket.writes)} writes"


async def test_the_first_events_of_a_stream_are_never_held_back(firehose):
    servicer, stub = firehose
    socket = Socket()
    # 5 deltas and the end, with writes paced at one per 10 s after the burst allowance.
    task, _ = await _serve(stub, socket, flush_interval_s=10.0, after=servicer.count - 5)
    await asyncio.wait_for(task, 5)  # not 10 s: nothing waited for the pacing
    assert socket.events() == 6


async def test_buffering_is_bounded_and_pushes_back_on_the_grpc_stream(firehose):
    servicer, stub = firehose
    socket = Socket()
    socket.drain.clear()
    task, response = await _serve(stub, socket, max_buffered=50)
    await wait_for(lambda: len(response.pump.frames) >= 50, timeout=20)
    buffered = len(response.pump.frames)
    assert buffered == 50, "the reader stops at the bound"
    socket.drain.set()
    await asyncio.wait_for(task, 20)
    assert socket.events() == servicer.count + 1


async def test_client_disconnect_cancels_the_upstream_call(firehose):
    servicer, stub = firehose
    socket = Socket()
    socket.drain.clear()
    task, response = await _serve(stub, socket, max_buffered=10)
    await wait_for(lambda: len(response.pump.frames) >= 10, timeout=20)
    socket.gone.set()  # the browser went away
    socket.drain.set()
    await asyncio.wait_for(servicer.cancelled.wait(), 10)
    await asyncio.wait_for(task, 10)
    assert servicer.sent < servicer.count
    assert response.pump.task.done()


async def test_missing_run_raises_before_any_response(firehose):
    _, stub = firehose
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sse.open_event_stream(
            stub.WatchRun(run_service_pb2.WatchRunRequest(run_id="missing")),
            first_event_wait_s=2,
            keepalive_s=15,
            max_buffered=10,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class PacedRuns(run_service_pb2_grpc.RunServiceServicer):
    """WatchRun sends `count` text deltas `interval_s` apart, then stays open and silent."""

    def __init__(self, count: int, interval_s: float) -> None:
        self.count = count
        self.interval_s = interval_s
        self.sent = 0

    async def WatchRun(
        self, request: run_service_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[run_service_pb2.WatchRunResponse]:
        for seq in range(1, self.count + 1):
            event = run_pb2.RunEvent(run_id=request.run_id, seq=seq)
            event.text_delta.text = f"token {seq} "
            self.sent = seq
            yield run_service_pb2.WatchRunResponse(event=event)
            await asyncio.sleep(self.interval_s)  # the pace of a slow model
        await asyncio.Event().wait()


async def test_keepalives_go_out_only_when_the_stream_is_idle():
    servicer = PacedRuns(count=40, interval_s=0.02)
    binding = ServiceBinding(
        "chorus.v1.RunService", servicer, run_service_pb2_grpc.add_RunServiceServicer_to_server
    )
    server = GrpcServer([binding], CoreSettings(dev_mode=True, instance_id="test"), 0)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    socket = Socket()
    try:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        response = await sse.open_event_stream(
            stub.WatchRun(run_service_pb2.WatchRunRequest(run_id="r1")),
            first_event_wait_s=2,
            keepalive_s=0.4,
            max_buffered=1000,
        )
        task = asyncio.create_task(response({"type": "http"}, socket.receive, socket.send))
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
        await channel.close()
        await server.stop(0)
