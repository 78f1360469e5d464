"""`python -m chorus.gateway`: serve the HTTP gateway with uvicorn on uvloop until SIGTERM/SIGINT.

The command line is typer's (issue 24 item 4: one CLI library for every command line):

* `python -m chorus.gateway` or `python -m chorus.gateway serve` — serve;
* `python -m chorus.gateway hash-password` — read a password (prompt or stdin) and print
  the bcrypt hash for `CHORUS_BASIC_PASSWORD_HASH`;
* `python -m chorus.gateway new-api-key --user NAME` — print a new API key and the
  `CHORUS_API_KEY_HASHES` entry for it.

Exit codes: 0 done; 1 `hash-password` refused the password; 2 a bad command line (typer's
usage error) or a configuration that must not serve.

The process logs `listening` with `address=http://host:port` once it accepts connections
(`chorus.core.testing.ServiceProcess` waits for that line). A configuration that must not
serve (e.g. `auth_mode=none` off loopback) exits with code 2 and one clear log line. With
`CHORUS_METRICS_PORT` set, `/metrics` moves from the public port to that port (logged as
`metrics_listening`).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import socket
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Annotated

import typer
import uvicorn
import uvloop

from chorus.core.garbage_collection import configure_gc
from chorus.core.logging import configure_logging, get_logger
from chorus.core.metrics import start_metrics_server
from chorus.core.settings import ConfigurationError
from chorus.gateway import sse
from chorus.gateway.app import build_app
from chorus.gateway.auth import hash_password, new_api_key
from chorus.gateway.settings import GatewaySettings

log = get_logger("chorus.gateway")

WS_TRANSPORT_FACTOR = 4
"""uvicorn refuses (close 1009) frames above this multiple of `ws_max_message_bytes`."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0 picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(settings: GatewaySettings) -> uvicorn.Config:
    """The uvicorn configuration of the gateway (uvloop, httptools, our logging)."""
    return uvicorn.Config(
        build_app(settings),
        loop="none",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_message_bytes * WS_TRANSPORT_FACTOR,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        timeout_graceful_shutdown=int(settings.grace_period_s),
        timeout_keep_alive=30,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, with a shutdown that suits long-lived streams.

    On SIGTERM/SIGINT it stops accepting, ends every SSE stream at once (clients resume
    with `Last-Event-ID`, on another replica) — WebSockets are closed with 1012 by uvicorn
    — waits up to the grace period for the rest, and exits with status 0 (uvicorn would
    re-raise the signal after a graceful stop).
    """

    loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._end_streams)

    @staticmethod
    def _end_streams() -> None:
        ended = sse.close_all()
        log.info("shutting_down", sse_streams_ended=ended)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # a graceful stop is a normal exit


async def serve(settings: GatewaySettings) -> None:
    """Serve until SIGTERM/SIGINT (see `GatewayServer`)."""
    config = uvicorn_config(settings)
    sock = bind_socket(settings.gateway_host, settings.gateway_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = GatewayServer(config)
    server.loop = asyncio.get_running_loop()
    if settings.metrics_port is not None:
        metrics_port = start_metrics_server(settings.metrics_port, settings.host)
        log.info("metrics_listening", address=f"http://{settings.host}:{metrics_port}/metrics")

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        configure_gc(settings)  # the app is built and its lifespan has run
        log.info("listening", address=f"http://{shown}:{port}", auth_mode=settings.auth_mode)

    task = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        task.cancel()
    log.info("stopped")


cli = typer.Typer(
    help="Serve the Chorus HTTP gateway (the default), or make a password hash or an API key.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@cli.callback(invoke_without_command=True)
def _default(ctx: typer.Context) -> None:
    """Serve the HTTP gateway (also without a command)."""
    if ctx.invoked_subcommand is None:
        _serve()


@cli.command("serve")
def _serve() -> None:
    """Serve HTTP (the default): settings from `CHORUS_*` variables; exit 2 on a bad one."""
    try:
        settings = GatewaySettings()
    except ValueError as exc:  # pydantic ValidationError: one line per bad setting
        configure_logging("gateway")
        log.error("configuration_error", error=str(exc))
        raise SystemExit(2) from None
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)
    try:
        uvloop.run(serve(settings))
    except ConfigurationError as exc:
        log.error("configuration_error", error=str(exc))
        raise SystemExit(2) from None


@cli.command("hash-password")
def _hash_password() -> None:
    """Print a bcrypt hash for CHORUS_BASIC_PASSWORD_HASH (password: prompt or stdin)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.exit("passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        sys.exit("use at least 8 characters")
    print(hash_password(password))


@cli.command("new-api-key")
def _new_api_key(
    user: Annotated[str, typer.Option(help="the identity the key authenticates")],
) -> None:
    """Print a new API key and its CHORUS_API_KEY_HASHES entry."""
    key, digest = new_api_key()
    print(f"api key (give it to {user}; it is not stored): {key}")
    print(f"CHORUS_API_KEY_HASHES entry: {json.dumps({digest: user})}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (`argv` defaults to `sys.argv[1:]`); exits with the
    command's status (typer's standalone mode)."""
    cli(args=argv, prog_name="python -m chorus.gateway")


if __name__ == "__main__":
    main()
