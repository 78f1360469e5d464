"""The `make run` launcher (`python -m chorus.cli.stack`) on embedded defaults.

It supervises the four services (a service that dies is restarted with backoff, on the same
ports and with the same instance id) and stops them in order on SIGINT/SIGTERM: gateway,
orchestrator (handoff), then provider and history — also when the SIGINT goes to the whole
process group, as a terminal's Ctrl-C does. Real processes; every wait polls a condition.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.cli import stack
from chorus.core.testing import free_port
from chorus.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

NAMES = ("provider", "history", "orchestrator", "gateway")


class Launcher:
    """`python -m chorus.cli.stack` as a subprocess, its output collected line by line."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        own_session: bool = False,
        read: bool = True,
        ports: dict[str, int] | None = None,
    ) -> None:
        self.ports = dict(ports) if ports else {name: free_port() for name in NAMES}
        env = {
            **os.environ,
            "CHORUS_DATA_DIR": str(tmp_path / "data"),
            "CHORUS_DATABASE_URL": "",
            "CHORUS_REDIS_URL": "",
            "CHORUS_GRACE_PERIOD_S": "3",
            **{f"CHORUS_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
        }
        for key in ("CHORUS_INTERNAL_TOKEN", "CHORUS_INSTANCE_ID"):
            env.pop(key, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chorus.cli.stack"],
            env=env,
            cwd=tmp_path,  # no stray .env from the repository
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # like a shell's foreground job: its own process group, which the test can signal
            start_new_session=own_session,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.snapshot()[-n:])

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll the output until a line matches `pattern`; the match."""
        return wait_until(
            lambda: next((m for line in self.snapshot() if (m := re.search(pattern, line))), None),
            timeout,
            lambda: f"no line matching {pattern!r}:\n{self.tail()}",
        )

    def pids(self, name: str) -> list[int]:
        """Every pid the launcher started `name` with, oldest first."""
        return [
            int(m.group(1))
            for line in self.snapshot()
            if (m := re.search(rf"chorus +\| started {name} \(pid (\d+)\)", line))
        ]

    def index(self, pattern: str) -> int:
        """Index of the first output line matching `pattern` (the test fails if none)."""
        lines = self.snapshot()
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matching {pattern!r}:\n{self.tail()}"
        return found[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for name in NAMES:  # never leave a service behind, whatever failed
            for pid in self.pids(name):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def wait_until(condition: Callable[[], object], timeout: float, message: Callable[[], str]):
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return dict(items)


def serving(port: int, service: str) -> bool:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    return asyncio.run(check())


@pytest.fixture
def launcher_factory(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    started: list[Launcher] = []

    def start(**kwargs: bool) -> Launcher:
        launcher = Launcher(tmp_path, **kwargs)
        started.append(launcher)
        launcher.wait_line(r"all services SERVING", 90)
        assert {n: len(launcher.pids(n)) for n in NAMES} == dict.fromkeys(NAMES, 1)
        return launcher

    yield start
    for launcher in started:
        launcher.close()


def test_a_killed_service_is_restarted_on_its_port_with_its_instance_id(launcher_factory):
    launcher = launcher_factory()
    assert "embedded SQLite" in launcher.tail(200)
    [first] = launcher.pids("orchestrator")
    assert environ_of(first)["CHORUS_INSTANCE_ID"] == "orchestrator-1"
    others = {n: launcher.pids(n) for n in ("provider", "history", "gateway")}

    os.kill(first, signal.SIGKILL)
    launcher.wait_line(r"orchestrator exited with -9; restarting in \d+\.\d s \(restart 1\)", 15)
    wait_until(
        lambda: len(launcher.pids("orchestrator")) == 2,
        15,
        lambda: f"orchestrator not started again:\n{launcher.tail()}",
    )
    second = launcher.pids("orchestrator")[1]
    assert second != first
    wait_until(
        lambda: serving(launcher.ports["orchestrator"], "chorus.v1.RunService"),
        60,
        lambda: f"orchestrator not SERVING again on its port:\n{launcher.tail()}",
    )
    launcher.wait_line(r"orchestrator is serving again \(restart 1\)", 15)
    assert environ_of(second)["CHORUS_INSTANCE_ID"] == "orchestrator-1"
    # the launcher kept running and nothing else was restarted
    assert launcher.proc.poll() is None
    assert {n: launcher.pids(n) for n in others} == others
    assert all(alive(pid) for pids in others.values() for pid in pids)

    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.proc.wait(60) == 0, launcher.tail()
    assert not any(alive(pid) for n in NAMES for pid in launcher.pids(n))


@pytest.mark.parametrize("target", ["launcher", "process group"])
def test_sigint_stops_gateway_then_orchestrator_then_provider_and_history(launcher_factory, target):
    launcher = launcher_factory(own_session=target == "process group")
    pids = {n: launcher.pids(n)[0] for n in NAMES}
    if target == "process group":  # what a terminal's Ctrl-C does
        os.killpg(launcher.proc.pid, signal.SIGINT)
    else:
        launcher.proc.send_signal(signal.SIGINT)
    assert launcher.proc.wait(60) == 0, launcher.tail()
    assert not any(alive(pid) for pid in pids.values()), launcher.tail()

    def line(pattern: str) -> int:
        return launcher.index(pattern)

    stop_gateway = line(r"^chorus +\| stopping gateway$")
    gateway_stopped = line(r"^chorus +\| gateway stopped \(exit code 0\)$")
    stop_orchestrator = line(r"^chorus +\| stopping orchestrator ")
    orchestrator_stopped = line(r"^chorus +\| orchestrator stopped \(exit code 0\)$")
    stop_rest = line(r"^chorus +\| stopping provider, history$")
    provider_stopped = line(r"^chorus +\| provider stopped \(exit code 0\)$")
    history_stopped = line(r"^chorus +\| history stopped \(exit code 0\)$")
    assert stop_gateway < gateway_stopped < stop_orchestrator < orchestrator_stopped < stop_rest, (
        launcher.tail()
    )
    assert stop_rest < min(provider_stopped, history_stopped), launcher.tail()
    assert re.search(r"stopped \(exit code 0\)$", launcher.snapshot()[-1]), launcher.tail()

    # The services' own logs: each began shutting down only when its turn came, so none got
    # the SIGINT itself (they run in their own sessions).
    for name, turn in (
        ("orchestrator", stop_orchestrator),
        ("provider", stop_rest),
        ("history", stop_rest),
    ):
        first = line(rf"^{name} *\|.*shutting_down")
        assert first > turn, f"{name} shut down before its turn:\n{launcher.tail()}"


def test_a_second_signal_kills_what_is_left(launcher_factory, tmp_path):
    launcher = launcher_factory()
    pids = {n: launcher.pids(n)[0] for n in NAMES}
    os.kill(pids["gateway"], signal.SIGSTOP)  # a service that would not stop on its own
    try:
        launcher.proc.send_signal(signal.SIGINT)
        launcher.wait_line(r"stopping gateway", 15)
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(30) == 1, launcher.tail()
    finally:
        if alive(pids["gateway"]):
            os.kill(pids["gateway"], signal.SIGCONT)
    assert "second signal: killing every service now" in launcher.tail()
    assert not any(alive(pid) for pid in pids.values()), launcher.tail()


def test_a_service_that_does_not_stop_is_killed_after_its_grace_period(launcher_factory):
    launcher = launcher_factory()
    pids = {n: launcher.pids(n)[0] for n in NAMES}
    os.kill(pids["gateway"], signal.SIGSTOP)  # SIGTERM stays pending; SIGKILL still works
    try:
        started = time.monotonic()
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(60) == 1, launcher.tail()
    finally:
        if alive(pids["gateway"]):
            os.kill(pids["gateway"], signal.SIGCONT)
    # CHORUS_GRACE_PERIOD_S=3 plus the 5 s margin, then SIGKILL — and the order goes on
    assert time.monotonic() - started >= 8
    killed = launcher.index(r"^chorus +\| gateway did not stop within 8 s: killed$")
    assert killed < launcher.index(r"^chorus +\| gateway stopped \(exit code -9\)$")
    assert killed < launcher.index(r"^chorus +\| stopping orchestrator ")
    assert launcher.index(r"^chorus +\| orchestrator stopped \(exit code 0\)$") < launcher.index(
        r"^chorus +\| stopping provider, history$"
    )
    assert not any(alive(pid) for pid in pids.values()), launcher.tail()


def test_restart_delay_doubles_from_half_a_second_to_ten_with_jitter():
    assert [stack.restart_delay(n, rng=lambda: 0.0) for n in range(1, 8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert stack.restart_delay(1, rng=lambda: 1.0) == 0.625
    assert stack.restart_delay(5, rng=lambda: 1.0) == 10.0  # capped, jitter included
    for n in range(1, 10):
        delay = stack.restart_delay(n)
        base = min(10.0, 0.5 * 2 ** (n - 1))
        assert base <= delay <= min(10.0, base * 1.25)


async def test_a_service_that_keeps_crashing_keeps_being_restarted(monkeypatch, capsys):
    monkeypatch.setattr(stack, "BACKOFF_BASE_S", 0.02)
    monkeypatch.setattr(stack, "BACKOFF_CAP_S", 0.08)
    service = stack.Service(
        "flaky", "", free_port(), None, command=[sys.executable, "-c", "raise SystemExit(3)"]
    )
    supervisor = stack.Supervisor(service, os.environ)
    supervisor.start()
    for _ in range(600):
        if service.restarts >= 6:
            break
        await asyncio.sleep(0.05)
    assert service.restarts >= 6
    await asyncio.wait_for(supervisor.stop(), 10)
    assert supervisor.task is not None and supervisor.task.done()
    out = capsys.readouterr().out
    delays = [float(d) for d in re.findall(r"flaky exited with 3; restarting in (\S+) s", out)]
    assert len(delays) >= 6
    assert delays[-1] <= 0.1  # capped
    assert "flaky exited with 3; restarting in" in out and "(restart 6)" in out


def test_the_orchestrator_gets_a_stable_instance_id(tmp_path):
    dotenv = str(tmp_path / ".env")
    services = {s.name: s for s in stack.stack_services({}, dotenv)}
    assert services["orchestrator"].env == {"CHORUS_INSTANCE_ID": "orchestrator-1"}
    assert all(not s.env for n, s in services.items() if n != "orchestrator")
    chosen = {s.name: s for s in stack.stack_services({"CHORUS_INSTANCE_ID": "laptop"}, dotenv)}
    assert chosen["orchestrator"].env == {"CHORUS_INSTANCE_ID": "laptop"}
    (tmp_path / ".env").write_text("CHORUS_INSTANCE_ID=from-dotenv\n")
    from_file = {s.name: s for s in stack.stack_services({}, dotenv)}
    assert from_file["orchestrator"].env == {"CHORUS_INSTANCE_ID": "from-dotenv"}


def test_each_service_traces_under_its_own_service_name(tmp_path):
    dotenv = str(tmp_path / ".env")

    def names(env: dict[str, str]) -> dict[str, str | None]:
        launched = stack.stack_services(env, dotenv)
        full = stack.stack_environment(env, launched, dotenv)
        return {s.name: {**full, **s.env}.get("OTEL_SERVICE_NAME") for s in launched}

    # unset: each service's own default (chorus.core.tracing: chorus-<service>)
    assert set(names({}).values()) == {None}
    assert names({"OTEL_SERVICE_NAME": "chorus"}) == {
        "provider": "chorus-provider",
        "history": "chorus-history",
        "orchestrator": "chorus-orchestrator",
        "gateway": "chorus-gateway",
    }
    from_attributes = names(
        {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=dev,service.name=my%20app"}
    )
    assert from_attributes["gateway"] == "my app-gateway"
    assert len(set(from_attributes.values())) == 4


def test_the_stop_timeouts_follow_the_grace_period(tmp_path):
    assert stack.grace_period({}, str(tmp_path / ".env")) == 10.0
    assert stack.grace_period({"CHORUS_GRACE_PERIOD_S": "30"}, str(tmp_path / ".env")) == 30.0
    (tmp_path / ".env").write_text("CHORUS_GRACE_PERIOD_S=25\n")
    assert stack.grace_period({}, str(tmp_path / ".env")) == 25.0
    assert stack.grace_period({"CHORUS_GRACE_PERIOD_S": "5"}, str(tmp_path / ".env")) == 5.0


def test_the_services_stop_when_the_launcher_is_killed(launcher_factory):
    launcher = launcher_factory()
    pids = {n: launcher.pids(n)[0] for n in NAMES}
    launcher.proc.kill()  # no ordered stop possible: the kernel SIGKILLs every service
    launcher.proc.wait(10)
    wait_until(
        lambda: not any(alive(pid) for pid in pids.values()),
        10,
        lambda: f"left running: {[n for n, p in pids.items() if alive(p)]}",
    )


async def test_a_very_long_output_line_does_not_stop_the_pump(capsys):
    code = "import sys; print('x' * 200_000); print('after'); sys.stdout.flush()"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    await asyncio.wait_for(stack._pump("long", process), 10)
    await process.wait()
    out = capsys.readouterr().out
    assert "long        | [a line longer than 64 KiB was left out]" in out
    assert "long        | after" in out


def test_a_closed_terminal_stops_in_order_without_its_output(tmp_path):
    """SIGHUP with the launcher's stdout gone: it keeps draining the services and stops them."""
    launcher = Launcher(tmp_path, read=False)
    try:
        assert launcher.proc.stdout is not None
        fd = launcher.proc.stdout.fileno()
        os.set_blocking(fd, False)
        output = b""
        deadline = time.monotonic() + 90
        while b"all services SERVING" not in output:
            assert time.monotonic() < deadline, output[-3000:].decode()
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, output[-3000:].decode()
                output += chunk
        launcher.lines = output.decode().splitlines()
        pids = {n: launcher.pids(n)[0] for n in NAMES}
        launcher.proc.stdout.close()  # the only reader goes away, as a closed terminal does
        launcher.proc.send_signal(signal.SIGHUP)
        assert launcher.proc.wait(60) == 0
        assert not any(alive(pid) for pid in pids.values())
    finally:
        launcher.close()


def _events(port: int, run_id: str, after_seq: int, until: Callable[[list], bool], timeout: float):
    """WatchRun from `after_seq` until `until(events)` holds or the stream ends."""
    events: list = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        call = stub.WatchRun(
            run_service_pb2.WatchRunRequest(run_id=run_id, after_seq=after_seq), timeout=timeout
        )
        try:
            for reply in call:
                events.append(reply.event)
                if until(events):
                    break
        except grpc.RpcError as exc:  # the stack went away under the watch
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            call.cancel()
    return events


TERMINAL = ("run_completed", "run_failed", "run_cancelled")


def test_ctrl_c_mid_run_then_make_run_again_completes_the_run(tmp_path, monkeypatch):
    """The issue's `make run`, start a duet, Ctrl-C, `make run` again: the run goes on to its end."""
    monkeypatch.setenv("CHORUS_SIMULATOR_TOKENS_PER_SECOND", "60")  # turns of a few seconds
    first = Launcher(tmp_path)
    try:
        first.wait_line(r"all services SERVING", 90)
        port = first.ports["orchestrator"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            run = (
                run_service_pb2_grpc.RunServiceStub(channel)
                .CreateRun(
                    run_service_pb2.CreateRunRequest(
                        spec=run_pb2.RunSpec(template="duet", input="Tabs or spaces?", max_turns=4)
                    ),
                    timeout=30,
                )
                .run
            )

        def in_second_turn(events: list) -> bool:  # the first turn's checkpoint is stored
            return events[-1].HasField("text_delta") and any(
                e.HasField("message_completed") for e in events
            )

        shown = _events(port, run.id, 0, in_second_turn, 60)
        assert in_second_turn(shown), shown
        first.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert first.proc.wait(60) == 0, first.tail()
    finally:
        first.close()

    second = Launcher(tmp_path)
    try:
        second.wait_line(r"all services SERVING", 90)
        port = second.ports["orchestrator"]
        rest = _events(
            port, run.id, shown[-1].seq, lambda es: es[-1].WhichOneof("payload") in TERMINAL, 120
        )
        assert rest and rest[-1].HasField("run_completed"), rest[-3:]
        assert [e.seq for e in rest] == list(range(shown[-1].seq + 1, rest[-1].seq + 1))
        log = _events(port, run.id, 0, lambda es: es[-1].WhichOneof("payload") in TERMINAL, 30)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        assert log[: len(shown)] == shown  # what was shown before Ctrl-C is the stored log
        assert log[len(shown) :] == rest
        assert sum(e.WhichOneof("payload") in TERMINAL for e in log) == 1
        assert any(e.HasField("run_resumed") for e in rest), [e.WhichOneof("payload") for e in rest]
    finally:
        second.close()


# --- issue 23 item 9: taken ports, readiness of our own processes, a real call at the banner


def test_the_banner_names_every_address_and_a_run_started_at_once_completes(tmp_path):
    """The moment "all services SERVING" appears, a StreamRun is served to its end."""
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_line(r"all services SERVING", 90)
        with grpc.insecure_channel(f"127.0.0.1:{launcher.ports['orchestrator']}") as channel:
            stream = run_service_pb2_grpc.RunServiceStub(channel).StreamRun(
                run_service_pb2.StreamRunRequest(
                    spec=run_pb2.RunSpec(template="duet", input="Tea or coffee?", max_turns=1)
                ),
                timeout=120,
            )
            kinds = [reply.event.WhichOneof("payload") for reply in stream]
        assert kinds[0] == "run_started" and kinds[-1] == "run_completed", kinds
        banner = launcher.snapshot()
        for name in NAMES[:-1]:
            address = f"127.0.0.1:{launcher.ports[name]}"
            assert any(re.search(rf"\| {name:<12} {address}  \(", line) for line in banner), (
                launcher.tail()
            )
        gateway = f"http://127.0.0.1:{launcher.ports['gateway']}"
        assert any(f"| gateway      {gateway}  (" in line for line in banner), launcher.tail()
        assert any(".venv/bin/grpcurl -plaintext" in line for line in banner)
        # human pace under `make run` unless configured (see the ctrl-c test for a set one)
        env = environ_of(launcher.pids("provider")[0])
        assert env["CHORUS_SIMULATOR_TOKENS_PER_SECOND"] == os.environ.get(
            "CHORUS_SIMULATOR_TOKENS_PER_SECOND", "40"
        )
    finally:
        launcher.close()


def test_a_taken_port_is_named_and_nothing_is_started(tmp_path):
    with socket.socket() as other:  # another program on the orchestrator's port
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        ports = {name: free_port() for name in NAMES} | {"orchestrator": taken}
        launcher = Launcher(tmp_path, ports=ports)
        try:
            assert launcher.proc.wait(60) == 1, launcher.tail()
            launcher.wait_line(r"nothing was started", 10)
            out = launcher.tail()
            assert f"port {taken} (orchestrator, CHORUS_ORCHESTRATOR_PORT) is already in use" in out
            assert "started" not in out.replace("nothing was started", "")
            assert "SERVING" not in out
        finally:
            launcher.close()


def test_a_second_make_run_on_the_same_ports_stops_before_starting_anything(
    launcher_factory, tmp_path
):
    first = launcher_factory()
    (tmp_path / "second").mkdir()
    second = Launcher(tmp_path / "second", ports=first.ports)
    try:
        assert second.proc.wait(60) == 1, second.tail()
        out = "\n".join(second.snapshot())
        for name in NAMES:
            assert f"port {first.ports[name]} ({name}, " in out, out
        assert "all services SERVING" not in out and "pid" not in out, out
    finally:
        second.close()
    # the first stack is untouched
    assert first.proc.poll() is None
    assert all(alive(first.pids(n)[0]) for n in NAMES)
    assert serving(first.ports["orchestrator"], "chorus.v1.RunService")


async def test_readiness_waits_for_its_own_process_not_a_server_already_on_the_port(tmp_path):
    """A health check answered by some other server on the port is not our service ready."""
    from chorus.core.testing import ServiceProcess

    from .conftest import service_env

    port = free_port()
    other = ServiceProcess(
        "chorus.history",
        env=service_env(tmp_path, "CHORUS_HISTORY_PORT")
        | {"CHORUS_HISTORY_PORT": str(port), "CHORUS_DEV_MODE": "true"},
    )
    try:
        other.wait_ready()
        assert await asyncio.to_thread(serving, port, "chorus.v1.HistoryService")
        service = stack.Service("history", "chorus.history", port, "chorus.v1.HistoryService")
        probe = stack._ready(service, {})
        done, _ = await asyncio.wait({probe}, timeout=1.5)
        assert not done, "ready before its own process said it listens"
        watch = stack._listening_watcher(service)
        watch(
            b"history | 2026 [info ] metrics_listening address=http://127.0.0.1:9%d/metrics\n"
            % port
        )
        watch(b"history | [info ] listening address=127.0.0.1:%d1 services=[]\n" % port)
        assert not service.listening.is_set(), "another port or the metrics line"
        watch(b"history | [info ] listening address=127.0.0.1:%d services=[...]\n" % port)
        await asyncio.wait_for(probe, 30)  # health SERVING and a real ListConversations call
    finally:
        other.stop()


def test_the_services_stop_when_the_launcher_is_killed_while_starting(tmp_path):
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_line(r"started gateway \(pid \d+\)", 60)
        pids = {n: launcher.pids(n)[0] for n in NAMES}
        launcher.proc.kill()
        launcher.proc.wait(10)
        wait_until(
            lambda: not any(alive(pid) for pid in pids.values()),
            15,
            lambda: f"left running: {[n for n, p in pids.items() if alive(p)]}",
        )
    finally:
        launcher.close()
