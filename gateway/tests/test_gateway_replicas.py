"""One gateway in front of two orchestrator replicas (`CHORUS_ORCHESTRATOR_ADDRESS` a list,
gRPC round robin): when the replica serving the gateway's WatchRuns call is SIGKILLed (or
SIGTERMed) mid-run, SSE and WebSocket clients see one uninterrupted stream — no error frame,
no gap, no duplicate, exactly one terminal event, last — equal to the run's stored log; the
web page watching a run whose replica is killed drops the interrupted turn at `run_resumed`
and ends with every turn shown once; runs started through the gateway land on both replicas.

Everything is a real process: provider-svc (simulator), history-svc (embedded SQLite) from
the session's `backend`, two `python -m chorus.orchestrator` replicas with short leases and
their own metrics ports (the test asks them which one serves the WatchRuns call), a gateway,
and (for the page) Debian's chromium.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import websockets
from gateway_helpers import TOKEN, Backend, Gateways, base_env, duet, metric, slow_duet, sse_frames
from google.protobuf import json_format

from chorus.core.identity import TOKEN_KEY, USER_KEY
from chorus.core.testing import ServiceProcess, free_port, wait_for
from chorus.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

USER = "dev"  # the gateway's anonymous user (auth_mode=none)
EVENTS_BEFORE_KILL = 12

LEASE_SETTINGS = {
    # short liveness so the surviving replica takes over a dead one's runs at once (the
    # names of this and of the previous orchestrator settings: unknown ones are ignored)
    "CHORUS_HEARTBEAT_INTERVAL_S": "0.1",
    "CHORUS_LEASE_DURATION_S": "1.0",
    "CHORUS_STALE_AFTER_S": "1.0",
    "CHORUS_SWEEP_INTERVAL_S": "0.2",
    "CHORUS_GRACE_PERIOD_S": "1",
}


@dataclass
class Replica:
    instance: str
    process: ServiceProcess
    address: str
    metrics_url: str

    async def watch_runs_calls(self) -> float:
        """WatchRuns calls open on this replica now."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(self.metrics_url)).text
        return metric(text, "grpc_server_started_total", grpc_method="WatchRuns") - metric(
            text, "grpc_server_handled_total", grpc_method="WatchRuns"
        )


@dataclass
class Replicas:
    replicas: list[Replica]
    gateway: str

    async def serving_watches(self) -> Replica:
        """The replica the gateway's WatchRuns call is on."""

        async def find() -> Replica | None:
            serving = [r for r in self.replicas if await r.watch_runs_calls() > 0]
            return serving[0] if len(serving) == 1 else None

        return await wait_for(find, timeout=15)

    def other(self, replica: Replica) -> Replica:
        return next(r for r in self.replicas if r is not replica)


@pytest.fixture
def replicas(backend: Backend, tmp_path: Path) -> Iterator[Replicas]:
    """Two orchestrator replicas and a gateway given both addresses."""
    env = base_env(tmp_path)
    started: list[ServiceProcess] = []
    pool: Gateways | None = None
    try:
        replicas = []
        for name in ("replica-a", "replica-b"):
            metrics_port = free_port()
            proc = ServiceProcess(
                "chorus.orchestrator",
                env={
                    **env,
                    **LEASE_SETTINGS,
                    "CHORUS_ORCHESTRATOR_PORT": "0",
                    "CHORUS_PROVIDER_ADDRESS": backend.provider,
                    "CHORUS_HISTORY_ADDRESS": backend.history,
                    "CHORUS_INSTANCE_ID": name,
                    "CHORUS_METRICS_PORT": str(metrics_port),
                },
            )
            started.append(proc)
            replicas.append(
                Replica(name, proc, "", f"http://127.0.0.1:{metrics_port}/metrics"),
            )
        for replica in replicas:
            replica.address = replica.process.wait_ready()
        addresses = ",".join(r.address for r in replicas)
        pool = Gateways(Backend(backend.provider, backend.history, addresses), tmp_path)
        yield Replicas(replicas, pool.url())
    finally:
        if pool is not None:
            pool.stop()
        for proc in started:
            proc.stop()


async def _start_on(replica: Replica, spec: dict[str, Any]) -> str:
    """Create a run on this replica (directly over gRPC, as the gateway's user)."""
    async with grpc.aio.insecure_channel(replica.address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        reply = await stub.CreateRun(
            run_service_pb2.CreateRunRequest(spec=json_format.ParseDict(spec, run_pb2.RunSpec())),
            metadata=[(USER_KEY, USER), (TOKEN_KEY, TOKEN)],
        )
    return reply.run.id


async def _stored(http: httpx.AsyncClient, run_id: str) -> dict[int, dict[str, Any]]:
    """The run's stored log by seq (REST export), once it holds the terminal event."""

    async def complete() -> dict[int, dict[str, Any]] | None:
        body = (await http.get(f"/api/v1/runs/{run_id}/export")).json()
        events = {int(e["seq"]): e for e in body["events"]}
        ended = any(k in e for e in events.values() for k in _TERMINAL_KEYS)
        return events if ended else None

    return await wait_for(complete, timeout=30, interval=0.1)


_TERMINAL_KEYS = ("runCompleted", "runFailed", "runCancelled")
_TYPES = {f.name for f in run_pb2.RunEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
"""A WebSocket event frame's `type`: its payload's name."""


async def _reattached(http: httpx.AsyncClient) -> None:
    """The gateway reopened the watch on the surviving replica (not: the run ended first)."""
    text = (await http.get("/metrics")).text
    assert metric(text, "chorus_gateway_watch_reattaches_total", outcome="resumed") >= 1
    assert metric(text, "chorus_gateway_watch_reattaches_total", outcome="failed") == 0


def _check_stream(events: list[dict[str, Any]], stored: dict[int, dict[str, Any]]) -> None:
    """Gapless from 1, no duplicate, one terminal event and last, equal to the stored log."""
    seqs = [int(e["seq"]) for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    terminals = [e for e in events if any(k in e for k in _TERMINAL_KEYS)]
    assert len(terminals) == 1 and terminals[0] is events[-1]
    assert max(stored) == seqs[-1]
    for event in events:
        assert event == stored[int(event["seq"])]


async def _warm_up(http: httpx.AsyncClient) -> None:
    """A short run streamed through the gateway: its WatchRuns call is open from now on."""
    async with http.stream("POST", "/api/v1/runs/stream", json=duet(max_turns=1)) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass


async def _kill_when(replica: Replica, condition: Any, sig: int = signal.SIGKILL) -> None:
    await wait_for(condition, timeout=30)
    replica.process.terminate(sig)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_sse_stream_survives_the_loss_of_the_replica_serving_its_watch(replicas, sig):
    async with httpx.AsyncClient(base_url=replicas.gateway, timeout=60) as http:
        await _warm_up(http)
        watcher = await replicas.serving_watches()
        owner = replicas.other(watcher)
        run_id = await _start_on(
            owner, slow_duet(tokens_per_second=60, output_tokens=60, max_turns=3)
        )
        events: list[dict[str, Any]] = []
        names: list[str] = []
        kill = asyncio.create_task(
            _kill_when(watcher, lambda: len(events) >= EVENTS_BEFORE_KILL, sig)
        )
        async with http.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            assert response.status_code == 200
            async for frame in sse_frames(response):
                if frame.comment is not None or not frame.data:
                    continue
                names.append(frame.event)
                events.append(frame.json())
        await kill
        await wait_for(lambda: watcher.process.proc.poll() is not None, timeout=30)
        assert "error" not in names
        assert names[-1] == "run_completed"
        _check_stream(events, await _stored(http, run_id))
        await _reattached(http)


async def test_a_started_sse_stream_survives_the_kill_of_the_replica_running_it(replicas):
    """POST /runs/stream: the replica serving the watch also runs the run. The surviving
    replica claims the run after its lease expires and resumes it (`run_resumed`): the
    client's one stream goes on to `run_completed`."""
    async with httpx.AsyncClient(base_url=replicas.gateway, timeout=60) as http:
        events: list[dict[str, Any]] = []
        names: list[str] = []
        kill: asyncio.Task[None] | None = None
        spec = slow_duet(tokens_per_second=60, output_tokens=60, max_turns=3)
        async with http.stream("POST", "/api/v1/runs/stream", json=spec) as response:
            assert response.status_code == 200
            async for frame in sse_frames(response):
                if frame.comment is not None or not frame.data:
                    continue
                names.append(frame.event)
                events.append(frame.json())
                if kill is None:
                    watcher = await replicas.serving_watches()
                    kill = asyncio.create_task(
                        _kill_when(watcher, lambda: len(events) >= EVENTS_BEFORE_KILL)
                    )
        assert kill is not None
        await kill
        assert "error" not in names
        assert names[-1] == "run_completed"
        assert names.count("run_resumed") == 1
        _check_stream(events, await _stored(http, events[0]["runId"]))
        await _reattached(http)


async def test_websocket_follow_survives_the_kill_of_the_replica_serving_its_watch(replicas):
    async with httpx.AsyncClient(base_url=replicas.gateway, timeout=60) as http:
        await _warm_up(http)
        watcher = await replicas.serving_watches()
        owner = replicas.other(watcher)
        run_id = await _start_on(
            owner, slow_duet(tokens_per_second=60, output_tokens=60, max_turns=3)
        )
        url = replicas.gateway.replace("http://", "ws://") + "/api/v1/ws"
        frames: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["status"] == "connected"
            await ws.send(json.dumps({"type": "subscribe", "payload": {"runId": run_id}}))
            kill = asyncio.create_task(
                _kill_when(watcher, lambda: len(events) >= EVENTS_BEFORE_KILL)
            )
            async with asyncio.timeout(60):
                while not events or not any(k in events[-1] for k in _TERMINAL_KEYS):
                    frame = json.loads(await ws.recv())
                    frames.append(frame)
                    if "seq" in frame:
                        assert frame.pop("type") in _TYPES, frame
                        events.append(frame)
            await kill
        assert not [f for f in frames if f.get("type") == "error"]
        assert "runCompleted" in events[-1]
        _check_stream(events, await _stored(http, run_id))
        await _reattached(http)


async def test_the_gateway_spreads_runs_over_both_replicas(replicas):
    async with httpx.AsyncClient(base_url=replicas.gateway, timeout=60) as http:
        owners = set()
        for i in range(6):
            reply = await http.post("/api/v1/runs", json=duet(f"topic {i}", max_turns=1))
            assert reply.status_code == 201, reply.text
            owners.add(reply.json().get("ownerInstance"))
        assert owners == {"replica-a", "replica-b"}


@pytest.mark.browser
async def test_the_page_replaces_the_interrupted_turn_when_the_run_resumes(replicas, chromium):
    """The web page watching a run whose replica is SIGKILLed: the other replica resumes it
    (`run_resumed`), the page drops the interrupted turn's partial message, shows the notice
    and ends with every turn shown once, as stored. (Needs orchestrator-svc's resume, issue
    18, and Debian's chromium.)"""
    from gateway_helpers import CHROMIUM_ARGS
    from playwright.async_api import async_playwright

    async with httpx.AsyncClient(base_url=replicas.gateway, timeout=60) as http:
        # ~5 s a turn: the kill lands mid-run even when a loaded machine delays the page.
        spec = slow_duet(tokens_per_second=20, output_tokens=100, max_turns=3)
        run = (await http.post("/api/v1/runs", json=spec)).json()
        owner = next(r for r in replicas.replicas if r.instance == run["ownerInstance"])
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(base_url=replicas.gateway)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"/#run={run['id']}")
                await page.wait_for_function(
                    "document.querySelector('#transcript .turn .turn-text')"
                    "?.textContent.length > 10",
                    timeout=30_000,
                )
                owner.process.terminate(signal.SIGKILL)
                await page.wait_for_selector("#transcript .note.resumed", timeout=60_000)
                await page.wait_for_function(
                    "document.getElementById('status').textContent === 'completed'",
                    timeout=60_000,
                )
                shown = await page.eval_on_selector_all(
                    "#transcript .turn",
                    "ns => ns.map(n => [n.dataset.agent, n.querySelector('.turn-text').textContent])",
                )
                assert not errors, errors
            finally:
                await browser.close()
        stored = await _stored(http, run["id"])
    assert [tuple(s) for s in shown] == _kept_messages(stored)


def _kept_messages(stored: dict[int, dict[str, Any]]) -> list[tuple[str, str]]:
    """(agent, text) of every completed message of the log, leaving out the events a
    `run_resumed` voids (after its `fromSeq`, before it)."""
    void: set[int] = set()
    for seq, event in stored.items():
        if "runResumed" in event:
            void.update(range(int(event["runResumed"].get("fromSeq", "0")) + 1, seq))
    return [
        (e["agent"], e["messageCompleted"]["message"]["content"])
        for seq, e in sorted(stored.items())
        if "messageCompleted" in e and seq not in void
    ]


async def _sse_events(http: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
        assert response.status_code == 200
        async for frame in sse_frames(response):
            if frame.comment is None and frame.data:
                assert frame.event != "error", frame.data
                events.append(frame.json())
    return events


async def _ws_events(url: str, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        assert json.loads(await ws.recv())["status"] == "connected"
        await ws.send(json.dumps({"type": "subscribe", "payload": {"runId": run_id}}))
        while not events or not any(k in events[-1] for k in _TERMINAL_KEYS):
            frame = json.loads(await ws.recv())
            assert frame.get("type") != "error", frame
            if "seq" in frame:
                assert frame.pop("type") in _TYPES, frame
                events.append(frame)
    return events


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_twenty_live_runs_lose_nothing_when_a_replica_is_lost(replicas, sig):
    """Issue 18's "Done when": 20 runs started through the gateway (so on both replicas),
    10 watched over SSE and 10 over WebSocket; one replica is killed or stopped mid-run.
    Every run ends `run_completed` and every client's stream is gapless, duplicate-free and
    equal to the stored log."""
    async with httpx.AsyncClient(base_url=replicas.gateway, timeout=90) as http:
        spec = slow_duet(tokens_per_second=60, output_tokens=60, max_turns=3)
        runs = []
        for _ in range(20):
            reply = await http.post("/api/v1/runs", json=spec)
            assert reply.status_code == 201, reply.text
            runs.append(reply.json())
        assert {r["ownerInstance"] for r in runs} == {"replica-a", "replica-b"}
        url = replicas.gateway.replace("http://", "ws://") + "/api/v1/ws"
        watchers = [
            asyncio.create_task(_sse_events(http, r["id"]) if i % 2 else _ws_events(url, r["id"]))
            for i, r in enumerate(runs)
        ]

        async def all_begun() -> bool:
            bodies = [(await http.get(f"/api/v1/runs/{r['id']}")).json() for r in runs]
            return all(int(b.get("lastSeq", 0)) >= EVENTS_BEFORE_KILL for b in bodies)

        await wait_for(all_begun, timeout=30, interval=0.1)
        lost = replicas.replicas[0]
        lost.process.terminate(sig)
        async with asyncio.timeout(90):
            streams = await asyncio.gather(*watchers)
        await wait_for(lambda: lost.process.proc.poll() is not None, timeout=30)
        for run, events in zip(runs, streams, strict=True):
            assert "runCompleted" in events[-1], (run["ownerInstance"], events[-1])
            _check_stream(events, await _stored(http, run["id"]))
