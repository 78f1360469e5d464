"""Load client for the benchmarks, run in its own process.

    python -m bench.load_client MODE TARGET CONCURRENCY TOKENS [--repeats R] [--model PROVIDER/MODEL]
        [--tokens-per-second TPS] [--lag] [--lag-timeline FILE] [--ramp-s S]

MODE is where the client attaches:
  openai        POST TARGET (an OpenAI-compatible /v1/chat/completions: the upstream or LiteLLM)
  provider      ProviderService.StreamChat at TARGET (host:port)
  orchestrator  RunService.StreamRun at TARGET (a SINGLE team of one agent, one turn)
  sse           POST TARGET/api/v1/runs/stream on the gateway (SSE)

Every mode asks for TOKENS output tokens per stream and counts tokens as they arrive: a token
is one run of non-space characters with its leading whitespace (the fake upstream's ` tokN`,
the simulator's words), so deltas coalesced into one event count right. Prints one JSON line:
tokens, tokens_per_s, ttft_p50_ms / ttft_p99_ms (time to first token per stream), errors,
events (deltas that carried tokens) and tokens_per_event (> 1: the path merged tokens into
larger deltas, i.e. coalesced), and with --lag the p50/p99 lag of every token behind its
schedule (first token + i / TPS).
With --ramp-s the streams start evenly over S seconds instead of all at once.
With --lag-timeline FILE (implies --lag) every lagged token is also written to FILE as
JSON lines `[receipt_s, lag_ms, stream, shown_ms]` (receipt in seconds since the load
began, lag in ms, the stream's index; in sse mode `shown_ms`, receipt minus the event's
`time` — the orchestrator numbered it then — the part of the lag spent between the
orchestrator's emit and this client: the store before show, the fan-out, the gateway; else
null), then in sse mode one line per stream for its first token, lag null (a token's lag
is `shown_ms - first shown_ms` + how late the orchestrator emitted it), and the result gains `lag_p99_window_s`: where the worst 1 % of
lags were received (min, p50, max, seconds since the load began) and `first_token_last_s`,
when the last stream's first token arrived (the end of the start burst).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import orjson

from chorus.v1 import (
    chat_pb2,
    provider_service_pb2,
    provider_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    team_pb2,
)

MD = (("x-chorus-user", "bench"),)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run_spec(model: chat_pb2.ModelRef, tokens: int, tps: float | None) -> run_pb2.RunSpec:
    agent = team_pb2.AgentSpec(
        name="writer", model=model, max_output_tokens=tokens, system_prompt="Write."
    )
    if tps is not None:
        agent.simulator.tokens_per_second = tps
        agent.simulator.output_tokens = tokens
    return run_pb2.RunSpec(
        team=team_pb2.TeamSpec(kind=team_pb2.TEAM_KIND_SINGLE, agents=[agent]),
        input="Go.",
        max_turns=1,
    )


def http_session(connections: int) -> aiohttp.ClientSession:
    """The HTTP client of every load: up to `connections` connections, 900 s per request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=900),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )


async def stream_openai(
    client: aiohttp.ClientSession, url: str, tokens: int, key: str
) -> AsyncIterator[int]:
    body = {
        "model": "sim",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": tokens,
    }
    async with client.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data:") and b" tok" in line:
                yield line.count(b" tok")


async def stream_sse(
    client: aiohttp.ClientSession,
    url: str,
    spec: run_pb2.RunSpec,
    stamps: list[float] | None = None,
) -> AsyncIterator[int]:
    """The tokens of each text delta of a run streamed over SSE; with `stamps`, each
    delta's event time (the orchestrator's, Unix seconds) is appended to it first."""
    from google.protobuf import json_format

    body = json_format.MessageToDict(spec)
    async with client.post(
        f"{url}/api/v1/runs/stream", json=body, headers={"Accept": "text/event-stream"}
    ) as r:
        r.raise_for_status()
        event = b""
        async for line in r.content:
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:") and event == b"text_delta":
                data = orjson.loads(line[5:])
                if stamps is not None:
                    stamps.append(dt.datetime.fromisoformat(data["time"]).timestamp())
                yield len(data["textDelta"]["text"].split()) or 1
            elif line.startswith(b"data:") and event == b"error":  # the run could not stream
                raise RuntimeError(f"SSE error event: {line[5:].strip().decode()}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["openai", "provider", "orchestrator", "sse"])
    parser.add_argument("target")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("tokens", type=int)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="openai-compatible/sim")
    parser.add_argument("--key", default="sk-none")
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--lag", action="store_true")
    parser.add_argument("--lag-timeline", default=None)
    parser.add_argument("--ramp-s", type=float, default=0.0)
    args = parser.parse_args()
    args.lag = args.lag or args.lag_timeline is not None
    provider, _, model_name = args.model.partition("/")
    model = chat_pb2.ModelRef(provider=provider, model=model_name)
    ttfts: list[float] = []
    lags: list[float] = []
    # (receipt - began, lag, stream, receipt - event time or None), seconds
    timeline: list[tuple[float, float, int, float | None]] = []
    first_tokens: list[float] = []  # each stream's first receipt - began, s
    firsts: list[tuple[float, int, float]] = []  # (receipt - began, stream, shown), s
    total = 0
    events = 0
    errors: list[str] = []
    channel = (
        grpc.aio.insecure_channel(args.target)
        if args.mode in ("provider", "orchestrator")
        else None
    )
    client = http_session(args.concurrency + 10)

    def open_stream(stamps: list[float] | None) -> AsyncIterator[int]:
        if args.mode == "openai":
            return stream_openai(client, args.target, args.tokens, args.key)
        if args.mode == "sse":
            return stream_sse(
                client, args.target, run_spec(model, args.tokens, args.tokens_per_second), stamps
            )
        assert channel is not None
        if args.mode == "provider":
            request = provider_service_pb2.StreamChatRequest(
                model=model,
                messages=[provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="hi")],
                max_output_tokens=args.tokens,
            )
            if args.tokens_per_second is not None:
                request.simulator.tokens_per_second = args.tokens_per_second
                request.simulator.output_tokens = args.tokens
            call = provider_service_pb2_grpc.ProviderServiceStub(channel).StreamChat(
                request, metadata=MD
            )

            async def provider_tokens() -> AsyncIterator[int]:
                async for item in call:
                    if item.HasField("text_delta"):
                        yield len(item.text_delta.text.split()) or 1

            return provider_tokens()
        run_call = run_service_pb2_grpc.RunServiceStub(channel).StreamRun(
            run_service_pb2.StreamRunRequest(
                spec=run_spec(model, args.tokens, args.tokens_per_second)
            ),
            metadata=MD,
        )

        async def run_tokens() -> AsyncIterator[int]:
            async for item in run_call:
                if item.event.HasField("text_delta"):
                    yield max(1, item.event.text_delta.text.count(" tok"))

        return run_tokens()

    began = time.perf_counter()

    async def one(index: int) -> None:
        nonlocal total, events
        if args.ramp_s:
            await asyncio.sleep(index * args.ramp_s / args.concurrency)
        start = time.perf_counter()
        first: float | None = None
        count = 0
        stamps: list[float] | None = [] if args.lag_timeline and args.mode == "sse" else None
        try:
            async for n in open_stream(stamps):
                now = time.perf_counter()
                if first is None:
                    first = now
                    ttfts.append(now - start)
                    first_tokens.append(now - began)
                    if stamps:
                        firsts.append((now - began, index, time.time() - stamps[-1]))
                elif args.lag and args.tokens_per_second:
                    lag = now - (first + count / args.tokens_per_second)
                    lags.append(lag)
                    if args.lag_timeline:
                        shown = time.time() - stamps[-1] if stamps else None
                        timeline.append((now - began, lag, index, shown))
                count += n
                events += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        total += count

    for _ in range(args.repeats):
        await asyncio.gather(*(one(i) for i in range(args.concurrency)))
    elapsed = time.perf_counter() - began
    await client.close()
    if channel is not None:
        await channel.close()
    result = {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "tokens_requested": args.tokens * args.concurrency * args.repeats,
        "tokens": total,
        "tokens_per_s": round(total / elapsed, 1),
        "events": events,
        "tokens_per_event": round(total / events, 2) if events else None,
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p99_ms": round(1000 * percentile(ttfts, 0.99), 3) if ttfts else None,
        "errors": len(errors),
        "first_errors": errors[:3],
        "elapsed_s": round(elapsed, 3),
    }
    if args.lag:
        result["lag_p50_ms"] = round(1000 * statistics.median(lags), 2) if lags else None
        result["lag_p99_ms"] = round(1000 * percentile(lags, 0.99), 2) if lags else None
    if args.lag_timeline and timeline:
        cut = percentile(lags, 0.99)
        worst = sorted(t for t, lag, _, _ in timeline if lag >= cut)
        result["lag_p99_window_s"] = [
            round(worst[0], 2),
            round(statistics.median(worst), 2),
            round(worst[-1], 2),
        ]
        result["first_token_last_s"] = round(max(first_tokens), 2)
        text = "".join(
            f"[{t:.4f}, {1000 * lag:.2f}, {stream}, "
            f"{'null' if shown is None else round(1000 * shown, 2)}]\n"
            for t, lag, stream, shown in timeline
        ) + "".join(
            f"[{t:.4f}, null, {stream}, {1000 * shown:.2f}]\n" for t, stream, shown in firsts
        )
        await asyncio.to_thread(Path(args.lag_timeline).write_text, text)
    print(json.dumps(result))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
