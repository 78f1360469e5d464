"""provider-svc side by side with its upstream called directly and with LiteLLM's proxy.

    python -m bench.bench_provider [--repeats 5] [--no-litellm]

One run on this machine starts:

* `../shared/anchors/fake_openai.py` (an OpenAI-compatible upstream streaming as fast as it
  can) under uvicorn;
* provider-svc (`python -m chorus.provider`), its `openai` provider pointed at that upstream,
  twice: as configured by default, and with `CHORUS_COALESCE_DELTAS=false` (one gRPC message
  per upstream chunk, like a plain proxy);
* LiteLLM's proxy (1 worker) in front of the same upstream (`bench.harness.litellm`,
  installed into `.venv-litellm` on first use; skipped with a note when that fails).

and measures, each in its own client process, `--repeats` times (medians reported):

* TTFT: 1 stream × 1 token, 100 requests in a row; p50 / p99 of the time to the first text
  token — direct (the anchors' `stream_client.py`), via provider-svc (a gRPC client), via LiteLLM;
* throughput: 20 concurrent streams × 500 tokens, tokens/s in total, same three paths
  (provider-svc's `events_per_s` counts gRPC messages: with `coalesce_deltas` one text
  delta may carry several tokens that arrived in one network read);
* the simulator at full speed (`sim-fast`, tokens_per_second 0): events/s to one gRPC client.

Results go to `bench/results/provider-<UTC time>.json` and a table on stdout.

    python -m bench.bench_provider paced [--base DIR] [--rounds 3] [--streams 100] ...

provider-svc's own CPU per token at LLM pace, and a baseline tree's beside it (`--base`: a
`git worktree`; a copy of its `provider-svc/src`, with this tree's `__main__.py` because the
entry point follows `chorus.core`, goes first on the baseline process's PYTHONPATH;
`chorus.core` is the current tree's for both). The upstream is `bench.paced_upstream` (each
token its own SSE event, `--tps` tokens/s per stream). Per round, each variant in turn (the
order alternates), measured by /proc CPU time of the provider-svc process only:

* `chats`: `--streams` live streams over one StreamChats call with a response window of 1
  (as the orchestrator calls it), closed loop for `--ramp-s` + `--hold-s` s: CPU s per 1,000
  delivered tokens, lag p99;
* `stream`: the same load as one StreamChat call per stream (`bench.paced_client`);
* `starts`: `--starts` concurrent one-token streams over StreamChats, 5 times: CPU ms per
  model call (request, upstream call, start/usage/finish events);
* `fast`: 20 StreamChat streams x 500 tokens from the anchors' fake upstream at full speed
  (deltas coalesced: one event carries every token of a network read): tokens/s and CPU s
  per 1,000 tokens.

Writes `bench/results/provider-paced-<UTC time>.json`; prints per-round figures, medians
and new/base ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import harness

PY = sys.executable


def _run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, check=True, env=env, cwd=harness.REPO
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the gRPC client (runs in its own process) ---------------------------------------------


async def _grpc_client(address: str, conc: int, ntok: int, reps: int, model: str) -> None:
    import grpc

    from chorus.v1 import chat_pb2, provider_service_pb2, provider_service_pb2_grpc

    provider, _, name = model.partition("/")
    simulated = provider == "simulator"
    req = provider_service_pb2.StreamChatRequest(
        model=chat_pb2.ModelRef(provider=provider, model=name),
        messages=[provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="hi")],
        max_output_tokens=ntok,
    )
    if provider == "simulator":
        req.simulator.output_tokens = ntok
        req.simulator.tokens_per_second = 0
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        await stub.ListModels(provider_service_pb2.ListModelsRequest())  # connect first
        ttfts: list[float] = []
        total = 0
        events = 0

        async def one() -> None:
            nonlocal total, events
            t0 = time.perf_counter()
            first = None
            k = 0
            n = 0
            async for event in stub.StreamChat(req, timeout=600):
                n += 1
                if event.HasField("text_delta"):
                    if first is None:
                        first = time.perf_counter() - t0
                    # fake_openai's tokens are " tok<i>"; provider-svc may carry several in
                    # one delta (coalesce_deltas). The simulator sends one token per delta.
                    k += 1 if simulated else event.text_delta.text.count(" tok")
            ttfts.append(first if first is not None else float("nan"))
            total += k
            events += n

        started = time.perf_counter()
        for _ in range(reps):
            await asyncio.gather(*(one() for _ in range(conc)))
        elapsed = time.perf_counter() - started
    ttfts.sort()
    p99 = ttfts[max(0, int(len(ttfts) * 0.99) - 1)]
    print(
        json.dumps(
            {
                "tokens": total,
                "tokens_per_s": round(total / elapsed),
                "events_per_s": round(events / elapsed),
                "ttft_p50_ms": round(1000 * statistics.median(ttfts), 2),
                "ttft_p99_ms": round(1000 * p99, 2),
            }
        )
    )


# --- orchestration --------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def _http_client(url: str, conc: int, ntok: int, reps: int, key: str | None) -> dict[str, Any]:
    cmd = [PY, str(harness.ANCHORS / "stream_client.py"), url, str(conc), str(ntok), str(reps)]
    if key:
        cmd.append(key)
    return _run_json(cmd)


def _grpc(address: str, conc: int, ntok: int, reps: int, model: str) -> dict[str, Any]:
    return _run_json(
        [
            PY,
            "-m",
            "bench.bench_provider",
            "grpc-client",
            address,
            str(conc),
            str(ntok),
            str(reps),
            model,
        ]
    )


def _measure(name: str, fn: Any, repeats: int) -> dict[str, Any]:
    runs = [fn() for _ in range(repeats)]
    summary = {k: _median(runs, k) for k in runs[0] if isinstance(runs[0][k], int | float)}
    print(f"  {name}: {summary}", flush=True)
    return {"median": summary, "runs": runs}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--sim-tokens", type=int, default=100_000)
    args = parser.parse_args(argv)

    from chorus.core.testing import ServiceProcess

    with ExitStack() as stack:
        upstream = stack.enter_context(harness.upstream())
        tmp = Path(tempfile.mkdtemp(prefix="bench-provider-"))
        models = tmp / "models.yaml"
        models.write_text(
            "models:\n  - provider: openai\n    name: sim\n    context_window: 8192\n"
        )
        env = {
            "CHORUS_DEV_MODE": "true",
            "CHORUS_PROVIDER_PORT": "0",
            "CHORUS_OPENAI_API_KEY": "sk-fake",
            "CHORUS_OPENAI_BASE_URL": upstream,
            "CHORUS_MODELS_FILE": str(models),
            "CHORUS_DEFAULT_PROVIDER": "simulator",
        }
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "repeats": args.repeats,
        }
        service = ServiceProcess("chorus.provider", env=env)
        stack.callback(service.stop)
        # the same service sending one gRPC message per upstream chunk, for comparison
        per_chunk = ServiceProcess(
            "chorus.provider", env={**env, "CHORUS_COALESCE_DELTAS": "false"}
        )
        stack.callback(per_chunk.stop)
        address = service.wait_ready()
        per_chunk_address = per_chunk.wait_ready()
        litellm_url = None
        if not args.no_litellm:
            litellm_url = stack.enter_context(harness.litellm(upstream))
            if litellm_url is None:
                results["litellm"] = "skipped: LiteLLM could not be installed into .venv-litellm"
        direct_url = f"{upstream}/chat/completions"
        r = args.repeats
        # warm-up: connections, caches, the JIT-less but lazy imports of every path
        _http_client(direct_url, 2, 10, 1, None)
        _grpc(address, 2, 10, 1, "openai/sim")
        _grpc(per_chunk_address, 2, 10, 1, "openai/sim")
        if litellm_url:
            _http_client(litellm_url, 2, 10, 1, harness.LITELLM_KEY)
        print("TTFT, 1 stream x 1 token x 100 requests", flush=True)
        ttft = {
            "direct": _measure("direct", lambda: _http_client(direct_url, 1, 1, 100, None), r),
            "provider_svc": _measure(
                "provider-svc", lambda: _grpc(address, 1, 1, 100, "openai/sim"), r
            ),
        }
        if litellm_url:
            ttft["litellm"] = _measure(
                "litellm", lambda: _http_client(litellm_url, 1, 1, 100, harness.LITELLM_KEY), r
            )
        print("Throughput, 20 streams x 500 tokens", flush=True)
        throughput = {
            "direct": _measure("direct", lambda: _http_client(direct_url, 20, 500, 1, None), r),
            "provider_svc": _measure(
                "provider-svc", lambda: _grpc(address, 20, 500, 1, "openai/sim"), r
            ),
            "provider_svc_one_event_per_chunk": _measure(
                "provider-svc, coalesce_deltas=false",
                lambda: _grpc(per_chunk_address, 20, 500, 1, "openai/sim"),
                r,
            ),
        }
        if litellm_url:
            throughput["litellm"] = _measure(
                "litellm", lambda: _http_client(litellm_url, 20, 500, 1, harness.LITELLM_KEY), r
            )
        print(f"Simulator, 1 stream x {args.sim_tokens} tokens, full speed", flush=True)
        simulator = _measure(
            "simulator", lambda: _grpc(address, 1, args.sim_tokens, 1, "simulator/sim-fast"), r
        )
        results.update(
            {"ttft_1x1": ttft, "throughput_20x500": throughput, "simulator_1_client": simulator}
        )
        d, p = ttft["direct"]["median"], ttft["provider_svc"]["median"]
        results["summary"] = {
            "provider_svc_added_ttft_p50_ms": round(p["ttft_p50_ms"] - d["ttft_p50_ms"], 2),
            "provider_svc_tokens_per_s": throughput["provider_svc"]["median"]["tokens_per_s"],
            "provider_svc_events_per_s": throughput["provider_svc"]["median"]["events_per_s"],
            "provider_svc_one_event_per_chunk_tokens_per_s": throughput[
                "provider_svc_one_event_per_chunk"
            ]["median"]["tokens_per_s"],
            "direct_tokens_per_s": throughput["direct"]["median"]["tokens_per_s"],
            "simulator_events_per_s": simulator["median"]["events_per_s"],
        }
        if litellm_url:
            lt = ttft["litellm"]["median"]
            results["summary"]["litellm_added_ttft_p50_ms"] = round(
                lt["ttft_p50_ms"] - d["ttft_p50_ms"], 2
            )
            results["summary"]["litellm_tokens_per_s"] = throughput["litellm"]["median"][
                "tokens_per_s"
            ]
            results["summary"]["provider_svc_vs_litellm_tokens_per_s"] = round(
                results["summary"]["provider_svc_tokens_per_s"]
                / max(1, results["summary"]["litellm_tokens_per_s"]),
                1,
            )
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    out = harness.RESULTS / f"provider-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"], indent=2))
    print(f"written {out.relative_to(harness.REPO)}")


# --- paced: CPU per token at LLM pace, baseline tree vs this one ---------------------------


async def _chats_client(
    address: str, streams: int, tokens: int, tps: float, ramp_s: float, hold_s: float, once: int
) -> None:
    """StreamChats load (window 1, like the orchestrator): closed loop over `streams` slots,
    or with `once` > 0 each slot runs `once` streams in a row, all slots at once."""
    import re

    import grpc

    from bench.load_client import MD, percentile
    from chorus.core.multiplex import MultiplexClient
    from chorus.v1 import chat_pb2, provider_service_pb2, provider_service_pb2_grpc

    ps = provider_service_pb2
    token = re.compile(rb" (\d+)@(\d+)")
    request = ps.StreamChatRequest(
        model=chat_pb2.ModelRef(provider="openai-compatible", model="sim"),
        messages=[ps.ChatMessage(role=chat_pb2.ROLE_USER, content="hi")],
        max_output_tokens=tokens,
    )
    lags: list[float] = []
    ttfts: list[float] = []
    tally = {"streams": 0, "tokens": 0, "events": 0, "responses": 0, "errors": 0}

    class Sink:
        def __init__(self) -> None:
            self.done = asyncio.get_running_loop().create_future()
            self.opened = time.time()
            self.first = True

        def deliver(self, items: Any) -> None:
            now = time.time()
            for event in items:
                if event.WhichOneof("event") != "text_delta":
                    continue
                found = token.findall(event.text_delta.text.encode())
                if not found:
                    continue
                tally["events"] += 1
                if self.first:
                    self.first = False
                    ttfts.append(1000 * (now - self.opened))
                for _, micros in found:
                    tally["tokens"] += 1
                    lags.append(1000 * now - int(micros) / 1000)

        def end(self, error: BaseException | None) -> None:
            if error is not None:
                tally["errors"] += 1
            if not self.done.done():
                self.done.set_result(None)

    def unpack(response: Any) -> Any:
        tally["responses"] += 1
        return (
            (u.stream_id, u.events, u.status if u.HasField("status") else None)
            for u in response.updates
        )

    async with grpc.aio.insecure_channel(address) as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        client: MultiplexClient[Any] = MultiplexClient(
            lambda requests: stub.StreamChats(requests, metadata=MD),
            unpack,
            "StreamChats",
            flow=lambda w, a: ps.StreamChatsRequest(response_window=w, acknowledged=a),
            window=1,
        )

        async def one() -> None:
            sink = Sink()
            tally["streams"] += 1
            client.open(sink, lambda key: ps.StreamChatsRequest(stream_id=key, open=request))
            await sink.done

        began = time.monotonic()

        async def slot(k: int) -> None:
            if once:
                for _ in range(once):
                    await one()
                return
            await asyncio.sleep(k * ramp_s / streams)
            while time.monotonic() - began < ramp_s + hold_s:
                await one()

        await asyncio.gather(*(slot(k) for k in range(streams)))
        client.close()
    print(
        json.dumps(
            {
                **tally,
                "lag_p50_ms": round(statistics.median(lags), 2) if lags else None,
                "lag_p99_ms": round(percentile(lags, 0.99), 2) if lags else None,
                "ttft_p50_ms": round(statistics.median(ttfts), 2) if ttfts else None,
                "ttft_p99_ms": round(percentile(ttfts, 0.99), 2) if ttfts else None,
            }
        )
    )


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metered(pid: int, cmd: list[str]) -> tuple[dict[str, Any], float]:
    """Run the client `cmd`; its JSON result and process `pid`'s CPU seconds meanwhile."""
    before = _cpu_s(pid)
    out = _run_json(cmd)
    return out, _cpu_s(pid) - before


def paced(argv: list[str]) -> None:
    """The `paced` subcommand (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="bench_provider paced")
    parser.add_argument("--base", help="a baseline tree (git worktree) to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--ramp-s", type=float, default=5.0)
    parser.add_argument("--hold-s", type=float, default=10.0)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument(
        "--only", default="chats,stream,starts,fast", help="comma-separated scenarios"
    )
    args = parser.parse_args(argv)
    scenarios = args.only.split(",")

    from chorus.core.testing import ServiceProcess

    with ExitStack() as stack:
        upstream = stack.enter_context(harness.paced_upstream(args.tps, args.tokens))
        fast_upstream = stack.enter_context(harness.upstream())
        models = Path(tempfile.mkdtemp(prefix="bench-provider-")) / "models.yaml"
        models.write_text(
            "models:\n  - provider: openai\n    name: sim\n    context_window: 8192\n"
        )
        env = {
            "CHORUS_DEV_MODE": "true",
            "CHORUS_PROVIDER_PORT": "0",
            "CHORUS_OPENAI_COMPATIBLE_BASE_URL": upstream.url,
            "CHORUS_OPENAI_COMPATIBLE_MODELS": '["sim"]',
            "CHORUS_OPENAI_API_KEY": "sk-fake",
            "CHORUS_OPENAI_BASE_URL": fast_upstream,
            "CHORUS_MODELS_FILE": str(models),
        }
        variants: dict[str, tuple[int, str]] = {}
        trees = {"new": None, "base": args.base} if args.base else {"new": None}
        if args.base:  # the baseline's code with this tree's entry point (it follows core's)
            overlay = Path(tempfile.mkdtemp(prefix="bench-provider-base-")) / "src"
            shutil.copytree(Path(args.base) / "provider-svc" / "src", overlay)
            main_py = "chorus/provider/__main__.py"
            shutil.copy(harness.REPO / "provider-svc" / "src" / main_py, overlay / main_py)
            trees["base"] = str(overlay)
        for name, tree in trees.items():
            extra = (
                {"PYTHONPATH": os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))}
                if tree
                else {}
            )
            service = ServiceProcess("chorus.provider", env={**env, **extra})
            stack.callback(service.stop)
            variants[name] = (service.proc.pid, service.wait_ready(60))
        n, tok = args.streams, args.tokens
        chats = [PY, "-m", "bench.bench_provider", "chats-client"]
        for _pid, address in variants.values():  # warm-up: connections, lazy imports
            _run_json([*chats, address, "10", "5", str(args.tps), "0", "0", "1"])
            _grpc(address, 2, 10, 1, "openai/sim")

        def measure(name: str, scenario: str) -> dict[str, Any]:
            pid, address = variants[name]
            if scenario == "chats":
                out, cpu = _metered(
                    pid,
                    [
                        *chats,
                        address,
                        str(n),
                        str(tok),
                        str(args.tps),
                        str(args.ramp_s),
                        str(args.hold_s),
                        "0",
                    ],
                )
            elif scenario == "stream":
                out, cpu = _metered(
                    pid,
                    [
                        PY,
                        "-m",
                        "bench.paced_client",
                        "provider",
                        address,
                        str(n),
                        str(tok),
                        "--tps",
                        str(args.tps),
                        "--ramp-s",
                        str(args.ramp_s),
                        "--hold-s",
                        str(args.hold_s),
                    ],
                )
            elif scenario == "starts":
                out, cpu = _metered(
                    pid, [*chats, address, str(args.starts), "1", str(args.tps), "0", "0", "5"]
                )
                out["cpu_ms_per_call"] = round(1000 * cpu / max(1, out["streams"]), 3)
            else:
                before = _cpu_s(pid)
                out = _grpc(address, 20, 500, 1, "openai/sim")
                cpu = _cpu_s(pid) - before
            out["cpu_s"] = round(cpu, 3)
            out["cpu_s_per_1k_tokens"] = round(1000 * cpu / max(1, out["tokens"]), 4)
            if out.get("events") and scenario != "fast":
                # > 1 token per event: reads brought several tokens (a starved process reads
                # less often), which lowers the CPU per token; CPU per event shows the work
                # per read whatever the machine's load did to the merging
                out["tokens_per_event"] = round(out["tokens"] / out["events"], 2)
                out["cpu_s_per_1k_events"] = round(1000 * cpu / out["events"], 4)
            return out

        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            row: dict[str, Any] = {}
            for scenario in scenarios:
                for name in order:
                    row.setdefault(scenario, {})[name] = out = measure(name, scenario)
                    keys = (
                        "cpu_s_per_1k_tokens",
                        "cpu_s_per_1k_events",
                        "tokens_per_event",
                        "cpu_ms_per_call",
                        "tokens_per_s",
                        "lag_p99_ms",
                        "responses",
                        "tokens",
                        "errors",
                        "lost",
                    )
                    shown = {k: out[k] for k in keys if k in out}
                    print(f"round {r + 1} {scenario} {name}: {shown}", flush=True)
            rounds.append(row)
    medians: dict[str, Any] = {}
    for scenario in scenarios:
        for key in (
            "cpu_s_per_1k_tokens",
            "cpu_s_per_1k_events",
            "tokens_per_event",
            "cpu_ms_per_call",
            "tokens_per_s",
            "lag_p99_ms",
        ):
            per = {
                name: statistics.median(r[scenario][name][key] for r in rounds)
                for name in variants
                if key in rounds[0][scenario][name]
            }
            if not per:
                continue
            medians.setdefault(scenario, {})[key] = per
            if per.get("base"):
                per["new/base"] = round(per["new"] / per["base"], 3)
    print(json.dumps(medians, indent=2))
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    out = harness.RESULTS / f"provider-paced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"args": vars(args), "medians": medians, "rounds": rounds}, indent=2))
    print(f"written {out.relative_to(harness.REPO)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "chats-client":
        import uvloop

        a = sys.argv[2:]
        uvloop.run(
            _chats_client(
                a[0], int(a[1]), int(a[2]), float(a[3]), float(a[4]), float(a[5]), int(a[6])
            )
        )
    elif len(sys.argv) > 1 and sys.argv[1] == "paced":
        paced(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "grpc-client":
        import uvloop

        _, _, address, conc, ntok, reps, model = sys.argv
        uvloop.run(_grpc_client(address, int(conc), int(ntok), int(reps), model))
    else:
        main(sys.argv[1:])
