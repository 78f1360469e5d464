"""The local stack behind `make run`: the four services as separate processes.

`python -m chorus.cli.stack` starts provider-svc, history-svc, orchestrator-svc and the
gateway, prefixes each one's log lines with its name, waits until every gRPC service reports
SERVING and the gateway's `/health/ready` answers 200, then prints the addresses. Ctrl-C or
SIGTERM stops all of them gracefully (SIGTERM, grace period, then SIGKILL); if one dies, the
others are stopped too and the exit code is 1.

Storage and models follow the environment: with no `CHORUS_DATABASE_URL` / `CHORUS_REDIS_URL`
history-svc runs on SQLite in `CHORUS_DATA_DIR` (default `./data`) with an in-process
cache; with no provider key the simulator answers every model call — announced loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROVIDER_KEYS = (
    "CHORUS_OPENAI_API_KEY",
    "CHORUS_ANTHROPIC_API_KEY",
    "CHORUS_AZURE_OPENAI_API_KEY",
    "CHORUS_OPENAI_COMPATIBLE_BASE_URL",
)


@dataclass
class Service:
    """One process of the stack."""

    name: str
    module: str
    port: int
    grpc_service: str | None  # None: the HTTP gateway
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def stack_services(env: Mapping[str, str]) -> list[Service]:
    """The four services with their ports (`CHORUS_<NAME>_PORT`, defaults 50051-50053, 8000)."""

    def port(var: str, default: int) -> int:
        return int(env.get(var) or default)

    return [
        Service(
            "provider",
            "chorus.provider",
            port("CHORUS_PROVIDER_PORT", 50051),
            "chorus.v1.ProviderService",
        ),
        Service(
            "history",
            "chorus.history",
            port("CHORUS_HISTORY_PORT", 50052),
            "chorus.v1.HistoryService",
        ),
        Service(
            "orchestrator",
            "chorus.orchestrator",
            port("CHORUS_ORCHESTRATOR_PORT", 50053),
            "chorus.v1.RunService",
        ),
        Service("gateway", "chorus.gateway", port("CHORUS_GATEWAY_PORT", 8000), None),
    ]


def stack_environment(base: Mapping[str, str], services: list[Service]) -> dict[str, str]:
    """The environment every process gets: shared internal token, ports and addresses."""
    env = dict(base)
    if not env.get("CHORUS_INTERNAL_TOKEN"):
        # Local development: services bind to loopback and accept calls without the internal
        # token (identity `dev`, or `x-chorus-user`), so grpcurl and the CLI work as they are.
        # The gateway still forwards the token it was given, so generate one for it.
        env["CHORUS_DEV_MODE"] = "true"
        env["CHORUS_INTERNAL_TOKEN"] = secrets.token_urlsafe(24)
    env.setdefault("CHORUS_LOG_JSON", "false")
    by_name = {s.name: s for s in services}
    for s in services:
        env[f"CHORUS_{s.name.upper()}_PORT"] = str(s.port)
    for name in ("provider", "history", "orchestrator"):
        env[f"CHORUS_{name.upper()}_ADDRESS"] = by_name[name].address
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describe_configuration(env: Mapping[str, str]) -> list[str]:
    """Human lines saying which storage and models the stack uses."""
    lines = []
    if env.get("CHORUS_DATABASE_URL"):
        lines.append("storage: PostgreSQL from CHORUS_DATABASE_URL")
    else:
        lines.append(
            f"storage: embedded SQLite in {env.get('CHORUS_DATA_DIR', './data')} (set CHORUS_DATABASE_URL for PostgreSQL)"
        )
    if env.get("CHORUS_REDIS_URL"):
        lines.append("cache + live event log: Redis from CHORUS_REDIS_URL")
    else:
        lines.append("cache + live event log: in-process (set CHORUS_REDIS_URL for Redis)")
    configured = [k for k in PROVIDER_KEYS if env.get(k)]
    if configured:
        lines.append("models: real providers configured via " + ", ".join(configured))
    return lines


SIMULATOR_BANNER = """
************************************************************************
*  NO PROVIDER KEY CONFIGURED: the offline SIMULATOR answers every     *
*  model call. Set CHORUS_OPENAI_API_KEY, CHORUS_ANTHROPIC_API_KEY, …  *
*  to use real models (see README.md).                                 *
************************************************************************
"""


async def _pump(service: Service) -> None:
    assert service.process is not None and service.process.stdout is not None
    prefix = f"{service.name:<12}| ".encode()
    out = sys.stdout.buffer
    while line := await service.process.stdout.readline():
        out.write(prefix + line)
        out.flush()


async def _grpc_ready(service: Service, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service.grpc_service or ""), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{service.name} did not report SERVING")
            await asyncio.sleep(0.1)


async def _http_ready(service: Service, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    url = f"http://{service.address}/health/ready"

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    while not await asyncio.to_thread(probe):
        if loop.time() > deadline:
            raise TimeoutError(f"{service.name} is not ready at {url}")
        await asyncio.sleep(0.2)


async def run_stack(
    env: Mapping[str, str] | None = None, *, ready_timeout: float = 60.0, grace: float = 10.0
) -> int:
    """Run the stack until a signal or a crash; return the exit code (0 after a clean stop)."""
    base = dict(os.environ if env is None else env)
    services = stack_services(base)
    full_env = stack_environment(base, services)
    if full_env.get("CHORUS_DEV_MODE", "").lower() == "true":
        print(
            "chorus      | dev mode: services on 127.0.0.1 accept calls without the internal token (user 'dev')",
            flush=True,
        )
    for line in describe_configuration(full_env):
        print(f"chorus      | {line}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    for service in services:
        service.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            service.module,
            env=full_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        service.pump = asyncio.create_task(_pump(service))
        print(f"chorus      | started {service.name} (pid {service.process.pid})", flush=True)

    exits = {asyncio.create_task(s.process.wait()): s for s in services if s.process}
    stopper = asyncio.create_task(stop.wait())
    deadline = loop.time() + ready_timeout
    ready = asyncio.create_task(
        asyncio.wait_for(
            asyncio.gather(
                *(
                    _grpc_ready(s, deadline) if s.grpc_service else _http_ready(s, deadline)
                    for s in services
                )
            ),
            ready_timeout,
        )
    )
    code = 0
    done, _ = await asyncio.wait({ready, stopper, *exits}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done and ready.exception() is None:
        gateway = services[-1]
        print(
            f"chorus      | gateway     http://{gateway.address}  (web page, REST under /api/v1, /docs)",
            flush=True,
        )
        for s in services[:-1]:
            print(
                f"chorus      | {s.name:<12}{s.address}  ({s.grpc_service}; try: grpcurl -plaintext {s.address} list)",
                flush=True,
            )
        if not any(full_env.get(k) for k in PROVIDER_KEYS):
            print(SIMULATOR_BANNER, flush=True)
        print("chorus      | all services SERVING — Ctrl-C stops them", flush=True)
        done, _ = await asyncio.wait({stopper, *exits}, return_when=asyncio.FIRST_COMPLETED)
    elif ready in done:
        print(f"chorus      | startup failed: {ready.exception()}", flush=True)
        code = 1
    ready.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await ready
    for task in done & exits.keys():
        s = exits[task]
        print(
            f"chorus      | {s.name} exited unexpectedly with code {task.result()}; stopping the rest",
            flush=True,
        )
        code = 1

    for s in services:
        if s.process and s.process.returncode is None:
            s.process.send_signal(signal.SIGTERM)
    for s in services:
        if s.process is None:
            continue
        try:
            rc = await asyncio.wait_for(s.process.wait(), grace + 2)
        except TimeoutError:
            print(
                f"chorus      | {s.name} did not stop within {grace + 2:.0f} s: killed", flush=True
            )
            s.process.kill()
            rc = await s.process.wait()
            code = 1
        if rc != 0 and code == 0 and stopper.done():
            print(f"chorus      | {s.name} exited with code {rc}", flush=True)
            code = 1
        if s.pump:
            await s.pump
    stopper.cancel()
    print(f"chorus      | stopped (exit code {code})", flush=True)
    return code


def main() -> None:
    """Entry point of `python -m chorus.cli.stack` (what `make run` runs)."""
    import uvloop

    raise SystemExit(uvloop.run(run_stack()))


if __name__ == "__main__":
    main()
