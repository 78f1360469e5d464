"""Load client of the paced capacity benchmark, run in its own process.

    python -m bench.paced_client MODE TARGET STREAMS TOKENS --tps R [--ramp-s S] [--hold-s H]
        [--once] [--repeats K] [--model PROVIDER/MODEL] [--key KEY]

MODE and TARGET as in `bench.load_client` (`openai`: an OpenAI-compatible
`/v1/chat/completions` URL — the paced upstream, the bare relay or LiteLLM; `provider`,
`orchestrator`: host:port; `sse`: the gateway's base URL). The upstream behind every path is
`bench.paced_upstream`, whose token `i` reads ` i@µs` (µs: the wall-clock time it was
scheduled to be emitted).

Closed loop (default): STREAMS slots; slot `k` opens its first stream at `k * S / STREAMS`
s and opens the next one as soon as a stream ends, until `S + H` s have passed; streams
open then run to their end. So STREAMS streams are live from `S` to `S + H` s, and streams
start and end all the time, as runs of real users do. `--once`: each slot runs `--repeats`
streams one after the other and stops (time-to-first-token measurements; `--ramp-s 0`
opens all slots at once).

Per token, lag = receipt time − scheduled emit time (ms). A stream whose deltas were merged
yields one lag per token all the same; `events` counts the deltas that carried tokens, so
`tokens_per_event` > 1 says the path coalesced. Prints one JSON line: streams, tokens
expected / delivered / lost (indices never received, by streams that failed too),
duplicates, events, lag p50 / p99 / max, TTFT p50 / p99 (stream opened → first token), peak
live streams, errors (first 3 kept) and the client's own CPU seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import resource
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import grpc

from bench.load_client import MD, http_session, percentile, run_spec
from chorus.v1 import (
    chat_pb2,
    provider_service_pb2,
    provider_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)

TOKEN = re.compile(rb" (\d+)@(\d+)")
STREAMS_PER_CHANNEL = 100
"""gRPC streams per HTTP/2 connection of the client (one connection per 100 streams)."""


@dataclass
class Tally:
    """What the client saw, over all streams."""

    lags_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    streams: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    events: int = 0
    live: int = 0
    peak_live: int = 0
    errors: list[str] = field(default_factory=list)


Events = AsyncIterator[bytes]
"""Each item: the raw bytes of one delta that may carry tokens (` i@µs` words)."""


async def openai_events(client: aiohttp.ClientSession, url: str, tokens: int, key: str) -> Events:
    body = {
        "model": "sim",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": tokens,
    }
    async with client.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data:") and b"@" in line:
                yield line


async def sse_events(client: aiohttp.ClientSession, url: str, body: dict[str, object]) -> Events:
    async with client.post(
        f"{url}/api/v1/runs/stream", json=body, headers={"Accept": "text/event-stream"}
    ) as r:
        r.raise_for_status()
        event = b""
        async for line in r.content:
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:"):
                if event == b"text_delta":
                    yield line
                elif event == b"error":
                    raise RuntimeError(f"SSE error event: {line[5:].strip().decode()[:150]}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["openai", "provider", "orchestrator", "sse"])
    parser.add_argument("target")
    parser.add_argument("streams", type=int)
    parser.add_argument("tokens", type=int)
    parser.add_argument("--tps", type=float, required=True, help="the upstream's tokens/s")
    parser.add_argument("--ramp-s", type=float, default=5.0)
    parser.add_argument("--hold-s", type=float, default=15.0)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="openai-compatible/sim")
    parser.add_argument("--key", default="sk-none")
    args = parser.parse_args()
    if args.streams < 1 or args.tokens < 1 or args.tps <= 0:
        parser.error("STREAMS and TOKENS must be ≥ 1 and --tps > 0")
    provider, _, model_name = args.model.partition("/")
    model = chat_pb2.ModelRef(provider=provider, model=model_name)
    spec = run_spec(model, args.tokens, None)
    from google.protobuf import json_format

    sse_body = json_format.MessageToDict(spec)
    channels = (
        [
            grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(math.ceil(args.streams / STREAMS_PER_CHANNEL))
        ]
        if args.mode in ("provider", "orchestrator")
        else []
    )
    client = http_session(args.streams + 10)
    tally = Tally()
    stream_timeout = args.tokens / args.tps + 120

    def open_stream(slot: int) -> Events:
        if args.mode == "openai":
            return openai_events(client, args.target, args.tokens, args.key)
        if args.mode == "sse":
            return sse_events(client, args.target, sse_body)
        channel = channels[slot // STREAMS_PER_CHANNEL]
        if args.mode == "provider":
            request = provider_service_pb2.StreamChatRequest(
                model=model,
                messages=[provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="hi")],
                max_output_tokens=args.tokens,
            )
            call = provider_service_pb2_grpc.ProviderServiceStub(channel).StreamChat(
                request, metadata=MD, timeout=stream_timeout
            )

            async def provider_events() -> Events:
                async for item in call:
                    if item.HasField("text_delta"):
                        yield item.text_delta.text.encode()

            return provider_events()
        run_call = run_service_pb2_grpc.RunServiceStub(channel).StreamRun(
            run_service_pb2.StreamRunRequest(spec=spec), metadata=MD, timeout=stream_timeout
        )

        async def run_events() -> Events:
            async for item in run_call:
                if item.event.HasField("text_delta"):
                    yield item.event.text_delta.text.encode()

        return run_events()

    async def one(slot: int) -> None:
        seen = bytearray(args.tokens)
        count = 0
        tally.streams += 1
        tally.expected += args.tokens
        tally.live += 1
        tally.peak_live = max(tally.peak_live, tally.live)
        opened = time.time()
        try:
            async with asyncio.timeout(stream_timeout):
                async for data in open_stream(slot):
                    now = time.time()
                    found = TOKEN.findall(data)
                    if not found:
                        continue
                    tally.events += 1
                    if count == 0:
                        tally.ttfts_ms.append(1000 * (now - opened))
                    for index, micros in found:
                        i = int(index)
                        if i >= args.tokens:
                            continue
                        if seen[i]:
                            tally.duplicates += 1
                            continue
                        seen[i] = 1
                        count += 1
                        tally.lags_ms.append(1000 * now - int(micros) / 1000)
        except Exception as exc:  # a failed stream: its missing tokens count as lost
            tally.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            tally.live -= 1
        tally.delivered += count
        tally.lost += args.tokens - count

    began = time.monotonic()
    cpu_began = time.process_time()

    async def slot_loop(slot: int) -> None:
        await asyncio.sleep(slot * args.ramp_s / args.streams)
        if args.once:
            for _ in range(args.repeats):
                await one(slot)
            return
        while time.monotonic() - began < args.ramp_s + args.hold_s:
            await one(slot)

    await asyncio.gather(*(slot_loop(slot) for slot in range(args.streams)))
    elapsed = time.monotonic() - began
    cpu_s = time.process_time() - cpu_began
    await client.close()
    for channel in channels:
        await channel.close()
    lags = tally.lags_ms
    rnd: Callable[[float], float] = lambda value: round(value, 2)  # noqa: E731
    result = {
        "mode": args.mode,
        "slots": args.streams,
        "streams": tally.streams,
        "peak_live": tally.peak_live,
        "tokens_expected": tally.expected,
        "tokens": tally.delivered,
        "lost": tally.lost,
        "duplicates": tally.duplicates,
        "events": tally.events,
        "tokens_per_event": rnd(tally.delivered / tally.events) if tally.events else None,
        "lag_p50_ms": rnd(statistics.median(lags)) if lags else None,
        "lag_p99_ms": rnd(percentile(lags, 0.99)) if lags else None,
        "lag_max_ms": rnd(max(lags)) if lags else None,
        "ttft_p50_ms": rnd(statistics.median(tally.ttfts_ms)) if tally.ttfts_ms else None,
        "ttft_p99_ms": rnd(percentile(tally.ttfts_ms, 0.99)) if tally.ttfts_ms else None,
        "errors": len(tally.errors),
        "first_errors": tally.errors[:3],
        "elapsed_s": round(elapsed, 2),
        "client_cpu_s": round(cpu_s, 3),
        "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
