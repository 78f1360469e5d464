"""Helpers for Chorus tests: real services over real sockets, waits on conditions.

* `require_service` skips a test when PostgreSQL / Redis is unreachable, with a reason that
  the repository's conftest turns into a failure under `CI=true`.
* `ServiceProcess` starts `python -m chorus.<service>` on port 0 and learns its address from
  the `listening` log line.
* `backend_processes` runs provider-svc, history-svc and orchestrator-svc that way, wired
  to each other.
* `wait_for` polls a condition with a timeout instead of sleeping a fixed time.
* `traced_in_memory` turns tracing on into an in-memory exporter for a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chorus.core import tracing
from chorus.core.errors import ChorusError, from_rpc_error


def require_service(name: str, host: str, port: int) -> None:
    """Skip the calling test (`requires-service:` reason) unless `host:port` accepts TCP."""
    import pytest

    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError as exc:
        pytest.skip(f"requires-service: {name} at {host}:{port} unreachable ({exc})")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    condition: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Poll `condition` (sync or async) until it returns a truthy value; return that value.

    Raises:
        TimeoutError: when `timeout` seconds passed without a truthy value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def traced_in_memory(*, capture: bool = False) -> Iterator[InMemorySpanExporter]:
    """Tracing on (`chorus.core.tracing.install`) into an in-memory exporter, whose
    finished spans the caller reads; off again on exit. `capture` records message content
    as `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` would."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider, capture=capture)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


READY_TIMEOUT_S = 120.0
"""How long a test waits for a service process to log its address, seconds: a wait on a
condition, so only a failing start pays it; generous because on a loaded 2-core machine
(load average 20-50 while a CI run shares it) importing grpc and autogen alone took 44 s."""

LOG_PIPE_BYTES = 1 << 20
"""Capacity of a child's stderr pipe (Linux `F_SETPIPE_SZ`; 1 MiB is the default
`/proc/sys/fs/pipe-max-size`). With the kernel's 64 KiB, a burst of log lines (1,000 run
starts: ~2 lines of ~335 bytes each) fills the pipe whenever the reader thread is slow to be
scheduled, and the service's event loop blocks in its log write: a stall a container
runtime's log driver does not cause, measured as lag in the benchmarks."""


class ServiceProcess:
    """A Chorus service in its own process (`python -m <module>`), on port 0 by default.

    Args:
        module: e.g. `chorus.history`, or the path of a `.py` script to run.
        env: extra environment (`CHORUS_*` settings); the parent's environment is inherited.
        log_event: the log line event that carries the bound address.
    """

    def __init__(
        self, module: str, env: Mapping[str, str] | None = None, log_event: str = "listening"
    ) -> None:
        self.module = module
        self.lines: list[str] = []
        self.address: str | None = None
        self._event = log_event
        self._ready = threading.Event()
        full_env = {**os.environ, "CHORUS_LOG_JSON": "true", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, module] if module.endswith(".py") else [sys.executable, "-m", module],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        with contextlib.suppress(OSError):  # over pipe-max-size, unprivileged: 64 KiB stays
            fcntl.fcntl(self.proc.stderr.fileno(), fcntl.F_SETPIPE_SZ, LOG_PIPE_BYTES)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.address is None:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == self._event and record.get("address"):
                    self.address = str(record["address"])
                    self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Block until the service logged its address; return it (`host:port`).

        Raises:
            RuntimeError: the process exited first or the timeout passed (its log is included).
        """
        self._ready.wait(timeout)
        if self.address is None:
            raise RuntimeError(
                f"{self.module} did not start (exit code {self.proc.poll()}):\n"
                + "\n".join(self.lines[-30:])
            )
        return self.address

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` (SIGTERM by default)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to `timeout` s (then SIGKILL); return the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class BackendProcesses:
    """provider-svc, history-svc and orchestrator-svc running: their `host:port` addresses
    and processes (in start order)."""

    provider: str
    history: str
    orchestrator: str
    processes: list[ServiceProcess] = field(default_factory=list)


@contextlib.contextmanager
def backend_processes(
    env: Mapping[str, str],
    *,
    provider_env: Mapping[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[BackendProcesses]:
    """provider-svc and history-svc, then orchestrator-svc pointed at them, each a
    `ServiceProcess` on port 0 with `env` (plus `provider_env` for provider-svc); all
    stopped, newest first, on exit.

    Raises:
        RuntimeError: a service did not log its address within `ready_timeout_s` seconds.
    """
    started: list[ServiceProcess] = []
    try:
        provider = ServiceProcess(
            "chorus.provider",
            env={**env, "CHORUS_PROVIDER_PORT": "0", **(provider_env or {})},
        )
        started.append(provider)
        history = ServiceProcess("chorus.history", env={**env, "CHORUS_HISTORY_PORT": "0"})
        started.append(history)
        provider_address = provider.wait_ready(ready_timeout_s)
        history_address = history.wait_ready(ready_timeout_s)
        orchestrator = ServiceProcess(
            "chorus.orchestrator",
            env={
                **env,
                "CHORUS_ORCHESTRATOR_PORT": "0",
                "CHORUS_PROVIDER_ADDRESS": provider_address,
                "CHORUS_HISTORY_ADDRESS": history_address,
            },
        )
        started.append(orchestrator)
        yield BackendProcesses(
            provider_address,
            history_address,
            orchestrator.wait_ready(ready_timeout_s),
            started,
        )
    finally:
        for proc in reversed(started):
            proc.stop()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 that a test controls, to cut a service off its database.

    Runs in a background thread (so it keeps forwarding while the test blocks).
    `cut()` closes every connection and refuses new ones; `restore()` accepts again.

    Args:
        target: `(host, port)` to forward to.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        """`127.0.0.1:port` to give the service instead of the real target."""
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore()`."""
        self._open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Accept and forward connections again."""
        self._open.set()

    def close(self) -> None:
        """Stop the proxy for good."""
        self._closed = True
        self.cut()
        self._listener.close()


async def rpc_error(call: Awaitable[Any]) -> ChorusError:
    """The `ChorusError` a gRPC call failed with: its code, `ErrorInfo` reason and metadata,
    and `BadRequest` field violations (`chorus.core.errors.from_rpc_error`).

    Raises:
        AssertionError: the call succeeded.
    """
    import grpc

    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc)
    raise AssertionError("the call succeeded; an error was expected")


def fields_of(err: ChorusError) -> set[str]:
    """The field paths of `err`'s `BadRequest` violations (empty for other errors)."""
    return {field_path for field_path, _ in getattr(err, "violations", [])}


PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The machine's PostgreSQL (trust auth), where throw-away test databases are made."""


@contextlib.contextmanager
def throwaway_postgres(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database `<prefix>_<random>` on the machine's server; yields
    its URL and drops it (WITH FORCE) on exit. Never touches another database. Skips the
    test (`requires-service:`) when PostgreSQL is unreachable."""
    import uuid

    import psycopg

    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
