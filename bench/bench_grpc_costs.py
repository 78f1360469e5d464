"""What one gRPC message and one live gRPC call cost on this machine (grpc.aio + uvloop).

    python -m bench.bench_grpc_costs [--streams 20] [--messages 5000] [--calls 1000]
    python -m bench.bench_grpc_costs --paced [--streams 100] [--tps 20] [--seconds 10]
        [--rounds 3] [--ticks 0,0.005]

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

`--paced`: one multiplexed hop at LLM pace — a ProviderService.StreamChats server built on
`chorus.core.multiplex.MultiplexServer` whose `--streams` producers each put one text delta
every 1/`--tps` s (phases spread evenly), and a `MultiplexClient` with a response window
of 1 (as the orchestrator reads StreamChats), in this one process over 127.0.0.1, for
`--seconds`; once per tick in `--ticks` (the sender's least time between responses; 0: a
response whenever the sender runs), alternated, `--rounds` times. Per tick, medians:
CPU µs per item (both sides), responses and acknowledgements per item, lag p50 / p99
(scheduled put → delivered to the sink). Prints one JSON line per round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import uvloop

from chorus.core.multiplex import MultiplexClient, MultiplexServer, Outbox, Update
from chorus.v1 import (
    provider_service_pb2,
    provider_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

_Chat = provider_service_pb2.StreamChatResponse
_Chats = provider_service_pb2.StreamChatsResponse
_ChatsRequest = provider_service_pb2.StreamChatsRequest


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


class _PacedChats(provider_service_pb2_grpc.ProviderServiceServicer):
    """StreamChats: each opened stream puts a text delta (its scheduled time as text) every
    `1 / tps` s from `phase`, until the call ends; counts acknowledgements."""

    def __init__(self, tps: float, tick_s: float) -> None:
        self.period = 1 / tps
        self.tick_s = tick_s
        self.acks = 0

    async def StreamChats(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_Chats]:
        def build(updates: list[Update]) -> _Chats:
            return _Chats(updates=[_Chats.Update(stream_id=k, events=e) for k, e, _ in updates])

        mux: MultiplexServer[_Chat, _Chats] = MultiplexServer(build, tick_s=self.tick_s)
        loop = asyncio.get_running_loop()

        def handle(request: _ChatsRequest) -> None:
            if request.acknowledged:
                self.acks += 1
            if mux.flow(request.response_window, request.acknowledged):
                return
            phase = float(request.user)

            async def produce(outbox: Outbox[_Chat]) -> None:
                due = loop.time() + phase
                while True:
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    event = _Chat()
                    event.text_delta.text = repr(due)
                    await outbox.put(event)
                    due += self.period

            mux.open(request.stream_id, produce)

        async for response in mux.serve(request_iterator, handle):
            yield response


def _opening(key: int, *, phase: float) -> _ChatsRequest:
    return _ChatsRequest(stream_id=key, user=repr(phase))  # the phase rides in `user`


class _LagSink:
    def __init__(self, lags: list[float], loop: asyncio.AbstractEventLoop) -> None:
        self.lags = lags
        self.loop = loop

    def deliver(self, items: Sequence[Any]) -> None:
        now = self.loop.time()
        self.lags.extend(now - float(item.text_delta.text) for item in items)

    def end(self, error: BaseException | None) -> None:
        pass


async def paced_round(streams: int, tps: float, seconds: float, tick_s: float) -> dict[str, Any]:
    """One paced multiplexed hop (see the module docstring); returns its figures."""
    chats = _PacedChats(tps, tick_s)
    server = grpc.aio.server()
    provider_service_pb2_grpc.add_ProviderServiceServicer_to_server(chats, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
    responses = 0

    def unpack(response: _Chats) -> list[Update]:
        nonlocal responses
        responses += 1
        return [(u.stream_id, u.events, None) for u in response.updates]

    client: MultiplexClient[_ChatsRequest] = MultiplexClient(
        lambda requests: stub.StreamChats(requests),
        unpack,
        "StreamChats",
        flow=lambda w, a: _ChatsRequest(response_window=w, acknowledged=a),
        window=1,
    )
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    sink = _LagSink(lags, loop)
    for n in range(streams):  # phases spread evenly over one period
        client.open(sink, functools.partial(_opening, phase=n / streams / tps))
    await asyncio.sleep(1.0)  # warm up
    lags.clear()
    responses, chats.acks = 0, 0
    cpu = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu
    items, acks, got = len(lags), chats.acks, sorted(lags) or [float("nan")]
    items = items or 1  # nothing delivered: the figures show it (nan lag)
    client.close()
    await channel.close()
    await server.stop(None)
    return {
        "tick_ms": tick_s * 1000,
        "items": items,
        "cpu_us_per_item_both_sides": round(cpu / items * 1e6, 1),
        "responses_per_item": round(responses / items, 3),
        "acks_per_item": round(acks / items, 3),
        "lag_p50_ms": round(got[len(got) // 2] * 1000, 2),
        "lag_p99_ms": round(got[int(len(got) * 0.99)] * 1000, 2),
    }


async def paced(args: argparse.Namespace) -> None:
    ticks = [float(t) for t in args.ticks.split(",")]
    results: dict[float, list[dict[str, Any]]] = {t: [] for t in ticks}
    for _ in range(args.rounds):
        for tick in ticks:
            result = await paced_round(args.streams, args.tps, args.seconds, tick)
            results[tick].append(result)
            print(json.dumps(result), flush=True)
    for tick, rows in results.items():
        medians = {
            key: statistics.median(row[key] for row in rows) for key in rows[0] if key != "tick_ms"
        }
        print(json.dumps({"median_of_rounds": len(rows), "tick_ms": tick * 1000, **medians}))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=None)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--paced", action="store_true")
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ticks", default="0,0.005")
    args = parser.parse_args()
    if args.paced:
        args.streams = args.streams or 100
        await paced(args)
        return
    args.streams = args.streams or 20
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
