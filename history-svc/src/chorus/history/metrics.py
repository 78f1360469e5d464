"""Prometheus metrics of history-svc (served on `CHORUS_METRICS_PORT` with the gRPC ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CACHE_REQUESTS = Counter(
    "chorus_history_cache_requests_total",
    "Cache look-ups by entity (conversation, messages, run) and result (hit, miss).",
    ["entity", "result"],
)
REDIS_ERRORS = Counter(
    "chorus_history_redis_errors_total",
    "Redis operations that failed (the call went on without Redis), by operation.",
    ["operation"],
)
CACHE_WRITE_FAILURES = Counter(
    "chorus_history_cache_write_failures_total",
    "Committed writes whose cache update failed; the key is dropped as soon as Redis answers "
    "again and expires after the cache TTL at the latest.",
)
EVENTS_APPENDED = Counter(
    "chorus_history_run_events_appended_total",
    "Run events newly stored by AppendRunEvents, AppendRunEventBatches and RecordRunStart.",
)
EVENT_BATCHES_REJECTED = Counter(
    "chorus_history_run_event_batches_rejected_total",
    "Batches of AppendRunEventBatches calls rejected on their own, by ErrorInfo reason.",
    ["reason"],
)
EVENT_LOG_PUBLISH_FAILURES = Counter(
    "chorus_history_event_log_publish_failures_total",
    "Appended batches the live event log did not take (watchers read them from the database).",
)
WATCHERS = Gauge("chorus_history_watchers", "Open WatchRunEvents streams.")
DATABASE_UP = Gauge("chorus_history_database_up", "1 while the database answers health probes.")
