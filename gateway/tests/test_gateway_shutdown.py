"""Stopping a gateway: SIGTERM ends its SSE streams at once (clients resume elsewhere with
Last-Event-ID), the runs go on, and the process exits 0."""

from __future__ import annotations

import asyncio
import time

import httpx
from gateway_helpers import TERMINAL, base_env, read_events, slow_duet, sse_frames

from chorus.core.testing import ServiceProcess, wait_for


async def test_sigterm_ends_streams_promptly_and_they_resume_on_another_gateway(
    backend, gateway, tmp_path
):
    doomed = ServiceProcess(
        "chorus.gateway",
        env={
            **base_env(tmp_path),
            **backend.env(),
            "CHORUS_GATEWAY_PORT": "0",
            "CHORUS_GRACE_PERIOD_S": "20",
        },
    )
    try:
        url = doomed.wait_ready()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            spec = slow_duet("Outlive the gateway", output_tokens=60)
            run_id = (await client.post("/api/v1/runs", json=spec)).json()["id"]
            got: list = []

            async def watch() -> None:
                async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
                    async for frame in sse_frames(response):
                        if frame.data:
                            got.append(frame)

            watcher = asyncio.create_task(watch())
            await wait_for(lambda: len(got) >= 3, timeout=10)
            began = time.monotonic()
            doomed.terminate()
            await asyncio.wait_for(watcher, 10)
            assert time.monotonic() - began < 5, "the stream ended at once, not after the grace"
        assert await asyncio.to_thread(doomed.proc.wait, 15) == 0
    finally:
        doomed.stop()
    assert got and got[-1].event not in TERMINAL, "the run was still going"
    last = got[-1].id or "0"
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as other:
        _, rest = await read_events(
            other, "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": last}
        )
    assert [int(f.id or 0) for f in rest] == list(range(int(last) + 1, int(last) + 1 + len(rest)))
    assert rest[-1].event == "run_completed"
