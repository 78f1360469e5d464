"""orchestrator-svc: token events delivered, time to first token added, memory per run.

    python -m bench.bench_orchestrator [--runs 100] [--tokens 200] [--turns 4]
        [--ttft-samples 100] [--idle-runs 200] [--postgres]

Starts provider-svc (simulator at full speed: no time to first token, tokens as fast as
they are read), history-svc (embedded SQLite in a temporary directory, or with
`--postgres` a throw-away PostgreSQL database + Redis under a unique key prefix) and
orchestrator-svc, each as its own process; this process is the gRPC client. Measures:

* **throughput** — `--runs` concurrent `duet` runs (two agents on two simulator models,
  `--turns` turns of `--tokens` tokens each) started with StreamRun; text_delta events/s
  and tokens/s delivered to the StreamRun watchers, from the first request to the last
  terminal event. Once with delta coalescing off (every token is an event) and once with
  the default coalescing window.
* **ttft** — time to first token at concurrency 1, p50 / p99 over `--ttft-samples`:
  provider-svc called directly (StreamChat start → first text delta); through the
  orchestrator per model call (watcher sees `agent_started` → first `text_delta`, i.e. the
  orchestrator's own work plus one more hop); and per run (StreamRun start → first delta,
  including the run's setup writes to history-svc). "Added" = orchestrator − direct.
* **memory** — resident memory of the orchestrator before and after `--idle-runs` live
  runs whose model call is pending (simulator time to first token 10 min), per run.

Writes `bench/results/orchestrator-<UTC time>.json` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from chorus.core.testing import ServiceProcess
from chorus.v1 import (
    chat_pb2,
    provider_service_pb2_grpc,
    run_pb2,
    run_service_pb2_grpc,
    team_pb2,
)
from chorus.v1 import (
    provider_service_pb2 as ps,
)
from chorus.v1 import (
    run_service_pb2 as rs,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TOKEN = "bench-orchestrator-token"
MD = (("x-chorus-user", "bench"), ("x-chorus-internal-token", TOKEN))


def pct(values: list[float], q: float) -> float:
    """q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def rss_mb(proc: ServiceProcess) -> float:
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(proc: ServiceProcess) -> float:
    """CPU time (user + system) the process used so far, seconds."""
    fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def postgres() -> Iterator[dict[str, str]]:
    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"chorus_bench_orch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "CHORUS_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "CHORUS_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CHORUS_REDIS_KEY_PREFIX": f"chorus-bench-orch-{uuid.uuid4().hex[:8]}:",
        }
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Services:
    """provider-svc and history-svc, and (re)startable orchestrator processes."""

    def __init__(self, history_env: dict[str, str], data_dir: str) -> None:
        base = {
            "CHORUS_INTERNAL_TOKEN": TOKEN,
        }
        self.base = base
        self.provider = ServiceProcess(
            "chorus.provider",
            env={
                **base,
                "CHORUS_PROVIDER_PORT": "0",
                "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0",
                "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "0",
            },
        )
        self.history = ServiceProcess(
            "chorus.history",
            env={**base, "CHORUS_HISTORY_PORT": "0", "CHORUS_DATA_DIR": data_dir, **history_env},
        )
        self.provider_address = self.provider.wait_ready(60)
        self.history_address = self.history.wait_ready(60)
        self.orchestrator: ServiceProcess | None = None

    def start_orchestrator(self, **settings: str) -> str:
        self.stop_orchestrator()
        self.orchestrator = ServiceProcess(
            "chorus.orchestrator",
            env={
                **self.base,
                "CHORUS_ORCHESTRATOR_PORT": "0",
                "CHORUS_PROVIDER_ADDRESS": self.provider_address,
                "CHORUS_HISTORY_ADDRESS": self.history_address,
                "CHORUS_GRACE_PERIOD_S": "2",
                **{f"CHORUS_{k.upper()}": v for k, v in settings.items()},
            },
        )
        return self.orchestrator.wait_ready(60)

    def stop_orchestrator(self) -> None:
        if self.orchestrator is not None:
            self.orchestrator.stop()
            self.orchestrator = None

    def close(self) -> None:
        self.stop_orchestrator()
        self.history.stop()
        self.provider.stop()


def sim(**fields: Any) -> chat_pb2.SimulatorOptions:
    return chat_pb2.SimulatorOptions(
        time_to_first_token=duration_pb2.Duration(), tokens_per_second=0.0, **fields
    )


def inline_duet(tokens: int, turns: int) -> run_pb2.RunSpec:
    agents = [
        team_pb2.AgentSpec(
            name=name,
            system_prompt=f"You are {name}.",
            model=chat_pb2.ModelRef(provider="simulator", model=model),
            simulator=sim(output_tokens=tokens),
        )
        for name, model in (("Ada", "sim-1"), ("Blaise", "sim-fast"))
    ]
    return run_pb2.RunSpec(
        team=team_pb2.TeamSpec(kind=team_pb2.TEAM_KIND_ROUND_ROBIN, agents=agents, max_turns=turns),
        input="Is remote work better for software teams?",
    )


def single(tokens: int, options: chat_pb2.SimulatorOptions) -> run_pb2.RunSpec:
    agent = team_pb2.AgentSpec(
        name="writer",
        system_prompt="Write.",
        model=chat_pb2.ModelRef(provider="simulator", model="sim-fast"),
        simulator=options,
    )
    agent.simulator.output_tokens = tokens
    return run_pb2.RunSpec(
        team=team_pb2.TeamSpec(kind=team_pb2.TEAM_KIND_SINGLE, agents=[agent]), input="Go."
    )


async def throughput(address: str, runs: int, tokens: int, turns: int) -> dict[str, Any]:
    """`runs` concurrent duets through StreamRun; delta events and tokens per second."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        counts = {"events": 0, "tokens": 0, "failed": 0}

        async def one() -> None:
            call = stub.StreamRun(rs.StreamRunRequest(spec=inline_duet(tokens, turns)), metadata=MD)
            deltas = 0
            async for response in call:
                event = response.event
                if event.HasField("text_delta"):
                    deltas += 1
                elif event.HasField("run_completed"):
                    counts["tokens"] += event.run_completed.usage.output_tokens
                elif event.HasField("run_failed") or event.HasField("run_cancelled"):
                    counts["failed"] += 1
            counts["events"] += deltas

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        elapsed = time.perf_counter() - start
    return {
        "runs": runs,
        "tokens_per_turn": tokens,
        "turns": turns,
        "seconds": round(elapsed, 3),
        "delta_events": counts["events"],
        "delta_events_per_s": round(counts["events"] / elapsed),
        "tokens": counts["tokens"],
        "tokens_per_s": round(counts["tokens"] / elapsed),
        "failed_runs": counts["failed"],
    }


async def ttft(address: str, provider: str, samples: int) -> dict[str, Any]:
    """Time to first token at concurrency 1: direct, per model call, per run (ms)."""
    direct: list[float] = []
    per_call: list[float] = []
    per_run: list[float] = []
    async with (
        grpc.aio.insecure_channel(provider) as pchannel,
        grpc.aio.insecure_channel(address) as ochannel,
    ):
        pstub = provider_service_pb2_grpc.ProviderServiceStub(pchannel)
        ostub = run_service_pb2_grpc.RunServiceStub(ochannel)
        request = ps.StreamChatRequest(
            model=chat_pb2.ModelRef(provider="simulator", model="sim-fast"),
            messages=[
                ps.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content="Write."),
                ps.ChatMessage(role=chat_pb2.ROLE_USER, content="Go."),
            ],
            simulator=sim(output_tokens=5),
        )
        for i in range(samples + 5):  # the first few warm up both paths
            start = time.perf_counter()
            first = None
            async for response in pstub.StreamChat(request, metadata=MD):
                if first is None and response.HasField("text_delta"):
                    first = time.perf_counter() - start
            if i >= 5 and first is not None:
                direct.append(first * 1000)

            start = time.perf_counter()
            turn_start = first_delta = None
            call = ostub.StreamRun(rs.StreamRunRequest(spec=single(5, sim())), metadata=MD)
            async for response in call:
                now = time.perf_counter()
                event = response.event
                if event.HasField("agent_started") and turn_start is None:
                    turn_start = now
                elif event.HasField("text_delta") and first_delta is None:
                    first_delta = now
            if i >= 5 and turn_start is not None and first_delta is not None:
                per_call.append((first_delta - turn_start) * 1000)
                per_run.append((first_delta - start) * 1000)

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50_ms": round(pct(values, 0.5), 3), "p99_ms": round(pct(values, 0.99), 3)}

    d, c, r = summary(direct), summary(per_call), summary(per_run)
    return {
        "samples": len(direct),
        "direct": d,
        "orchestrator_per_model_call": c,
        "orchestrator_per_run": r,
        "added_per_model_call_p50_ms": round(c["p50_ms"] - d["p50_ms"], 3),
        "added_per_model_call_p99_ms": round(c["p99_ms"] - d["p99_ms"], 3),
        "added_per_run_p50_ms": round(r["p50_ms"] - d["p50_ms"], 3),
        "added_per_run_p99_ms": round(r["p99_ms"] - d["p99_ms"], 3),
    }


async def idle_memory(address: str, proc: ServiceProcess, runs: int) -> dict[str, Any]:
    """RSS growth of the orchestrator per live run waiting on its model call."""
    pending = sim()
    pending.time_to_first_token.seconds = 600
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        # Warm up: one run through every code path, so imports and caches are not counted.
        warm = await stub.CreateRun(rs.CreateRunRequest(spec=single(5, pending)), metadata=MD)
        await wait_turn(stub, warm.run.id)
        await stub.CancelRun(rs.CancelRunRequest(run_id=warm.run.id), metadata=MD)
        await asyncio.sleep(1.0)
        before = rss_mb(proc)
        ids = []
        for _ in range(runs):
            created = await stub.CreateRun(
                rs.CreateRunRequest(spec=single(5, pending)), metadata=MD
            )
            ids.append(created.run.id)
        await asyncio.gather(*(wait_turn(stub, run_id) for run_id in ids))
        await asyncio.sleep(1.0)  # let heartbeats and allocator settle
        after = rss_mb(proc)
        await asyncio.gather(
            *(stub.CancelRun(rs.CancelRunRequest(run_id=i), metadata=MD) for i in ids)
        )
    return {
        "idle_runs": runs,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "rss_per_idle_run_kb": round((after - before) * 1024 / runs, 1),
    }


async def wait_turn(stub: run_service_pb2_grpc.RunServiceStub, run_id: str) -> None:
    """Until the run's agent has started its turn (its model call is pending)."""
    call = stub.WatchRun(rs.WatchRunRequest(run_id=run_id), metadata=MD)
    async for response in call:
        if response.event.HasField("agent_started"):
            call.cancel()
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per turn")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--ttft-samples", type=int, default=100)
    parser.add_argument("--idle-runs", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="history on PostgreSQL + Redis")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "history": "postgresql+redis" if args.postgres else "sqlite (embedded)",
    }
    with contextlib.ExitStack() as stack:
        history_env = stack.enter_context(postgres()) if args.postgres else {}
        data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="chorus-bench-"))
        services = Services(history_env, data_dir)
        stack.callback(services.close)

        out["throughput"] = []
        for label, coalesce in (("coalescing off", "0"), ("coalescing 2 ms (default)", "0.002")):
            address = services.start_orchestrator(delta_coalesce_s=coalesce)
            assert services.orchestrator is not None
            procs = {
                "orchestrator": services.orchestrator,
                "provider": services.provider,
                "history": services.history,
            }
            cpu_before = {name: cpu_s(p) for name, p in procs.items()}
            row = asyncio.run(throughput(address, args.runs, args.tokens, args.turns))
            cpu = {name: cpu_s(p) - cpu_before[name] for name, p in procs.items()}
            row["cpu_s"] = {name: round(v, 2) for name, v in cpu.items()}
            row["orchestrator_cpu_us_per_delta_event"] = round(
                cpu["orchestrator"] * 1e6 / max(1, row["delta_events"]), 1
            )
            row["coalescing"] = label
            row["orchestrator_rss_mb"] = round(rss_mb(services.orchestrator), 1)
            out["throughput"].append(row)
            print(
                f"throughput ({label}): {row['delta_events_per_s']} text_delta events/s, "
                f"{row['tokens_per_s']} tokens/s to {args.runs} StreamRun watchers "
                f"({row['delta_events']} events in {row['seconds']} s, "
                f"{row['failed_runs']} failed runs); orchestrator CPU "
                f"{row['orchestrator_cpu_us_per_delta_event']} µs per event, CPU s {row['cpu_s']}",
                flush=True,
            )

        address = services.start_orchestrator()
        out["ttft"] = asyncio.run(ttft(address, services.provider_address, args.ttft_samples))
        t = out["ttft"]
        print(
            f"ttft direct p50 {t['direct']['p50_ms']} ms / p99 {t['direct']['p99_ms']} ms; "
            f"per model call p50 {t['orchestrator_per_model_call']['p50_ms']} / "
            f"p99 {t['orchestrator_per_model_call']['p99_ms']} ms "
            f"(added p50 {t['added_per_model_call_p50_ms']} ms, p99 {t['added_per_model_call_p99_ms']} ms); "
            f"per run p50 {t['orchestrator_per_run']['p50_ms']} / p99 {t['orchestrator_per_run']['p99_ms']} ms",
            flush=True,
        )
        assert services.orchestrator is not None
        out["memory"] = asyncio.run(idle_memory(address, services.orchestrator, args.idle_runs))
        m = out["memory"]
        print(
            f"memory: {m['rss_before_mb']} MB → {m['rss_after_mb']} MB with {m['idle_runs']} idle "
            f"live runs = {m['rss_per_idle_run_kb']} KB per run",
            flush=True,
        )
    path = RESULTS / f"orchestrator-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
