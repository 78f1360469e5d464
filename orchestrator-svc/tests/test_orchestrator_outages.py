"""Store outages pause runs, they don't fail them (issue 18, "Outages pause").

* PostgreSQL cut off from history-svc for 20 s through a TCP proxy the test controls (the
  machine's own PostgreSQL keeps running);
* history-svc SIGKILLed and started again on the same port 15 s later.

During the outage the run shows nothing new (nothing is shown before it is stored); once
the store answers it continues, and it ends `run_completed` with what the watcher saw equal
to the stored log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from orchestrator_helpers import (
    PG_HOST,
    PG_PORT,
    REDIS_HOST,
    REDIS_PORT,
    TOKEN,
    RunClient,
    assert_well_formed,
    orchestrator_settings,
    paced_duet,
    provider_settings,
    read_rest,
    read_until,
    running_orchestrator,
    running_stack,
    spec,
)

from chorus.core.server import GrpcServer
from chorus.core.testing import ServiceProcess, TcpProxy, free_port, wait_for
from chorus.orchestrator.app import OrchestratorApp
from chorus.provider.app import build_app as build_provider
from chorus.v1 import run_pb2

PG_CUT_S = 20.0
HISTORY_DOWN_S = 15.0


async def test_a_postgresql_cut_pauses_the_run_and_it_completes_when_it_is_back(
    tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    proxy = TcpProxy((PG_HOST, PG_PORT))
    url = pg_url.replace(f"{PG_HOST}:{PG_PORT}", proxy.address)
    values = {
        "database_url": url,
        "redis_url": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        "redis_key_prefix": redis_prefix,
        "db_command_timeout_s": 2.0,
    }
    try:
        async with running_stack(tmp_path, history_values=values) as stack:
            alice = stack.client("alice")
            run = await alice.create(spec(team_spec=paced_duet()))
            watch = alice.watch_call(run.id)
            head = await read_until(watch, lambda e: e.HasField("progress"))
            proxy.cut()
            live = stack.orchestrator.manager.live_runs[run.id]
            cut_seq = live.log.stored_seq
            # The model goes on streaming; nothing of it is stored, so nothing is shown.
            await wait_for(lambda: live.log.last_seq > cut_seq + 20, timeout=10)
            await asyncio.sleep(PG_CUT_S)  # the outage itself (the store is down meanwhile)
            assert live.log.stored_seq == cut_seq and not live.log.ended
            proxy.restore()
            rest = await read_rest(watch)
            watched = head + rest
            stored = await stack.history_client(alice.user).events(run.id)
            assert_well_formed(stored)
            assert watched == stored
            assert stored[-1].HasField("run_completed")
            assert not any(e.HasField("run_resumed") for e in stored)  # it paused, no more
    finally:
        proxy.close()


@contextlib.asynccontextmanager
async def history_process(port: int, data_dir: Path) -> AsyncIterator[ServiceProcess]:
    env = {
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "CHORUS_DEV_MODE": "false",
        "CHORUS_HISTORY_PORT": str(port),
        "CHORUS_DATA_DIR": str(data_dir),
    }
    proc = ServiceProcess("chorus.history", env={**os.environ, **env})
    try:
        await asyncio.to_thread(proc.wait_ready)
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


@contextlib.asynccontextmanager
async def orchestrator_over_history_process(
    tmp_path: Path, **values: object
) -> AsyncIterator[tuple[ServiceProcess, OrchestratorApp, RunClient, int, Path]]:
    """provider-svc in this process, history-svc as a process on a fixed port (so the test
    can kill it and start it again there) and an orchestrator with `values`; yields the
    history process, the orchestrator app, alice's client, the port and history's data."""
    provider = await build_provider(provider_settings())
    provider_server = GrpcServer(provider.bindings, provider.settings, 0)
    await provider_server.start()
    port = free_port()
    data = tmp_path / "history"
    try:
        async with history_process(port, data) as history:
            settings = orchestrator_settings(provider_server.address, f"127.0.0.1:{port}", **values)
            async with running_orchestrator(settings) as (app, server):
                channel = grpc.aio.insecure_channel(server.address)
                try:
                    yield history, app, RunClient(channel, "alice"), port, data
                finally:
                    await channel.close()
    finally:
        await provider_server.stop(0)
        await provider.close()


async def test_history_svc_killed_for_15_s_pauses_the_run_and_it_completes(
    tmp_path: Path,
) -> None:
    async with orchestrator_over_history_process(tmp_path) as (history, app, alice, port, data):
        run = await alice.create(spec(team_spec=paced_duet()))
        watch = alice.watch_call(run.id)
        head = await read_until(watch, lambda e: e.HasField("progress"))
        history.terminate(signal.SIGKILL)
        await asyncio.to_thread(history.proc.wait)
        live = app.manager.live_runs[run.id]
        await asyncio.sleep(HISTORY_DOWN_S)  # the outage itself
        assert not live.log.ended and run.id in app.manager.live_runs
        async with history_process(port, data):
            rest = await read_rest(watch)
            final = await alice.get(run.id)
            watched = head + rest
            assert_well_formed(watched)
            assert watched[-1].HasField("run_completed")
            assert final.status == run_pb2.RUN_STATUS_COMPLETED
            assert final.last_seq == watched[-1].seq
            assert [e.seq for e in await alice.watch(run.id)] == [e.seq for e in watched]


async def test_an_outage_past_the_limit_fails_the_run_once_the_store_is_back(
    tmp_path: Path,
) -> None:
    """CHORUS_STORE_OUTAGE_LIMIT_S (here 2 s) passes while history-svc is down: the run
    fails UNAVAILABLE, retryable — and that end is written when the store answers again
    (6 s later), so the watcher and the stored log agree and end with it."""
    limited = orchestrator_over_history_process(tmp_path, store_outage_limit_s=2.0)
    async with limited as (history, app, alice, port, data):
        run = await alice.create(spec(team_spec=paced_duet()))
        watch = alice.watch_call(run.id)
        head = await read_until(watch, lambda e: e.HasField("progress"))
        history.terminate(signal.SIGKILL)
        await asyncio.to_thread(history.proc.wait)
        live = app.manager.live_runs[run.id]
        # the next lifecycle write gives up after the limit: the run is failing
        await wait_for(lambda: live.log.ended, timeout=30)
        await asyncio.sleep(4.0)  # the store stays away past the failure
        assert run.id in app.manager.live_runs  # its end is not written yet
        async with history_process(port, data):
            rest = await read_rest(watch)
            watched = head + rest
            assert_well_formed(watched)
            failed = watched[-1]
            assert failed.HasField("run_failed"), failed
            assert failed.run_failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert failed.run_failed.error.retryable
            final = await alice.get(run.id)
            assert final.status == run_pb2.RUN_STATUS_FAILED
            assert final.last_seq == failed.seq
            assert [e.seq for e in await alice.watch(run.id)] == [e.seq for e in watched]
