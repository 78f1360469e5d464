"""What each small mechanism of issue 24 item 2 saves per object or per event, measured in
one process (no services, little affected by a busy machine), to set beside the
whole-stack figures of `bench.bench_machinery`:

    python -m bench.machinery_micro

* `Flag` vs `asyncio.Event` (the bench switch's `EventFlag`): bytes per object (tracemalloc),
  fresh and after one wait, and what waiting for a run's stop beside its team costs (a
  `Flag.future()` vs a task running `Event.wait()`); a live run holds two in the
  orchestrator, an SSE stream one in the gateway.
* the gateway's `event_json` fast path vs `json_format.MessageToDict` + orjson: µs per
  `text_delta` run event.
* provider-svc's `Watchdog` vs a timer created again on every arm (asyncio.timeout's
  reschedule) and vs `async with asyncio.timeout(...)`: µs per wait (one per upstream
  event).
* `_JOIN_PIECES` (32) vs never joining: bytes a model call's text holds after 200 and 1,000
  one-token deltas (` tok` pieces).

Times are CPU time (`time.process_time`, best of 5), so a busy machine moves them little.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import tracemalloc
from typing import Any

os.environ["CHORUS_BENCH_WITHOUT"] = ""


def _bytes_per(make: Any, n: int = 2000) -> float:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keep = [make() for _ in range(n)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del keep
    return round(size / n, 1)


async def flags() -> dict[str, float]:
    import importlib.util
    import pathlib

    from chorus.core.flag import Flag

    path = pathlib.Path(__file__).parent / "toggles" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("bench_toggles", path)
    assert spec and spec.loader
    toggles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toggles)

    class Holder:
        Flag: Any = None

    holder = Holder()
    toggles._patch_flag(holder)
    event_flag = holder.Flag

    async def waited(cls: Any) -> Any:
        f = cls()
        t = asyncio.ensure_future(f.wait())
        await asyncio.sleep(0)
        f.set()
        await t
        return f

    out = {"flag_bytes": _bytes_per(Flag), "event_bytes": _bytes_per(event_flag)}
    tracemalloc.start()
    s0 = tracemalloc.get_traced_memory()[0]
    a = [await waited(Flag) for _ in range(1000)]
    s1 = tracemalloc.get_traced_memory()[0]
    b = [await waited(event_flag) for _ in range(1000)]
    s2 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    out["flag_bytes_after_wait"] = round((s1 - s0) / 1000, 1)
    out["event_bytes_after_wait"] = round((s2 - s1) / 1000, 1)
    del a, b
    # a run waits for its stop beside its team's task: a future of the Flag's, or (with
    # asyncio.Event) a task running Event.wait()
    flags_, events_ = [Flag() for _ in range(1000)], [asyncio.Event() for _ in range(1000)]
    tracemalloc.start()
    s0 = tracemalloc.get_traced_memory()[0]
    futures = [f.future() for f in flags_]
    s1 = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.ensure_future(e.wait()) for e in events_]
    await asyncio.sleep(0)
    s2 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    out["flag_future_bytes"] = round((s1 - s0) / 1000, 1)
    out["event_wait_task_bytes"] = round((s2 - s1) / 1000, 1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    del futures
    return out


def _per_call_us(fn: Any, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return round(best * 1e6, 2)


def protojson() -> dict[str, float]:
    import orjson
    from google.protobuf import json_format

    from chorus.gateway import protojson as pj
    from chorus.v1 import run_pb2

    event = run_pb2.RunEvent(
        run_id="8b0f5a0e-3d5c-4a57-9a3e-1f0f8f6c9d21", seq=1234, agent="writer"
    )
    event.time.GetCurrentTime()
    event.text_delta.text = " token"
    assert orjson.loads(pj.event_json(event)) == json_format.MessageToDict(event)
    return {
        "fast_us_per_event": _per_call_us(lambda: pj.event_json(event), 20000),
        "generic_us_per_event": _per_call_us(
            lambda: orjson.dumps(json_format.MessageToDict(event)), 20000
        ),
    }


async def watchdogs() -> dict[str, float]:
    import importlib.util
    import pathlib

    from chorus.provider.watchdog import Watchdog

    path = pathlib.Path(__file__).parent / "toggles" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("bench_toggles_w", path)
    assert spec and spec.loader
    toggles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toggles)

    class Holder:
        Watchdog: Any = None

    holder = Holder()
    toggles._patch_watchdog(holder)
    out = {}
    for name, cls in (("watchdog", Watchdog), ("timer_per_arm", holder.Watchdog)):
        w = cls()

        def pair(w: Any = w) -> None:
            w.arm(60.0)
            w.disarm()

        out[f"{name}_us_per_event"] = _per_call_us(pair, 50000)
        w.close()
    best = float("inf")  # asyncio.timeout itself around each wait
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(50000):
            async with asyncio.timeout(60.0):  # noqa: ASYNC100 (the context alone is timed)
                pass
        best = min(best, (time.process_time() - t0) / 50000)
    out["asyncio_timeout_us_per_event"] = round(best * 1e6, 2)
    return out


def join_pieces() -> dict[str, float]:
    out = {}
    for tokens in (200, 1000):
        for label, every in (("join32", 32), ("never", 10**9)):
            tracemalloc.start()
            s0 = tracemalloc.get_traced_memory()[0]
            text: list[str] = []
            for i in range(tokens):
                text.append(f" t{i % 97}")  # a fresh small str per delta, as decoded
                if len(text) == every:
                    text[:] = ["".join(text)]
            s1 = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            out[f"{label}_bytes_{tokens}"] = s1 - s0
            del text
    return out


async def main() -> None:
    out: dict[str, Any] = {}
    # a mechanism removed since (issue 24 item 2) has no "with" side left to measure: its
    # figures are in bench/README.md ("Machinery that pays")
    try:
        out["flag"] = await flags()
    except ImportError:
        out["flag"] = "removed"
    out["protojson"] = protojson()
    try:
        out["watchdog"] = await watchdogs()
    except ImportError:
        out["watchdog"] = "removed"
    out["join_pieces"] = join_pieces()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
