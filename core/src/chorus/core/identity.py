"""Who is calling: the identity the interceptor reads from gRPC metadata.

Services trust `x-chorus-user` only together with the shared internal token in
`x-chorus-internal-token` (compared in constant time). The gateway authenticates end users
and forwards their identity this way; services forward it on their own calls through
`chorus.core.channels`. In dev mode a call without identity runs as `dev`.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

USER_KEY = "x-chorus-user"
"""Metadata key of the end user's identity."""
TOKEN_KEY = "x-chorus-internal-token"
"""Metadata key of the shared internal token."""
REQUEST_ID_KEY = "x-request-id"
"""Metadata key of the request id (generated when absent, echoed in trailing metadata)."""
SYSTEM_USER = "system"
"""The services' own identity (sweeps, recovery). End users can never take this name."""
DEV_USER = "dev"
"""The identity of calls without metadata when dev mode is on."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of the current RPC.

    Attributes:
        user: the user id every row is scoped by (at most 256 characters).
        authenticated_by: `internal-token`, `dev-mode` or `mtls`.
    """

    user: str
    authenticated_by: str

    @property
    def is_system(self) -> bool:
        """True for the services' own identity (allowed to act across owners)."""
        return self.user == SYSTEM_USER


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "chorus_identity", default=None
)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chorus_request_id", default=None
)


def current_identity() -> Identity:
    """The identity of the RPC being served.

    Raises:
        chorus.core.errors.Unauthenticated: outside an authenticated RPC.
    """
    ident = _current.get()
    if ident is None:
        from chorus.core.errors import Unauthenticated

        raise Unauthenticated("no caller identity in this context")
    return ident


def current_identity_or_none() -> Identity | None:
    """The identity of the RPC being served, or None outside one."""
    return _current.get()


def current_request_id() -> str | None:
    """The request id of the RPC being served, if any."""
    return _request_id.get()


def set_identity(identity: Identity | None) -> contextvars.Token[Identity | None]:
    """Make `identity` current (e.g. for a background task acting for a run's owner)."""
    return _current.set(identity)


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Make `request_id` current."""
    return _request_id.set(request_id)
