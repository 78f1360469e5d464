"""A RunService that streams pre-serialized run events as fast as gRPC allows.

    python -m bench.gateway_firehose        (logs `listening` with its address)

Used by `bench.bench_gateway` to measure the gateway alone: the orchestrator (autogen, a few
thousand chunks per second per process) would otherwise be the bottleneck. `WatchRun` and
`StreamRun` serve the run named `fh-<count>-<anything>`: `count` text deltas of one word
each, then `run_completed`. Their responses are serialized once at start-up and sent as
bytes (no per-message protobuf work on this side); `after_seq` is honoured. `WatchRuns`
(what the gateway's SSE streams use) serves the same runs — `start` takes the run name
from `spec.input` — in updates of up to `_CHUNK` events, honouring pause, resume, stop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from functools import cache

import grpc

from chorus.v1 import run_pb2, run_service_pb2

_SERVICE = "chorus.v1.RunService"


@cache
def _frames(count: int) -> list[bytes]:
    out = []
    for seq in range(1, count + 1):
        event = run_pb2.RunEvent(run_id=f"fh-{count}", seq=seq, agent="writer")
        event.time.GetCurrentTime()
        event.text_delta.text = f" tok{seq}"
        out.append(run_service_pb2.WatchRunResponse(event=event).SerializeToString())
    end = run_pb2.RunEvent(run_id=f"fh-{count}", seq=count + 1)
    end.time.GetCurrentTime()
    end.run_completed.final_answer = "done"
    out.append(run_service_pb2.WatchRunResponse(event=end).SerializeToString())
    return out


def _count(run_id: str) -> int:
    try:
        return max(1, min(1_000_000, int(run_id.split("-")[1])))
    except (IndexError, ValueError):
        return 100


async def _watch(
    request: run_service_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    frames = _frames(_count(request.run_id))
    for frame in frames[request.after_seq :]:
        yield frame


async def _stream(
    request: run_service_pb2.StreamRunRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    for frame in _frames(_count(request.spec.input or "fh-100")):
        yield frame


_CHUNK = 100
"""Events per update of a WatchRuns watch."""


@cache
def _events(count: int) -> list[run_pb2.RunEvent]:
    return [run_service_pb2.WatchRunResponse.FromString(f).event for f in _frames(count)]


async def _watch_runs(
    requests: AsyncIterator[run_service_pb2.WatchRunsRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
    out: asyncio.Queue[run_service_pb2.WatchRunsResponse.Update] = asyncio.Queue(maxsize=64)
    gates: dict[int, asyncio.Event] = {}
    feeds: dict[int, asyncio.Task[None]] = {}

    async def feed(request: run_service_pb2.WatchRunsRequest) -> None:
        watch_id = request.watch_id
        if request.HasField("start"):
            run_id, after = request.start.input or "fh-100", 0
        else:
            run_id, after = request.watch.run_id, request.watch.after_seq
        events = _events(_count(run_id))[after:]
        for i in range(0, max(len(events), 1), _CHUNK):
            await gates[watch_id].wait()
            update = run_service_pb2.WatchRunsResponse.Update(
                watch_id=watch_id, events=events[i : i + _CHUNK]
            )
            if i + _CHUNK >= len(events):
                update.status.SetInParent()  # OK: the end
            await out.put(update)

    async def read() -> None:
        async for request in requests:
            action, watch_id = request.WhichOneof("action"), request.watch_id
            if action in ("start", "watch"):
                gates[watch_id] = asyncio.Event()
                gates[watch_id].set()
                feeds[watch_id] = asyncio.create_task(feed(request))
            elif action == "pause":
                gates[watch_id].clear()
            elif action == "resume":
                gates[watch_id].set()
            elif action == "stop" and watch_id in feeds:
                feeds.pop(watch_id).cancel()

    reader = asyncio.create_task(read())
    try:
        while True:
            updates = [await out.get()]
            while not out.empty() and len(updates) < 32:
                updates.append(out.get_nowait())
            yield run_service_pb2.WatchRunsResponse(updates=updates)
    finally:
        reader.cancel()
        for task in feeds.values():
            task.cancel()


async def serve() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handlers = {
        "WatchRun": grpc.unary_stream_rpc_method_handler(
            _watch, request_deserializer=run_service_pb2.WatchRunRequest.FromString
        ),
        "StreamRun": grpc.unary_stream_rpc_method_handler(
            _stream, request_deserializer=run_service_pb2.StreamRunRequest.FromString
        ),
        "WatchRuns": grpc.stream_stream_rpc_method_handler(
            _watch_runs,
            request_deserializer=run_service_pb2.WatchRunsRequest.FromString,
            response_serializer=run_service_pb2.WatchRunsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(
        json.dumps({"event": "listening", "address": f"127.0.0.1:{port}"}),
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
