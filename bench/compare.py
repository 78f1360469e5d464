"""This checkout against an earlier commit, alternated in one run; and how fast a run
continues after its orchestrator replica is lost (issue 18, "Benchmarks").

    python -m bench.compare --baseline REV [--rounds 5] [--slow-runs 1000]
        [--slow-seconds 30] [--skip-slow] [--only-slow] [--kills 10] [--skip-resume]
    make bench BENCH_ARGS="--baseline REV"     (bench.run hands over to this module)

* **Old against new.** The commit `REV` is checked out in a git worktree under
  `bench/results/` and its services run from there (PYTHONPATH put in front of this
  checkout's editable installs); each side gets its own throw-away PostgreSQL database
  and Redis prefix. Round after round, alternating which side goes first, each side runs
  on a fresh four-service stack: SSE time to first token at 1 run (5 × 20 streams one at
  a time), SSE tokens/s at 100 × 500, and (unless `--skip-slow`) `--slow-runs` SSE runs
  at 5 tokens/s for `--slow-seconds` (lag p99). The upstream is
  `../shared/anchors/fake_openai.py` at full speed for the first two — the deltas of such
  a fast upstream are coalesced (2 ms window), so tokens/s there counts coalesced
  events — and the simulator at 5 tokens/s, one token per event, for the slow one.
  Reported: medians per side, TTFT difference (ms), tokens/s and lag ratios (new / old).
  `--only-slow` runs the slow scenario alone. Each slow load also records every token's
  lag (`bench/results/lag-<date>-r<round>-<side>.jsonl`, see `bench.load_client
  --lag-timeline`), where its worst 1 % sat, and each service's CPU seconds over it.
* **Resume time.** A second orchestrator replica (default settings: heartbeat 1 s, lease
  4 s, sweep 0.5 s) beside the stack's runs a paced duet; it is SIGKILLed (`--kills`
  times, restarted in between) or SIGTERMed once a turn is done; the figure is the time
  from the kill to the `run_resumed` event's time as stored (SIGKILL), and from the
  handed-over turn boundary's last event to `run_resumed` (SIGTERM). Medians.

Writes `bench/results/compare-<date>.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from bench.harness import (
    REDIS_URL,
    REPO,
    RESULTS,
    TOKEN,
    Stack,
    load,
    postgres_database,
    redis_prefix,
    upstream,
)
from bench.run import SLOW_TPS
from chorus.core.testing import ServiceProcess
from chorus.v1 import chat_pb2, run_pb2, run_service_pb2, run_service_pb2_grpc, team_pb2
from chorus.v1 import history_service_pb2 as hs
from chorus.v1 import history_service_pb2_grpc as hs_grpc

DISTS = ("core", "provider-svc", "history-svc", "orchestrator-svc", "gateway", "cli")


def baseline_tree(rev: str) -> Path:
    """A worktree of `rev` under bench/results/ (made once, reused)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", rev],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = RESULTS / f"baseline-{sha}"
    if not tree.exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        # a worktree registered by an earlier checkout of this repository, since deleted
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True, capture_output=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        # Its chorus.v1 code, generated again by this checkout's grpcio-tools: the
        # baseline runs on this environment's protobuf, which may be another major version
        # than the one its committed code was generated for (protobuf refuses newer code).
        subprocess.run(
            ["bash", "scripts/generate_proto.sh"],
            cwd=tree,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHON": sys.executable},
        )
    return tree


def side_env(db: str, fast: str, tree: Path | None) -> dict[str, str]:
    env = {
        "CHORUS_DATABASE_URL": db,
        "CHORUS_REDIS_URL": REDIS_URL,
        "CHORUS_OPENAI_COMPATIBLE_BASE_URL": fast,
        "CHORUS_OPENAI_COMPATIBLE_MODELS": '["sim"]',
    }
    if tree is not None:
        paths = [str(tree / dist / "src") for dist in DISTS]
        env["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])
    return env


def one_round(
    env: dict[str, str],
    slow_runs: int,
    slow_seconds: int,
    fast: bool = True,
    timeline: Path | None = None,
) -> dict[str, Any]:
    """TTFT at 1 run and tokens/s at 100 × 500 on one fresh stack (unless not `fast`); the
    slow scenario on another (each starts from services that held nothing), its per-token
    lags written to `timeline` when given."""
    out: dict[str, Any] = {}
    if fast:
        with ExitStack() as stack:
            fresh = {**env, "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("cmp"))}
            chorus = stack.enter_context(Stack(fresh))
            gateway = chorus.addresses["gateway"]
            load("sse", gateway, 10, 20)  # warm-up: imports, caches, connections
            out["ttft"] = load("sse", gateway, 1, 20, "--repeats", "20")
            out["throughput"] = load("sse", gateway, 100, 500)
    if slow_runs:
        with ExitStack() as stack:
            fresh = {**env, "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("cmp"))}
            chorus = stack.enter_context(Stack(fresh))
            gateway = chorus.addresses["gateway"]
            load("sse", gateway, 20, 20, "--model", "simulator/sim-fast")
            before = chorus.cpu_s()
            out["slow"] = load(
                "sse",
                gateway,
                slow_runs,
                int(SLOW_TPS * slow_seconds),
                "--model",
                "simulator/sim-fast",
                "--tokens-per-second",
                str(SLOW_TPS),
                "--lag",
                *(("--lag-timeline", str(timeline)) if timeline else ()),
            )
            after = chorus.cpu_s()
            out["slow"]["cpu_s"] = {name: round(after[name] - before[name], 2) for name in after}
    return out


def _median(rounds: list[dict[str, Any]], scenario: str, key: str) -> float | None:
    values = [
        r[scenario][key] for r in rounds if scenario in r and r[scenario].get(key) is not None
    ]
    return round(statistics.median(values), 3) if values else None


def compare(args: argparse.Namespace) -> dict[str, Any]:
    tree = baseline_tree(args.baseline)
    sides: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    slow_runs = 0 if args.skip_slow else args.slow_runs
    with ExitStack() as stack:
        fast = stack.enter_context(upstream())
        envs = {
            "old": side_env(stack.enter_context(postgres_database()), fast, tree),
            "new": side_env(stack.enter_context(postgres_database()), fast, None),
        }
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for side in order:
                result = one_round(
                    envs[side],
                    slow_runs,
                    args.slow_seconds,
                    fast=not args.only_slow,
                    timeline=RESULTS / f"lag-{args.stamp}-r{r + 1}-{side}.jsonl",
                )
                sides[side].append(result)
                line = f"round {r + 1} {side}:"
                if "ttft" in result:
                    line += (
                        f" TTFT p50 {result['ttft']['ttft_p50_ms']} ms,"
                        f" {result['throughput']['tokens_per_s']} tokens/s at 100 x 500,"
                    )
                if "slow" in result:
                    slow = result["slow"]
                    line += (
                        f" slow lag p50 {slow['lag_p50_ms']} ms p99 {slow['lag_p99_ms']} ms"
                        f" (worst 1 % at {slow.get('lag_p99_window_s')} s, last first token"
                        f" {slow.get('first_token_last_s')} s, CPU s {slow['cpu_s']})"
                    )
                print(line, flush=True)
    figures: dict[str, Any] = {"baseline": args.baseline, "rounds": sides}
    for side, rounds in sides.items():
        figures[side] = {
            "ttft_p50_ms": _median(rounds, "ttft", "ttft_p50_ms"),
            "tokens_per_s": _median(rounds, "throughput", "tokens_per_s"),
            "slow_lag_p50_ms": _median(rounds, "slow", "lag_p50_ms"),
            "slow_lag_p99_ms": _median(rounds, "slow", "lag_p99_ms"),
        }
    old, new = figures["old"], figures["new"]
    if old["ttft_p50_ms"] is not None and new["ttft_p50_ms"] is not None:
        figures["ttft_delta_ms"] = round(new["ttft_p50_ms"] - old["ttft_p50_ms"], 2)
        figures["tokens_ratio"] = round(new["tokens_per_s"] / old["tokens_per_s"], 3)
    if old["slow_lag_p99_ms"]:
        figures["lag_ratio"] = round(new["slow_lag_p99_ms"] / old["slow_lag_p99_ms"], 3)
    return figures


# --------------------------------------------------------------------------- resume time
def _paced_duet_spec() -> run_pb2.RunSpec:
    options = chat_pb2.SimulatorOptions(tokens_per_second=100.0, output_tokens=100)
    agents = [
        team_pb2.AgentSpec(
            name=name,
            system_prompt=f"You are {name}.",
            model=chat_pb2.ModelRef(provider="simulator", model="sim-1"),
            simulator=options,
        )
        for name in ("Ada", "Blaise")
    ]
    team = team_pb2.TeamSpec(kind=team_pb2.TEAM_KIND_ROUND_ROBIN, agents=agents, max_turns=20)
    return run_pb2.RunSpec(team=team, input="Is remote work here to stay?")


def _events(history: hs_grpc.HistoryServiceStub, run_id: str) -> list[run_pb2.RunEvent]:
    out: list[run_pb2.RunEvent] = []
    while True:
        page = history.ListRunEvents(
            hs.ListRunEventsRequest(run_id=run_id, after_seq=out[-1].seq if out else 0)
        )
        if not page.events:
            return out
        out.extend(page.events)


def _wait(predicate: Any, timeout: float = 60.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def resume_times(kills: int) -> dict[str, Any]:
    """Seconds from a replica's loss to `run_resumed` on the other replica."""
    killed: list[float] = []
    handed: list[float] = []
    with ExitStack() as stack:
        fast = stack.enter_context(upstream())
        env = side_env(stack.enter_context(postgres_database()), fast, None)
        env["CHORUS_REDIS_KEY_PREFIX"] = stack.enter_context(redis_prefix("resume"))
        chorus = stack.enter_context(Stack(env))
        history = hs_grpc.HistoryServiceStub(grpc.insecure_channel(chorus.addresses["history"]))
        replica_env = {
            **env,
            "CHORUS_DEV_MODE": "true",
            "CHORUS_INTERNAL_TOKEN": TOKEN,
            "CHORUS_PROVIDER_ADDRESS": chorus.addresses["provider"],
            "CHORUS_HISTORY_ADDRESS": chorus.addresses["history"],
            "CHORUS_ORCHESTRATOR_PORT": "0",
        }
        for attempt in range(kills + 1):
            sig = signal.SIGKILL if attempt < kills else signal.SIGTERM
            replica = ServiceProcess(
                "chorus.orchestrator",
                env={**replica_env, "CHORUS_INSTANCE_ID": f"bench-replica-{attempt}"},
            )
            try:
                address = replica.wait_ready(60)
                runs = run_service_pb2_grpc.RunServiceStub(grpc.insecure_channel(address))
                run = runs.CreateRun(run_service_pb2.CreateRunRequest(spec=_paced_duet_spec())).run

                def one_turn_done(run_id: str = run.id) -> bool:
                    events = _events(history, run_id)
                    return any(e.HasField("progress") for e in events) and events[-1].HasField(
                        "text_delta"
                    )

                _wait(one_turn_done)
                lost_at = time.time()
                replica.terminate(sig)
                replica.proc.wait(60)

                def resumed(run_id: str = run.id) -> run_pb2.RunEvent | None:
                    events = _events(history, run_id)
                    return next((e for e in events if e.HasField("run_resumed")), None)

                event = _wait(resumed)
                if sig == signal.SIGKILL:
                    killed.append(event.time.ToNanoseconds() / 1e9 - lost_at)
                else:
                    events = _events(history, run.id)
                    boundary = events[event.seq - 2]  # the last event before run_resumed
                    handed.append(
                        (event.time.ToNanoseconds() - boundary.time.ToNanoseconds()) / 1e9
                    )
            finally:
                replica.stop()
    return {
        "sigkill_s": [round(s, 3) for s in killed],
        "sigkill_median_s": round(statistics.median(killed), 3) if killed else None,
        "sigterm_s": [round(s, 3) for s in handed],
        "sigterm_median_s": round(statistics.median(handed), 3) if handed else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="the commit to compare with (e.g. HEAD~5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slow-runs", type=int, default=1000)
    parser.add_argument("--slow-seconds", type=int, default=30)
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument("--only-slow", action="store_true")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--skip-resume", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
    args.stamp = stamp
    out: dict[str, Any] = {"date": stamp}
    if args.baseline:
        out["compare"] = compare(args)
        c = out["compare"]
        print(
            "\n| side | TTFT p50, 1 run (SSE) | tokens/s 100 × 500 | slow lag p50 | slow lag p99 |"
        )
        print("|---|---|---|---|---|")
        for side in ("old", "new"):
            f = c[side]
            print(
                f"| {side} | {f['ttft_p50_ms']} ms | {f['tokens_per_s']} | "
                f"{f['slow_lag_p50_ms']} ms | {f['slow_lag_p99_ms']} ms |"
            )
        print(
            f"\nTTFT {c.get('ttft_delta_ms')} ms, tokens/s x{c.get('tokens_ratio')}, "
            f"lag p99 x{c.get('lag_ratio')}"
        )
    if not args.skip_resume:
        out["resume"] = resume_times(args.kills)
        r = out["resume"]
        print(
            f"\nresume after SIGKILL: median {r['sigkill_median_s']} s over {len(r['sigkill_s'])} "
            f"kills {r['sigkill_s']}; after a SIGTERM handoff: {r['sigterm_s']} s"
        )
    path = RESULTS / f"compare-{stamp}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
