"""Helpers of the history-svc tests: settings, clients, builders, processes (Redis, TCP proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from chorus.core.identity import SYSTEM_USER, TOKEN_KEY, USER_KEY
from chorus.core.server import GrpcServer
from chorus.core.testing import fields_of as fields_of
from chorus.core.testing import free_port, wait_for
from chorus.core.testing import rpc_error as rpc_error
from chorus.history.app import HistoryApp, build_app
from chorus.history.settings import Settings
from chorus.v1 import chat_pb2, conversation_pb2, history_service_pb2_grpc, run_pb2

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
TOKEN = "history-test-token"
ADMIN_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"


def make_settings(**values: Any) -> Settings:
    """Settings for tests: token auth, port 0, fast health probes, no .env file."""
    base: dict[str, Any] = {
        "internal_token": TOKEN,
        "dev_mode": False,
        "history_port": 0,
        "log_json": True,
        "health_check_interval_s": 0.2,
        "watch_idle_poll_s": 0.5,
        "migrate_on_start": False,
    }
    base.update(values)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


class UserStub:
    """A HistoryService stub whose every call carries `user`'s identity."""

    def __init__(self, channel: grpc.aio.Channel, user: str) -> None:
        self._stub = history_service_pb2_grpc.HistoryServiceStub(channel)
        self.user = user
        self._md = ((USER_KEY, user), (TOKEN_KEY, TOKEN))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return functools.partial(getattr(self._stub, name), metadata=self._md)


@dataclass
class History:
    """A running history service (in this process) and clients for it."""

    app: HistoryApp
    server: GrpcServer
    channel: grpc.aio.Channel
    users: dict[str, UserStub] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.server.address

    def as_user(self, user: str) -> UserStub:
        if user not in self.users:
            self.users[user] = UserStub(self.channel, user)
        return self.users[user]

    def system(self) -> UserStub:
        return self.as_user(SYSTEM_USER)


@contextlib.asynccontextmanager
async def running_history(settings: Settings) -> AsyncIterator[History]:
    app = await build_app(settings)
    server = GrpcServer(app.bindings, settings, 0)
    await server.start()
    await app.on_started(server)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield History(app, server, channel)
    finally:
        await channel.close()
        await server.stop(0)
        await app.close()


# Builders


def message(
    text: str = "hello", role: int = chat_pb2.ROLE_USER, **kw: Any
) -> conversation_pb2.Message:
    return conversation_pb2.Message(role=role, content=text, **kw)


def run_spec(**kw: Any) -> run_pb2.RunSpec:
    return run_pb2.RunSpec(**{"template": "duet", "input": "debate tabs vs spaces", **kw})


def text_event(seq: int, text: str = "x") -> run_pb2.RunEvent:
    return run_pb2.RunEvent(seq=seq, agent="a", text_delta=run_pb2.RunEvent.TextDelta(text=text))


def completed_event(seq: int) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        seq=seq, run_completed=run_pb2.RunEvent.RunCompleted(final_answer="done")
    )


async def new_conversation(stub: UserStub, title: str = "t") -> conversation_pb2.Conversation:
    from chorus.v1 import history_service_pb2 as pb

    resp = await stub.CreateConversation(
        pb.CreateConversationRequest(conversation=conversation_pb2.Conversation(title=title))
    )
    return resp.conversation


async def new_run(
    stub: UserStub,
    conversation_id: str | None = None,
    status: int = run_pb2.RUN_STATUS_RUNNING,
    **spec: Any,
) -> run_pb2.Run:
    from chorus.v1 import history_service_pb2 as pb

    if conversation_id is None:
        conversation_id = (await new_conversation(stub)).id
    resp = await stub.RecordRun(
        pb.RecordRunRequest(
            run=run_pb2.Run(
                id=str(uuid.uuid4()),
                conversation_id=conversation_id,
                spec=run_spec(**spec),
                status=status,
            )
        )
    )
    return resp.run


CACHE_VERSION_CHARS = 40
"""Characters of the version prefix of a cached value."""


async def cached_run(history: History, settings: Settings, run_id: str) -> run_pb2.Run | None:
    """The run as cached: read from Redis directly, or the in-process cache of SQLite."""
    if not settings.redis_url:
        return await history.app.cache.get_run(run_id)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = await client.get(f"{settings.redis_key_prefix}run:{run_id}")
    finally:
        await client.aclose()
    return None if raw is None else run_pb2.Run.FromString(raw[CACHE_VERSION_CHARS:])


# Processes the tests start and stop themselves


class RedisServer:
    """A private `redis-server` on a free port (no persistence), for outage tests."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("requires-service: redis-server binary not installed")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        async def answers() -> bool:
            client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
            try:
                return bool(await client.ping())
            except (OSError, redis.RedisError):
                return False
            finally:
                await client.aclose()

        await wait_for(answers, timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class TcpProxy:
    """A TCP proxy to `target` that the test can cut (close every connection and refuse new
    ones) and restore — makes a server unreachable without touching the server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()


def env_for(settings: Settings) -> dict[str, str]:
    """CHORUS_* environment for a `ServiceProcess` with the same storage as `settings`."""
    env = {
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "CHORUS_DEV_MODE": "false",
        "CHORUS_HISTORY_PORT": "0",
        "CHORUS_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "CHORUS_DATA_DIR": str(settings.data_dir),
        "CHORUS_LOG_LEVEL": "INFO",
    }
    for name, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url)):
        env[f"CHORUS_{name}"] = value or ""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}, **env}
