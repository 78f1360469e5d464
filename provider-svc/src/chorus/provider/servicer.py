"""`chorus.v1.ProviderService`: validation, the retry loop, and the normalized stream.

StreamChat sends, in order: `start` (the answering model, retries, fallback flag, response
id), the backend's delta events, then `usage` (cost added when the model is priced;
estimated from characters when the upstream reported none) and `finish` — or, when the
stream fails after `start`, a single `error` event (gRPC code, message, retryable) and the
RPC ends OK. Failures before `start` are the RPC's status (see
`chorus.provider.validation` and `chorus.provider.retry`); the idle timeout between events
is `CHORUS_IDLE_TIMEOUT_S`. When the caller cancels or its deadline passes, gRPC cancels
this handler and the backend generator is closed in `finally`, which closes the upstream
HTTP response at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from chorus.core import tracing
from chorus.core.errors import ChorusError, ResourceExhausted, error_for_code, rpc_code
from chorus.core.identity import current_identity, current_request_id
from chorus.core.logging import get_logger
from chorus.provider import metrics
from chorus.provider.backends.base import Event, UpstreamError
from chorus.provider.models import Catalog, ModelSpec, Usage, estimate_input_tokens
from chorus.provider.retry import Opened, Retrier, RetryFailed
from chorus.provider.settings import Settings
from chorus.provider.streams import StreamChatsCall
from chorus.provider.telemetry import ModelCallSpan
from chorus.provider.validation import max_output_tokens, resolve_models
from chorus.v1 import chat_pb2, provider_service_pb2, provider_service_pb2_grpc

log = get_logger("chorus.provider.servicer")

_Start = Event.Start
_Finish = Event.Finish
_Error = Event.Error


def _status_error(err: UpstreamError, model: ModelSpec, attempts: int) -> ChorusError:
    """The RPC status for a request whose every attempt failed."""
    metadata = {"provider": model.provider.name, "model": model.name, "attempts": str(attempts)}
    if err.http_status is not None:
        metadata["http_status"] = str(err.http_status)
    error: ChorusError
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        error = ResourceExhausted(err.message, retry_after_s=err.retry_after_s, reason=err.reason)
    else:
        error = error_for_code(err.code, err.message, reason=err.reason)
    if err.retry_after_s is not None:
        metadata["retry_after_s"] = f"{err.retry_after_s:.3f}"
    error.metadata.update(metadata)
    return error


def usage_event(usage: Usage, model: ModelSpec) -> Event:
    """The `usage` event, with `cost_usd` when the model's prices are configured."""
    out = provider_service_pb2.StreamChatResponse(
        usage={
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "estimated": usage.estimated,
        }
    )
    if model.price is not None:
        out.usage.cost_usd = model.price.cost_usd(usage)
    return out


class ProviderServicer(provider_service_pb2_grpc.ProviderServiceServicer):
    """The ProviderService implementation (one per process)."""

    def __init__(self, settings: Settings, catalog: Catalog, retrier: Retrier) -> None:
        self._settings = settings
        self._catalog = catalog
        self._retrier = retrier

    async def ListModels(
        self, request: provider_service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> provider_service_pb2.ListModelsResponse:
        """Listed models of every provider (or of `request.provider`), never with keys."""
        default = self._catalog.resolve(chat_pb2.ModelRef(), check_credentials=False)
        return provider_service_pb2.ListModelsResponse(
            models=[
                self._catalog.to_proto(m, is_default=m.key == default.key)
                for m in self._catalog.list(request.provider)
            ]
        )

    async def StreamChat(
        self, request: provider_service_pb2.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Event]:
        """See the module docstring and `chorus.v1.ProviderService.StreamChat`."""
        async with contextlib.aclosing(self.stream(request)) as events:
            async for event in events:
                yield event

    async def StreamChats(
        self,
        request_iterator: AsyncIterator[provider_service_pb2.StreamChatsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[provider_service_pb2.StreamChatsResponse]:
        """See `chorus.provider.streams` and `chorus.v1.ProviderService.StreamChats`."""
        call = StreamChatsCall(self.stream, current_identity())
        async for response in call.serve(request_iterator):
            yield response

    async def stream(
        self, request: provider_service_pb2.StreamChatRequest
    ) -> AsyncGenerator[Event, None]:
        """The normalized events of one chat request (the body of StreamChat and of each
        StreamChats stream).

        Raises:
            ChorusError: failures before `start` (validation, the retry loop's last error).
        """
        settings = self._settings
        models = resolve_models(request, self._catalog, settings)
        call_span = (  # the GenAI span of the call (None: tracing off)
            ModelCallSpan.start(request, models[0], max_output_tokens(request, models[0], settings))
            if tracing.enabled()
            else None
        )
        opened: Opened | None = None
        outcome = "cancelled"
        events = 0
        try:
            try:
                opened = await self._retrier.open(
                    request,
                    models,
                    lambda m: max_output_tokens(request, m, settings),
                )
            except RetryFailed as failed:
                outcome = "failed"
                metrics.STREAMS.labels(
                    failed.model.provider.name, failed.model.name, "failed"
                ).inc()
                error = _status_error(failed.error, failed.model, failed.attempts)
                if call_span is not None:
                    call_span.fail(error, failed.model)
                raise error from None
            model = opened.model
            result = opened.result
            metrics.TIME_TO_FIRST_EVENT.labels(model.provider.name).observe(
                opened.time_to_first_event_s
            )
            yield Event(
                start=_Start(
                    model=model.ref(),
                    retries=opened.retries,
                    fallback=opened.fallback,
                    response_id=result.response_id,
                )
            )
            failure: UpstreamError | None = None
            observe = call_span.observe if call_span is not None and call_span.captures else None
            if opened.first is not None:
                if observe is not None:
                    observe(opened.first)
                yield opened.first
                events = 1
                next_event = opened.events.__anext__
                idle = settings.idle_timeout_s
                try:
                    while True:
                        try:  # the caller's time between events does not count
                            async with asyncio.timeout(idle) as limit:
                                event = await next_event()
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            if not limit.expired():
                                raise
                            failure = UpstreamError(
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"{model.provider.name}/{model.name}: no event for {idle:g} s "
                                "(idle timeout)",
                                reason="UPSTREAM_IDLE_TIMEOUT",
                            )
                            break
                        events += 1
                        if observe is not None:
                            observe(event)
                        yield event
                except UpstreamError as err:
                    failure = err
                except Exception as exc:  # a bug or an upstream shape we do not know
                    log.exception(
                        "stream_decode_failed",
                        provider=model.provider.name,
                        model=model.name,
                        error_type=type(exc).__name__,
                    )
                    failure = UpstreamError(
                        grpc.StatusCode.INTERNAL,
                        f"internal error reading the {model.provider.name} stream "
                        f"(request id {current_request_id()})",
                        retryable=False,
                        reason="INTERNAL",
                    )
            if failure is not None:
                outcome = "error"
                log.warning(
                    "stream_failed",
                    provider=model.provider.name,
                    model=model.name,
                    events=events,
                    code=failure.code.name,
                    reason=failure.reason,
                    error=failure.message,
                )
                if call_span is not None:
                    call_span.fail_upstream(failure.code.name, failure.message, model)
                yield Event(
                    error=_Error(
                        code=rpc_code(failure.code),
                        message=failure.message,
                        retryable=failure.retryable,
                    )
                )
                return
            usage = result.usage or Usage(
                input_tokens=estimate_input_tokens(request),
                output_tokens=math.ceil(result.output_chars / 4),
                estimated=True,
            )
            outcome = "finish"
            if call_span is not None:
                call_span.finish(
                    model,
                    usage,
                    result.response_id,
                    result.raw_finish_reason
                    or provider_service_pb2.FinishReason.Name(result.finish_reason)
                    .removeprefix("FINISH_REASON_")
                    .lower(),
                )
            yield usage_event(usage, model)
            yield Event(
                finish=_Finish(
                    reason=result.finish_reason,  # type: ignore[arg-type]  # an enum number
                    raw_reason=result.raw_finish_reason,
                )
            )
            self._observe(model, usage, opened, events, request)
        finally:
            if call_span is not None and outcome == "cancelled":
                call_span.fail(asyncio.CancelledError("the caller cancelled the call"))
            if opened is not None:
                await opened.events.aclose()
                metrics.STREAMS.labels(opened.model.provider.name, opened.model.name, outcome).inc()
                if outcome == "cancelled":
                    log.debug(
                        "stream_cancelled",
                        provider=opened.model.provider.name,
                        model=opened.model.name,
                        events=events,
                    )

    def _observe(
        self,
        model: ModelSpec,
        usage: Usage,
        opened: Opened,
        events: int,
        request: provider_service_pb2.StreamChatRequest,
    ) -> None:
        labels = (model.provider.name, model.name)
        metrics.TOKENS.labels(*labels, "input").inc(usage.input_tokens)
        metrics.TOKENS.labels(*labels, "cached_input").inc(usage.cached_input_tokens)
        metrics.TOKENS.labels(*labels, "output").inc(usage.output_tokens)
        metrics.TOKENS.labels(*labels, "reasoning").inc(usage.reasoning_tokens)
        cost = model.price.cost_usd(usage) if model.price is not None else None
        if cost:
            metrics.COST.labels(*labels).inc(cost)
        # DEBUG: one log line per model call cost ~3 % of provider-svc's CPU under load; the
        # metrics above count every call, and failures are logged at WARNING.
        log.debug(
            "stream_finished",
            provider=model.provider.name,
            model=model.name,
            retries=opened.retries,
            fallback=opened.fallback,
            ttfe_ms=round(opened.time_to_first_event_s * 1000, 2),
            events=events,
            finish=opened.result.raw_finish_reason,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost,
            **{f"meta_{k}": v for k, v in request.metadata.items() if k in ("run_id", "agent")},
        )
