"""Bench-only switches that take a mechanism out of a service process without editing its
code (issue 24 item 2: "measure with and without"). Loaded by CPython at start-up as
`sitecustomize` when `bench/toggles` is on PYTHONPATH (`bench.bench_machinery` puts it there
for the "without" side only); does nothing unless `CHORUS_BENCH_WITHOUT` names toggles,
comma-separated:

* `flag`: `chorus.core.flag.Flag` → an `asyncio.Event` with `future()` (a task per call).
* `protojson`: the gateway's `event_json` / `event_dict` → `json_format.MessageToDict`
  for every run event (no fast path for the frequent payloads).
* `watchdog`: provider-svc's `Watchdog` → one timer handle cancelled and created again on
  every `arm` (what `asyncio.timeout(...).reschedule()` does per event).
* `join_pieces`: orchestrator `model_client._JOIN_PIECES` → never join (a piece per delta
  kept until the call ends).
* `window`: the response windows of the multiplexed calls (gateway `watches.RESPONSE_WINDOW`,
  orchestrator `chat_streams.RESPONSE_WINDOW`) → 0: no flow control, no acknowledgements
  (the server sends as fast as it gathers).

`CHORUS_BENCH_GC_STATS_DIR` (with or without toggles): the process records the CPU time
(`time.thread_time`) its cyclic garbage collections take, per generation, and writes it
with its collection counts and total CPU to `<dir>/<pid>.json` at most every 0.5 s and at
exit.

`flag`, `protojson` and `watchdog` measured mechanisms removed since (issue 24 item 2,
bench/README.md "Machinery that pays"): their switches find nothing to replace now.

Each patch is applied right after its module is first imported (a meta-path hook), so
`from module import Name` in the services' code sees the replacement.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import math
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

WITHOUT = {t for t in os.environ.get("CHORUS_BENCH_WITHOUT", "").split(",") if t}
if "window" in WITHOUT:  # both calls' windows
    WITHOUT.add("window_chats")


def _patch_flag(module: ModuleType) -> None:
    class EventFlag(asyncio.Event):
        """`Flag`'s interface on `asyncio.Event` (its waiter deque from birth)."""

        def future(self) -> asyncio.Future[Any]:
            return asyncio.ensure_future(self.wait())

    module.Flag = EventFlag  # type: ignore[attr-defined]


def _patch_protojson(module: ModuleType) -> None:
    import orjson
    from google.protobuf import json_format

    def event_dict(event: Any) -> dict[str, Any]:
        return json_format.MessageToDict(event)

    def event_json(event: Any) -> bytes:
        return orjson.dumps(json_format.MessageToDict(event))

    module.event_dict = event_dict  # type: ignore[attr-defined]
    module.event_json = event_json  # type: ignore[attr-defined]


def _patch_watchdog(module: ModuleType) -> None:
    class TimerWatchdog:
        """`Watchdog`'s interface, a fresh timer per wait (asyncio.timeout's reschedule)."""

        def __init__(self) -> None:
            self._loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Watchdog needs a running task")
            self._task = task
            self._handle: asyncio.TimerHandle | None = None
            self.fired = False

        def arm(self, seconds: float) -> None:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(self._loop.time() + seconds, self._fire)

        def disarm(self) -> None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

        def consume(self) -> bool:
            if not self.fired:
                return False
            self.fired = False
            self._task.uncancel()
            return True

        def close(self) -> None:
            self.disarm()

        def _fire(self) -> None:
            self._handle = None
            self.fired = True
            self._task.cancel()

    module.Watchdog = TimerWatchdog  # type: ignore[attr-defined]


def _patch_join_pieces(module: ModuleType) -> None:
    module._JOIN_PIECES = math.inf  # type: ignore[attr-defined]  # len(...) == inf: never


def _patch_window(module: ModuleType) -> None:
    module.RESPONSE_WINDOW = 0  # type: ignore[attr-defined]


PATCHES: dict[str, tuple[str, Callable[[ModuleType], None]]] = {
    "flag": ("chorus.core.flag", _patch_flag),
    "protojson": ("chorus.gateway.protojson", _patch_protojson),
    "watchdog": ("chorus.provider.watchdog", _patch_watchdog),
    "join_pieces": ("chorus.orchestrator.model_client", _patch_join_pieces),
    "window": ("chorus.gateway.watches", _patch_window),
    "window_chats": ("chorus.orchestrator.chat_streams", _patch_window),
}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, targets: dict[str, Callable[[ModuleType], None]]) -> None:
        self._targets = targets

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = self._targets.pop(fullname, None)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, patch)
                return spec
        return None


def _gc_stats(directory: str) -> None:
    import atexit
    import gc
    import json
    import time

    path = os.path.join(directory, f"{os.getpid()}.json")
    cpu = [0.0, 0.0, 0.0]
    count = [0, 0, 0]
    started = [0.0]
    written = [0.0]

    def write() -> None:
        payload = {
            "argv": sys.argv,
            "gc_cpu_s": cpu,
            "collections": count,
            "process_cpu_s": time.process_time(),
        }
        with open(path + ".tmp", "w") as f:
            json.dump(payload, f)
        os.replace(path + ".tmp", path)

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
            return
        generation = info["generation"]
        cpu[generation] += time.thread_time() - started[0]
        count[generation] += 1
        now = time.monotonic()
        if now - written[0] > 0.5:
            written[0] = now
            write()

    gc.callbacks.append(callback)
    atexit.register(write)


if os.environ.get("CHORUS_BENCH_GC_STATS_DIR"):
    _gc_stats(os.environ["CHORUS_BENCH_GC_STATS_DIR"])

unknown = WITHOUT - set(PATCHES)
if unknown:
    raise SystemExit(f"CHORUS_BENCH_WITHOUT: unknown toggles {sorted(unknown)}")
if WITHOUT:
    sys.meta_path.insert(0, _Finder({PATCHES[t][0]: PATCHES[t][1] for t in WITHOUT}))
