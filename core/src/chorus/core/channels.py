"""Channels for service-to-service calls.

`ChannelPool` keeps one `grpc.aio` channel per target per process (create it inside the
running event loop, e.g. in a FastAPI lifespan; grpc#32480). Every unary call made through a
pooled channel carries:

* the caller's identity (`x-chorus-user`, from `chorus.core.identity`) and the internal token;
* the request id of the RPC being served (`x-request-id`);
* the caller's remaining deadline as `timeout`, unless the call sets its own.

Server-streaming calls are not intercepted — grpc.aio runs every message of an intercepted
stream through an extra task, a cost per streamed event — so they pass
`metadata=pool.metadata()` (and a timeout, if any) themselves.

Idempotent unary RPCs are retried on UNAVAILABLE by gRPC's own retry policy (service config);
streams are never retried — resume them with `after_seq`.

A service with several replicas is addressed as one DNS name with several addresses
(`dns:///name:port`, or plain `name:port`, as a Kubernetes headless Service gives), or as a
comma-separated list of `ip:port` (`balanced_target`): every channel built with
`channel_options` spreads its calls over all the target's addresses round robin (the
service config's `loadBalancingConfig`; gRPC's default, pick_first, would send everything
to the first address). A long-lived stream stays on the replica it started on.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import grpc

from chorus.core import deadlines, identity, tracing
from chorus.core.settings import CoreSettings

IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "chorus.v1.ProviderService": ("ListModels",),
    "chorus.v1.HistoryService": (
        "GetConversation",
        "ListConversations",
        "ListMessages",
        "AppendMessages",
        "GetRunRecord",
        "ListRunRecords",
        "AppendRunEvents",
        "ListRunEvents",
    ),
    "chorus.v1.RunService": ("GetRun", "ListRuns", "CancelRun", "ListTeamTemplates"),
}
"""Unary RPCs safe to retry on UNAVAILABLE (reads, and writes with idempotency keys)."""


def service_config() -> str:
    """gRPC service config JSON: round-robin balancing over every address the target
    resolves to, and a retry policy for `IDEMPOTENT_METHODS`."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [
                        {"service": service, "method": method}
                        for service, methods in IDEMPOTENT_METHODS.items()
                        for method in methods
                    ],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def outgoing_metadata(token: str | None) -> list[tuple[str, str]]:
    """Metadata forwarded on an outgoing call from the current context."""
    md: list[tuple[str, str]] = []
    ident = identity.current_identity_or_none()
    if ident is not None:
        md.append((identity.USER_KEY, ident.user))
    if token:
        md.append((identity.TOKEN_KEY, token))
    request_id = identity.current_request_id()
    if request_id:
        md.append((identity.REQUEST_ID_KEY, request_id))
    return md


class _UnaryForwardingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current identity, token, request id and remaining deadline to unary calls."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        present = {key for key, _ in metadata}
        for key, value in outgoing_metadata(self._token):
            if key not in present:
                metadata.add(key, value)
        timeout = details.timeout
        if timeout is None:
            remaining = deadlines.time_remaining()
            if remaining is not None:
                timeout = max(remaining, 0.001)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def channel_options(settings: CoreSettings) -> list[tuple[str, Any]]:
    """Channel arguments: message sizes, keepalive, the service config (round robin,
    retries) and a subchannel pool of the channel's own.

    gRPC shares connections (subchannels) between every channel of a process with the same
    address and arguments by default. A new channel to an address whose earlier server went
    away then inherits that subchannel's failure and its reconnect backoff (up to 120 s),
    and fails at once with "connections to all backends failing" although a server
    listens there now. `grpc.use_local_subchannel_pool` (GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL
    in grpc_types.h) gives each channel its own.
    """
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
    ]


ROUND_ROBIN: tuple[str, str] = ("grpc.lb_policy_name", "round_robin")
"""Channel option: spread calls over every address of the target (gRPC's round_robin), for
channels built without `channel_options` (whose service config already says so)."""


def _list_entry(entry: str) -> tuple[int, str]:
    """(IP version, `ip:port` as gRPC's ipv4: / ipv6: targets spell it) of one list entry."""
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"{entry!r}: a list of addresses takes IP addresses (10.0.0.5:50053 or "
            "[fd00::5]:50053); for host names use one DNS name with several addresses, "
            "dns:///name:port"
        ) from None
    return ip.version, f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def balanced_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target of a service address and the channel options it needs.

    * `host:port` (or any other gRPC target): as is, no extra option;
    * `ip:port,ip:port,…` (`localhost` counts as 127.0.0.1): an `ipv4:` / `ipv6:` target
      list with round-robin balancing;
    * `dns:///name:port` (every address of the name, re-resolved when connections fail),
      `ipv4:…`, `ipv6:…`: as is, with round-robin balancing.

    Raises:
        ValueError: a list entry is not `ip:port`, or the list mixes IPv4 and IPv6.
    """
    address = address.strip()
    if address.startswith(("dns:", "ipv4:", "ipv6:")):
        return address, [ROUND_ROBIN]
    if "," not in address:
        return address, []
    entries = [_list_entry(e.strip()) for e in address.split(",")]
    versions = {version for version, _ in entries}
    if len(versions) > 1:
        raise ValueError(f"{address!r} mixes IPv4 and IPv6 addresses")
    return f"ipv{versions.pop()}:" + ",".join(e for _, e in entries), [ROUND_ROBIN]


class ChannelPool:
    """One channel per target, with identity, request id and deadline forwarding.

    Args:
        settings: supplies the internal token and channel options.
    """

    def __init__(self, settings: CoreSettings) -> None:
        self._settings = settings
        token = settings.internal_token.get_secret_value() if settings.internal_token else None
        self._token = token
        self._interceptors: Sequence[grpc.aio.ClientInterceptor] = [
            *tracing.client_interceptors(),  # nothing unless tracing is on
            _UnaryForwardingInterceptor(token),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        """The channel to `target` (`host:port`, or several: `balanced_target`), created on
        first use.

        Raises:
            ValueError: a malformed list of addresses (`balanced_target`).
        """
        channel = self._channels.get(target)
        if channel is None:
            grpc_target, extra = balanced_target(target)
            channel = grpc.aio.insecure_channel(
                grpc_target,
                options=channel_options(self._settings) + extra,
                interceptors=self._interceptors,
            )
            self._channels[target] = channel
        return channel

    def metadata(self) -> list[tuple[str, str]]:
        """Metadata of a server-streaming call from the current context (identity, internal
        token, request id): what the unary interceptor adds, for the calls it does not see."""
        return outgoing_metadata(self._token)

    def system_metadata(self) -> list[tuple[str, str]]:
        """Metadata of a call the service makes as itself (`identity.SYSTEM_USER`, the
        internal token), e.g. one that carries many users' requests, each naming its user."""
        md = [(identity.USER_KEY, identity.SYSTEM_USER)]
        if self._token:
            md.append((identity.TOKEN_KEY, self._token))
        return md

    async def close(self) -> None:
        """Close every channel (pending calls are cancelled)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
