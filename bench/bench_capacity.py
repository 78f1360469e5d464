"""Capacity at LLM pace: how many concurrent streams each path carries at a lag nobody notices.

    python -m bench.bench_capacity [--quick] [--rounds 3] [--tps 20] [--tokens 200]
        [--ramp-s 5] [--hold-s 10] [--levels 25,50,100,...] [--max-lag-ms 100]
        [--paths direct,relay,litellm,litellm-1,provider,orchestrator,sse]
        [--stores postgres,sqlite] [--start-runs 100] [--skip-start]

The upstream is `bench.paced_upstream`: each token its own SSE event, `--tps` tokens/s per
stream, `--tokens`-token answers, each token carrying the wall-clock time it was scheduled
to be emitted. The load client (`bench.paced_client`, its own process) keeps N streams live
(closed loop: started evenly over `--ramp-s`, each slot opening its next stream when one
ends, for `--hold-s` more) and measures per token lag = receipt − scheduled emit time, so
a chain that starves the upstream of CPU is not flattered and merged deltas still count
per token. Paths:

* direct — the client to the upstream;
* relay — `bench.relay`, a bare one-hop Python relay (the floor for a Python service);
* litellm — LiteLLM's proxy with one worker per core; litellm-1 — with one worker;
* provider — provider-svc `StreamChat` (gRPC; `openai-compatible` backend → upstream);
* orchestrator — orchestrator-svc `StreamRun` (a SINGLE team of one assistant);
* sse — the gateway's SSE (`POST /api/v1/runs/stream`), the whole chain.

The Chorus paths run on a fresh four-service stack each, on PostgreSQL (a throw-away
database) + Redis (a private `redis-server`), and on the embedded default (SQLite in a
temporary directory, no Redis); provider-svc uses no store, so it runs on the first store
only. For each path N steps up through `--levels` (each level `--rounds` rounds) until the
first level whose median lag p99 reaches `--max-lag-ms`, or where a token was lost or a
stream failed in any round: the largest N before it is the path's capacity. Per level:
CPU ms per delivered token of every process (each Chorus service, PostgreSQL's backends of
the database, Redis, LiteLLM and its workers, the relay, the upstream and the load client),
resident memory per stream (peak during the level − idle after the warm-up, / N), tokens
per event (> 1: the path merged tokens into larger deltas — lag is what counts).

Run start (per store, fresh stack, `--start-runs` runs of one token): CPU ms across the four
services per run at that many concurrent starts, TTFT p99 at that concurrency and TTFT p50
of one run at a time, each against the upstream direct.

Writes `bench/results/capacity-<date>.{json,md,png}` (PNG: N against lag p99 per path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    LITELLM_KEY,
    LITELLM_PIDS,
    REPO,
    RESULTS,
    Stack,
    litellm,
    paced_upstream,
    postgres_database,
    private_redis,
    relay,
)
from bench.meter import Group, Meter, one, postgres_backends, tree

CORES = os.cpu_count() or 1
PATHS = ("direct", "relay", "litellm", "litellm-1", "provider", "orchestrator", "sse")
CHAIN = ("provider", "orchestrator", "sse")
STORES = ("postgres", "sqlite")
SERVICES = ("provider", "history", "orchestrator", "gateway")
ON_PATH = {
    "provider": ("provider",),
    "orchestrator": ("provider", "history", "orchestrator", "postgres", "redis"),
    "sse": (*SERVICES, "postgres", "redis"),
}
"""The processes a Chorus path's tokens go through (the ones measured for it)."""
NOT_SERVICES = ("upstream", "client", "postgres", "redis")
"""Not counted in a path's memory per stream: the instrument, and the stores (a PostgreSQL
backend's RSS counts the shared buffers it touched, a new pooled connection ~10 MB)."""
CPU_HEADINGS = {
    "upstream": "upstream",
    "client": "client",
    "relay": "relay",
    "litellm": "LiteLLM",
    "provider": "provider",
    "history": "history",
    "orchestrator": "orchestrator",
    "gateway": "gateway",
    "postgres": "PostgreSQL",
    "redis": "Redis",
}
"""The processes CPU is reported for (meter group → table heading), in table order."""
LEVELS = (25, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500, 2000)
QUICK_LEVELS = (10, 20, 40)
MODES = {
    "direct": "openai",
    "relay": "openai",
    "litellm": "openai",
    "litellm-1": "openai",
    "provider": "provider",
    "orchestrator": "orchestrator",
    "sse": "sse",
}


@dataclass(frozen=True)
class Options:
    """What one capacity run measures (see the module docstring for each option)."""

    tps: float = 20.0
    tokens: int = 200
    ramp_s: float = 5.0
    hold_s: float = 10.0
    rounds: int = 3
    levels: tuple[int, ...] = LEVELS
    max_lag_ms: float = 100.0
    paths: tuple[str, ...] = PATHS
    stores: tuple[str, ...] = STORES
    start_runs: int = 100
    start_single: int = 30
    skip_start: bool = False

    @classmethod
    def quick(cls) -> Options:
        """Small sizes for a smoke run: 40-token answers, three levels, one round."""
        return cls(
            tokens=40,
            ramp_s=1.0,
            hold_s=2.0,
            rounds=1,
            levels=QUICK_LEVELS,
            start_runs=20,
            start_single=5,
        )


def label(path: str, store: str | None) -> str:
    """A path's name in tables: `gateway SSE [postgres]`, `LiteLLM (2 workers)`, …"""
    names = {
        "direct": "upstream direct",
        "relay": "bare Python relay",
        "litellm": f"LiteLLM ({CORES} workers)",
        "litellm-1": "LiteLLM (1 worker)",
        "provider": "provider-svc gRPC",
        "orchestrator": "orchestrator StreamRun",
        "sse": "gateway SSE",
    }
    return names[path] + (f" [{store}]" if store else "")


def client(
    mode: str, target: str, streams: int, tokens: int, opts: Options, *extra: str
) -> dict[str, Any]:
    """Run `bench.paced_client` in its own process; its JSON result."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.paced_client",
            mode,
            target,
            str(streams),
            str(tokens),
            "--tps",
            str(opts.tps),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=opts.ramp_s + opts.hold_s + tokens / opts.tps + 600,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"paced client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median(values: list[float | None]) -> float | None:
    """The median of the values that are not None, rounded; None when there are none."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def level_row(
    n: int, rounds: list[dict[str, Any]], baseline: dict[str, float], opts: Options
) -> dict[str, Any]:
    """One level's figures: medians over rounds; `ok` when the median lag p99 is under the
    bar and no round lost a token or a stream."""
    cpu_per_token: dict[str, float | None] = {}
    for name in CPU_HEADINGS:
        per_round = [
            1000 * r["cpu_s"][name] / r["tokens"]
            for r in rounds
            if r["tokens"] and name in r["cpu_s"]
        ]
        cpu_per_token[name] = round(statistics.median(per_round), 4) if per_round else None
    rss_kb: dict[str, float] = {
        name: round(
            1024 * max(0.0, max(r["peak_rss_mb"][name] for r in rounds) - baseline[name]) / n, 1
        )
        for name in baseline
    }
    lag_p99 = median([r["lag_p99_ms"] for r in rounds])
    lost = sum(r["lost"] for r in rounds)
    errors = sum(r["errors"] for r in rounds)
    why = []
    if lag_p99 is None or lag_p99 >= opts.max_lag_ms:
        why.append(f"lag p99 {lag_p99} ms")
    if lost:
        why.append(f"{lost} tokens lost")
    if errors:
        first = next(r["first_errors"][:1] for r in rounds if r["errors"])
        why.append(f"{errors} streams failed: {first}")
    client_share = median([r["client_cpu_s"] / r["elapsed_s"] for r in rounds])
    return {
        "n": n,
        "ok": not why,
        "why": "; ".join(why),
        "lag_p50_ms": median([r["lag_p50_ms"] for r in rounds]),
        "lag_p99_ms": lag_p99,
        "lag_p99_rounds": [r["lag_p99_ms"] for r in rounds],
        "ttft_p50_ms": median([r["ttft_p50_ms"] for r in rounds]),
        "tokens_per_event": median([r["tokens_per_event"] for r in rounds]),
        "delivered": sum(r["tokens"] for r in rounds),
        "expected": sum(r["tokens_expected"] for r in rounds),
        "lost": lost,
        "duplicates": sum(r["duplicates"] for r in rounds),
        "errors": errors,
        "cpu_ms_per_token": cpu_per_token,
        "rss_kb_per_stream": rss_kb,
        "client_cpu_share": client_share,
        "rounds": rounds,
    }


def ladder(
    path: str,
    store: str | None,
    target: str,
    groups: dict[str, Group],
    opts: Options,
    *extra: str,
) -> dict[str, Any]:
    """Step N up through `opts.levels` on one path until the first failing level."""
    meter = Meter(groups)
    mode = MODES[path]
    # warm-up (imports, caches, connection pools), then the idle memory levels start from
    warm = str(min(opts.levels[0], 20))
    client(mode, target, int(warm), 10, opts, "--once", "--ramp-s", "0", *extra)
    baseline = meter.rss_mb()
    levels: list[dict[str, Any]] = []
    for n in opts.levels:
        rounds = []
        for _ in range(opts.rounds):
            with meter.window() as window:
                row = client(
                    mode,
                    target,
                    n,
                    opts.tokens,
                    opts,
                    "--ramp-s",
                    str(opts.ramp_s),
                    "--hold-s",
                    str(opts.hold_s),
                    *extra,
                )
            row["cpu_s"] = {**window.cpu_s, "client": row["client_cpu_s"]}
            row["peak_rss_mb"] = window.peak_rss_mb
            rounds.append(row)
            # the level has failed whatever the rounds left would show: do not run them
            slow = [r for r in rounds if (r["lag_p99_ms"] or math.inf) >= opts.max_lag_ms]
            if row["lost"] or row["errors"] or len(slow) > opts.rounds // 2:
                break
        level = level_row(n, rounds, baseline, opts)
        levels.append(level)
        print(
            f"capacity {label(path, store):<36} N {n:>5}: lag p99 {level['lag_p99_ms']} ms "
            f"(rounds {level['lag_p99_rounds']}), delivered {level['delivered']}/"
            f"{level['expected']}, tokens/event {level['tokens_per_event']}, "
            f"client CPU {level['client_cpu_share']} of a core"
            + ("" if level["ok"] else f"  FAILED: {level['why']}"),
            flush=True,
        )
        if not level["ok"]:
            break
    passed = [level for level in levels if level["ok"]]
    return {
        "path": path,
        "store": store,
        "label": label(path, store),
        "sustained": passed[-1]["n"] if passed else 0,
        "capped": bool(passed) and len(passed) == len(opts.levels),
        "at_sustained": passed[-1] if passed else None,
        "first_failure": None if levels[-1]["ok"] else levels[-1],
        "baseline_rss_mb": baseline,
        "levels": levels,
    }


@contextmanager
def chorus_stack(store: str, upstream_url: str) -> Iterator[tuple[Stack, dict[str, Group]]]:
    """A fresh four-service stack on `store` in front of the paced upstream, with the groups
    of processes to measure (the services, and PostgreSQL's backends and Redis)."""
    with ExitStack() as stack:
        env = {
            "CHORUS_OPENAI_COMPATIBLE_BASE_URL": upstream_url,
            "CHORUS_OPENAI_COMPATIBLE_MODELS": '["sim"]',
        }
        groups: dict[str, Group] = {}
        if store == "postgres":
            database = stack.enter_context(postgres_database())
            redis_server = stack.enter_context(private_redis())
            env |= {"CHORUS_DATABASE_URL": database, "CHORUS_REDIS_URL": redis_server.url}
            groups["postgres"] = postgres_backends(database.rsplit("/", 1)[1])
            groups["redis"] = one(redis_server.pid)
        else:
            env["CHORUS_DATA_DIR"] = stack.enter_context(tempfile.TemporaryDirectory())
        chorus = stack.enter_context(Stack(env))
        for name in SERVICES:
            groups[name] = one(chorus.procs[name].proc.pid)
        yield chorus, groups


def chain_target(path: str, chorus: Stack) -> str:
    """Where the load client attaches for a Chorus path."""
    return chorus.addresses["gateway" if path == "sse" else path]


def run_start(store: str, upstream_url: str, opts: Options) -> dict[str, Any]:
    """Run start on a fresh stack: CPU across the four services per run at `start_runs`
    concurrent one-token runs, TTFT p99 there and TTFT p50 one run at a time, against the
    upstream direct (medians of `opts.rounds` rounds)."""
    chat = f"{upstream_url}/chat/completions"
    rounds = []
    with chorus_stack(store, upstream_url) as (chorus, groups):
        gateway = chorus.addresses["gateway"]
        meter = Meter({name: groups[name] for name in SERVICES})
        client("sse", gateway, 10, 1, opts, "--once", "--ramp-s", "0")  # warm-up
        for _ in range(opts.rounds):
            single = ("--once", "--ramp-s", "0", "--repeats", str(opts.start_single))
            sse_1 = client("sse", gateway, 1, 1, opts, *single)
            up_1 = client("openai", chat, 1, 1, opts, *single)
            with meter.window() as window:
                sse_n = client("sse", gateway, opts.start_runs, 1, opts, "--once", "--ramp-s", "0")
            up_n = client("openai", chat, opts.start_runs, 1, opts, "--once", "--ramp-s", "0")
            rounds.append(
                {
                    "cpu_ms_per_run": {
                        name: round(1000 * s / opts.start_runs, 2)
                        for name, s in window.cpu_s.items()
                    },
                    "sse_ttft_p50_1_ms": sse_1["ttft_p50_ms"],
                    "upstream_ttft_p50_1_ms": up_1["ttft_p50_ms"],
                    "sse_ttft_p99_n_ms": sse_n["ttft_p99_ms"],
                    "upstream_ttft_p99_n_ms": up_n["ttft_p99_ms"],
                    "errors": sse_1["errors"] + sse_n["errors"],
                }
            )
    cpu = {name: median([r["cpu_ms_per_run"][name] for r in rounds]) or 0.0 for name in SERVICES}
    out: dict[str, Any] = {
        "store": store,
        "runs": opts.start_runs,
        "cpu_ms_per_run": cpu,
        "cpu_ms_per_run_all": median([sum(r["cpu_ms_per_run"].values()) for r in rounds]),
        "errors": sum(r["errors"] for r in rounds),
        "rounds": rounds,
    }
    for key in (
        "sse_ttft_p50_1_ms",
        "upstream_ttft_p50_1_ms",
        "sse_ttft_p99_n_ms",
        "upstream_ttft_p99_n_ms",
    ):
        out[key] = median([r[key] for r in rounds])
    print(
        f"run start [{store}]: {out['cpu_ms_per_run_all']} ms CPU per run across the four "
        f"at {opts.start_runs} concurrent ({cpu}); TTFT p99 at {opts.start_runs} "
        f"{out['sse_ttft_p99_n_ms']} ms vs upstream {out['upstream_ttft_p99_n_ms']}; "
        f"TTFT p50 at 1 {out['sse_ttft_p50_1_ms']} ms vs upstream "
        f"{out['upstream_ttft_p50_1_ms']}",
        flush=True,
    )
    return out


def run(opts: Options) -> dict[str, Any]:
    """Measure every path of `opts` (see the module docstring); the results as a dict."""
    out: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ"),
        "machine": f"{CORES} cores",
        "options": {k: v for k, v in opts.__dict__.items()},
        "paths": [],
        "run_start": [],
    }
    with paced_upstream(opts.tps, opts.tokens) as upstream:
        chat = f"{upstream.url}/chat/completions"
        root = upstream.url.removesuffix("/v1")
        base: dict[str, Group] = {"upstream": one(upstream.pid)}
        for path in [p for p in opts.paths if p not in CHAIN]:
            if path == "direct":
                out["paths"].append(ladder(path, None, chat, base, opts))
            elif path == "relay":
                with relay(root) as server:
                    target = f"{server.url}/v1/chat/completions"
                    groups = {**base, "relay": one(server.pid)}
                    out["paths"].append(ladder(path, None, target, groups, opts))
            else:
                workers = 1 if path == "litellm-1" else CORES
                with litellm(upstream.url, workers) as lite:
                    if lite is None:
                        print(f"{path}: LiteLLM could not be installed; skipped", flush=True)
                        continue
                    groups = {**base, "litellm": tree(LITELLM_PIDS[lite])}
                    key = ("--key", LITELLM_KEY)
                    out["paths"].append(ladder(path, None, lite, groups, opts, *key))
        for i, store in enumerate(opts.stores):
            for path in [p for p in opts.paths if p in CHAIN]:
                if path == "provider" and i > 0:
                    continue  # provider-svc uses no store
                with chorus_stack(store, upstream.url) as (chorus, groups):
                    target = chain_target(path, chorus)
                    on_path = {n: g for n, g in groups.items() if n in ON_PATH[path]}
                    row = ladder(path, store, target, {**base, **on_path}, opts)
                    out["paths"].append(row)
        if not opts.skip_start:
            out["run_start"] = [run_start(store, upstream.url, opts) for store in opts.stores]
    out["ratios"] = ratios(out["paths"])
    return out


def ratios(paths: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gateway SSE (each store) against LiteLLM and the bare relay: streams sustained, and
    CPU per delivered token (the four services + PostgreSQL + Redis against LiteLLM's
    processes, at each side's largest N sustained)."""
    by_path = {(p["path"], p["store"]): p for p in paths}
    out = []
    for (path, _store), row in by_path.items():
        if path != "sse":
            continue
        for other in ("litellm", "litellm-1", "relay"):
            theirs = by_path.get((other, None))
            if theirs is None:
                continue
            entry: dict[str, Any] = {
                "what": f"{row['label']} / {theirs['label']}",
                "streams": (
                    round(row["sustained"] / theirs["sustained"], 2)
                    if theirs["sustained"]
                    else None
                ),
            }
            ours_cpu, their_total = path_cpu(row), path_cpu(theirs)
            if ours_cpu and their_total:
                entry["cpu_per_token"] = round(ours_cpu / their_total, 2)
            out.append(entry)
    return out


def path_cpu(row: dict[str, Any]) -> float | None:
    """CPU ms per delivered token of a path's own processes (the relay, LiteLLM, or the four
    services + PostgreSQL + Redis; not the upstream nor the client) at its largest N
    sustained; None when it sustained no level."""
    level = row["at_sustained"]
    if level is None:
        return None
    cpu = level["cpu_ms_per_token"]
    own = [name for name in cpu if name not in ("upstream", "client") and cpu[name] is not None]
    return round(sum(cpu[name] for name in own), 4) if own else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def markdown(out: dict[str, Any]) -> str:
    """The capacity tables (the layout of bench/README.md's "Capacity at LLM pace")."""
    o = out["options"]
    lines = [
        f"# Capacity at LLM pace {out['date']} ({out['machine']}, median of {o['rounds']} rounds)",
        "",
        f"{o['tps']:g} tokens/s per stream, one token per upstream event, {o['tokens']}-token "
        f"answers; N streams kept live (started over {o['ramp_s']:g} s, held "
        f"{o['hold_s']:g} s); sustained = lag p99 < {o['max_lag_ms']:g} ms and no token lost. "
        "Lag = client receipt − the time the upstream was scheduled to emit the token. "
        "tokens/event > 1: the path merged tokens into larger deltas (coalesced).",
        "",
        "| path | N sustained | lag p50 / p99 at N (ms) | tokens/event | RSS KB per stream "
        "(the path's services) | first failure (N: why) |",
        "|---|---|---|---|---|---|",
    ]
    for row in out["paths"]:
        level = row["at_sustained"] or {}
        rss = level.get("rss_kb_per_stream", {})
        own = [n for n in rss if n not in NOT_SERVICES]  # the path's own services
        fail = row["first_failure"]
        lines.append(
            f"| {row['label']} | {row['sustained']}{'+' if row['capped'] else ''} | "
            f"{_fmt(level.get('lag_p50_ms'))} / {_fmt(level.get('lag_p99_ms'))} | "
            f"{_fmt(level.get('tokens_per_event'))} | "
            f"{_fmt(round(sum(rss[n] for n in own), 1)) if own else '–'} | "
            f"{'N ' + str(fail['n']) + ': ' + fail['why'] if fail else '–'} |"
        )
    lines += [
        "",
        "CPU ms per delivered token at each path's largest N sustained (PostgreSQL: the "
        "backends of the benchmark's database; Redis: the benchmark's own redis-server; "
        "path total: the path's processes, without the upstream and the client):",
        "",
        "| path | N | " + " | ".join(CPU_HEADINGS.values()) + " | path total |",
        "|---|---|" + "---|" * (len(CPU_HEADINGS) + 1),
    ]
    for row in out["paths"]:
        level = row["at_sustained"]
        if level is None:
            continue
        cpu = level["cpu_ms_per_token"]
        lines.append(
            f"| {row['label']} | {level['n']} | "
            + " | ".join(_fmt(cpu.get(name)) for name in CPU_HEADINGS)
            + f" | {_fmt(path_cpu(row))} |"
        )
    if out.get("ratios"):
        lines += ["", "| ratio | streams sustained | CPU per delivered token |", "|---|---|---|"]
        for r in out["ratios"]:
            lines.append(
                f"| {r['what']} | {_fmt(r['streams'])}× | {_fmt(r.get('cpu_per_token'))}× |"
            )
    if out.get("run_start"):
        lines += [
            "",
            "| run start | CPU ms per run across the four (provider, history, orchestrator, "
            "gateway) | TTFT p99 at N concurrent: SSE / upstream (added) | TTFT p50 at 1 run: "
            "SSE / upstream (added) |",
            "|---|---|---|---|",
        ]
        for s in out["run_start"]:
            per = ", ".join(_fmt(s["cpu_ms_per_run"][n]) for n in SERVICES)
            lines.append(
                f"| {s['store']}, N = {s['runs']} | {_fmt(s['cpu_ms_per_run_all'])} ({per}) | "
                f"{_fmt(s['sse_ttft_p99_n_ms'])} / {_fmt(s['upstream_ttft_p99_n_ms'])} ms "
                f"({_delta(s['sse_ttft_p99_n_ms'], s['upstream_ttft_p99_n_ms'])}) | "
                f"{_fmt(s['sse_ttft_p50_1_ms'])} / {_fmt(s['upstream_ttft_p50_1_ms'])} ms "
                f"({_delta(s['sse_ttft_p50_1_ms'], s['upstream_ttft_p50_1_ms'])}) |"
            )
    rows = targets(out)
    if rows:
        lines += ["", "| target (issue 19) | measured | |", "|---|---|---|"]
        lines += [f"| {what} | {measured} | {verdict} |" for what, measured, verdict in rows]
    return "\n".join(lines) + "\n"


def _delta(ours: float | None, theirs: float | None) -> str:
    return "–" if ours is None or theirs is None else f"{ours - theirs:+.1f} ms"


def targets(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Issue 19's targets against this run: (target, measured, met / missed)."""

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else "met" if ok else "**missed**"

    rows: list[tuple[str, str, str]] = []
    by_path = {(p["path"], p["store"]): p for p in out["paths"]}
    for (path, store), sse in by_path.items():
        if path != "sse":
            continue
        for other, factor in (("litellm", 10.0), ("relay", 0.5)):
            theirs = by_path.get((other, None))
            if theirs is None or not theirs["sustained"]:
                continue
            ratio = sse["sustained"] / theirs["sustained"]
            rows.append(
                (
                    f"gateway SSE [{store}] sustains ≥ {factor:g}× {theirs['label']}'s streams",
                    f"{sse['sustained']} / {theirs['sustained']} = {ratio:.2f}×",
                    verdict(ratio >= factor),
                )
            )
        level = sse["at_sustained"]
        if level is not None:
            cpu = level["cpu_ms_per_token"]
            four = sum(cpu[name] or 0.0 for name in SERVICES)
            rows.append(
                (
                    f"[{store}] ≤ 0.1 ms CPU per delivered token across the four services",
                    f"{four:.3f} ms at N = {level['n']}",
                    verdict(four <= 0.1),
                )
            )
            rss = level["rss_kb_per_stream"]
            per_1000 = sum(rss.get(name, 0.0) for name in SERVICES) * 1000 / 1024
            rows.append(
                (
                    f"[{store}] ≤ 100 MB per 1,000 live runs across the services",
                    f"{per_1000:.0f} MB (at N = {level['n']})",
                    verdict(per_1000 <= 100),
                )
            )
    for s in out.get("run_start", []):
        store, cpu = s["store"], s["cpu_ms_per_run_all"]
        rows.append(
            (
                f"[{store}] run start ≤ 4 ms CPU across the four at {s['runs']} concurrent",
                f"{_fmt(cpu)} ms",
                verdict(None if cpu is None else cpu <= 4),
            )
        )
        for key, n, bar in (("p99_n", s["runs"], 150), ("p50_1", 1, 5)):
            ours, theirs = s[f"sse_ttft_{key}_ms"], s[f"upstream_ttft_{key}_ms"]
            added = None if ours is None or theirs is None else ours - theirs
            rows.append(
                (
                    f"[{store}] TTFT {key[:3]} at {n} ≤ upstream + {bar} ms",
                    _delta(ours, theirs),
                    verdict(None if added is None else added <= bar),
                )
            )
    return rows


def plot(out: dict[str, Any], filename: Path) -> None:
    """N against lag p99 for every path (log-log), with the bar; a PNG at `filename`."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(10, 5))
    for row in out["paths"]:
        levels = [lv for lv in row["levels"] if lv["lag_p99_ms"] is not None]
        ax.plot(
            [lv["n"] for lv in levels],
            [max(lv["lag_p99_ms"], 0.1) for lv in levels],
            marker="o",
            label=f"{row['label']} ({row['sustained']})",
        )
    ax.axhline(out["options"]["max_lag_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(sorted({lv["n"] for row in out["paths"] for lv in row["levels"]}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    o = out["options"]
    ax.set(
        yscale="log",
        xlabel="concurrent streams N",
        ylabel="lag p99 (ms)",
        title=f"Lag p99 at {o['tps']:g} tokens/s per stream ({out['date']})",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def write(out: dict[str, Any]) -> Path:
    """Write the JSON, markdown and PNG of a run into bench/results; their common stem."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"capacity-{out['date']}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2))
    stem.with_suffix(".md").write_text(markdown(out))
    plot(out, stem.with_suffix(".png"))
    return stem


def parse(argv: list[str] | None = None) -> Options:
    """The options of the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and short")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--tps", type=float)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--ramp-s", type=float)
    parser.add_argument("--hold-s", type=float)
    parser.add_argument("--levels", help="comma-separated N to step through, ascending")
    parser.add_argument("--max-lag-ms", type=float)
    parser.add_argument("--paths", help=f"comma-separated, of {','.join(PATHS)}")
    parser.add_argument("--stores", help=f"comma-separated, of {','.join(STORES)}")
    parser.add_argument("--start-runs", type=int)
    parser.add_argument("--skip-start", action="store_true")
    args = parser.parse_args(argv)
    opts = Options.quick() if args.quick else Options()
    changes: dict[str, Any] = {}
    for name in ("rounds", "tps", "tokens", "ramp_s", "hold_s", "max_lag_ms", "start_runs"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be > 0")
            changes[name] = value
    if args.levels:
        try:
            levels = tuple(int(n) for n in args.levels.split(","))
        except ValueError:
            parser.error("--levels: comma-separated integers")
        if any(n < 1 for n in levels) or list(levels) != sorted(set(levels)):
            parser.error("--levels: positive and ascending")
        changes["levels"] = levels
    for name, known in (("paths", PATHS), ("stores", STORES)):
        value = getattr(args, name)
        if value:
            chosen = tuple(v.strip() for v in value.split(",") if v.strip())
            unknown = set(chosen) - set(known)
            if unknown or not chosen:
                parser.error(f"--{name}: unknown {sorted(unknown)}; choose from {known}")
            changes[name] = chosen
    if args.skip_start:
        changes["skip_start"] = True
    return Options(**{**opts.__dict__, **changes})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables and write the results; the results as a dict."""
    # SIGTERM ends the run like Ctrl-C: the servers it started are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = run(parse(argv))
    stem = write(out)
    print(markdown(out))
    print(f"results: {stem}.json / .md / .png")
    return out


if __name__ == "__main__":
    main()
