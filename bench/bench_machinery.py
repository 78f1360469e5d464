"""Machinery that pays (issue 24 item 2): each performance mechanism with and without, in
one run, alternated round after round on fresh stacks.

    python -m bench.bench_machinery [--rounds 3] [--variants base,gc,flag,…] [--streams 60]
        [--tokens 100] [--tps 20] [--quick]

Variants: `base` (everything on, the defaults) and one per mechanism taken out —
by its setting where it has one, else by a bench-only switch (`bench/toggles/sitecustomize.py`,
put on the services' PYTHONPATH with `CHORUS_BENCH_WITHOUT`; the services' code is not
edited):

| variant | taken out by |
|---|---|
| `gc` | `CHORUS_GC_THRESHOLD=0`, `CHORUS_GC_FREEZE=false` (CPython's defaults) |
| `prefetch` | `CHORUS_PREFETCH_FIRST_MODEL_CALL=false` |
| `coalesce` | `CHORUS_DELTA_COALESCE_S=0` (orchestrator) and `CHORUS_COALESCE_DELTAS=false` (provider) |
| `sse_flush` | `CHORUS_SSE_FLUSH_INTERVAL_S=0` (gateway: write every SSE frame at once) |
| `flag`, `protojson`, `watchdog`, `join_pieces`, `window` | the bench switch of that name |

Each round and variant runs on a fresh four-service stack (PostgreSQL: a throw-away
database per variant; Redis: the machine's, a key prefix per stack). Upstreams: the paced
one (`bench/paced_upstream.py`, one token per event at `--tps`) as provider-svc's
`openai-compatible` backend, and `../shared/anchors/fake_openai.py` at full speed as its
`openai` backend. In order, on each stack:

1. warm-up (20 short runs);
2. **LLM pace**: `--streams` SSE streams of `--tokens` tokens kept live (2 s ramp, 6 s hold,
   `bench.paced_client`): lag p50 / p99, services' CPU ms per delivered token, peak RSS
   growth per stream (KB, the four services);
3. **TTFT p50** at 1 run (SSE, 20 one-token runs in a row, paced upstream);
4. **run start**: 100 concurrent one-token runs, services' CPU ms per run;
5. **tokens/s** at 100 × 500 from the fast upstream (SSE; coalesced ‡) and services' CPU ms
   per 1,000 tokens there.

`--ttft-only`: every variant's stack up at once and TTFT p50 at 1 run measured in short
batches taken in turn (`--ttft-batches`), for the one wall-clock figure a busy machine
moves most.

`--gc-stats`: every service also records the CPU time its cyclic garbage collections take
(`CHORUS_BENCH_GC_STATS_DIR`, see the switches' module); `gc_share` is that time over the
four services' CPU over the stack's life — a figure a busy machine moves little.

Reported: medians per variant and each figure's ratio without / with (base). The variant
order alternates (reversed every other round). Writes `bench/results/machinery-<date>.json`
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import (
    REDIS_URL,
    REPO,
    RESULTS,
    Stack,
    load,
    paced_upstream,
    postgres_database,
    redis_prefix,
    upstream,
)

SERVICES = ("provider", "history", "orchestrator", "gateway")
TOGGLES = REPO / "bench" / "toggles"
SWITCHED = ("flag", "protojson", "watchdog", "join_pieces", "window")
SETTINGS: dict[str, dict[str, str]] = {
    "base": {},
    "gc": {"CHORUS_GC_THRESHOLD": "0", "CHORUS_GC_FREEZE": "false"},
    "prefetch": {"CHORUS_PREFETCH_FIRST_MODEL_CALL": "false"},
    "coalesce": {"CHORUS_DELTA_COALESCE_S": "0", "CHORUS_COALESCE_DELTAS": "false"},
    "sse_flush": {"CHORUS_SSE_FLUSH_INTERVAL_S": "0"},
}
VARIANTS = (*SETTINGS, *SWITCHED)
FIGURES = (
    ("lag_p50_ms", "lag p50 ms"),
    ("lag_p99_ms", "lag p99 ms"),
    ("cpu_ms_per_token", "CPU ms / token (paced)"),
    ("rss_kb_per_stream", "RSS KB / stream"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("start_cpu_ms_per_run", "CPU ms / run start"),
    ("tokens_per_s", "tokens/s ‡"),
    ("cpu_ms_per_1k_fast", "CPU ms / 1k tokens ‡"),
)


def variant_env(variant: str) -> dict[str, str]:
    """The environment that takes `variant`'s mechanism out (nothing for `base`)."""
    if variant in SWITCHED:
        path = os.pathsep.join(p for p in (str(TOGGLES), os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path, "CHORUS_BENCH_WITHOUT": variant}
    return dict(SETTINGS[variant])


def paced(target: str, streams: int, tokens: int, tps: float, *extra: str) -> dict[str, Any]:
    """`bench.paced_client sse` in its own process; its JSON result."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.paced_client", "sse", target),
            *(str(streams), str(tokens), "--tps", str(tps), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"paced client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def one_round(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """The figures of one variant on a fresh stack (see the module docstring)."""
    out: dict[str, Any] = {"load_start": loadavg()}
    gc_dir = tempfile.mkdtemp(prefix="machinery-gc-") if args.gc_stats else None
    with ExitStack() as stack:
        fresh = {**env, "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("mach"))}
        if gc_dir is not None:
            fresh["CHORUS_BENCH_GC_STATS_DIR"] = gc_dir
            if "PYTHONPATH" not in fresh:
                fresh["PYTHONPATH"] = variant_env(SWITCHED[0])["PYTHONPATH"]
        chorus = stack.enter_context(Stack(fresh))
        gw = chorus.addresses["gateway"]
        once = ("--once", "--ramp-s", "0")
        paced(gw, 20, 10, args.tps, *once)  # warm-up
        rss0 = chorus.rss_mb()
        cpu0 = chorus.cpu_s()
        with chorus.peak_rss(0.25) as peak:
            level = paced(
                gw,
                args.streams,
                args.tokens,
                args.tps,
                *("--ramp-s", str(args.ramp_s), "--hold-s", str(args.hold_s)),
            )
        cpu1 = chorus.cpu_s()
        delivered = level["tokens"] or 1
        out["lag_p50_ms"] = level["lag_p50_ms"]
        out["lag_p99_ms"] = level["lag_p99_ms"]
        out["lost"] = level["lost"]
        out["errors"] = level["errors"]
        out["tokens_per_event"] = level.get("tokens_per_event")
        out["cpu_ms_per_token"] = round(
            1000 * (sum(cpu1.values()) - sum(cpu0.values())) / delivered, 4
        )
        out["cpu_ms_per_token_by_service"] = {
            n: round(1000 * (cpu1[n] - cpu0[n]) / delivered, 4) for n in SERVICES
        }
        out["rss_kb_per_stream"] = round(
            1024 * sum(max(0.0, peak[n] - rss0[n]) for n in SERVICES) / args.streams, 1
        )
        out["rss_kb_per_stream_by_service"] = {
            n: round(1024 * max(0.0, peak[n] - rss0[n]) / args.streams, 1) for n in SERVICES
        }
        out["ttft_p50_ms"] = paced(gw, 1, 1, args.tps, *once, "--repeats", "20")["ttft_p50_ms"]
        c0 = chorus.cpu_s()
        start = paced(gw, args.start_runs, 1, args.tps, *once)
        c1 = chorus.cpu_s()
        out["start_cpu_ms_per_run"] = round(
            1000 * (sum(c1.values()) - sum(c0.values())) / args.start_runs, 2
        )
        out["start_errors"] = start["errors"]
        load("sse", gw, 10, 20, "--model", "fast/sim")  # warm-up of the fast provider
        c0 = chorus.cpu_s()
        fast = load("sse", gw, args.fast_streams, args.fast_tokens, "--model", "fast/sim")
        c1 = chorus.cpu_s()
        out["tokens_per_s"] = fast["tokens_per_s"]
        out["fast_errors"] = fast.get("errors", 0)
        out["cpu_ms_per_1k_fast"] = round(
            1e6 * (sum(c1.values()) - sum(c0.values())) / max(1, int(fast["tokens"])), 2
        )
    out["load_end"] = loadavg()
    if gc_dir is not None:  # the stack stopped: each service wrote its totals at exit
        stats = [json.loads(p.read_text()) for p in Path(gc_dir).glob("*.json")]
        shutil.rmtree(gc_dir, ignore_errors=True)
        gc_s = sum(sum(s["gc_cpu_s"]) for s in stats)
        cpu_s = sum(s["process_cpu_s"] for s in stats)
        out["gc_processes"] = len(stats)
        out["gc_cpu_s"] = round(gc_s, 3)
        out["gc_share"] = round(gc_s / cpu_s, 4) if cpu_s else None
        out["gc_collections"] = [sum(s["collections"][g] for s in stats) for g in range(3)]
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    with ExitStack() as stack:
        slow = stack.enter_context(paced_upstream(args.tps, args.tokens))
        fast = stack.enter_context(upstream())
        # the fast upstream as a second OpenAI-compatible provider, `fast/sim`
        RESULTS.mkdir(parents=True, exist_ok=True)
        models = RESULTS / f"machinery-models-{os.getpid()}.yaml"
        models.write_text(
            f"providers:\n  fast:\n    kind: openai-compatible\n    base_url: {fast}\n"
            "models:\n  - provider: fast\n    name: sim\n"
        )
        envs: dict[str, dict[str, str]] = {}
        for v in args.variants:
            envs[v] = {
                "CHORUS_DATABASE_URL": stack.enter_context(postgres_database()),
                "CHORUS_REDIS_URL": REDIS_URL,
                "CHORUS_OPENAI_COMPATIBLE_BASE_URL": slow.url,
                "CHORUS_OPENAI_COMPATIBLE_MODELS": '["sim"]',
                "CHORUS_MODELS_FILE": str(models),
                **variant_env(v),
            }
        for r in range(args.rounds):
            order = list(args.variants) if r % 2 == 0 else list(reversed(args.variants))
            for v in order:
                result = one_round(envs[v], args)
                rounds[v].append(result)
                print(
                    f"round {r + 1} {v}: "
                    + ", ".join(f"{label} {result[key]}" for key, label in FIGURES)
                    + (f", gc share {result['gc_share']}" if "gc_share" in result else "")
                    + f" (load {result['load_start']}→{result['load_end']})",
                    flush=True,
                )
        models.unlink(missing_ok=True)
    figures: dict[str, Any] = {"args": vars(args), "rounds": rounds, "median": {}, "ratio": {}}
    for v, rs in rounds.items():
        figures["median"][v] = {
            key: round(statistics.median(r[key] for r in rs if r[key] is not None), 4)
            for key, _ in FIGURES
        }
        figures["median"][v]["load"] = statistics.median(r["load_start"] for r in rs)
        if all(r.get("gc_share") is not None for r in rs):
            figures["median"][v]["gc_share"] = statistics.median(r["gc_share"] for r in rs)
    base = figures["median"].get("base")
    if base:
        for v in args.variants:
            figures["ratio"][v] = {
                key: round(figures["median"][v][key] / base[key], 3) if base[key] else None
                for key, _ in FIGURES
            }
    return figures


def ttft_interleaved(args: argparse.Namespace) -> dict[str, Any]:
    """TTFT p50 at 1 run with every variant's stack up at once, the variants taken in turn
    in short batches (`--ttft-batches` × 20 one-token runs each): a busy machine slows all
    of them alike, which alternated fresh stacks cannot promise for a wall-clock figure."""
    per: dict[str, list[float]] = {v: [] for v in args.variants}
    with ExitStack() as stack:
        slow = stack.enter_context(paced_upstream(args.tps, args.tokens))
        gateways = {}
        for v in args.variants:
            env = {
                "CHORUS_DATABASE_URL": stack.enter_context(postgres_database()),
                "CHORUS_REDIS_URL": REDIS_URL,
                "CHORUS_REDIS_KEY_PREFIX": stack.enter_context(redis_prefix("mach")),
                "CHORUS_OPENAI_COMPATIBLE_BASE_URL": slow.url,
                "CHORUS_OPENAI_COMPATIBLE_MODELS": '["sim"]',
                **variant_env(v),
            }
            gateways[v] = stack.enter_context(Stack(env)).addresses["gateway"]
        once = ("--once", "--ramp-s", "0")
        for v in args.variants:
            paced(gateways[v], 10, 1, args.tps, *once)  # warm-up
        for b in range(args.ttft_batches):
            order = list(args.variants) if b % 2 == 0 else list(reversed(args.variants))
            for v in order:
                r = paced(gateways[v], 1, 1, args.tps, *once, "--repeats", "20")
                per[v].append(r["ttft_p50_ms"])
    out = {v: {"ttft_p50_ms": round(statistics.median(x), 2), "batches": x} for v, x in per.items()}
    print(json.dumps(out), flush=True)
    return out


def table(f: dict[str, Any]) -> str:
    head = "| variant (mechanism taken out) | " + " | ".join(label for _, label in FIGURES)
    rows = [head + " | load avg |", "|---" * (len(FIGURES) + 2) + "|"]
    for v, med in f["median"].items():
        ratio = f["ratio"].get(v, {})
        cells = [
            f"{med[key]}" + (f" (×{ratio[key]})" if v != "base" and ratio.get(key) else "")
            for key, _ in FIGURES
        ]
        rows.append(f"| {v} | " + " | ".join(cells) + f" | {med['load']} |")
    shares = {v: med["gc_share"] for v, med in f["median"].items() if "gc_share" in med}
    if shares:
        rows.append("")
        rows.append("gc CPU share (median): " + ", ".join(f"{v} {s}" for v, s in shares.items()))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--ramp-s", type=float, default=2.0)
    parser.add_argument("--hold-s", type=float, default=6.0)
    parser.add_argument("--start-runs", type=int, default=100)
    parser.add_argument("--fast-streams", type=int, default=100)
    parser.add_argument("--fast-tokens", type=int, default=500)
    parser.add_argument(
        "--gc-stats",
        action="store_true",
        help="every service records the CPU its garbage collections take (gc_share)",
    )
    parser.add_argument(
        "--ttft-only",
        action="store_true",
        help="TTFT p50 at 1 run only, all variants' stacks up at once, taken in turn",
    )
    parser.add_argument("--ttft-batches", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 round, 20 streams, 20 × 100")
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        args.rounds, args.streams, args.start_runs = 1, 20, 20
        args.fast_streams, args.fast_tokens = 20, 100
    if args.ttft_only:
        figures = {"args": vars(args), "ttft_interleaved": ttft_interleaved(args)}
    else:
        figures = bench(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"machinery-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(figures, indent=2))
    if not args.ttft_only:
        print(table(figures))
    print(f"written {out}")


if __name__ == "__main__":
    main()
