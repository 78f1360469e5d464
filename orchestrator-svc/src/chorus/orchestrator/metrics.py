"""Prometheus metrics of orchestrator-svc (served on `/metrics` with `CHORUS_METRICS_PORT`).

Per-token work is never counted one by one: events are counted when a batch is stored.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS_STARTED = Counter(
    "chorus_orchestrator_runs_started_total",
    "Runs started on this replica, by team kind.",
    ["team_kind"],
)
RUNS_ENDED = Counter(
    "chorus_orchestrator_runs_ended_total",
    "Runs that ended on this replica, by final status.",
    ["status"],
)
RUNS_ACTIVE = Gauge("chorus_orchestrator_runs_active", "Runs executing on this replica.")
RUN_STARTS_WAITING = Gauge(
    "chorus_orchestrator_run_starts_waiting",
    "Run starts waiting for one of the `max_starting_runs` start slots of this replica.",
)
RUN_ENDS_WAITING = Gauge(
    "chorus_orchestrator_run_ends_waiting",
    "Run ends waiting for one of the `max_ending_runs` end slots of this replica.",
)
WATCHERS = Gauge(
    "chorus_orchestrator_run_watchers",
    "Run event streams served by this replica: StreamRun / WatchRun calls and WatchRuns watches.",
)
EVENTS_STORED = Counter(
    "chorus_orchestrator_run_events_stored_total",
    "Run events written to history-svc by this replica.",
)
EVENT_WRITE_SECONDS = Histogram(
    "chorus_orchestrator_run_event_write_seconds",
    "Latency of one AppendRunEvents batch, seconds.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
DELTA_FLUSH_SECONDS = Histogram(
    "chorus_orchestrator_run_delta_flush_seconds",
    "Latency of one AppendRunEventBatches call of the process-wide delta flusher, seconds.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
DELTA_FLUSH_RUNS = Histogram(
    "chorus_orchestrator_run_delta_flush_runs",
    "Runs whose deltas one AppendRunEventBatches call of the delta flusher carried.",
    buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000),
)
DELTA_FLUSH_FAILURES = Counter(
    "chorus_orchestrator_run_delta_flush_failures_total",
    "Delta batches not stored by the flusher, by kind: `call` (the whole call failed; "
    "retried) or `rejected` (history-svc refused that run's batch).",
    ["kind"],
)
WATCHER_CATCHUPS = Counter(
    "chorus_orchestrator_run_watcher_catchups_total",
    "Times a watcher fell behind the in-memory buffer and read history-svc to catch up.",
)
MODEL_CALLS = Counter(
    "chorus_orchestrator_model_calls_total",
    "Model calls made (StreamChats streams), by outcome.",
    ["outcome"],
)
MODEL_CALL_STREAMS = Gauge(
    "chorus_orchestrator_model_call_streams", "Model calls open on this replica's StreamChats call."
)
STREAM_CHATS_CALLS = Counter(
    "chorus_orchestrator_stream_chats_calls_total",
    "ProviderService.StreamChats calls opened (one per process; more means a call failed and "
    "its model calls ended with its error).",
)
MODEL_CALL_PREFETCHES = Counter(
    "chorus_orchestrator_model_call_prefetches_total",
    "First model calls opened during a run's opening write, by outcome: used (the agent's "
    "first call was that request), mismatch (it was not: taken up all the same, its deltas "
    "being in the run's log) or dropped (the run did not start, or stopped before its agent "
    "asked; cancelled).",
    ["outcome"],
)
HEARTBEAT_FAILURES = Counter(
    "chorus_orchestrator_run_heartbeat_failures_total", "Run heartbeats history-svc did not accept."
)
RUNS_RECOVERED = Counter(
    "chorus_orchestrator_runs_recovered_total",
    "Runs of stopped orchestrators ended by this replica's recovery sweep.",
)
RUNS_AWAITING_INPUT = Counter(
    "chorus_orchestrator_runs_awaiting_input_total",
    "Runs that asked a person and let go, waiting for the answer (issue 21).",
)
RUN_INPUTS_EXPIRED = Counter(
    "chorus_orchestrator_run_inputs_expired_total",
    "Requests for input that expired unanswered (issue 21).",
)
