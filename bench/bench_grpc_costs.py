"""What one gRPC message and one live gRPC call cost on this machine (grpc.aio + uvloop).

    python -m bench.bench_grpc_costs [--streams 20] [--messages 5000] [--calls 1000]

Every hop of a run's token is a grpc.aio message, and every live run holds grpc.aio calls
(provider → orchestrator, orchestrator → gateway), so these two figures bound what the
chain can do per token and per live run whatever our own code does:

* **CPU per message** — a RunService whose `StreamRun` sends `--messages` small
  `StreamRunResponse`s (a one-word `text_delta`) to each of `--streams` concurrent
  streams, server and client in this one process over 127.0.0.1: CPU seconds (all
  threads, grpc's poller included) per message, both sides together.
* **memory per live call** — `--calls` streaming calls that each got 3 messages and stay
  open: growth of this process's resident memory per call, both sides together.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator

import grpc
import uvloop

from chorus.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Runs(run_service_pb2_grpc.RunServiceServicer):
    """StreamRun: `messages` text deltas, then (when `hold`) stays open until released."""

    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.hold = False
        self.release = asyncio.Event()

    async def StreamRun(
        self, request: run_service_pb2.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[run_service_pb2.StreamRunResponse]:
        response = run_service_pb2.StreamRunResponse(event=run_pb2.RunEvent(run_id="r" * 36))
        response.event.text_delta.text = " tok"
        for seq in range(1, self.messages + 1):
            response.event.seq = seq
            yield response
        if self.hold:
            await self.release.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    runs = _Runs(args.messages)
    server = grpc.aio.server()
    run_service_pb2_grpc.add_RunServiceServicer_to_server(runs, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = run_service_pb2_grpc.RunServiceStub(channel)

    async def drain() -> int:
        return sum([1 async for _ in stub.StreamRun(run_service_pb2.StreamRunRequest())])

    await asyncio.gather(*(drain() for _ in range(args.streams)))  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    received = sum(await asyncio.gather(*(drain() for _ in range(args.streams))))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    runs.messages, runs.hold = 3, True
    got, target, all_in = 0, 0, asyncio.Event()

    async def hold() -> None:
        nonlocal got
        async for _ in stub.StreamRun(run_service_pb2.StreamRunRequest()):
            got += 1
            if got == target:
                all_in.set()

    target = 20 * 3  # warm up: 20 held calls, part of the baseline
    calls = [asyncio.create_task(hold()) for _ in range(20)]
    await all_in.wait()
    gc.collect()
    before = _rss_mb()
    all_in.clear()
    target += args.calls * 3
    calls += [asyncio.create_task(hold()) for _ in range(args.calls)]
    await all_in.wait()  # every call is open and got its messages
    gc.collect()
    grown = _rss_mb() - before
    runs.release.set()
    await asyncio.gather(*calls)
    await channel.close()
    await server.stop(None)
    print(
        json.dumps(
            {
                "streams": args.streams,
                "messages": received,
                "cpu_us_per_message_both_sides": round(cpu / received * 1e6, 1),
                "messages_per_s": round(received / wall),
                "calls": args.calls,
                "kb_per_live_call_both_sides": round(grown * 1024 / args.calls, 1),
            }
        )
    )


if __name__ == "__main__":
    uvloop.run(main())
