"""Settings shared by every service, read from `CHORUS_*` environment variables and `.env`.

Each service subclasses `CoreSettings` with its own fields. Secrets are `SecretStr`, so they
never appear in logs or reprs.
"""

from __future__ import annotations

import socket
import uuid

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigurationError(Exception):
    """The settings are unusable (the process should exit with a clear message)."""


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class CoreSettings(BaseSettings):
    """Configuration every gRPC service reads.

    Environment variables carry the `CHORUS_` prefix (`CHORUS_DEV_MODE=true`); a `.env` file in
    the working directory is read too. Unknown variables are ignored.
    """

    model_config = SettingsConfigDict(
        env_prefix="CHORUS_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    dev_mode: bool = Field(
        False,
        description="Accept calls without identity (as user `dev`) and run without an internal token.",
    )
    internal_token: SecretStr | None = Field(
        None,
        description="Shared secret services present in `x-chorus-internal-token`. "
        "Required unless dev_mode is on.",
    )
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = Field(True, description="JSON logs (true) or human-readable console logs.")
    metrics_port: int | None = Field(
        None,
        description="Port of the Prometheus /metrics endpoint; unset disables it, 0 picks one.",
    )
    grace_period_s: float = Field(
        10.0, gt=0, description="Seconds in-flight RPCs get to finish on SIGTERM/SIGINT."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Max gRPC message size, both directions, bytes."
    )
    keepalive_time_s: float = Field(
        30.0, gt=0, description="Interval of HTTP/2 keepalive pings on idle connections, seconds."
    )
    keepalive_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a keepalive ping's ack before closing."
    )
    max_connection_age_s: float | None = Field(
        None,
        gt=0,
        description="Seconds after which a gRPC server asks each client connection to go "
        "away (GOAWAY; grpc.max_connection_age_ms, jittered by ±10 % per gRPC proposal A9), "
        "so callers balancing over a DNS name resolve it again and reach new replicas. Calls "
        "in progress finish on the old connection (no grace limit). Unset: never.",
    )
    max_unrequested_time_s: int = Field(
        300,
        gt=0,
        description="Seconds a call the server received may wait for the service to take it "
        "up before gRPC cancels it (grpc.server_max_unrequested_time_in_server; gRPC's own "
        "default of 30 s fails calls with CANCELLED when a busy event loop takes them late).",
    )
    gc_threshold: int = Field(
        10_000,
        ge=0,
        description="Net allocations that start a young-generation collection of CPython's "
        "garbage collector (gc threshold0; 0 keeps CPython's default of 700). Higher means "
        "fewer collections under load, each a little longer (10,000: at most ~0.3 ms).",
    )
    gc_freeze: bool = Field(
        True,
        description="Freeze the objects alive once the service is built (gc.freeze) so "
        "collections never walk modules and framework objects again.",
    )
    instance_id: str = Field(
        default_factory=_default_instance_id, description="This process's id in run records."
    )

    def check_security(self) -> None:
        """Raise `ConfigurationError` when the process would accept unauthenticated calls by accident."""
        if not self.dev_mode and not self.internal_token:
            raise ConfigurationError(
                "CHORUS_INTERNAL_TOKEN must be set (or CHORUS_DEV_MODE=true for local development)"
            )
