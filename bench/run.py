"""`make bench`: the whole chain against the upstream and LiteLLM, side by side in one run.

    python -m bench.run [--rounds 3] [--quick] [--skip-litellm] [--skip-slow]
        [--only ttft|throughput|slow ...] [--slow-runs 1000] [--slow-seconds 60]
        [--slow-ramp-s 0]

Starts `../shared/anchors/fake_openai.py` (full speed, and a 5 tokens/s copy), the four
Chorus services as separate processes on PostgreSQL + Redis (a throw-away database), and
LiteLLM's proxy; the load client runs in its own process. Scenarios:

* ttft — time to first token at the upstream, provider-svc (gRPC), orchestrator (gRPC) and
  the gateway's SSE, p50 / p99 at 1, 10 and 100 concurrent streams;
* throughput — tokens/s to SSE clients at 20 × 500 and 100 × 500, vs upstream direct and
  LiteLLM, with each service's resident memory;
* slow — 1,000 concurrent SSE runs at 5 tokens/s for a minute (all started at once, or
  evenly over `--slow-ramp-s` seconds): p99 lag, memory per run, CPU seconds of every
  service and of the load client.

Each figure is the median of `--rounds` rounds. Writes `bench/results/bench-<date>.json`,
`bench/results/bench-<date>.md` and `bench/results/bench-<date>.png`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
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
SCENARIOS = ("ttft", "throughput", "slow")


def median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def measure(
    rounds: int, mode: str, target: str, conc: int, tokens: int, *extra: str
) -> dict[str, Any]:
    runs = [load(mode, target, conc, tokens, *extra) for _ in range(rounds)]
    return {
        "mode": mode,
        "concurrency": conc,
        "tokens": tokens,
        "rounds": runs,
        "tokens_per_s": median_of(runs, "tokens_per_s"),
        "ttft_p50_ms": median_of(runs, "ttft_p50_ms"),
        "ttft_p99_ms": median_of(runs, "ttft_p99_ms"),
        "lag_p50_ms": median_of(runs, "lag_p50_ms"),
        "lag_p99_ms": median_of(runs, "lag_p99_ms"),
        "errors": sum(int(r["errors"]) for r in runs),
        "delivered": sum(int(r["tokens"]) for r in runs),
        "requested": sum(int(r["tokens_requested"]) for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke run)")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); default: all of them",
    )
    parser.add_argument("--slow-runs", type=int, default=1000)
    parser.add_argument("--slow-seconds", type=int, default=60)
    parser.add_argument("--slow-ramp-s", type=float, default=0.0)
    args = parser.parse_args()
    scenarios = set(args.only or SCENARIOS)
    if args.skip_slow:
        scenarios.discard("slow")
    rounds = 1 if args.quick else args.rounds
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
    out: dict[str, Any] = {"date": stamp, "machine": f"{os.cpu_count()} cores", "rounds": rounds}
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
                row = measure(
                    rounds,
                    mode,
                    target,
                    conc,
                    20,
                    "--repeats",
                    "5" if conc == 1 else "1",
                    *extra(name),
                )
                out["ttft"].append({"path": name, **row})
                print(
                    f"ttft {name:<12} conc {conc:>3}: p50 {row['ttft_p50_ms']} ms  p99 {row['ttft_p99_ms']} ms",
                    flush=True,
                )

        out["throughput"] = []
        levels = (20,) if args.quick else THROUGHPUT_LEVELS
        for conc in levels if "throughput" in scenarios else ():
            for name, (mode, target) in targets.items():
                row = measure(rounds, mode, target, conc, 100 if args.quick else 500, *extra(name))
                out["throughput"].append({"path": name, **row, "rss_mb": chorus.rss_mb()})
                print(
                    f"throughput {name:<12} conc {conc:>3}: {row['tokens_per_s']} tokens/s",
                    flush=True,
                )

        if "slow" in scenarios:
            slow_runs = 50 if args.quick else args.slow_runs
            tps = 5.0
            tokens = int(tps * (10 if args.quick else args.slow_seconds))
            before = chorus.rss_mb()
            cpu_before = chorus.cpu_s()
            with chorus.peak_rss() as peak:
                row = measure(
                    1,
                    "sse",
                    chorus.addresses["gateway"],
                    slow_runs,
                    tokens,
                    "--model",
                    "simulator/sim-fast",
                    "--tokens-per-second",
                    str(tps),
                    "--lag",
                    "--ramp-s",
                    str(args.slow_ramp_s),
                )
            growth = {name: round(peak[name] - before[name], 1) for name in before}
            cpu = {name: round(s - cpu_before[name], 1) for name, s in chorus.cpu_s().items()}
            cpu["load client"] = row["rounds"][0]["client_cpu_s"]
            out["slow"] = {
                **row,
                "runs": slow_runs,
                "rss_before_mb": before,
                "rss_peak_mb": dict(peak),
                "rss_growth_mb": growth,
                "rss_per_1000_runs_mb": round(sum(growth.values()) * 1000 / slow_runs, 1),
                "cpu_s": cpu,
            }
            print(
                f"slow {slow_runs} runs @ {tps} tok/s: lag p50 {row['lag_p50_ms']} ms, "
                f"p99 {row['lag_p99_ms']} ms, "
                f"delivered {row['delivered']}/{row['requested']}, "
                f"memory +{out['slow']['rss_per_1000_runs_mb']} MB per 1,000 live runs {growth}, "
                f"CPU s {cpu}",
                flush=True,
            )

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
    lines += [
        "## Time to first token (ms)",
        "",
        "| path | concurrency | p50 | p99 |",
        "|---|---|---|---|",
    ]
    for r in out.get("ttft", []):
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} |"
        )
    lines += [
        "",
        "## Throughput (tokens/s delivered)",
        "",
        "| path | concurrency × tokens | tokens/s | errors |",
        "|---|---|---|---|",
    ]
    for r in out.get("throughput", []):
        lines.append(
            f"| {r['path']} | {r['concurrency']} × {r['tokens']} | {r['tokens_per_s']} | {r['errors']} |"
        )
    if "slow" in out:
        s = out["slow"]
        growth = ", ".join(f"{name} +{mb} MB" for name, mb in s["rss_growth_mb"].items())
        lines += [
            "",
            "## Many slow streams",
            "",
            f"{s['runs']} runs at 5 tokens/s: TTFT p50 {s['ttft_p50_ms']} ms, lag p99 "
            f"{s['lag_p99_ms']} ms, delivered {s['delivered']}/{s['requested']} tokens, "
            f"{s['rounds'][0]['elapsed_s']} s in all.",
            "",
            f"Memory (peak while the runs were live − before, sampled every 0.5 s): "
            f"{s['rss_per_1000_runs_mb']} MB per 1,000 live runs across services ({growth}).",
        ]
    return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], filename: str) -> None:
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
