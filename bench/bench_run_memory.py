"""Resident memory each live run costs in every service, and (optionally) what holds it.

    python -m bench.bench_run_memory [--runs 300 1000] [--tokens 300] [--tps 5]
        [--tracemalloc orchestrator,gateway] [--top 25]

For each `--runs N`: a fresh stack (`bench.harness.Stack`: provider-svc, history-svc on a
throw-away PostgreSQL database + Redis under a unique key prefix, orchestrator-svc,
gateway), a warm-up of a few short runs (so one-off imports and caches are not counted),
the baseline resident memory of each service (median of 3 samples), then N concurrent
slow runs through the gateway's SSE endpoint — a SINGLE team of one agent on the
simulator model `simulator/sim-fast` at `--tps` tokens/s, `--tokens` tokens each
(`bench.load_client.run_spec`), the scenario of `bench.run`'s "slow streams". Reports, per
service and in all, the growth of resident memory (VmRSS) per 1,000 live runs:

* **live** — once every run streamed its first token (all N are live and streaming;
  median of 3 samples 0.5 s apart);
* **peak** — the highest sample (every 0.5 s) until the runs ended (their event buffers
  are fullest near the end).

With `--tracemalloc SERVICES` the services run with a `sitecustomize` that starts
`tracemalloc` (25 frames) on SIGUSR1 and dumps a snapshot on SIGUSR2: tracing starts
after the warm-up and the snapshot is taken once all runs are live, so it holds exactly
what the live runs allocated (and still hold), printed by line, by file and by traceback.
Tracing slows the traced services several times: take RSS figures from runs without it.

Writes `bench/results/run-memory-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import linecache
import os
import signal
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import REDIS_URL, RESULTS, Stack, postgres_database, redis_prefix
from bench.load_client import http_session, run_spec, stream_sse
from chorus.v1 import chat_pb2

SERVICES = ("provider", "history", "orchestrator", "gateway")
MODEL = chat_pb2.ModelRef(provider="simulator", model="sim-fast")

_SITECUSTOMIZE = """
import os, signal, tracemalloc

def _start(signum, frame):
    tracemalloc.start(25)

def _dump(signum, frame):
    path = os.path.join(os.environ["CHORUS_BENCH_TRACEMALLOC_DIR"], f"{os.getpid()}.snap")
    tracemalloc.take_snapshot().dump(path + ".part")
    os.replace(path + ".part", path)

signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _dump)
"""


@contextmanager
def traced_env(directory: Path) -> Iterator[dict[str, str]]:
    """Environment that makes a service process load the tracing `sitecustomize`."""
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    pythonpath = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    yield {"PYTHONPATH": pythonpath, "CHORUS_BENCH_TRACEMALLOC_DIR": str(directory)}


def rss_samples(stack: Stack, count: int = 3, interval_s: float = 0.5) -> dict[str, float]:
    """Median of `count` samples of each service's resident memory, MB."""
    samples: list[dict[str, float]] = []
    for i in range(count):
        if i:
            time.sleep(interval_s)
        samples.append(stack.rss_mb())
    return {name: statistics.median(s[name] for s in samples) for name in SERVICES}


async def warm_up(gateway: str, runs: int = 5) -> None:
    """A few short, full-speed runs: imports, caches and pools are loaded before the baseline."""
    async with http_session(10) as client:
        for _ in range(runs):
            async for _tokens in stream_sse(client, gateway, run_spec(MODEL, 20, None)):
                pass


class Streams:
    """N concurrent slow SSE runs; counts the ones that streamed a first token."""

    def __init__(self, gateway: str, runs: int, tokens: int, tps: float) -> None:
        self.gateway = gateway
        self.runs = runs
        self.tokens = tokens
        self.tps = tps
        self.live = 0
        self.done = 0
        self.delivered = 0
        self.errors: list[str] = []
        self.without_tokens = 0
        self.done_streaming = 0
        self.all_live = asyncio.Event()
        self.started = time.perf_counter()
        self.all_live_s: float | None = None

    async def one(self, client: aiohttp.ClientSession) -> None:
        first = True
        try:
            async for n in stream_sse(client, self.gateway, run_spec(MODEL, self.tokens, self.tps)):
                self.delivered += n
                if first:
                    first = False
                    self._count_live()
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self.done += 1
            if not first:
                self.done_streaming += 1
            if first:  # ended without a token: settled, not live
                self.without_tokens += 1
                self._count_live()

    def _count_live(self) -> None:
        self.live += 1
        if self.live == self.runs:
            self.all_live_s = time.perf_counter() - self.started
            self.all_live.set()

    async def run(self, start_rate: float) -> None:
        """All runs at once, or `start_rate` new runs per second (0: all at once)."""
        async with http_session(self.runs + 10) as client:
            tasks = []
            for i in range(self.runs):
                if start_rate and i:
                    await asyncio.sleep(1 / start_rate)
                tasks.append(asyncio.create_task(self.one(client)))
            await asyncio.gather(*tasks)


def measure(
    runs: int,
    tokens: int,
    tps: float,
    start_rate: float,
    traced: set[str],
    top: int,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    """One fresh stack, warm-up, baseline, N slow runs; returns the figures."""
    with ExitStack() as stack:
        db = stack.enter_context(postgres_database())
        trace_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        trace_env = stack.enter_context(traced_env(trace_dir)) if traced else {}
        env = {
            "CHORUS_DATABASE_URL": db,
            "CHORUS_REDIS_URL": REDIS_URL,
            "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("memory")),
            **extra_env,
        }
        # Every service loads the sitecustomize (inert until signalled); the traced ones are
        # signalled.
        chorus = stack.enter_context(Stack({**env, **trace_env}))
        asyncio.run(warm_up(chorus.addresses["gateway"]))
        time.sleep(2)
        pids = {name: chorus.procs[name].proc.pid for name in SERVICES}
        for name in traced:
            os.kill(pids[name], signal.SIGUSR1)
        before = rss_samples(chorus)
        live_rss: dict[str, float] = {}
        streaming: list[int] = []  # runs streaming (first token seen, not ended) then
        streams = Streams(chorus.addresses["gateway"], runs, tokens, tps)

        timeline: list[dict[str, Any]] = []

        async def sample() -> None:  # every second: runs streaming, each service's RSS
            while True:
                rss = await asyncio.to_thread(chorus.rss_mb)
                timeline.append(
                    {
                        "t_s": round(time.perf_counter() - streams.started, 1),
                        "streaming": streams.live - streams.without_tokens - streams.done_streaming,
                        **{n: round(rss[n], 1) for n in SERVICES},
                    }
                )
                await asyncio.sleep(1)

        async def drive() -> None:
            sampler = asyncio.create_task(sample())
            task = asyncio.create_task(streams.run(start_rate))
            waiter = asyncio.create_task(streams.all_live.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if streams.all_live.is_set():
                streaming.append(streams.live - streams.without_tokens - streams.done_streaming)
                live_rss.update(await asyncio.to_thread(rss_samples, chorus))
                streaming.append(streams.live - streams.without_tokens - streams.done_streaming)
                for name in traced:
                    os.kill(pids[name], signal.SIGUSR2)
            waiter.cancel()
            await task
            sampler.cancel()

        with chorus.peak_rss() as peak:
            asyncio.run(drive())
        result: dict[str, Any] = {
            "runs": runs,
            "tokens": tokens,
            "tokens_per_s": tps,
            "delivered": streams.delivered,
            "requested": runs * tokens,
            "errors": len(streams.errors),
            "runs_without_tokens": streams.without_tokens,
            "first_errors": streams.errors[:3],
            "all_live_after_s": streams.all_live_s,
            "elapsed_s": round(time.perf_counter() - streams.started, 1),
            "rss_before_mb": before,
            "rss_live_mb": live_rss,
            "streaming_at_live_sample": streaming,
            "rss_peak_mb": dict(peak),
            "timeline": timeline,
        }
        # Divisors: the runs streaming while "live" was sampled; for the peak, every run
        # that streamed (with a slow start some had ended before the last began).
        divisor = {
            "live": max(1, min(streaming or [1])),
            "peak": max(1, runs - streams.without_tokens),
        }
        for label, after in (("live", live_rss), ("peak", peak)):
            if after:
                per = {
                    n: round((after[n] - before[n]) * 1000 / divisor[label], 1) for n in SERVICES
                }
                result[f"{label}_mb_per_1000_runs"] = {**per, "total": round(sum(per.values()), 1)}
        if traced:
            result["tracemalloc"] = {}
            for name in traced:
                snap = trace_dir / f"{pids[name]}.snap"
                deadline = time.monotonic() + 300
                while not snap.exists() and time.monotonic() < deadline:
                    time.sleep(0.5)
                if snap.exists():
                    result["tracemalloc"][name] = breakdown(
                        tracemalloc.Snapshot.load(str(snap)), divisor["live"], top
                    )
        return result


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _is_stdlib(filename: str) -> bool:
    return "site-packages" not in filename and ("/lib/python3" in filename or "<" in filename)


def _owner(traceback: tracemalloc.Traceback, *, package: bool) -> str:
    frame = next(
        (f for f in reversed(traceback) if not _is_stdlib(f.filename)),
        traceback[-1],
    )
    where = _short(frame.filename)
    if package:  # chorus/orchestrator/runs.py, or autogen_core, grpc …
        return where if where.startswith("chorus/") else where.split("/", 1)[0]
    return f"{where}:{frame.lineno} " + linecache.getline(frame.filename, frame.lineno).strip()


def by_owner(
    snapshot: tracemalloc.Snapshot, runs: int, top: int, *, package: bool = False
) -> list[dict[str, Any]]:
    """Sizes grouped by the innermost frame outside the standard library (the code that
    asked for an asyncio.Queue, a deque, a task …), or by its package (`package`), KB per
    run. Objects created by the event loop itself (callbacks, coroutine frames) land in
    `uvloop`."""
    sizes: dict[str, list[int]] = {}
    for trace in snapshot.traces:
        key = _owner(trace.traceback, package=package)
        entry = sizes.setdefault(key, [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    ordered = sorted(sizes.items(), key=lambda item: -item[1][0])[:top]
    return [
        {
            "kb_per_run": round(size / 1024 / runs, 2),
            "blocks_per_run": round(count / runs, 1),
            "where": key,
        }
        for key, (size, count) in ordered
    ]


def breakdown(snapshot: tracemalloc.Snapshot, runs: int, top: int) -> dict[str, Any]:
    """What a traced snapshot holds: in all, by file, by line and by traceback (KB per run)."""
    snapshot = snapshot.filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    )
    total = sum(s.size for s in snapshot.statistics("filename"))

    def rows(key: str) -> list[dict[str, Any]]:
        out = []
        for stat in snapshot.statistics(key)[:top]:
            frames = [
                f"{_short(f.filename)}:{f.lineno} {linecache.getline(f.filename, f.lineno).strip()}"
                for f in (stat.traceback if key == "traceback" else stat.traceback[:1])
            ]
            out.append(
                {
                    "kb_per_run": round(stat.size / 1024 / runs, 2),
                    "blocks_per_run": round(stat.count / runs, 1),
                    "where": frames if key == "traceback" else frames[0],
                }
            )
        return out

    return {
        "traced_kb_per_run": round(total / 1024 / runs, 1),
        "by_package": by_owner(snapshot, runs, top, package=True),
        "by_owner": by_owner(snapshot, runs, top),
        "by_file": rows("filename"),
        "by_line": rows("lineno"),
        "by_traceback": rows("traceback")[: max(1, top // 3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--tps", type=float, default=5.0)
    parser.add_argument("--tracemalloc", default="", help="comma-separated services to trace")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--timeline", action="store_true", help="print RSS every 5 s")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for every service (repeatable)"
    )
    parser.add_argument(
        "--start-rate", type=float, default=0, help="new runs per second (0: all at once)"
    )
    args = parser.parse_args()
    traced = {s for s in args.tracemalloc.split(",") if s}
    if traced - set(SERVICES):
        parser.error(f"--tracemalloc: services are {', '.join(SERVICES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": []}
    for runs in args.runs:
        extra_env = dict(item.split("=", 1) for item in args.env)
        row = measure(runs, args.tokens, args.tps, args.start_rate, traced, args.top, extra_env)
        out["rounds"].append(row)
        print(
            f"{runs} runs: delivered {row['delivered']}/{row['requested']}, errors {row['errors']}, "
            f"without tokens {row['runs_without_tokens']}, "
            f"streaming at the live sample {row['streaming_at_live_sample']}, "
            f"all live after {row['all_live_after_s']} s, {row['elapsed_s']} s in all",
            flush=True,
        )
        for label in ("live", "peak"):
            if f"{label}_mb_per_1000_runs" in row:
                print(f"  MB per 1,000 runs ({label}): {row[f'{label}_mb_per_1000_runs']}")
        for point in row["timeline"][::5] if args.timeline else ():
            print(f"    {point}")
        for name, found in row.get("tracemalloc", {}).items():
            print(f"  tracemalloc {name}: {found['traced_kb_per_run']} KB per run held")
            for entry in found["by_package"] + found["by_owner"]:
                print(
                    f"    {entry['kb_per_run']:8.2f} KB {entry['blocks_per_run']:7.1f} blk  {entry['where']}"
                )
    path = RESULTS / f"run-memory-{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
