"""Our one retry loop: attempts, backoff, Retry-After, fallbacks and cool-downs.

The SDKs' own retries are off. A StreamChat request is "open" once the upstream produced
its first event (or ended without any); until then nothing has reached the caller, so a
failed attempt may be repeated. Rules (docs/architecture.md §6, issue 3):

* Retried: failures marked retryable (HTTP 408/409/429/5xx, connection errors, timeouts,
  mid-stream errors before the first event), up to `max_attempts` per model.
* Delay: Retry-After when the upstream gave one (a value above `retry_after_cap_s` is not
  waited for: that model is given up and the next fallback tried), else exponential backoff
  `backoff_initial_s · 2ⁿ` capped at `backoff_max_s`, with equal jitter (half fixed, half
  random). A delay that would end past the caller's deadline is not waited for: the last
  error is returned at once.
* Fallbacks: after a model's attempts are used up, or on errors that are the model's own
  (NOT_FOUND, FAILED_PRECONDITION from upstream auth), the next model in the request's
  `fallbacks`. INVALID_ARGUMENT from upstream and non-retryable errors end the request.
* Cool-down: `cooldown_failures` consecutive failed attempts put a model in cool-down for
  `cooldown_s`; while cooling it is skipped (its error is UNAVAILABLE, reason
  MODEL_COOLING_DOWN, if nothing else answers). A success resets its count. The simulator is
  exempt: its faults are chosen per request and must not leak into other requests.
* Time to first event: each attempt may wait `first_event_timeout_s` (bounded by the
  caller's deadline) for its first event; a timeout is a retryable DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import grpc

from chorus.core import deadlines
from chorus.core.logging import get_logger
from chorus.provider import metrics
from chorus.provider.backends.base import Backend, Call, Event, StreamResult, UpstreamError
from chorus.provider.models import ModelSpec, ProviderSpec
from chorus.provider.settings import Settings
from chorus.v1 import provider_service_pb2

log = get_logger("chorus.provider.retry")

_FALLBACK_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
_DEADLINE_MARGIN_S = 0.05
"""Time kept in hand before the caller's deadline to send the final status."""


class Cooldowns:
    """Consecutive failure counts and cool-down ends per `(provider, model)`.

    Args:
        failures: consecutive failed attempts that start a cool-down.
        seconds: its length (0 disables cool-downs).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, failures: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._failures = failures
        self._seconds = seconds
        self._clock = clock
        self._counts: dict[tuple[str, str], int] = {}
        self._until: dict[tuple[str, str], float] = {}

    def remaining(self, key: tuple[str, str]) -> float:
        """Seconds of cool-down left for `key` (0 when not cooling)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left

    def failed(self, key: tuple[str, str]) -> bool:
        """Count a failed attempt; True when this one started a cool-down."""
        if self._seconds <= 0:
            return False
        count = self._counts.get(key, 0) + 1
        if count >= self._failures:
            self._counts.pop(key, None)
            self._until[key] = self._clock() + self._seconds
            return True
        self._counts[key] = count
        return False

    def succeeded(self, key: tuple[str, str]) -> None:
        """Reset `key`'s failure count."""
        self._counts.pop(key, None)


@dataclass(slots=True)
class Opened:
    """A stream whose first event has arrived (or that ended without any).

    Attributes:
        model: the model answering.
        events: the rest of the backend's delta events.
        result: response id, and after the stream usage and finish reason.
        first: the first delta event, or None when the stream ended without one.
        retries: failed attempts before this one (all models).
        fallback: True when `model` is one of the request's fallbacks.
        time_to_first_event_s: from the request's start.
    """

    model: ModelSpec
    events: AsyncGenerator[Event, None]
    result: StreamResult
    first: Event | None
    retries: int
    fallback: bool
    time_to_first_event_s: float


class RetryFailed(Exception):
    """Every attempt failed; `error` is the one to report, `attempts` how many were made."""

    def __init__(self, error: UpstreamError, model: ModelSpec, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.model = model
        self.attempts = attempts


class Retrier:
    """Opens streams with retries, fallbacks and cool-downs (one per process)."""

    def __init__(
        self,
        settings: Settings,
        backend_for: Callable[[ProviderSpec], Backend],
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self._settings = settings
        self._backend_for = backend_for
        self.cooldowns = cooldowns or Cooldowns(settings.cooldown_failures, settings.cooldown_s)

    def _delay(self, n: int, err: UpstreamError) -> float | None:
        """Seconds to wait before retry `n + 1` (None: don't retry this model)."""
        if err.retry_after_s is not None:
            if err.retry_after_s > self._settings.retry_after_cap_s:
                return None
            return float(err.retry_after_s)
        base = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2**n)
        return float(base / 2 + random.uniform(0, base / 2))

    async def open(
        self,
        request: provider_service_pb2.StreamChatRequest,
        models: list[ModelSpec],
        max_output_tokens: Callable[[ModelSpec], int],
    ) -> Opened:
        """Try `models` in order until one produces its first event.

        Raises:
            RetryFailed: no attempt succeeded (carries the last error).
            asyncio.CancelledError: the caller went away.
        """
        settings = self._settings
        started = time.perf_counter()
        attempt = 0
        last: tuple[UpstreamError, ModelSpec] | None = None
        for index, model in enumerate(models):
            exempt = model.provider.kind == "simulator"
            cooling = 0.0 if exempt else self.cooldowns.remaining(model.key)
            if cooling > 0:
                log.info("model_cooling_down", provider=model.provider.name, model=model.name)
                last = (
                    UpstreamError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{model.provider.name}/{model.name} is cooling down after repeated "
                        f"failures ({cooling:.1f} s left)",
                        retry_after_s=cooling,
                        reason="MODEL_COOLING_DOWN",
                    ),
                    model,
                )
                continue
            backend = self._backend_for(model.provider)
            for n in range(settings.max_attempts):
                result = StreamResult()
                events = backend.stream(
                    Call(
                        request=request,
                        model=model,
                        max_output_tokens=max_output_tokens(model),
                        attempt=attempt,
                    ),
                    result,
                )
                attempt += 1
                err: UpstreamError
                limit = settings.first_event_timeout_s
                remaining = deadlines.time_remaining()
                if remaining is not None:
                    limit = min(limit, max(0.0, remaining))
                try:
                    async with asyncio.timeout(limit) as waited:
                        try:
                            first: Event | None = await events.__anext__()
                        except StopAsyncIteration:
                            first = None
                except UpstreamError as exc:
                    err = exc
                except TimeoutError:
                    if not waited.expired():
                        raise
                    err = UpstreamError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{model.provider.name}/{model.name}: no response within {limit:.3g} s",
                        reason="UPSTREAM_FIRST_EVENT_TIMEOUT",
                    )
                else:
                    if not exempt:
                        self.cooldowns.succeeded(model.key)
                    metrics.ATTEMPTS.labels(model.provider.name, model.name, "ok").inc()
                    return Opened(
                        model=model,
                        events=events,
                        result=result,
                        first=first,
                        retries=attempt - 1,
                        fallback=index > 0,
                        time_to_first_event_s=time.perf_counter() - started,
                    )
                await events.aclose()
                last = (err, model)
                metrics.ATTEMPTS.labels(model.provider.name, model.name, err.code.name).inc()
                if not exempt and err.retryable and self.cooldowns.failed(model.key):
                    metrics.COOLDOWNS.labels(model.provider.name, model.name).inc()
                    log.warning(
                        "model_cooldown_started",
                        provider=model.provider.name,
                        model=model.name,
                        seconds=settings.cooldown_s,
                    )
                log.warning(
                    "upstream_attempt_failed",
                    provider=model.provider.name,
                    model=model.name,
                    attempt=attempt,
                    code=err.code.name,
                    reason=err.reason,
                    http_status=err.http_status,
                    retryable=err.retryable,
                    error=err.message,
                )
                if not err.retryable:
                    if err.code in _FALLBACK_CODES:
                        break  # the model's own problem: a fallback may work
                    raise RetryFailed(err, model, attempt)
                if n == settings.max_attempts - 1:
                    break
                delay = self._delay(n, err)
                if delay is None:
                    break
                remaining = deadlines.time_remaining()
                if remaining is not None and delay >= remaining - _DEADLINE_MARGIN_S:
                    raise RetryFailed(err, model, attempt)
                await asyncio.sleep(delay)
        assert last is not None  # models is never empty
        raise RetryFailed(last[0], last[1], attempt)
