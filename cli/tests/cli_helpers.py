"""Helpers of the CLI suite: the `chorus` command run as a real process — its output a pipe
(`run_chorus`), or its stdin a pseudo-terminal so that it asks questions (`TtyChorus`).

`conftest.py` puts this directory on `sys.path` (pytest runs in importlib mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chorus.core.server import GrpcServer, ServiceBinding
from chorus.core.settings import CoreSettings
from chorus.core.testing import BackendProcesses, backend_processes
from chorus.v1 import run_service_pb2_grpc

CHORUS_COMMAND = (
    sys.executable,
    "-c",
    "from chorus.cli.main import app; app(prog_name='chorus')",
)
"""`chorus` as the installed entry point runs it, from this interpreter."""


@contextlib.contextmanager
def simulated_backend(tmp: Path) -> Iterator[BackendProcesses]:
    """provider-svc (its simulator at full speed), history-svc on SQLite in `tmp` and
    orchestrator-svc, each a real process in dev mode (no identity needed)."""
    env = {
        "CHORUS_DEV_MODE": "true",
        "CHORUS_INTERNAL_TOKEN": "",
        "CHORUS_DATA_DIR": str(tmp / "data"),
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
        "CHORUS_GRACE_PERIOD_S": "2",
    }
    fast = {
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "0",
        "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0",
    }
    with backend_processes(env, provider_env=fast) as backend:
        yield backend


@contextlib.asynccontextmanager
async def fake_run_service(servicer: Any) -> AsyncIterator[GrpcServer]:
    """`servicer` (a fake RunService) on a real grpc.aio server on port 0, in dev mode."""
    server = GrpcServer(
        [
            ServiceBinding(
                "chorus.v1.RunService",
                servicer,
                run_service_pb2_grpc.add_RunServiceServicer_to_server,
            )
        ],
        CoreSettings(_env_file=None, dev_mode=True, instance_id="fake"),  # type: ignore[call-arg]
        0,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@dataclass
class Done:
    """A finished `chorus` process: its exit code and what it printed."""

    code: int
    out: str
    err: str


async def run_chorus(
    *args: str, env: Mapping[str, str], timeout: float = 120, stdin: bytes = b""
) -> Done:
    """`chorus ARGS` as a process whose environment is this one's plus `env`, its stdin a
    pipe holding `stdin` (never a terminal: it asks nothing); waits up to `timeout` seconds
    for it to exit."""
    proc = await asyncio.create_subprocess_exec(
        *CHORUS_COMMAND,
        *args,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


class TtyChorus:
    """`chorus ARGS` as a process whose stdin is a pseudo-terminal (so it asks questions),
    its stdout and stderr either pipes (`full_tty=False`: the output stays plain) or the same
    terminal (`full_tty=True`: colours and the live area, as a person sees it).

    `expect` waits for text in what it printed; `send` types; `wait` collects the exit code.
    Blocking (threads read the output): from an async test, call them with
    `asyncio.to_thread` so the test's event loop (a fake server) keeps running.
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str],
        full_tty: bool = False,
        cwd: str | None = None,
    ) -> None:
        import pty
        import subprocess
        import threading

        self.master, slave = pty.openpty()
        self.full_tty = full_tty
        self.proc = subprocess.Popen(
            [*CHORUS_COMMAND, *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdin=slave,
            stdout=slave if full_tty else subprocess.PIPE,
            stderr=slave if full_tty else subprocess.PIPE,
            close_fds=True,
        )
        os.close(slave)
        self._out = bytearray()
        self._err = bytearray()
        self._changed = threading.Condition()
        sources = [(self.master, self._out)]
        if not full_tty:
            assert self.proc.stdout is not None and self.proc.stderr is not None
            sources = [
                (self.proc.stdout.fileno(), self._out),
                (self.proc.stderr.fileno(), self._err),
                (self.master, bytearray()),  # the echo of what is typed
            ]
        self._readers = [
            threading.Thread(target=self._pump, args=source, daemon=True) for source in sources
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, fd: int, into: bytearray) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's last user is gone
                data = b""
            with self._changed:
                if data:
                    into.extend(data)
                self._changed.notify_all()
            if not data:
                return

    @property
    def out(self) -> str:
        with self._changed:
            return self._out.decode(errors="replace")

    @property
    def err(self) -> str:
        with self._changed:
            return self._err.decode(errors="replace")

    def expect(self, text: str, timeout: float = 60, count: int = 1) -> str:
        """Wait until `text` was printed (stdout; stderr too) `count` times; returns the
        output so far.

        Raises:
            AssertionError: not printed within `timeout` seconds, or the process exited.
        """
        import time

        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                out = self._out.decode(errors="replace") + self._err.decode(errors="replace")
                if out.count(text) >= count:
                    return out
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._readers_alive()):
                    raise AssertionError(f"{text!r} not printed; got:\n{out}")
                self._changed.wait(min(left, 0.5))

    def _readers_alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def send(self, text: str | bytes) -> None:
        """Type `text` (a str is UTF-8; b"\\x04" is Ctrl-D, b"\\x03" Ctrl-C)."""
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def wait(self, timeout: float = 60) -> Done:
        """The exit code and the output, once the process exited."""
        code = self.proc.wait(timeout)
        for reader in self._readers:  # each ends at EOF (EIO for the terminal)
            reader.join(timeout)
        os.close(self.master)
        return Done(code, self.out, self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
