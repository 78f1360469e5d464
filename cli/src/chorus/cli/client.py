"""Connections of the `chorus` command: gRPC stubs with the caller's identity.

The CLI is an engineer's tool that speaks gRPC to the services directly, so it presents a
user name (`CHORUS_USER`, default `dev` — the identity of `make run`'s dev mode and of the
gateway with `CHORUS_AUTH_MODE=none`, so the browser sees the CLI's runs) and, against a
stack that is not in dev mode, the internal token (`CHORUS_INTERNAL_TOKEN`).

By default the addresses are those `make run` uses: `CHORUS_HOST` (127.0.0.1) with
`CHORUS_PROVIDER_PORT`, `CHORUS_HISTORY_PORT` and `CHORUS_ORCHESTRATOR_PORT` (50051-50053),
from the environment or `./.env` as the launcher reads them; `CHORUS_*_ADDRESS` (or the
flags) override them.

Addresses may name several replicas, as the gateway's do: a comma-separated list of
`ip:port`, or `dns:///name:port` — calls go round robin (`chorus.core.channels`). A stream
whose replica goes away is followed again on another (`reattachable`, `chorus.cli.main`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from chorus.core import identity
from chorus.core.channels import balanced_target
from chorus.core.errors import server_went_away
from chorus.v1 import (
    history_service_pb2_grpc,
    provider_service_pb2_grpc,
    run_service_pb2_grpc,
)

DEFAULT_PORTS = {"provider": 50051, "history": 50052, "orchestrator": 50053}
"""The ports `make run` uses unless `CHORUS_*_PORT` says otherwise."""


def reattachable(error: BaseException) -> bool:
    """Whether a run stream that failed with `error` may be followed again on another
    replica: its server went away or is shutting down (`chorus.core.errors.server_went_away`;
    the CLI's own cancel is Ctrl-C, never an error here). Every other code (NOT_FOUND,
    PERMISSION_DENIED, …) is final."""
    return isinstance(error, grpc.aio.AioRpcError) and server_went_away(error)


def channel(address: str) -> grpc.aio.Channel:
    """A channel to `address` (`host:port`, a list of `ip:port`, or `dns:///name:port`).

    Raises:
        ValueError: a malformed list of addresses.
    """
    target, options = balanced_target(address)
    return grpc.aio.insecure_channel(target, options=options)


@dataclass
class Connection:
    """Where the services are and who is calling.

    Attributes:
        orchestrator / history / provider: `host:port` of each gRPC service (or several:
            `channel`).
        user: the identity sent as `x-chorus-user`.
        token: the internal token (None in dev mode).
    """

    orchestrator: str
    history: str
    provider: str
    user: str
    token: str | None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, dotenv_path: str = ".env"
    ) -> Connection:
        """Defaults from `CHORUS_*_ADDRESS`, else `CHORUS_HOST` + `CHORUS_*_PORT` (as `make
        run` binds them), `CHORUS_USER` and `CHORUS_INTERNAL_TOKEN` — the environment first,
        then `dotenv_path`."""
        source = dict(os.environ if env is None else env)
        if os.path.exists(dotenv_path):
            from dotenv import dotenv_values

            for key, value in dotenv_values(dotenv_path).items():
                if value and not source.get(key):
                    source[key] = value
        host = source.get("CHORUS_HOST") or "127.0.0.1"

        def address(name: str) -> str:
            upper = name.upper()
            if source.get(f"CHORUS_{upper}_ADDRESS"):
                return source[f"CHORUS_{upper}_ADDRESS"]
            return f"{host}:{source.get(f'CHORUS_{upper}_PORT') or DEFAULT_PORTS[name]}"

        return cls(
            orchestrator=address("orchestrator"),
            history=address("history"),
            provider=address("provider"),
            user=source.get("CHORUS_USER") or identity.DEV_USER,
            token=source.get("CHORUS_INTERNAL_TOKEN") or None,
        )

    def service_of(self, text: str) -> tuple[str, str] | None:
        """(service name, configured address) whose port appears in `text` (an error's
        details), if any."""
        for name in ("orchestrator", "history", "provider"):
            configured = getattr(self, name)
            port = configured.rsplit(":", 1)[-1]
            if port.isdigit() and re.search(rf":{port}(?!\d)", text):
                return name, configured
        return None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Identity metadata for every call."""
        md = [(identity.USER_KEY, self.user)]
        if self.token:
            md.append((identity.TOKEN_KEY, self.token))
        return tuple(md)

    def runs(self, channel: grpc.aio.Channel) -> run_service_pb2_grpc.RunServiceStub:
        return run_service_pb2_grpc.RunServiceStub(channel)

    def history_stub(
        self, channel: grpc.aio.Channel
    ) -> history_service_pb2_grpc.HistoryServiceStub:
        return history_service_pb2_grpc.HistoryServiceStub(channel)

    def provider_stub(
        self, channel: grpc.aio.Channel
    ) -> provider_service_pb2_grpc.ProviderServiceStub:
        return provider_service_pb2_grpc.ProviderServiceStub(channel)
