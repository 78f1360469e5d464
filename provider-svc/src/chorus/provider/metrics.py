"""Prometheus metrics of provider-svc (observed once per attempt or stream, never per token).

* `chorus_provider_attempts_total{provider, model, outcome}` — upstream attempts; outcome is
  `ok` or the gRPC code name of the failure.
* `chorus_provider_streams_total{provider, model, result}` — finished streams: `finish`,
  `error`, `cancelled`.
* `chorus_provider_time_to_first_event_seconds{provider}` — request start to first event.
* `chorus_provider_tokens_total{provider, model, kind}` — usage (`input`, `cached_input`,
  `output`, `reasoning`).
* `chorus_provider_cost_usd_total{provider, model}` — cost of streams with priced models.
* `chorus_provider_cooldowns_total{provider, model}` — times a model entered cool-down.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "chorus_provider_attempts_total", "Upstream attempts.", ["provider", "model", "outcome"]
)
STREAMS = Counter(
    "chorus_provider_streams_total", "Finished StreamChat streams.", ["provider", "model", "result"]
)
TIME_TO_FIRST_EVENT = Histogram(
    "chorus_provider_time_to_first_event_seconds",
    "From request start to the first upstream event, seconds.",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = Counter("chorus_provider_tokens_total", "Tokens by kind.", ["provider", "model", "kind"])
COST = Counter("chorus_provider_cost_usd_total", "Cost in USD.", ["provider", "model"])
COOLDOWNS = Counter(
    "chorus_provider_cooldowns_total", "Models put in cool-down.", ["provider", "model"]
)
