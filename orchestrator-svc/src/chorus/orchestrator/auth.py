"""Metadata of the orchestrator's own calls to provider-svc and history-svc.

Their channels have no client interceptors (grpc.aio runs each intercepted call through an
extra task: per streamed message on the provider channel, per call on the history
channel), so every call carries the caller's identity, the internal token and the request
id explicitly.
"""

from __future__ import annotations

from chorus.core.identity import REQUEST_ID_KEY, TOKEN_KEY, USER_KEY


class CallAuth:
    """Builds the metadata of one outgoing call.

    Args:
        token: the internal token (None in dev mode).
    """

    def __init__(self, token: str | None) -> None:
        self._token = token

    def metadata(self, user: str, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        """`x-chorus-user`, the internal token and (when given) `x-request-id`."""
        md = [(USER_KEY, user)]
        if self._token:
            md.append((TOKEN_KEY, self._token))
        if request_id:
            md.append((REQUEST_ID_KEY, request_id))
        return tuple(md)
