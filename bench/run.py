"""`make bench`: the whole chain against the upstream and LiteLLM, side by side in one run.

    python -m bench.run [--rounds 3] [--quick] [--skip-litellm] [--skip-slow]
        [--skip-capacity] [--only ttft|throughput|slow|capacity ...] [--slow-runs 1000]
        [--slow-seconds 60] [--slow-ramp-s 0]
    python -m bench.run --baseline REV [bench.compare's options]   (old against new)

Starts `../shared/anchors/fake_openai.py` (full speed, and a 5 tokens/s copy), the four
Chorus services as separate processes on PostgreSQL + Redis (a throw-away database), and
LiteLLM's proxy; the load client runs in its own process. Scenarios:

* ttft — time to first token at the upstream, provider-svc (gRPC), orchestrator (gRPC) and
  the gateway's SSE, p50 / p99 at 1, 10 and 100 concurrent streams;
* throughput — tokens/s to SSE clients at 20 × 500 and 100 × 500, vs upstream direct and
  LiteLLM, with each service's resident memory;
* slow — 1,000 concurrent SSE runs at 5 tokens/s for a minute (all started at once, or
  evenly over `--slow-ramp-s` seconds): p99 lag, memory per run, CPU seconds of every
  service and of the load client; each round on a fresh stack after a warm-up;
* capacity — `bench.bench_capacity` with its defaults (`--quick`: its quick sizes) and
  `--rounds`: the paced upstream (20 tokens/s per stream, one token per event), the largest
  N streams each path sustains at lag p99 < 100 ms, CPU per token per process, run start;
  its own files `bench/results/capacity-<date>.*`, its tables appended to this run's.

Each figure is the median of `--rounds` rounds. Writes `bench/results/bench-<date>.json`,
`bench/results/bench-<date>.md` and `bench/results/bench-<date>.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import signal
import statistics
import sys
from contextlib import ExitStack
from typing import Any

from bench.harness import (
    LITELLM_KEY,
    REDIS_URL,
    RESULTS,
    Stack,
    litellm,
    load,
    postgres_database,
    redis_prefix,
    upstream,
)

TTFT_LEVELS = (1, 10, 100)
THROUGHPUT_LEVELS = (20, 100)
SCENARIOS = ("ttft", "throughput", "slow", "capacity")


def median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def measure(
    rounds: int, mode: str, target: str, conc: int, tokens: int, *extra: str
) -> dict[str, Any]:
    runs = [load(mode, target, conc, tokens, *extra) for _ in range(rounds)]
    return summary(mode, conc, tokens, runs)


def summary(mode: str, conc: int, tokens: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of repeated load-client runs: medians of rates and latencies, sums of
    tokens and errors."""
    return {
        "mode": mode,
        "concurrency": conc,
        "tokens": tokens,
        "rounds": runs,
        "tokens_per_s": median_of(runs, "tokens_per_s"),
        "tokens_per_event": median_of(runs, "tokens_per_event"),
        "ttft_p50_ms": median_of(runs, "ttft_p50_ms"),
        "ttft_p99_ms": median_of(runs, "ttft_p99_ms"),
        "lag_p50_ms": median_of(runs, "lag_p50_ms"),
        "lag_p99_ms": median_of(runs, "lag_p99_ms"),
        "errors": sum(int(r["errors"]) for r in runs),
        "delivered": sum(int(r["tokens"]) for r in runs),
        "requested": sum(int(r["tokens_requested"]) for r in runs),
    }


CHAIN_PATHS = ("provider", "orchestrator", "sse")
"""Paths through Chorus services (their CPU per stream is reported)."""


def cpu_ms_per_stream(
    before: dict[str, float], after: dict[str, float], streams: int
) -> dict[str, float]:
    """CPU milliseconds each service spent per stream between two `Stack.cpu_s` readings
    (idle work of the interval included: heartbeats, timers)."""
    return {name: round(1000 * (after[name] - before[name]) / streams, 2) for name in before}


SLOW_TPS = 5.0
"""Tokens per second of each slow stream."""


def slow_round(env: dict[str, str], runs: int, seconds: int, ramp_s: float) -> dict[str, Any]:
    """One round of the slow scenario on a fresh stack (so each round's memory growth
    starts from services that have not yet held that many runs): a warm-up of 20 short
    runs, then `runs` SSE runs at `SLOW_TPS` for `seconds` — lag, peak memory growth
    (sampled every 0.5 s) and CPU seconds of every service and of the load client."""
    with ExitStack() as stack:
        fresh = {**env, "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("slow"))}
        chorus = stack.enter_context(Stack(fresh))
        gateway = chorus.addresses["gateway"]
        load("sse", gateway, 20, 20, "--model", "simulator/sim-fast")  # imports, caches
        before = chorus.rss_mb()
        cpu_before = chorus.cpu_s()
        with chorus.peak_rss() as peak:
            row = load(
                "sse",
                gateway,
                runs,
                int(SLOW_TPS * seconds),
                "--model",
                "simulator/sim-fast",
                "--tokens-per-second",
                str(SLOW_TPS),
                "--lag",
                "--ramp-s",
                str(ramp_s),
            )
        growth = {name: round(peak[name] - before[name], 1) for name in before}
        cpu = {name: round(s - cpu_before[name], 1) for name, s in chorus.cpu_s().items()}
    cpu["load client"] = row["client_cpu_s"]
    return {
        **row,
        "rss_before_mb": before,
        "rss_peak_mb": dict(peak),
        "rss_growth_mb": growth,
        "rss_per_1000_runs_mb": round(sum(growth.values()) * 1000 / runs, 1),
        "cpu_s": cpu,
    }


def summarize_slow(rounds: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """The slow scenario's figures: medians over rounds (per service too), sums of tokens
    and errors."""
    services = rounds[0]["rss_growth_mb"]
    return {
        **summary("sse", runs, rounds[0]["tokens_requested"] // runs, rounds),
        "runs": runs,
        "rss_per_1000_runs_mb": median_of(rounds, "rss_per_1000_runs_mb"),
        "rss_growth_mb": {
            name: round(statistics.median(r["rss_growth_mb"][name] for r in rounds), 1)
            for name in services
        },
        "cpu_s": {
            name: round(statistics.median(r["cpu_s"][name] for r in rounds), 1)
            for name in rounds[0]["cpu_s"]
        },
    }


def main() -> None:
    # SIGTERM ends the run like Ctrl-C: the servers it started are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke run)")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); default: all of them",
    )
    parser.add_argument("--slow-runs", type=int, default=1000)
    parser.add_argument("--slow-seconds", type=int, default=60)
    parser.add_argument("--slow-ramp-s", type=float, default=0.0)
    parser.add_argument(
        "--baseline",
        help="instead: this checkout against commit BASELINE, alternated (bench.compare)",
    )
    args, rest = parser.parse_known_args()
    if args.baseline:
        from bench.compare import main as compare

        compare(["--baseline", args.baseline, "--rounds", str(args.rounds), *rest])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    scenarios = set(args.only or SCENARIOS)
    if args.skip_slow:
        scenarios.discard("slow")
    if args.skip_capacity:
        scenarios.discard("capacity")
    if args.skip_litellm and "capacity" in scenarios:
        from bench.bench_capacity import PATHS

        capacity_paths: tuple[str, ...] = tuple(p for p in PATHS if not p.startswith("litellm"))
    else:
        capacity_paths = ()
    rounds = 1 if args.quick else args.rounds
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
    out: dict[str, Any] = {"date": stamp, "machine": f"{os.cpu_count()} cores", "rounds": rounds}
    if scenarios - {"capacity"}:  # the fast-upstream scenarios share one stack
        with ExitStack() as stack:
            fast = stack.enter_context(upstream())
            db = stack.enter_context(postgres_database())
            env = {
                "CHORUS_DATABASE_URL": db,
                "CHORUS_REDIS_URL": REDIS_URL,
                "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("run")),
                "CHORUS_OPENAI_COMPATIBLE_BASE_URL": fast,
                "CHORUS_OPENAI_COMPATIBLE_MODELS": '["sim"]',
            }
            chorus = stack.enter_context(Stack(env))
            lite = None if args.skip_litellm else stack.enter_context(litellm(fast))
            chat = f"{fast}/chat/completions"
            targets = {
                "upstream": ("openai", chat),
                "provider": ("provider", chorus.addresses["provider"]),
                "orchestrator": ("orchestrator", chorus.addresses["orchestrator"]),
                "sse": ("sse", chorus.addresses["gateway"]),
            }
            if lite:
                targets["litellm"] = ("openai", lite)

            def extra(name: str) -> tuple[str, ...]:
                return ("--key", LITELLM_KEY) if name == "litellm" else ()

            out["ttft"] = []
            for conc in () if "ttft" not in scenarios else (1, 10) if args.quick else TTFT_LEVELS:
                for name, (mode, target) in targets.items():
                    repeats = 5 if conc == 1 else 1
                    before = chorus.cpu_s()
                    row = measure(
                        rounds, mode, target, conc, 20, "--repeats", str(repeats), *extra(name)
                    )
                    streams = rounds * repeats * conc
                    if name in CHAIN_PATHS and streams >= 100:  # CPU times come in 10 ms ticks
                        row["cpu_ms_per_stream"] = cpu_ms_per_stream(
                            before, chorus.cpu_s(), streams
                        )
                    out["ttft"].append({"path": name, **row})
                    print(
                        f"ttft {name:<12} conc {conc:>3}: p50 {row['ttft_p50_ms']} ms  p99 "
                        f"{row['ttft_p99_ms']} ms  CPU ms per stream {row.get('cpu_ms_per_stream', '-')}",
                        flush=True,
                    )

            out["throughput"] = []
            levels = (20,) if args.quick else THROUGHPUT_LEVELS
            for conc in levels if "throughput" in scenarios else ():
                for name, (mode, target) in targets.items():
                    row = measure(
                        rounds, mode, target, conc, 100 if args.quick else 500, *extra(name)
                    )
                    out["throughput"].append({"path": name, **row, "rss_mb": chorus.rss_mb()})
                    print(
                        f"throughput {name:<12} conc {conc:>3}: {row['tokens_per_s']} tokens/s",
                        flush=True,
                    )

            if "slow" in scenarios:
                slow_runs = 50 if args.quick else args.slow_runs
                seconds = 10 if args.quick else args.slow_seconds
                per_round = [
                    slow_round(env, slow_runs, seconds, args.slow_ramp_s) for _ in range(rounds)
                ]
                out["slow"] = summarize_slow(per_round, slow_runs)
                print(
                    f"slow {slow_runs} runs @ {SLOW_TPS} tok/s, median of {rounds}: "
                    f"lag p50 {out['slow']['lag_p50_ms']} ms, p99 {out['slow']['lag_p99_ms']} ms "
                    f"(rounds {[r['lag_p99_ms'] for r in per_round]}), "
                    f"delivered {out['slow']['delivered']}/{out['slow']['requested']}, "
                    f"memory +{out['slow']['rss_per_1000_runs_mb']} MB per 1,000 live runs "
                    f"(rounds {[r['rss_per_1000_runs_mb'] for r in per_round]})",
                    flush=True,
                )

    if "capacity" in scenarios:  # its own upstream and stacks, after the others are down
        from bench import bench_capacity

        opts = bench_capacity.Options.quick() if args.quick else bench_capacity.Options()
        opts = dataclasses.replace(opts, rounds=rounds, paths=capacity_paths or opts.paths)
        out["capacity"] = bench_capacity.run(opts)
        stem = bench_capacity.write(out["capacity"])
        print(f"capacity results: {stem}.json / .md / .png", flush=True)

    path = RESULTS / f"bench-{stamp}"
    path.with_suffix(".json").write_text(json.dumps(out, indent=2))
    table = markdown(out)
    path.with_suffix(".md").write_text(table)
    plot(out, str(path.with_suffix(".png")))
    print(table)
    print(f"results: {path}.json / .md / .png")


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"# Chorus benchmark {out['date']} ({out['machine']}, median of {out['rounds']} rounds)",
        "",
    ]
    if out.get("ttft"):
        lines += [
            "## Time to first token (ms)",
            "",
            "| path | concurrency | p50 | p99 | CPU ms per stream (provider, history, "
            "orchestrator, gateway) |",
            "|---|---|---|---|---|",
        ]
        for r in out.get("ttft", []):
            cpu = ", ".join(str(v) for v in r.get("cpu_ms_per_stream", {}).values())
            lines.append(
                f"| {r['path']} | {r['concurrency']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} "
                f"| {cpu} |"
            )
    if out.get("throughput"):
        lines += [
            "",
            "## Throughput (tokens/s delivered)",
            "",
            "The fast upstream streams as fast as it can: a path may merge tokens into larger "
            "deltas (tokens per event > 1: coalesced), so these tokens/s are not a capacity at "
            "LLM pace (see the capacity section).",
            "",
            "| path | concurrency × tokens | tokens/s | tokens per event | coalesced | errors |",
            "|---|---|---|---|---|---|",
        ]
        for r in out.get("throughput", []):
            per_event = r.get("tokens_per_event")
            coalesced = "–" if per_event is None else "yes" if per_event > 1.05 else "no"
            lines.append(
                f"| {r['path']} | {r['concurrency']} × {r['tokens']} | {r['tokens_per_s']} "
                f"| {per_event} | {coalesced} | {r['errors']} |"
            )
    if "slow" in out:
        s = out["slow"]
        growth = ", ".join(f"{name} +{mb} MB" for name, mb in s["rss_growth_mb"].items())
        lines += [
            "",
            "## Many slow streams",
            "",
            f"{s['runs']} runs at 5 tokens/s, median of {len(s['rounds'])} rounds (each on "
            f"a fresh stack): TTFT p50 {s['ttft_p50_ms']} ms, lag p99 {s['lag_p99_ms']} ms, "
            f"delivered {s['delivered']}/{s['requested']} tokens, errors {s['errors']}.",
            "",
            f"Memory (peak while the runs were live − before, sampled every 0.5 s): "
            f"{s['rss_per_1000_runs_mb']} MB per 1,000 live runs across services ({growth}).",
            "",
            "| round | lag p50 ms | lag p99 ms | TTFT p50 ms | MB / 1,000 runs | CPU s "
            "(provider, history, orchestrator, gateway, client) |",
            "|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(s["rounds"], 1):
            cpu = ", ".join(str(v) for v in r["cpu_s"].values())
            lines.append(
                f"| {i} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['ttft_p50_ms']} | "
                f"{r['rss_per_1000_runs_mb']} | {cpu} |"
            )
    text = "\n".join(lines) + "\n"
    if "capacity" in out:
        from bench.bench_capacity import markdown as capacity_markdown

        text += "\n" + capacity_markdown(out["capacity"]).replace("# Capacity", "## Capacity", 1)
    return text


def plot(out: dict[str, Any], filename: str) -> None:
    if not out.get("ttft") and not out.get("throughput"):
        return  # nothing of the fast-upstream scenarios (the capacity run has its own plot)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted({r["path"] for r in out.get("ttft", [])}):
        rows = [r for r in out["ttft"] if r["path"] == path]
        ax1.plot(
            [r["concurrency"] for r in rows],
            [r["ttft_p50_ms"] for r in rows],
            marker="o",
            label=path,
        )
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent streams",
        ylabel="TTFT p50 (ms)",
        title="Time to first token",
    )
    ax1.legend()
    for path in sorted({r["path"] for r in out.get("throughput", [])}):
        rows = [r for r in out["throughput"] if r["path"] == path]
        ax2.plot(
            [r["concurrency"] for r in rows],
            [r["tokens_per_s"] for r in rows],
            marker="o",
            label=path,
        )
    ax2.set(
        xlabel="concurrent streams",
        ylabel="tokens/s",
        yscale="log",
        title="Throughput (500-token streams)",
    )
    ax2.legend()
    fig.tight_layout()
    fig.savefig(filename, dpi=110)


if __name__ == "__main__":
    main()
