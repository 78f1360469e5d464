"""The deadline of the RPC being served, so outgoing calls can inherit it.

gRPC Python does not propagate deadlines (REFERENCE.md): the server interceptor records the
caller's deadline here and `chorus.core.channels` passes the remaining time as `timeout` on
every outgoing call made in the same context. Background work (a run outliving its
`CreateRun` call) must call `clear_deadline()` first.
"""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "chorus_deadline", default=None
)


def set_deadline(seconds_from_now: float | None) -> None:
    """Record that the current RPC must finish within `seconds_from_now` (None: no deadline)."""
    _deadline.set(None if seconds_from_now is None else time.monotonic() + seconds_from_now)


def clear_deadline() -> None:
    """Forget the current deadline (for work that outlives the RPC that started it)."""
    _deadline.set(None)


def time_remaining() -> float | None:
    """Seconds left until the current deadline (may be ≤ 0), or None without a deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
