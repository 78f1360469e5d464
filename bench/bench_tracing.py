"""What tracing costs (issue 22 item 1): the four-service stack with tracing on — every
span sampled (`OTEL_TRACES_SAMPLER=always_on`) and exported over OTLP/gRPC to a receiver in
this process — against the same stack with tracing off, alternated round after round.

    python -m bench.bench_tracing [--rounds 3] [--concurrency 100] [--tokens 500]
        [--ttft-repeats 20] [--paced-runs 100] [--paced-tps 20] [--paced-tokens 200] [--quick]

Each round and side runs on a fresh stack (PostgreSQL + Redis, a throw-away database and
key prefix per side): a warm-up, SSE time to first token at 1 run (`--ttft-repeats` runs
one after the other; p50), then SSE tokens/s at `--concurrency` × `--tokens` (the upstream
is `../shared/anchors/fake_openai.py` at full speed, as in `bench.compare`). The side that
goes first alternates. Reported: medians per side, the TTFT difference (ms), the tokens/s
ratio (on / off), the CPU the four services spent per 1,000 tokens of the throughput load
(less moved by a busy machine than tokens/s) and the spans the receiver got per run. Target (issue 22):
tokens/s at most 5 % lower, TTFT p50 at most 1 ms higher.

The fast upstream's answers reach Chorus's clients coalesced (a 500-token answer in a few
dozen events), so a run there costs ~14 ms of CPU and a span's fixed cost weighs heavily.
Then, on the same stack, `--paced-runs` runs at once at LLM pace (the simulator streaming
`--paced-tps` tokens/s, `--paced-tokens` each, one token per event): the services' CPU per
1,000 tokens there is tracing's cost the way models stream.

The services' CPU of a phase includes the spans it exported: a batch span processor exports
what it buffered only every `OTEL_BSP_SCHEDULE_DELAY` (5 s) unless 512 spans wait, so most
of a phase's encoding and sending happens after the load ends. Each phase is therefore
followed by `SETTLE_S` of quiet on both sides, and the services' idle CPU over that long
(measured on the stack before the first measured phase, once the warm-up's and TTFT's spans
went out) is taken off. Also reported: each service's CPU per run of the throughput phase.

Writes `bench/results/tracing-<date>.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench.compare import side_env
from bench.harness import RESULTS, Stack, load, postgres_database, redis_prefix, upstream
from chorus.core.otlp_receiver import OtlpReceiver

SETTLE_S = 6.0
"""Quiet after each measured phase, seconds: longer than the batch span processor's default
schedule delay (5 s), so the spans a phase made are exported inside its CPU window."""


def tracing_env(receiver: OtlpReceiver) -> dict[str, str]:
    """The OTEL_* variables of the traced side (everything else at its default)."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def one_side(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """TTFT and tokens/s on a fresh stack."""
    with ExitStack() as stack:
        fresh = {**env, "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("trc"))}
        chorus = stack.enter_context(Stack(fresh))
        gateway = chorus.addresses["gateway"]
        load("sse", gateway, 10, 20)  # warm-up: imports, caches, connections
        ttft = load("sse", gateway, 1, 20, "--repeats", str(args.ttft_repeats))
        time.sleep(SETTLE_S)  # the spans of the phases above go out before the idle window
        idle = _cpu_of(chorus.cpu_s, lambda: time.sleep(SETTLE_S), None)[1]
        throughput, by_service = _cpu_of(
            chorus.cpu_s, lambda: load("sse", gateway, args.concurrency, args.tokens), idle
        )
        paced_cpu_s = 0.0
        if args.paced_runs:
            paced_cpu_s = sum(
                _cpu_of(
                    chorus.cpu_s,
                    lambda: load(
                        "sse",
                        gateway,
                        args.paced_runs,
                        args.paced_tokens,
                        "--model",
                        "simulator/sim-fast",
                        "--tokens-per-second",
                        str(args.paced_tps),
                    ),
                    idle,
                )[1].values()
            )
    # CPU the four services spent per 1,000 tokens streamed: unlike tokens/s, not moved by
    # what else the (shared) machine runs meanwhile.
    cpu_s = sum(by_service.values())
    tokens = args.concurrency * args.tokens
    paced_tokens = args.paced_runs * args.paced_tokens
    return {
        "paced_cpu_ms_per_1k_tokens": (
            round(paced_cpu_s * 1e6 / paced_tokens, 2) if paced_tokens else None
        ),
        "load_avg": round(os.getloadavg()[0], 2),  # a busy machine moves the wall-clock figures
        "ttft": ttft,
        "throughput": throughput,
        "cpu_ms_per_1k_tokens": round(cpu_s * 1e6 / tokens, 2),
        "cpu_s_by_service": {k: round(v, 3) for k, v in by_service.items()},
        "cpu_ms_per_run_by_service": {
            k: round(v * 1e3 / args.concurrency, 3) for k, v in by_service.items()
        },
    }


def _cpu_of(
    cpu_s: Callable[[], dict[str, float]],
    phase: Callable[[], Any],
    idle: dict[str, float] | None,
) -> tuple[Any, dict[str, float]]:
    """Run `phase`, then stay quiet `SETTLE_S`; return what `phase` returned and the CPU
    seconds each service spent meanwhile, less its `idle` CPU over `SETTLE_S` (None: less
    nothing; that is how `idle` itself is measured)."""
    before = cpu_s()
    result = phase()
    if idle is not None:
        time.sleep(SETTLE_S)  # the exporters' schedule delay: the phase's spans go out
    after = cpu_s()
    return result, {k: after[k] - before[k] - (idle[k] if idle else 0.0) for k in after}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    sides: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    spans_per_run: list[float] = []
    runs_per_round = 10 + args.ttft_repeats + args.concurrency + args.paced_runs
    with ExitStack() as stack:
        receiver = stack.enter_context(OtlpReceiver())
        fast = stack.enter_context(upstream())
        envs = {
            "off": side_env(stack.enter_context(postgres_database()), fast, None),
            "on": {
                **side_env(stack.enter_context(postgres_database()), fast, None),
                **tracing_env(receiver),
            },
        }
        for r in range(args.rounds):
            for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
                before = len(receiver.spans())
                result = one_side(envs[side], args)
                if side == "on":  # the stack stopped: its exporters flushed on exit
                    spans_per_run.append((len(receiver.spans()) - before) / runs_per_round)
                    receiver.clear()
                sides[side].append(result)
                print(
                    f"round {r + 1} tracing {side}: TTFT p50 {result['ttft']['ttft_p50_ms']} ms, "
                    f"{result['throughput']['tokens_per_s']} tokens/s at "
                    f"{args.concurrency} x {args.tokens}, services' CPU "
                    f"{result['cpu_ms_per_1k_tokens']} ms per 1k tokens, "
                    f"load average {result['load_avg']}",
                    flush=True,
                )
    figures: dict[str, Any] = {"args": vars(args), "rounds": sides}
    for side, rounds in sides.items():
        figures[side] = {
            "ttft_p50_ms": round(statistics.median(r["ttft"]["ttft_p50_ms"] for r in rounds), 2),
            "tokens_per_s": round(
                statistics.median(r["throughput"]["tokens_per_s"] for r in rounds), 1
            ),
            "cpu_ms_per_1k_tokens": round(
                statistics.median(r["cpu_ms_per_1k_tokens"] for r in rounds), 2
            ),
            "paced_cpu_ms_per_1k_tokens": (
                round(statistics.median(r["paced_cpu_ms_per_1k_tokens"] for r in rounds), 2)
                if args.paced_runs
                else None
            ),
            "cpu_ms_per_run_by_service": {
                name: round(
                    statistics.median(r["cpu_ms_per_run_by_service"][name] for r in rounds), 3
                )
                for name in rounds[0]["cpu_ms_per_run_by_service"]
            },
        }
    off, on = figures["off"], figures["on"]
    figures["ttft_delta_ms"] = round(on["ttft_p50_ms"] - off["ttft_p50_ms"], 2)
    figures["tokens_ratio"] = round(on["tokens_per_s"] / off["tokens_per_s"], 3)
    figures["cpu_ratio"] = round(on["cpu_ms_per_1k_tokens"] / off["cpu_ms_per_1k_tokens"], 3)
    if args.paced_runs:
        figures["paced_cpu_ratio"] = round(
            on["paced_cpu_ms_per_1k_tokens"] / off["paced_cpu_ms_per_1k_tokens"], 3
        )
    figures["spans_per_run"] = round(statistics.median(spans_per_run), 1) if spans_per_run else 0
    return figures


def table(f: dict[str, Any]) -> str:
    rows = [
        "| tracing | TTFT p50 (1 run) | tokens/s | services' CPU per 1k tokens |",
        "|---|---|---|---|",
        *(
            f"| {side} | {f[side]['ttft_p50_ms']} ms | {f[side]['tokens_per_s']} "
            f"| {f[side]['cpu_ms_per_1k_tokens']} ms |"
            for side in ("off", "on")
        ),
        f"| on vs off | {f['ttft_delta_ms']:+} ms | ×{f['tokens_ratio']} | ×{f['cpu_ratio']} |",
    ]
    if f.get("paced_cpu_ratio"):
        paced = f["args"]
        rows += [
            "",
            f"At LLM pace ({paced['paced_runs']} runs at once, {paced['paced_tps']:g} tokens/s, "
            f"{paced['paced_tokens']} tokens each, one token per event), services' CPU per 1k "
            f"tokens: off {f['off']['paced_cpu_ms_per_1k_tokens']} ms, on "
            f"{f['on']['paced_cpu_ms_per_1k_tokens']} ms, ×{f['paced_cpu_ratio']}",
        ]
    per_run = {side: f[side]["cpu_ms_per_run_by_service"] for side in ("off", "on")}
    rows += [
        "",
        "| services' CPU per run ‡ | " + " | ".join(per_run["off"]) + " |",
        "|---|" + "---|" * len(per_run["off"]),
        *(
            f"| {side} | " + " | ".join(f"{v} ms" for v in per_run[side].values()) + " |"
            for side in ("off", "on")
        ),
        "| on vs off | "
        + " | ".join(
            f"×{per_run['on'][k] / per_run['off'][k]:.3f}" if per_run["off"][k] else "–"
            for k in per_run["off"]
        )
        + " |",
    ]
    loads = [r["load_avg"] for side in f["rounds"].values() for r in side]
    return (
        "\n".join(rows)
        + f"\n\nspans exported per run (median): {f['spans_per_run']}"
        + f"\nload average over the rounds: {min(loads)}–{max(loads)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--ttft-repeats", type=int, default=20)
    parser.add_argument(
        "--paced-runs",
        type=int,
        default=100,
        help="runs of the LLM-pace phase (the simulator at --paced-tps; 0 skips it)",
    )
    parser.add_argument("--paced-tps", type=float, default=20.0)
    parser.add_argument("--paced-tokens", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 50 x 200, 10 TTFT runs")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.concurrency, args.tokens, args.ttft_repeats = 2, 50, 200, 10
        args.paced_runs, args.paced_tokens = 20, 40
    figures = bench(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"tracing-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(figures, indent=2))
    print(table(figures))
    print(f"written {out}")


if __name__ == "__main__":
    main()
