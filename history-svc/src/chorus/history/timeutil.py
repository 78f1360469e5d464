"""Times as integer microseconds since the Unix epoch (UTC), the unit both stores keep.

PostgreSQL's `timestamptz` and the SQLite store's integer columns both hold microseconds, so
every time is truncated to microseconds once, when it enters the service, and compares equal
after a round trip (page-token cursors rely on that).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    """The current time in microseconds."""
    return time.time_ns() // 1000


def ts_to_us(ts: Timestamp) -> int | None:
    """Microseconds of a Timestamp; None for an unset (zero) Timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def set_ts(ts: Timestamp, us: int | None) -> None:
    """Write `us` into `ts` (clears it for None)."""
    if us is None:
        ts.Clear()
    else:
        ts.seconds, rem = divmod(us, 1_000_000)
        ts.nanos = rem * 1000


def us_to_datetime(us: int | None) -> datetime | None:
    """A UTC datetime (for asyncpg `timestamptz`), or None."""
    return None if us is None else EPOCH + timedelta(microseconds=us)


def datetime_to_us(dt: datetime | None) -> int | None:
    """Microseconds of a datetime (naive means UTC), or None."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
