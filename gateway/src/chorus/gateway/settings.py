"""Gateway settings, read from `CHORUS_*` environment variables (and `.env`).

Extends `chorus.core.settings.CoreSettings` (internal token, dev mode, logging). Lists and
maps are given as JSON in the environment, e.g. `CHORUS_CORS_ORIGINS='["https://a.example"]'`,
`CHORUS_API_KEY_HASHES='{"<sha256 hex>": "alice"}'`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import bcrypt
from limits import parse_many
from pydantic import Field, SecretStr, field_validator

from chorus.core.channels import balanced_target
from chorus.core.identity import DEV_USER, SYSTEM_USER
from chorus.core.settings import ConfigurationError, CoreSettings

AuthMode = Literal["none", "basic", "apikey", "easyauth"]

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MAX_USER_LEN = 256


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine (`127.0.0.0/8`, `::1`,
    `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def user_name_problem(user: str) -> str | None:
    """Why `user` cannot be an end user's identity, or None when it can.

    End users may never take the services' own name (`chorus.core.identity.SYSTEM_USER`),
    and names are 1..256 printable characters (they travel as gRPC metadata).
    """
    if not user or len(user) > _MAX_USER_LEN:
        return f"user names are 1..{_MAX_USER_LEN} characters"
    if user.strip().lower() == SYSTEM_USER:
        return f"the user name {SYSTEM_USER!r} is reserved for the services"
    if not user.isprintable():
        return "user names must be printable characters"
    return None


class GatewaySettings(CoreSettings):
    """Settings of the HTTP gateway (`CHORUS_*` environment variables)."""

    gateway_host: str = Field(
        "127.0.0.1",
        description="Address the HTTP server binds. auth_mode=none is refused off loopback.",
    )
    gateway_port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    orchestrator_address: str = Field(
        "127.0.0.1:50053",
        description="orchestrator-svc (RunService): `host:port`; several replicas as a "
        "comma-separated list of `ip:port`, or one DNS name with several addresses as "
        "`dns:///name:port` (a Kubernetes headless Service); calls go round robin.",
    )
    history_address: str = Field(
        "127.0.0.1:50052", description="host:port of history-svc (HistoryService)."
    )
    provider_address: str = Field(
        "127.0.0.1:50051", description="host:port of provider-svc (ProviderService)."
    )

    auth_mode: AuthMode = Field(
        "none",
        description="How callers authenticate: none (loopback only), basic, apikey, easyauth.",
    )
    anonymous_user: str = Field(
        DEV_USER,
        description="The identity of every caller when auth_mode=none; `dev` matches the "
        "services' dev mode and the chorus CLI, so runs started there show in the page.",
    )
    basic_user: str | None = Field(None, description="auth_mode=basic: the user name.")
    basic_password_hash: SecretStr | None = Field(
        None,
        description="auth_mode=basic: bcrypt hash of the password "
        "(`python -m chorus.gateway hash-password`).",
    )
    api_key_hashes: dict[str, str] = Field(
        default_factory=dict,
        description="auth_mode=apikey: SHA-256 hex of each key → the user it authenticates "
        "(`python -m chorus.gateway new-api-key`).",
    )
    easyauth_enabled: bool = Field(
        False,
        description="auth_mode=easyauth: set true only behind a proxy (Azure App Service "
        "Easy Auth) that sets and strips X-MS-CLIENT-PRINCIPAL-* headers.",
    )
    auth_cache_ttl_s: float = Field(
        300.0,
        ge=0,
        description="Seconds a verified Basic credential is remembered (bcrypt is slow); 0 disables.",
    )

    rate_limit_runs: str = Field(
        "10/minute",
        description="Runs one identity may start (`limits` notation, e.g. `10/minute; 100/hour`); "
        "empty disables.",
    )
    rate_limit_messages: str = Field(
        "30/minute",
        description="Chat messages one identity may send (conversation messages, WebSocket "
        "chat); empty disables.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (`redis://host:port/db`) to share rate-limit counters between "
        "gateway replicas; unset keeps them in memory.",
    )
    rate_limit_key_prefix: str = Field(
        "chorus:gateway:ratelimit", description="Prefix of the rate-limit keys in Redis."
    )
    rate_limit_redis_connections: int = Field(
        64,
        ge=1,
        description="Redis connections of the rate limiter; a burst beyond them waits (≤ 1 s) "
        "for a free one instead of failing.",
    )

    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (exact, e.g. https://x.example)."
    )
    ws_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to open the WebSocket besides the gateway's own origin.",
    )
    max_request_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest request body accepted (413 above), bytes."
    )
    max_input_chars: int = Field(
        65536, gt=0, description="Longest run input or chat message, characters."
    )
    ws_max_message_bytes: int = Field(
        256 * 1024,
        gt=0,
        description="Largest WebSocket frame handled; larger ones get an error frame. Frames "
        "above 4× this close the socket with 1009.",
    )
    ws_max_subscriptions: int = Field(
        8, gt=0, description="Runs one WebSocket may follow at the same time."
    )
    sse_keepalive_s: float = Field(
        15.0, gt=0, description="Seconds between SSE keepalive comments on an idle stream."
    )
    sse_first_event_wait_s: float = Field(
        2.0,
        gt=0,
        description="Seconds an SSE request waits for the first upstream event before it "
        "answers 200 anyway (errors seen before then are real HTTP errors).",
    )
    sse_max_buffered_events: int = Field(
        4096,
        gt=0,
        description="Events buffered per stream while the client drains; the upstream gRPC "
        "stream is paused (flow control) above it.",
    )
    sse_flush_interval_s: float = Field(
        0.005,
        ge=0,
        description="Shortest time between two body writes of one SSE stream, seconds: events "
        "arriving faster are sent together (an idle stream's next event goes out at once); "
        "0 writes every event as soon as it is read.",
    )
    watch_reattach_s: float = Field(
        60.0,
        ge=0,
        description="How long an SSE / WebSocket watch whose orchestrator replica went away "
        "keeps trying to reopen it on another replica (after the last seq delivered, "
        "jittered backoff) before its stream ends with the error; 0 never reattaches.",
    )
    rpc_timeout_s: float = Field(30.0, gt=0, description="Deadline of unary gRPC calls, seconds.")
    chat_timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long a JSON `POST /conversations/{id}/messages` waits for its run.",
    )
    readiness_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of each health check made by /health/ready, seconds."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-* headers uvicorn trusts (comma-separated, `*`).",
    )

    @field_validator("redis_url", "basic_user", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("orchestrator_address")
    @classmethod
    def _valid_orchestrator_address(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("an address is required (host:port)")
        target, _ = balanced_target(value)  # ValueError: a malformed list, said how
        if target == value and not value.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
            host, sep, port = value.rpartition(":")
            if not host or not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"{value!r} is not host:port (or a comma-separated list of ip:port, "
                    "or dns:///name:port)"
                )
        return value

    @field_validator("rate_limit_runs", "rate_limit_messages")
    @classmethod
    def _valid_limit(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit ({exc}); e.g. '10/minute'") from None
        return value.strip()

    @field_validator("api_key_hashes")
    @classmethod
    def _valid_key_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for digest, user in value.items():
            d = digest.lower().removeprefix("sha256:")
            if not _SHA256_HEX.match(d):
                raise ValueError("api_key_hashes keys must be SHA-256 hex digests (64 hex digits)")
            out[d] = user
        return out

    def check_gateway(self) -> None:
        """Raise `ConfigurationError` for a configuration that must not serve.

        The rules: the internal token (or dev mode) is required to call the services;
        `auth_mode=none` only on a loopback address; each mode needs its credentials; no
        configured user may be named `system`.
        """
        self.check_security()
        if self.auth_mode == "none":
            if not is_loopback(self.gateway_host):
                raise ConfigurationError(
                    f"CHORUS_AUTH_MODE=none only on a loopback address, not {self.gateway_host!r}: "
                    "choose basic, apikey or easyauth, or bind 127.0.0.1"
                )
            self._check_user(self.anonymous_user, "CHORUS_ANONYMOUS_USER")
        elif self.auth_mode == "basic":
            if not self.basic_user or self.basic_password_hash is None:
                raise ConfigurationError(
                    "CHORUS_AUTH_MODE=basic needs CHORUS_BASIC_USER and CHORUS_BASIC_PASSWORD_HASH"
                )
            self._check_user(self.basic_user, "CHORUS_BASIC_USER")
            hashed = self.basic_password_hash.get_secret_value().encode()
            try:
                bcrypt.checkpw(b"", hashed)
            except ValueError:
                raise ConfigurationError(
                    "CHORUS_BASIC_PASSWORD_HASH is not a bcrypt hash "
                    "(make one with `python -m chorus.gateway hash-password`)"
                ) from None
        elif self.auth_mode == "apikey":
            if not self.api_key_hashes:
                raise ConfigurationError(
                    "CHORUS_AUTH_MODE=apikey needs CHORUS_API_KEY_HASHES "
                    "(make a key with `python -m chorus.gateway new-api-key`)"
                )
            for user in self.api_key_hashes.values():
                self._check_user(user, "CHORUS_API_KEY_HASHES")
        elif self.auth_mode == "easyauth" and not self.easyauth_enabled:
            raise ConfigurationError(
                "CHORUS_AUTH_MODE=easyauth trusts X-MS-CLIENT-PRINCIPAL-* headers: set "
                "CHORUS_EASYAUTH_ENABLED=true only behind a proxy that sets and strips them"
            )

    @staticmethod
    def _check_user(user: str, setting: str) -> None:
        problem = user_name_problem(user)
        if problem:
            raise ConfigurationError(f"{setting}: {problem}")
