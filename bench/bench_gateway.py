"""The gateway's SSE path: events/s one gateway process delivers, and what it adds to TTFT.

    python -m bench.bench_gateway [--clients 100] [--events 2000] [--ttft-runs 100] [--quick]
    python -m bench.bench_gateway --paced [--baseline-tree DIR] [--rounds 3] [--nice -10]
        [--paced-streams 100] [--paced-tokens 200] [--paced-window 6] [--paced-starts 200]

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

`--paced` measures only the gateway's CPU at LLM pace (issue 19), as process CPU time from
/proc: one `python -m chorus.gateway` in front of `PacedOrchestrator` (a WatchRuns served by
the orchestrator's own multiplexer, in this process: `run_started`, one-word `text_delta`s at
20 tokens/s, `run_completed`; no store, no model). Per round: `--paced-streams` SSE runs of
`--paced-tokens` tokens started over 2 s (`POST /api/v1/runs/stream`), CPU per delivered token
over `--paced-window` s in the middle of them (with tokens per body write: > 1 means the
gateway fell behind and batched, which makes a token cheaper — compare rounds that agree);
then CPU per run start over 2 × `--paced-starts` concurrent one-token SSE runs. With
`--baseline-tree` (a checkout, e.g. a git worktree of an earlier commit) its gateway runs too
(its `src` directories in front of `PYTHONPATH`), alternated round by round; medians and the
ratio are printed. Rate limits stay on (at 1,000,000/minute).
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


# --- 1c. the gateway at LLM pace: CPU per token and per run start, against a tree -----


class PacedOrchestrator:
    """A RunService whose WatchRuns serves runs at LLM pace over the orchestrator's own
    multiplexer (`chorus.core.multiplex.MultiplexServer`, 5 ms ticks), in this process: a
    started run is `run_started`, `tokens` one-word `text_delta` events `1 / tps` s apart,
    then `run_completed`; a watch resumes after `after_seq`. `spec.input` "tokens=N"
    overrides `tokens` for that run. No store, no model: only the gateway works."""

    def __init__(self, tokens: int, tps: float) -> None:
        self.tokens = tokens
        self.tps = tps
        self.server: grpc.aio.Server | None = None

    async def start(self) -> str:
        """Serve on 127.0.0.1:0; returns `host:port`."""
        server = self.server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self._watch_runs,
            request_deserializer=run_service_pb2.WatchRunsRequest.FromString,
            response_serializer=run_service_pb2.WatchRunsResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("chorus.v1.RunService", {"WatchRuns": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def _watch_runs(self, requests: Any, context: Any) -> Any:
        from chorus.core.multiplex import MultiplexServer

        update = run_service_pb2.WatchRunsResponse.Update

        def build(updates: list[Any]) -> run_service_pb2.WatchRunsResponse:
            return run_service_pb2.WatchRunsResponse(
                updates=[update(watch_id=k, events=e, status=s) for k, e, s in updates]
            )

        mux: MultiplexServer[run_pb2.RunEvent, run_service_pb2.WatchRunsResponse]
        mux = MultiplexServer(build, buffer_items=256, max_items=4096)

        def handle(request: run_service_pb2.WatchRunsRequest) -> None:
            action = request.WhichOneof("action")
            if mux.flow(request.response_window, request.acknowledged) and not action:
                return
            key = request.watch_id
            if action == "stop":
                mux.stop(key)
            elif action == "pause":
                mux.pause(key)
            elif action == "resume":
                mux.resume(key)
            elif action == "start":
                text = request.start.input
                tokens = int(text[7:]) if text.startswith("tokens=") else self.tokens
                run_id = f"run-{key:08d}-0000-4000-8000-{os.urandom(6).hex()}"
                mux.open(key, lambda out: self._run(out, run_id, tokens, 0))
            elif action == "watch":
                run_id = request.watch.run_id
                mux.open(
                    key, lambda out: self._run(out, run_id, self.tokens, request.watch.after_seq)
                )

        async for response in mux.serve(requests, handle):
            yield response

    async def _run(self, out: Any, run_id: str, tokens: int, after: int) -> None:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for seq in range(after + 1, tokens + 3):
            event = run_pb2.RunEvent(run_id=run_id, seq=seq)
            event.time.GetCurrentTime()
            if seq == 1:
                event.run_started.SetInParent()
            elif seq == tokens + 2:
                event.run_completed.final_answer = "done"
            else:
                event.agent = "writer"
                event.text_delta.text = f" tok{seq}"
                await asyncio.sleep(max(0.0, begin + (seq - 1) / self.tps - loop.time()))
            await out.put(event)


class _Tally:
    events = 0


async def _paced_stream(base: str, body: bytes, tally: _Tally) -> int:
    """One `POST /api/v1/runs/stream` read to its end; counts frames into `tally`."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        (
            f"POST /api/v1/runs/stream HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Accept: text/event-stream\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    events = 0
    try:
        status = await reader.readuntil(b"\r\n")
        if b" 200 " not in status:
            raise RuntimeError(status.decode().strip())
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        while True:  # chunked
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                break
            n = (await reader.readexactly(size + 2)).count(b"\nid: ")
            events += n
            tally.events += n
    finally:
        writer.close()
    return events


def _start_body(tokens: int | None = None) -> bytes:
    spec = one_agent_spec(1)
    if tokens is not None:
        spec.input = f"tokens={tokens}"
    from google.protobuf import json_format

    return orjson.dumps(json_format.MessageToDict(spec))


def paced_gateway_env(address: str, tree: str | None) -> dict[str, str]:
    env = {
        "CHORUS_ORCHESTRATOR_ADDRESS": address,
        "CHORUS_RATE_LIMIT_RUNS": "1000000/minute",
        "CHORUS_RATE_LIMIT_MESSAGES": "1000000/minute",
    }
    if tree:
        dists = ("core", "provider-svc", "history-svc", "orchestrator-svc", "gateway", "cli")
        paths = [f"{tree}/{dist}/src" for dist in dists]
        env["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])
    return env


async def paced_round(
    tree: str | None,
    streams: int,
    tokens: int,
    tps: float,
    window_s: float,
    starts: int,
    nice: int = 0,
) -> dict[str, float]:
    """One gateway (from `tree`, or this checkout) in front of a `PacedOrchestrator`:
    CPU per delivered token with `streams` live streams at `tps` (measured over `window_s`
    in the middle of their runs), then CPU per run start over `starts` concurrent one-token
    SSE runs (after one unmeasured batch, two batches). `nice` < 0: the gateway and this
    process run at that priority (root), so other work on the machine does not starve
    them into batching more events per write than they would alone."""
    upstream = PacedOrchestrator(tokens, tps)
    address = await upstream.start()
    gateway = ServiceProcess(
        "chorus.gateway",
        env={
            **SERVICE_ENV,
            "CHORUS_GATEWAY_PORT": "0",
            "CHORUS_AUTH_MODE": "none",
            **paced_gateway_env(address, tree),
        },
    )
    try:
        base = "http://" + (await asyncio.to_thread(gateway.wait_ready, 60)).removeprefix("http://")
        pid = gateway.proc.pid
        if nice:  # on a shared machine: neither the gateway nor its feed starved by others
            for who in (pid, os.getpid()):
                os.setpriority(os.PRIO_PROCESS, who, nice)
        tally = _Tally()
        try:
            await asyncio.gather(*(_paced_stream(base, _start_body(3), tally) for _ in range(20)))
        except RuntimeError:
            print("\n".join(gateway.lines[-20:]))
            raise
        body = _start_body()
        ramp = 2.0
        tasks = []
        for _ in range(streams):
            tasks.append(asyncio.create_task(_paced_stream(base, body, tally)))
            await asyncio.sleep(ramp / streams)
        await asyncio.sleep(1.0)
        writes0 = await _scrape(base, "chorus_gateway_sse_writes_total")
        cpu0, events0 = cpu_seconds(pid), tally.events
        await asyncio.sleep(window_s)
        cpu, events = cpu_seconds(pid) - cpu0, tally.events - events0
        writes = await _scrape(base, "chorus_gateway_sse_writes_total") - writes0
        await asyncio.gather(*tasks)
        out = {
            "cpu_ms_per_token": cpu * 1000 / max(events, 1),
            "tokens": events,
            "tokens_per_write": events / max(writes, 1),
        }
        one = _start_body(1)
        await asyncio.gather(*(_paced_stream(base, one, tally) for _ in range(starts)))
        cpu0 = cpu_seconds(pid)
        for _ in range(2):
            await asyncio.gather(*(_paced_stream(base, one, tally) for _ in range(starts)))
        out["cpu_ms_per_start"] = (cpu_seconds(pid) - cpu0) * 1000 / (2 * starts)
        return out
    finally:
        await asyncio.to_thread(gateway.stop)
        await upstream.stop()


def paced_compare(args: argparse.Namespace) -> None:
    """`--paced`: this checkout's gateway against `--baseline-tree`'s, alternated."""
    sides = {"new": None, "base": args.baseline_tree} if args.baseline_tree else {"new": None}
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            row = asyncio.run(
                paced_round(
                    sides[side],
                    args.paced_streams,
                    args.paced_tokens,
                    20.0,
                    args.paced_window,
                    args.paced_starts,
                )
            )
            rows[side].append(row)
            print(
                f"round {r + 1} {side:>4}: {row['cpu_ms_per_token']:.4f} ms CPU/token "
                f"({row['tokens']} tokens, {row['tokens_per_write']:.2f} per write), "
                f"{row['cpu_ms_per_start']:.3f} ms CPU/run start "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    for key in ("cpu_ms_per_token", "cpu_ms_per_start"):
        med = {side: statistics.median(r[key] for r in rows[side]) for side in sides}
        text = ", ".join(f"{side} {v:.4f}" for side, v in med.items())
        if "base" in med:
            text += f", new/base x{med['new'] / med['base']:.3f}"
        print(f"median {key}: {text}", flush=True)


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
    parser.add_argument(
        "--paced",
        action="store_true",
        help="only the gateway at LLM pace (CPU per token, run start)",
    )
    parser.add_argument("--baseline-tree", help="--paced: also a gateway from this checkout")
    parser.add_argument("--rounds", type=int, default=3, help="--paced: rounds per side")
    parser.add_argument("--paced-streams", type=int, default=100)
    parser.add_argument("--paced-tokens", type=int, default=200)
    parser.add_argument("--paced-window", type=float, default=6.0)
    parser.add_argument("--paced-starts", type=int, default=200)
    parser.add_argument("--nice", type=int, default=0, help="--paced: priority (e.g. -10)")
    args = parser.parse_args()
    if args.paced:
        paced_compare(args)
        return
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
