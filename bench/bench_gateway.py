"""The gateway's SSE path: events/s one gateway process delivers, and what it adds to TTFT.

    python -m bench.bench_gateway [--clients 100] [--events 2000] [--ttft-runs 100] [--quick]

Two measurements, each client in this process (a lean asyncio HTTP/1.1 client that decodes
chunked bodies and counts SSE frames, so the client costs little CPU):

1. **SSE delivery** — one `python -m chorus.gateway` in front of `bench.gateway_firehose`, a
   RunService that streams pre-serialized events as fast as gRPC allows (the real
   orchestrator would be the bottleneck). 1 and `--clients` concurrent clients each watch
   their own run of `--events` events (`GET /api/v1/runs/{id}/events`). Reported: events/s
   in total, the gateway's CPU per event (from /proc), events per body write (from its
   /metrics), and the same firehose read directly over gRPC by the same number of streams
   (the ceiling the gateway translates from). Then the SSE response machinery alone
   (encoding included, no socket, no gRPC): ours against sse-starlette's
   `EventSourceResponse` fed the same events — why the gateway has its own response; and
   its CPU per event when 500 streams each get an event every 20 ms (the writer waits for
   every event, as in the slow-streams scenario).
2. **TTFT** — the real stack (provider simulator `sim-fast`, history on the embedded
   default, orchestrator, gateway), each its own process. A one-agent run of 20
   tokens is started `--ttft-runs` times, alternately with gRPC `StreamRun` at the
   orchestrator and with `POST /api/v1/runs/stream` at the gateway; time from sending the
   request to the first `text_delta`, p50 / p99, sequentially and 20 at a time.

Results: a table on stdout and `bench/results/gateway-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import orjson

from chorus.core.testing import ServiceProcess
from chorus.v1 import chat_pb2, run_pb2, run_service_pb2, run_service_pb2_grpc, team_pb2

RESULTS = Path(__file__).resolve().parent / "results"
MD = (("x-chorus-user", "bench"),)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank q-quantile (0..1); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- a lean SSE client ---------------------------------------------------------------


async def sse_request(
    base: str, method: str, path: str, body: bytes | None = None
) -> tuple[int, float | None, float]:
    """One SSE request over a raw socket.

    Returns:
        (events received, seconds to the first `text_delta` frame or None, total seconds).
    """
    url = urlsplit(base)
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(url.hostname, url.port, limit=1 << 20)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body or b'')}\r\n\r\n"
    ).encode()
    writer.write(head + (body or b""))
    status_line = await reader.readuntil(b"\r\n")
    if b" 200 " not in status_line:
        raise RuntimeError(f"{path}: {status_line.decode().strip()}")
    chunked = False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    events = 0
    first: float | None = None
    try:
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                chunk = await reader.readexactly(size + 2)
            else:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
            # The gateway writes whole frames per chunk, so counting within a chunk is exact.
            events += chunk.count(b"\nid: ")
            if first is None and b"event: text_delta" in chunk:
                first = time.perf_counter() - start
    finally:
        writer.close()
    return events, first, time.perf_counter() - start


# --- 1. SSE delivery -----------------------------------------------------------------


async def _scrape(base: str, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def sse_delivery(base: str, gateway_pid: int, clients: int, events: int) -> dict[str, Any]:
    """`clients` concurrent watchers of their own `events`-event run."""
    writes0 = await _scrape(base, "chorus_gateway_sse_writes_total")
    sent0 = await _scrape(base, "chorus_gateway_sse_events_total")
    cpu0 = cpu_seconds(gateway_pid)
    began = time.perf_counter()
    results = await asyncio.gather(
        *(sse_request(base, "GET", f"/api/v1/runs/fh-{events}-{i}/events") for i in range(clients))
    )
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(gateway_pid) - cpu0
    writes = await _scrape(base, "chorus_gateway_sse_writes_total") - writes0
    sent = await _scrape(base, "chorus_gateway_sse_events_total") - sent0
    received = sum(r[0] for r in results)
    return {
        "clients": clients,
        "events_per_client": events + 1,
        "events": received,
        "complete": received == clients * (events + 1),
        "seconds": round(elapsed, 3),
        "events_per_s": round(received / elapsed),
        "gateway_cpu_us_per_event": round(cpu / max(received, 1) * 1e6, 1),
        "events_per_write": round(sent / max(writes, 1), 1),
    }


async def grpc_ceiling(address: str, clients: int, events: int) -> dict[str, Any]:
    """The same firehose read directly over gRPC by `clients` streams."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)

        async def one(i: int) -> int:
            n = 0
            call = stub.WatchRun(
                run_service_pb2.WatchRunRequest(run_id=f"fh-{events}-{i}"), metadata=MD
            )
            async for _ in call:
                n += 1
            return n

        began = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(clients)))
        elapsed = time.perf_counter() - began
    return {"clients": clients, "events": sum(counts), "events_per_s": round(sum(counts) / elapsed)}


# --- 1b. the SSE response machinery alone: ours vs sse-starlette --------------------


class _ListWatches:
    """A `RunWatches` whose every watch delivers prepared events, one per delivery (as
    they arrive from the orchestrator when streams are slow), `interval_s` apart; no
    network, no gRPC. Pauses are honoured."""

    def __init__(self, events: list[Any], interval_s: float = 0.0) -> None:
        self.events = events
        self.interval_s = interval_s

    def open(self, sink: Any, **_: Any) -> Any:
        watch = _ListWatch()
        watch.task = asyncio.create_task(self._feed(sink, watch))
        return watch

    async def _feed(self, sink: Any, watch: _ListWatch) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, event in enumerate(self.events, 1):
            if watch.paused:
                await watch.resumed.wait()
            sink.deliver((event,))
            if self.interval_s:
                await asyncio.sleep(max(0.0, start + i * self.interval_s - loop.time()))
            elif i % 64 == 0:
                await asyncio.sleep(0)  # let the writer run, as network reads would
        sink.end(None)


class _ListWatch:
    def __init__(self) -> None:
        self.paused = False
        self.resumed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def pause(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume(self) -> None:
        self.paused = False
        self.resumed.set()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def _drive(response: Any) -> tuple[int, int]:
    """Run an ASGI response with a send that only counts; (writes, bytes)."""
    writes = 0
    size = 0
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal writes, size
        if message["type"] == "http.response.body":
            writes += 1
            size += len(message.get("body", b""))

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET", "path": "/"}
    await response(scope, receive, send)
    return writes, size


def _text_deltas(events: int) -> list[Any]:
    """`events` RunEvents of one-word text deltas, seq 1…events, timestamped now."""
    items = []
    for seq in range(1, events + 1):
        event = run_pb2.RunEvent(run_id="r", seq=seq, agent="writer")
        event.time.GetCurrentTime()
        event.text_delta.text = f" tok{seq}"
        items.append(event)
    return items


async def response_machinery(events: int) -> dict[str, Any]:
    """Events/s through each SSE response class, encoding included, without any socket."""
    from sse_starlette.sse import EventSourceResponse

    from chorus.gateway import protojson, sse

    items = _text_deltas(events)
    out: dict[str, Any] = {"events": events}

    began = time.perf_counter()
    ours = await sse.open_event_stream(
        _ListWatches(items),  # type: ignore[arg-type]
        user="bench",
        run_id="r",
        first_event_wait_s=1,
        keepalive_s=15,
        max_buffered=4096,
    )
    writes, _ = await _drive(ours)
    elapsed = time.perf_counter() - began
    out["chorus_events_per_s"] = round(events / elapsed)
    out["chorus_writes"] = writes

    async def frames() -> Any:
        for ev in items:
            yield {
                "event": ev.WhichOneof("payload"),
                "id": str(ev.seq),
                "data": protojson.event_json(ev).decode(),
            }

    began = time.perf_counter()
    writes, _ = await _drive(EventSourceResponse(frames(), ping=15))
    elapsed = time.perf_counter() - began
    out["sse_starlette_events_per_s"] = round(events / elapsed)
    out["sse_starlette_writes"] = writes
    return out


async def paced_machinery(streams: int, events: int, interval_s: float) -> dict[str, Any]:
    """CPU µs per event of our SSE response when `streams` streams each get `events` events
    `interval_s` apart: every event finds the writer waiting (the slow-streams case). The
    pacing's own sleeps are included, the same for any version of the response."""
    from chorus.gateway import sse

    async def one() -> None:
        response = await sse.open_event_stream(
            _ListWatches(_text_deltas(events), interval_s),  # type: ignore[arg-type]
            user="bench",
            run_id="r",
            first_event_wait_s=1,
            keepalive_s=15,
            max_buffered=4096,
        )
        await _drive(response)

    cpu = time.process_time()
    await asyncio.gather(*(one() for _ in range(streams)))
    cpu = time.process_time() - cpu
    return {
        "streams": streams,
        "events_per_stream": events,
        "interval_ms": interval_s * 1000,
        "cpu_us_per_event": round(cpu / (streams * events) * 1e6, 1),
    }


# --- 2. TTFT -------------------------------------------------------------------------


def one_agent_spec(tokens: int) -> run_pb2.RunSpec:
    agent = team_pb2.AgentSpec(
        name="writer",
        model=chat_pb2.ModelRef(provider="simulator", model="sim-fast"),
        system_prompt="Write.",
    )
    agent.simulator.output_tokens = tokens
    return run_pb2.RunSpec(
        team=team_pb2.TeamSpec(kind=team_pb2.TEAM_KIND_SINGLE, agents=[agent]),
        input="Go.",
        max_turns=1,
    )


async def ttft_grpc(stub: run_service_pb2_grpc.RunServiceStub, spec: run_pb2.RunSpec) -> float:
    start = time.perf_counter()
    first = float("nan")
    async for item in stub.StreamRun(run_service_pb2.StreamRunRequest(spec=spec), metadata=MD):
        if item.event.HasField("text_delta") and first != first:
            first = time.perf_counter() - start
    return first


async def ttft_sse(base: str, spec: run_pb2.RunSpec) -> float:
    from google.protobuf import json_format

    body = orjson.dumps(json_format.MessageToDict(spec))
    _, first, _ = await sse_request(base, "POST", "/api/v1/runs/stream", body)
    return first if first is not None else float("nan")


async def ttft(orchestrator: str, gateway: str, runs: int, concurrency: int) -> dict[str, Any]:
    spec = one_agent_spec(20)
    grpc_ms: list[float] = []
    sse_ms: list[float] = []
    async with grpc.aio.insecure_channel(orchestrator) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        for _ in range(3):  # warm up both paths
            await ttft_grpc(stub, spec)
            await ttft_sse(gateway, spec)
        for _ in range(max(1, runs // concurrency)):
            g = await asyncio.gather(*(ttft_grpc(stub, spec) for _ in range(concurrency)))
            s = await asyncio.gather(*(ttft_sse(gateway, spec) for _ in range(concurrency)))
            grpc_ms += [v * 1000 for v in g]
            sse_ms += [v * 1000 for v in s]

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(values, 0.5), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "mean_ms": round(statistics.fmean(values), 2),
        }

    out = {"concurrency": concurrency, "runs": len(sse_ms)}
    out["orchestrator_grpc"] = summary(grpc_ms)
    out["gateway_sse"] = summary(sse_ms)
    out["added_p50_ms"] = round(
        out["gateway_sse"]["p50_ms"] - out["orchestrator_grpc"]["p50_ms"], 2
    )
    return out


# --- main ----------------------------------------------------------------------------


# INFO, not WARNING: the `listening` line that ServiceProcess waits for is an INFO line.
SERVICE_ENV = {"CHORUS_DEV_MODE": "true", "CHORUS_LOG_LEVEL": "INFO"}


def start_gateway(env: dict[str, str]) -> tuple[ServiceProcess, str]:
    proc = ServiceProcess(
        "chorus.gateway",
        env={
            **SERVICE_ENV,
            "CHORUS_GATEWAY_PORT": "0",
            "CHORUS_AUTH_MODE": "none",
            "CHORUS_RATE_LIMIT_RUNS": "",
            "CHORUS_RATE_LIMIT_MESSAGES": "",
            **env,
        },
    )
    return proc, proc.wait_ready(60)


def start_stack(stack: ExitStack, data_dir: str) -> tuple[str, str]:
    """provider, history (embedded), orchestrator and gateway; (orchestrator, gateway URL)."""
    env = {
        **SERVICE_ENV,
        "CHORUS_DATA_DIR": data_dir,
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
    }
    provider = ServiceProcess("chorus.provider", env={**env, "CHORUS_PROVIDER_PORT": "0"})
    stack.callback(provider.stop)
    history = ServiceProcess("chorus.history", env={**env, "CHORUS_HISTORY_PORT": "0"})
    stack.callback(history.stop)
    wiring = {
        "CHORUS_PROVIDER_ADDRESS": provider.wait_ready(60),
        "CHORUS_HISTORY_ADDRESS": history.wait_ready(60),
    }
    orchestrator = ServiceProcess(
        "chorus.orchestrator", env={**env, **wiring, "CHORUS_ORCHESTRATOR_PORT": "0"}
    )
    stack.callback(orchestrator.stop)
    address = orchestrator.wait_ready(60)
    gateway, url = start_gateway({**env, **wiring, "CHORUS_ORCHESTRATOR_ADDRESS": address})
    stack.callback(gateway.stop)
    return address, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--ttft-runs", type=int, default=100)
    parser.add_argument(
        "--flush-interval", default=None, help="CHORUS_SSE_FLUSH_INTERVAL_S of the gateway"
    )
    parser.add_argument("--skip-ttft", action="store_true", help="only the SSE delivery part")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.events, args.ttft_runs = 20, 300, 20
    out: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
    }
    with ExitStack() as stack:
        firehose = ServiceProcess("bench.gateway_firehose")
        stack.callback(firehose.stop)
        firehose_address = firehose.wait_ready(30)
        gateway, base = start_gateway(
            {
                "CHORUS_ORCHESTRATOR_ADDRESS": firehose_address,
                "CHORUS_SSE_MAX_BUFFERED_EVENTS": "4096",
                **(
                    {"CHORUS_SSE_FLUSH_INTERVAL_S": args.flush_interval}
                    if args.flush_interval is not None
                    else {}
                ),
            }
        )
        stack.callback(gateway.stop)
        asyncio.run(sse_request(base, "GET", "/api/v1/runs/fh-500-warmup/events"))
        out["sse_delivery"] = []
        for clients, events in ((1, args.events * 10), (args.clients, args.events)):
            row = asyncio.run(sse_delivery(base, gateway.proc.pid, clients, events))
            row["grpc_direct_events_per_s"] = asyncio.run(
                grpc_ceiling(firehose_address, clients, events)
            )["events_per_s"]
            out["sse_delivery"].append(row)
            print(
                f"SSE delivery, {clients:>3} clients × {row['events_per_client']} events: "
                f"{row['events_per_s']:>7} events/s (gRPC direct {row['grpc_direct_events_per_s']}), "
                f"gateway {row['gateway_cpu_us_per_event']} µs CPU/event, "
                f"{row['events_per_write']} events/write, complete={row['complete']}",
                flush=True,
            )
        gateway.stop()
        firehose.stop()

        machinery = asyncio.run(response_machinery(20_000 if args.quick else 200_000))
        out["response_machinery"] = machinery
        print(
            f"SSE response alone ({machinery['events']} events, no socket): ours "
            f"{machinery['chorus_events_per_s']} events/s in {machinery['chorus_writes']} writes; "
            f"sse-starlette {machinery['sse_starlette_events_per_s']} events/s in "
            f"{machinery['sse_starlette_writes']} writes",
            flush=True,
        )

        paced = asyncio.run(paced_machinery(500, 20 if args.quick else 50, 0.02))
        out["paced_machinery"] = paced
        print(
            f"SSE response alone, {paced['streams']} streams × {paced['events_per_stream']} "
            f"events {paced['interval_ms']:.0f} ms apart: {paced['cpu_us_per_event']} µs CPU/event",
            flush=True,
        )

        out["ttft"] = []
        data = stack.enter_context(tempfile.TemporaryDirectory())
        orchestrator, gateway_url = ("", "") if args.skip_ttft else start_stack(stack, data)
        for concurrency in () if args.skip_ttft else (1, 20):
            row = asyncio.run(ttft(orchestrator, gateway_url, args.ttft_runs, concurrency))
            out["ttft"].append(row)
            print(
                f"TTFT, {concurrency:>2} at a time, {row['runs']} runs: orchestrator gRPC "
                f"p50 {row['orchestrator_grpc']['p50_ms']} / p99 {row['orchestrator_grpc']['p99_ms']} ms; "
                f"gateway SSE p50 {row['gateway_sse']['p50_ms']} / p99 {row['gateway_sse']['p99_ms']} ms "
                f"(+{row['added_p50_ms']} ms at p50)",
                flush=True,
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"gateway-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {target}")


if __name__ == "__main__":
    main()
