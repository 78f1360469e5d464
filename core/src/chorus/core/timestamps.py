"""Conversions between protobuf `Timestamp` and Python time values."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def now() -> Timestamp:
    """The current time as a `Timestamp` (nanosecond precision from `time.time_ns`)."""
    ns = time.time_ns()
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def to_datetime(ts: Timestamp) -> datetime | None:
    """A timezone-aware UTC datetime, or None for an unset (zero) Timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def from_datetime(dt: datetime | None) -> Timestamp:
    """A Timestamp from a datetime (naive means UTC); None gives an unset Timestamp."""
    ts = Timestamp()
    if dt is not None:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts.FromDatetime(dt)
    return ts
