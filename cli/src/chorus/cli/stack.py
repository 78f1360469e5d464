"""The local stack behind `make run`: the four services as separate processes, supervised.

`python -m chorus.cli.stack` starts provider-svc, history-svc, orchestrator-svc and the
gateway, prefixes each one's log lines with its name and prints the addresses once the stack
answers. Before starting anything it checks that the four ports are free and names any that
is taken (another `make run`, most often) — then exits 1 without starting a service.

Readiness ("all services SERVING") means each of *our* processes answers a real call: the
process logged `listening` on its port (so a health check cannot be answered by some other
stack's server on that port), its gRPC health reports SERVING (the gateway's `/health/ready`
answers 200), and a real call succeeds — provider `ListModels`, history
`ListConversations`, orchestrator `ListTeamTemplates` and `ListRuns` (through history-svc),
gateway `GET /api/v1/teams` (through the orchestrator). A run started the moment the banner
appears is served.

Supervision: a service that exits on its own (a crash, a SIGKILL, the OOM killer) is started
again — same ports, same environment, same `CHORUS_INSTANCE_ID` — after an exponential backoff
with jitter (0.5 s doubling to 10 s; the backoff starts over once a service stayed up for
`STABLE_AFTER_S`). The launcher says so and never exits because one service died.

Ordered stop: Ctrl-C or SIGTERM stops the gateway first (no new runs, its streams end), then
the orchestrator (SIGTERM: it hands its runs over at their next turn boundary within
`CHORUS_GRACE_PERIOD_S`, so it gets that plus `ORCHESTRATOR_MARGIN_S` before SIGKILL), then
provider-svc and history-svc together, which the handoff still needed. The services run in
their own sessions, so a terminal's Ctrl-C (SIGINT to the whole foreground process group)
reaches only the launcher, which does the ordering; a second Ctrl-C kills what is left at once.
A closed terminal (SIGHUP) stops in order too; the launcher keeps reading the services' output
(and drops it) once its own stdout is gone, so no service fails writing a log line.

If the launcher itself is killed (`kill -9`, the OOM killer), the kernel SIGKILLs every service
with it (Linux, PR_SET_PDEATHSIG, set in the child between fork and exec; a child whose
launcher died before that exits at once): their output pipe is gone, so a graceful stop could
not even log, and a kill is the fault the runs are built to survive — the next `make run`
resumes them.

Simulator speed: unless `CHORUS_SIMULATOR_TOKENS_PER_SECOND` is set (environment or `.env`),
`make run` has the simulator stream at a human pace, `MAKE_RUN_TOKENS_PER_SECOND` (40) tokens
per second, so Cancel, Apply and a reload can be tried mid-turn (provider-svc's own default,
which tests use, is faster).

The orchestrator's `CHORUS_INSTANCE_ID` is `orchestrator-1` unless set, stable across restarts
and launches, so the next `make run` finds the runs the last one left in `./data` as its own.

Tracing (`OTEL_*`, `chorus.core.tracing`): each service gets its own `service.name`
(`stack_services`).

Storage and models follow the environment: with no `CHORUS_DATABASE_URL` / `CHORUS_REDIS_URL`
history-svc runs on SQLite in `CHORUS_DATA_DIR` (default `./data`) with an in-process
cache; with no provider key the simulator answers every model call — announced loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import secrets
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROVIDER_KEYS = (
    "CHORUS_OPENAI_API_KEY",
    "CHORUS_ANTHROPIC_API_KEY",
    "CHORUS_AZURE_OPENAI_API_KEY",
    "CHORUS_OPENAI_COMPATIBLE_BASE_URL",
)
ORCHESTRATOR_INSTANCE_ID = "orchestrator-1"
DEFAULT_GRACE_S = 10.0  # CoreSettings.grace_period_s
ORCHESTRATOR_MARGIN_S = 10.0  # after the grace period: checkpoint, lease release, exit
STOP_MARGIN_S = 5.0  # the other services: grace period + this before SIGKILL
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0
STABLE_AFTER_S = 30.0  # a service up this long starts its backoff over
MAKE_RUN_TOKENS_PER_SECOND = 40.0  # the simulator's pace under `make run` (a human reads it)
# A service's own `listening` log line (console or JSON), not `metrics_listening`.
_LISTENING = re.compile(rb"(?<![\w])listening\b")


_stdout_gone = False


def _write(data: bytes) -> None:
    """Write to our stdout; once that fails (terminal closed, pipe reader gone) drop output."""
    global _stdout_gone
    if _stdout_gone:
        return
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        _stdout_gone = True


def say(text: str) -> None:
    _write(f"chorus      | {text}\n".encode())


def restart_delay(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before restart number `failures` (1, 2, …) of a service that keeps failing.

    0.5 s doubling per consecutive failure, plus up to 25 % jitter so services that died
    together do not come back in lockstep, never more than 10 s.
    """
    base = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** max(0, failures - 1))
    return min(BACKOFF_CAP_S, base * (1 + 0.25 * rng()))


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL the child when the launcher dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    launcher = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != launcher:  # the launcher died between fork and prctl
            os._exit(1)

    return preexec


@dataclass
class Service:
    """One process of the stack, and its supervisor's state."""

    name: str
    module: str
    port: int
    grpc_service: str | None  # None: the HTTP gateway
    env: dict[str, str] = field(default_factory=dict)  # this service's own variables
    stop_timeout: float = DEFAULT_GRACE_S + STOP_MARGIN_S
    command: list[str] | None = None  # default: python -m <module>
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = field(default=None, repr=False)
    restarts: int = 0
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    stop_code: int | None = None  # the exit code of the ordered stop (None: not running then)
    killed: bool = False  # had to be SIGKILLed at stop
    listening: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set when the current process logged `listening` on `port` (cleared at each start)."""
    probe_error: str = ""  # why the last readiness probe failed (shown if it never succeeds)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        return self.command or [sys.executable, "-m", self.module]


def otel_service_name(env: Mapping[str, str]) -> str | None:
    """The OpenTelemetry `service.name` the environment gives every process alike:
    `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES` (comma-separated
    `key=value`, values percent-encoded); None when neither names one."""
    if env.get("OTEL_SERVICE_NAME", "").strip():
        return env["OTEL_SERVICE_NAME"].strip()
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "service.name" and value.strip():
            return unquote(value.strip())
    return None


def stack_services(env: Mapping[str, str], dotenv_path: str = ".env") -> list[Service]:
    """The four services with their ports (`CHORUS_<NAME>_PORT`, defaults 50051-50053, 8000).

    The orchestrator's `CHORUS_INSTANCE_ID` is the one configured, else `orchestrator-1`.
    Each service traces under its own `service.name`: `chorus-<name>` (`chorus.core.tracing`'s
    default), or `<given>-<name>` when the environment names one for all
    (`otel_service_name`: `OTEL_SERVICE_NAME=chorus` gives `chorus-gateway`, …), so that a
    trace tells the four apart.
    """
    instance_id = _setting(env, "CHORUS_INSTANCE_ID", dotenv_path) or ORCHESTRATOR_INSTANCE_ID
    given = otel_service_name(env)

    def port(var: str, default: int) -> int:
        return int(env.get(var) or default)

    services = [
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
            # Stable across restarts and launches: the orchestrator recovers the runs it owned
            # at once instead of waiting for them to look abandoned.
            env={"CHORUS_INSTANCE_ID": instance_id},
        ),
        Service("gateway", "chorus.gateway", port("CHORUS_GATEWAY_PORT", 8000), None),
    ]
    if given:
        for service in services:
            service.env["OTEL_SERVICE_NAME"] = f"{given}-{service.name}"
    return services


def stack_environment(
    base: Mapping[str, str], services: list[Service], dotenv_path: str = ".env"
) -> dict[str, str]:
    """The environment every process gets: shared internal token, ports and addresses, and
    the simulator's `make run` pace unless one is configured."""
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
    if not _setting(env, "CHORUS_SIMULATOR_TOKENS_PER_SECOND", dotenv_path):
        env["CHORUS_SIMULATOR_TOKENS_PER_SECOND"] = f"{MAKE_RUN_TOKENS_PER_SECOND:g}"
    return env


def _setting(env: Mapping[str, str], name: str, dotenv_path: str) -> str | None:
    """A variable as the services will read it: the environment, then `.env`."""
    value = env.get(name)
    if not value and os.path.exists(dotenv_path):
        from dotenv import dotenv_values

        value = dotenv_values(dotenv_path).get(name)
    return value or None


def grace_period(env: Mapping[str, str], dotenv_path: str = ".env") -> float:
    """`CHORUS_GRACE_PERIOD_S` as the services will read it (default 10)."""
    value = _setting(env, "CHORUS_GRACE_PERIOD_S", dotenv_path)
    try:
        return float(value) if value else DEFAULT_GRACE_S
    except ValueError:
        return DEFAULT_GRACE_S


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


async def _pump(
    name: str,
    process: asyncio.subprocess.Process,
    on_line: Callable[[bytes], None] | None = None,
) -> None:
    assert process.stdout is not None
    prefix = f"{name:<12}| ".encode()
    while True:
        try:
            line = await process.stdout.readline()
        except ValueError:  # a line over the stream's limit (64 KiB): dropped, keep reading
            line = b"[a line longer than 64 KiB was left out]\n"
        if not line:
            return
        if on_line is not None:
            on_line(line)
        _write(prefix + line)


def _listening_watcher(service: Service) -> Callable[[bytes], None]:
    """Sets `service.listening` when its process logs `listening` with its own port."""
    own_port = re.compile(rb":%d(?!\d)" % service.port)

    def watch(line: bytes) -> None:
        if not service.listening.is_set() and _LISTENING.search(line) and own_port.search(line):
            service.listening.set()

    return watch


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on `host:port` (a bind fails).

    SO_REUSEADDR as the services set it, so connections in TIME_WAIT from a previous run do
    not count as taken; a listener does (Linux refuses the bind then).
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def port_problems(services: list[Service], host: str) -> list[str]:
    """Human lines naming each port that is taken or given to two services (empty: none)."""
    problems = []
    seen: dict[int, str] = {}
    for s in services:
        var = f"CHORUS_{s.name.upper()}_PORT"
        if s.port in seen:
            problems.append(f"{s.name} and {seen[s.port]} both have port {s.port} (set {var})")
            continue
        seen[s.port] = s.name
        if port_taken(host, s.port):
            problems.append(
                f"port {s.port} ({s.name}, {var}) is already in use on {host}: another "
                f"`make run` or another program listens there — stop it, or choose another "
                f"port: {var}=... make run"
            )
    return problems


def _call_metadata(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    from chorus.core import identity

    md = [(identity.USER_KEY, identity.DEV_USER)]
    if env.get("CHORUS_INTERNAL_TOKEN"):
        md.append((identity.TOKEN_KEY, env["CHORUS_INTERNAL_TOKEN"]))
    return tuple(md)


async def _real_calls(service: Service, channel: grpc.aio.Channel, env: Mapping[str, str]) -> None:
    """A real call of `service` (raises grpc.aio.AioRpcError when it fails)."""
    from chorus.v1 import (
        history_service_pb2,
        history_service_pb2_grpc,
        provider_service_pb2,
        provider_service_pb2_grpc,
        run_service_pb2,
        run_service_pb2_grpc,
    )

    md = _call_metadata(env)
    if service.name == "provider":
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        await stub.ListModels(provider_service_pb2.ListModelsRequest(), metadata=md, timeout=5)
    elif service.name == "history":
        history = history_service_pb2_grpc.HistoryServiceStub(channel)
        await history.ListConversations(
            history_service_pb2.ListConversationsRequest(page_size=1), metadata=md, timeout=5
        )
    elif service.name == "orchestrator":
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        await runs.ListTeamTemplates(
            run_service_pb2.ListTeamTemplatesRequest(), metadata=md, timeout=5
        )
        await runs.ListRuns(run_service_pb2.ListRunsRequest(page_size=1), metadata=md, timeout=5)


async def _grpc_ready(service: Service, env: Mapping[str, str]) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service.grpc_service or ""), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    await _real_calls(service, channel, env)
                    return
                service.probe_error = (
                    "health: " + health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                )
            except grpc.aio.AioRpcError as err:
                service.probe_error = f"{err.code().name}: {err.details()}"
            await asyncio.sleep(0.1)


async def _http_ready(service: Service, env: Mapping[str, str]) -> None:
    base = f"http://{service.address}"

    def probe() -> bool:
        path = "/health/ready"
        try:
            with urllib.request.urlopen(base + path, timeout=2):
                pass
            path = "/api/v1/teams"
            with urllib.request.urlopen(base + path, timeout=5):
                return True
        except urllib.error.HTTPError as err:
            service.probe_error = f"GET {path}: HTTP {err.code}"
            return path == "/api/v1/teams" and err.code in (401, 403)  # auth configured
        except OSError as err:
            service.probe_error = f"GET {path}: {err}"
            return False

    while True:
        if await asyncio.to_thread(probe):
            return
        await asyncio.sleep(0.2)


async def _probe(service: Service, env: Mapping[str, str]) -> None:
    """Until `service`'s own process listens and answers a real call."""
    await service.listening.wait()
    if service.grpc_service:
        await _grpc_ready(service, env)
    else:
        await _http_ready(service, env)


def _ready(service: Service, env: Mapping[str, str]) -> asyncio.Future[None]:
    return asyncio.ensure_future(_probe(service, env))


class Supervisor:
    """Runs one service: starts it, restarts it when it exits on its own, stops it on request."""

    def __init__(self, service: Service, env: Mapping[str, str]) -> None:
        self.service = service
        self.env = {**env, **service.env}
        self._preexec = _parent_death_signal()
        self.task: asyncio.Task[None] | None = None
        self._probe: asyncio.Future[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"supervise-{self.service.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        s = self.service
        s.listening.clear()
        s.process = await asyncio.create_subprocess_exec(
            *s.argv,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the launcher, which stops in order
            preexec_fn=self._preexec,
        )
        s.pump = asyncio.create_task(_pump(s.name, s.process, _listening_watcher(s)))
        say(f"started {s.name} (pid {s.process.pid})")
        return s.process

    async def _run(self) -> None:
        s = self.service
        loop = asyncio.get_running_loop()
        failures = 0
        while not s.stop_requested.is_set():
            process = await self._spawn()
            started = loop.time()
            if s.restarts:
                self._probe = _ready(s, self.env)
                self._probe.add_done_callback(self._announce_serving(s.restarts))
            exited = asyncio.ensure_future(process.wait())
            stopping = asyncio.ensure_future(s.stop_requested.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not exited.done():  # an ordered stop
                exited.cancel()
                await self._terminate(process)
                return
            code = exited.result()
            await self._drain()
            if s.stop_requested.is_set():  # died just as the stop began
                s.stop_code = code
                return
            failures = 1 if loop.time() - started >= STABLE_AFTER_S else failures + 1
            s.restarts += 1
            delay = restart_delay(failures)
            say(f"{s.name} exited with {code}; restarting in {delay:.1f} s (restart {s.restarts})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.stop_requested.wait(), delay)

    def _announce_serving(self, restart: int) -> Callable[[asyncio.Future[None]], None]:
        def done(probe: asyncio.Future[None]) -> None:
            if not probe.cancelled() and probe.exception() is None:
                say(f"{self.service.name} is serving again (restart {restart})")

        return done

    async def _drain(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self.service.pump is not None:
            with contextlib.suppress(Exception):
                await self.service.pump

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        s = self.service
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), s.stop_timeout)
        except TimeoutError:
            say(f"{s.name} did not stop within {s.stop_timeout:.0f} s: killed")
            s.killed = True
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
        s.stop_code = code
        await self._drain()

    async def stop(self) -> None:
        """Stop the service (SIGTERM, bounded wait, SIGKILL) and end its supervision."""
        self.service.stop_requested.set()
        if self.task is not None:
            await self.task

    def kill(self) -> None:
        """SIGKILL the service now (a second Ctrl-C); `stop` then returns at once."""
        self.service.stop_requested.set()
        process = self.service.process
        if process is not None and process.returncode is None:
            self.service.killed = True
            with contextlib.suppress(ProcessLookupError):
                process.kill()


async def _stop_in_order(supervisors: dict[str, Supervisor], grace: float) -> None:
    """Gateway, then orchestrator (handoff), then provider and history together."""
    for group in (("gateway",), ("orchestrator",), ("provider", "history")):
        running = [supervisors[n] for n in group]
        if group == ("orchestrator",):
            say(f"stopping orchestrator (hands its runs over within {grace:.0f} s)")
        else:
            say("stopping " + ", ".join(group))
        await asyncio.gather(*(s.stop() for s in running))
        for s in running:
            code = s.service.stop_code
            say(f"{s.service.name} stopped" + ("" if code is None else f" (exit code {code})"))


async def run_stack(env: Mapping[str, str] | None = None, *, ready_timeout: float = 60.0) -> int:
    """Run the stack until SIGINT/SIGTERM; return the exit code (0 after a clean stop)."""
    base = dict(os.environ if env is None else env)
    services = stack_services(base)
    full_env = stack_environment(base, services)
    grace = grace_period(full_env)
    host = _setting(full_env, "CHORUS_HOST", ".env") or "127.0.0.1"
    problems = port_problems(services, host)
    if problems:
        for line in problems:
            say(line)
        say("nothing was started")
        return 1
    for s in services:
        margin = ORCHESTRATOR_MARGIN_S if s.name == "orchestrator" else STOP_MARGIN_S
        s.stop_timeout = grace + margin
    if full_env.get("CHORUS_DEV_MODE", "").lower() == "true":
        say("dev mode: services on 127.0.0.1 accept calls without the internal token (user 'dev')")
    for line in describe_configuration(full_env):
        say(line)
    orchestrator = next(s for s in services if s.name == "orchestrator")
    say(f"orchestrator instance id: {orchestrator.env['CHORUS_INSTANCE_ID']}")

    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    supervisors = {s.name: Supervisor(s, full_env) for s in services}
    for supervisor in supervisors.values():
        supervisor.start()

    ready = asyncio.ensure_future(asyncio.gather(*(_ready(s, full_env) for s in services)))
    ready.add_done_callback(
        lambda f: (
            _announce(services, full_env) if not f.cancelled() and f.exception() is None else None
        )
    )
    first_signal = asyncio.ensure_future(signals.get())
    startup: set[asyncio.Future[Any]] = {ready, first_signal}
    done, _ = await asyncio.wait(
        startup, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if not done:
        waiting = [
            s.name for s in services if s.process is None or s.process.returncode is not None
        ]
        say(
            f"not every service is SERVING after {ready_timeout:.0f} s; still trying"
            + (f" (not running: {', '.join(waiting)})" if waiting else "")
        )
        for s in services:
            if s.probe_error:
                say(f"{s.name}: last readiness check: {s.probe_error}")
    await first_signal
    ready.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await ready

    say("stopping in order (Ctrl-C again kills every service at once)")
    stopper = asyncio.create_task(_stop_in_order(supervisors, grace))
    second = asyncio.ensure_future(signals.get())
    await asyncio.wait({stopper, second}, return_when=asyncio.FIRST_COMPLETED)
    if not stopper.done():
        say("second signal: killing every service now")
        for supervisor in supervisors.values():
            supervisor.kill()
        await stopper
    second.cancel()
    code = 0
    for s in services:
        if s.killed or (s.stop_code is not None and s.stop_code != 0):
            code = 1
    say(f"stopped (exit code {code})")
    return code


def _announce(services: list[Service], env: Mapping[str, str]) -> None:
    gateway = services[-1]
    say(f"{'gateway':<12} http://{gateway.address}  (web page, REST under /api/v1, /docs)")
    for s in services[:-1]:
        say(
            f"{s.name:<12} {s.address}  ({s.grpc_service}; try: "
            f".venv/bin/grpcurl -plaintext {s.address} list)"
        )
    if not any(env.get(k) for k in PROVIDER_KEYS):
        _write(SIMULATOR_BANNER.encode() + b"\n")
    say("all services SERVING — Ctrl-C stops them in order")


def main() -> None:
    """Entry point of `python -m chorus.cli.stack` (what `make run` runs)."""
    import uvloop

    raise SystemExit(uvloop.run(run_stack()))


if __name__ == "__main__":
    main()
