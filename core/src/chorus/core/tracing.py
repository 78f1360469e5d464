"""OpenTelemetry tracing of every Chorus process, configured only by the standard `OTEL_*`
variables (issue 22).

Off by default: unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`, or any
installed `opentelemetry_traces_exporter` entry point) no SDK module is imported, no tracer
provider, processor or exporter thread exists, and every hook below is a no-op behind one
boolean. (The OpenTelemetry spec's default exporter is `otlp`; Chorus asks for it to be named
so that a service never dials a collector nobody runs.) `OTEL_SDK_DISABLED=true` turns it off
too. Everything else is the SDK's own reading of the environment: `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_ENDPOINT` / `_TRACES_ENDPOINT` / `_HEADERS` /
`_PROTOCOL`, `OTEL_TRACES_SAMPLER` / `_ARG` (default `parentbased_always_on`), `OTEL_BSP_*`,
`OTEL_SPAN_*_LIMIT`, `OTEL_PROPAGATORS` (default W3C `tracecontext,baggage`).

What is traced, when on:

* every RPC, server side (`server_interceptors`) and client side (`client_interceptors`,
  unary and server-streaming calls of `chorus.core.channels.ChannelPool`), by
  opentelemetry-instrumentation-grpc, with `rpc.system` / `rpc.service` / `rpc.method` /
  `rpc.grpc.status_code`; the W3C `traceparent` travels in gRPC metadata. Health and
  reflection are left out, and so are the multiplexed calls (ProviderService.StreamChats,
  RunService.WatchRuns): one of those lives as long as the process and carries many
  requests, so each stream on it gets its own client and server span instead
  (`start_stream_client_span`, `start_stream_server_span`), its context carried in the
  stream's own request (`StreamChatRequest.metadata`, `WatchRunsRequest.trace_context`:
  `carrier_of` on the sending side); nor the delta flusher's group
  commits (`UNTRACED_METHODS`), which carry many runs' events; nor background calls: those
  made as the services' own identity (`identity.SYSTEM_USER`) outside any trace —
  heartbeats, lease sweeps, input expiry, catalog refreshes — which would otherwise start a
  new trace every few hundred milliseconds per orchestrator (`_background`);
* the gateway's HTTP requests, SSE and WebSocket included (opentelemetry-instrumentation-
  fastapi, `chorus.gateway.tracing`);
* runs, agent turns and tool calls (orchestrator) and model calls (provider-svc) after the
  OpenTelemetry GenAI semantic conventions (`GEN_AI_*` below); message content only with
  `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.

Chorus hands its tracer provider to the instrumentations explicitly and does not install it
as the global one: libraries that trace through the global provider (autogen-core's runtime
and its own agent/tool spans, which the orchestrator's spans replace) stay silent.

Log lines carry `trace_id` and `span_id` (hex) of the current span when on (`add_trace_ids`,
a structlog processor installed by `chorus.core.logging`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as trace  # re-exported: callers write tracing.trace.Status

from chorus.core import identity

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger(logger_name="chorus.core.tracing")
T = TypeVar("T")

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""GenAI semantic conventions: record prompts, completions and tool arguments/results."""

# OpenTelemetry semantic conventions (GenAI, RPC, error): attribute names and values.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_TYPE = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
ERROR_TYPE = "error.type"

MULTIPLEXED_METHODS = frozenset(
    {"/chorus.v1.ProviderService/StreamChats", "/chorus.v1.RunService/WatchRuns"}
)
"""Calls that carry many streams and live as long as the process: no span of their own;
their streams are traced one by one."""
UNTRACED_METHODS = frozenset({"/chorus.v1.HistoryService/AppendRunEventBatches"})
"""Calls that belong to no one request: the orchestrator's delta flusher commits many runs'
events per call (a group commit, several per second per process); their rate and latency
are in the metrics."""
_UNTRACED_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

SPAN_KIND_CLIENT = trace.SpanKind.CLIENT
SPAN_KIND_SERVER = trace.SpanKind.SERVER
SPAN_KIND_INTERNAL = trace.SpanKind.INTERNAL


class _State:
    """The process's tracing state (one per process; `install` replaces it)."""

    enabled = False
    capture_content = False
    provider: TracerProvider | None = None
    tracer: trace.Tracer = trace.NoOpTracer()
    lock = threading.Lock()
    configured = False


_state = _State()


def enabled() -> bool:
    """Whether this process traces (`configure` found an exporter, or `install` was called)."""
    return _state.enabled


def capture_content() -> bool:
    """Whether spans may carry message content (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`)."""
    return _state.capture_content


def tracer() -> trace.Tracer:
    """Chorus's tracer (a no-op tracer when off)."""
    return _state.tracer


def provider() -> TracerProvider | None:
    """The SDK tracer provider, None when off."""
    return _state.provider


def _env_true(name: str, env: Mapping[str, str]) -> bool:
    return env.get(name, "").strip().lower() == "true"


def exporter_names(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters `OTEL_TRACES_EXPORTER` names (comma-separated); empty when unset,
    `none`, or `OTEL_SDK_DISABLED=true`."""
    env = os.environ if env is None else env
    if _env_true("OTEL_SDK_DISABLED", env):
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if "none" in names:
        return []
    return names


def _exporter_class(name: str, env: Mapping[str, str]) -> Callable[[], Any]:
    """The span exporter class an `OTEL_TRACES_EXPORTER` name stands for: `otlp` by
    `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the
    default, or `http/protobuf`), else the installed entry point of that name.

    Raises:
        ValueError: no exporter of that name is installed.
    """
    from importlib.metadata import entry_points

    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).strip()
        name = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol, "")
        if not name:
            raise ValueError(f"unsupported OTLP protocol {protocol!r} (grpc, http/protobuf)")
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        installed = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: no span exporter {name!r} installed (installed: {installed})"
        )
    cls: Callable[[], Any] = next(iter(found)).load()
    return cls


def configure(
    service: str,
    *,
    instance_id: str | None = None,
    version: str | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Set up tracing for this process from the environment; once per process (later calls
    return the first answer). Returns whether tracing is on.

    Args:
        service: the Chorus service (`gateway`, `orchestrator`, …); `service.name` is
            `chorus-<service>` unless `OTEL_SERVICE_NAME` (or `service.name` in
            `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
        instance_id: `service.instance.id` (the replica's `CHORUS_INSTANCE_ID`).
        version: `service.version`.
        env: the environment to read (default `os.environ`; the SDK itself reads
            `os.environ`).

    Raises:
        ValueError: `OTEL_TRACES_EXPORTER` names an exporter that is not installed, or an
            unsupported OTLP protocol (a service exits with a clear message).
    """
    env = os.environ if env is None else env
    with _state.lock:
        if _state.configured:
            return _state.enabled
        _state.configured = True
    names = exporter_names(env)
    if not names:
        return False
    exporters = [_exporter_class(name, env) for name in names]

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {"service.namespace": "chorus"}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    if version:
        attributes["service.version"] = version
    resource = Resource.create(attributes)  # + OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        resource = resource.merge(Resource({"service.name": f"chorus-{service}"}))
    tracer_provider = TracerProvider(resource=resource)  # sampler and limits: OTEL_* env
    for exporter in exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter()))
    install(tracer_provider, capture=_env_true(CAPTURE_CONTENT_ENV, env))
    log.info(
        "tracing_enabled",
        exporters=names,
        service_name=resource.attributes.get("service.name"),
        sampler=env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
    )
    return True


def install(tracer_provider: TracerProvider | None, *, capture: bool = False) -> None:
    """Trace with `tracer_provider` from now on (None: off). `configure` calls it; tests use
    it with an in-memory exporter. Components read the state when they are built (servers,
    channel pools, apps), spans when they start."""
    _state.provider = tracer_provider
    _state.enabled = tracer_provider is not None
    _state.capture_content = capture and tracer_provider is not None
    _state.tracer = (
        tracer_provider.get_tracer("chorus") if tracer_provider is not None else trace.NoOpTracer()
    )


def shutdown() -> None:
    """Export what is buffered and stop the exporters (end of the process; idempotent)."""
    tracer_provider = _state.provider
    if tracer_provider is not None:
        tracer_provider.shutdown()


# --------------------------------------------------------------------------- gRPC
def _traced_rpc(method: str) -> bool:
    return (
        not method.startswith(_UNTRACED_SERVICES)
        and method not in MULTIPLEXED_METHODS
        and method not in UNTRACED_METHODS
    )


def _user_of(metadata: Any) -> str | None:
    """The `x-chorus-user` of a call's metadata ((key, value) pairs), or None."""
    return next((value for key, value in metadata or () if key == identity.USER_KEY), None)


def _background(user: str | None, in_trace: bool) -> bool:
    """True for a call that belongs to no request: made as `identity.SYSTEM_USER` (which end
    users can never be) and not inside a trace (`in_trace`: the caller has a current span, or
    the call carries a `traceparent`)."""
    return user == identity.SYSTEM_USER and not in_trace


def _server_traced(details: Any) -> bool:
    metadata = details.invocation_metadata or ()
    carries_context = any(key == "traceparent" for key, _ in metadata)
    return _traced_rpc(details.method) and not _background(_user_of(metadata), carries_context)


def server_interceptors() -> list[Any]:
    """The OpenTelemetry aio server interceptor (outermost), or none when off."""
    if not _state.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [
        aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=_state.provider, filter_=_server_traced
        )
    ]


def client_interceptors() -> list[Any]:
    """OpenTelemetry's aio client interceptors for unary and server-streaming calls, or none
    when off. (Bidirectional calls are the multiplexed ones, traced per stream; and grpc.aio
    runs every message of an intercepted stream through an extra task.)"""
    if not _state.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    def traced(details: Any) -> bool:
        method = details.method
        if not _traced_rpc(method.decode() if isinstance(method, bytes) else method):
            return False
        in_trace = trace.get_current_span().get_span_context().is_valid
        user = _user_of(details.metadata)
        if user is None:  # the pool forwards the current identity after this interceptor
            current = identity.current_identity_or_none()
            user = current.user if current is not None else None
        return not _background(user, in_trace)

    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_state.provider, filter_=traced
    )
    return [i for i in interceptors if type(i).__name__.startswith(("UnaryUnary", "UnaryStream"))]


# --------------------------------------------------------------------------- spans
def inject(carrier: MutableMapping[str, str], span: trace.Span | None = None) -> None:
    """Write the W3C trace context (`traceparent`, `tracestate`) of `span` (default: the
    current span) into `carrier`; nothing when off."""
    if not _state.enabled:
        return
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=ctx)


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context a W3C carrier names (an empty context when it names none)."""
    return propagate.extract(carrier, context=otel_context.Context())


def carrier_of(span: trace.Span | None = None) -> dict[str, str]:
    """The W3C carrier of `span` (default: the current span); empty when off."""
    carrier: dict[str, str] = {}
    inject(carrier, span)
    return carrier


def start_span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Sequence[trace.Link] = (),
    start_time: int | None = None,
) -> trace.Span | None:
    """A started span (child of `parent`, default the current context), or None when off.
    The caller ends it (`end_span`)."""
    if not _state.enabled:
        return None
    return _state.tracer.start_span(
        name,
        context=parent,
        kind=kind,
        attributes=dict(attributes) if attributes else None,
        links=links,
        start_time=start_time,
    )


def end_span(span: trace.Span | None, error: BaseException | None = None) -> None:
    """End `span` (None: nothing), marking it failed with `error` (`error.type`, status
    ERROR, the exception recorded; a cancellation is `error.type=cancelled`)."""
    if span is None:
        return
    if error is not None:
        record_error(span, error)
    span.end()


def record_error(span: trace.Span, error: BaseException) -> None:
    """Mark `span` failed by `error` (status ERROR, `error.type`, the exception event; a
    `ChorusError` gives its gRPC code name as `error.type`)."""
    code = getattr(error, "code", None)
    name = getattr(code, "name", None)
    if type(error).__name__ == "CancelledError":
        error_type = "cancelled"
    elif isinstance(name, str):
        error_type = name
    else:
        error_type = type(error).__qualname__
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:500]))
    if error_type != "cancelled":
        span.record_exception(error)


@contextmanager
def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Sequence[trace.Link] = (),
) -> Iterator[trace.Span | None]:
    """A span current for the block (None when off), ended at its end; an exception
    leaving the block marks it failed (`record_error`) and goes on."""
    started = start_span(name, kind=kind, attributes=attributes, parent=parent, links=links)
    if started is None:
        yield None
        return
    token = otel_context.attach(trace.set_span_in_context(started))
    try:
        yield started
    except BaseException as exc:
        record_error(started, exc)
        raise
    finally:
        otel_context.detach(token)
        started.end()


@contextmanager
def use(span_: trace.Span | None) -> Iterator[None]:
    """Make `span_` current for the block (nothing when None); it is not ended."""
    if span_ is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span_))
    try:
        yield
    finally:
        otel_context.detach(token)


def _rpc_attributes(method: str) -> dict[str, Any]:
    service, _, name = method.lstrip("/").partition("/")
    return {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: name}


def start_stream_client_span(
    method: str, carrier: MutableMapping[str, str], attributes: Mapping[str, Any] | None = None
) -> trace.Span | None:
    """The client span of one stream of a multiplexed call (`method` as `/pkg.Service/Rpc`),
    child of the current span; its W3C context goes into `carrier` (the stream's own
    request). None when off."""
    started = start_span(
        method.lstrip("/"),
        kind=trace.SpanKind.CLIENT,
        attributes={**_rpc_attributes(method), **(attributes or {})},
    )
    if started is not None:
        inject(carrier, started)
    return started


def start_stream_server_span(
    method: str, carrier: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> trace.Span | None:
    """The server span of one stream of a multiplexed call, child of the client span its
    `carrier` names (a new trace when it names none — never the call's context). None
    when off."""
    if not _state.enabled:
        return None
    return start_span(
        method.lstrip("/"),
        kind=trace.SpanKind.SERVER,
        attributes={**_rpc_attributes(method), **(attributes or {})},
        parent=extract(carrier),
    )


def end_stream_span(span_: trace.Span | None, code_name: str = "OK", message: str = "") -> None:
    """End a stream span with its gRPC status (`rpc.grpc.status_code`; ERROR unless OK)."""
    if span_ is None:
        return
    import grpc

    code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN)
    span_.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if code is not grpc.StatusCode.OK:
        span_.set_attribute(ERROR_TYPE, code.name)
        span_.set_status(trace.Status(trace.StatusCode.ERROR, message[:500]))
    span_.end()


def link_to(carrier: Mapping[str, str], **attributes: Any) -> list[trace.Link]:
    """A span link to the span a W3C carrier names (none when it names none)."""
    parent = trace.get_current_span(extract(carrier)).get_span_context()
    if not parent.is_valid:
        return []
    return [trace.Link(parent, attributes=attributes or None)]


# --------------------------------------------------------------------------- logs
def add_trace_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: `trace_id` / `span_id` (hex) of the current span, when tracing
    is on and a span is recording."""
    if _state.enabled:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event_dict["trace_id"] = format(ctx.trace_id, "032x")
            event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def iterate_with(span_: trace.Span | None, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """`items` with `span_` current while each item is produced (not while the consumer
    holds it, so the span never leaks into the consumer's context); `items` itself when
    `span_` is None. Closing the result closes `items`."""
    if span_ is None:
        return items
    return _iterate_with(span_, items)


async def _iterate_with(span_: trace.Span, items: AsyncIterator[T]) -> AsyncIterator[T]:
    ctx = trace.set_span_in_context(span_)
    try:
        while True:
            token = otel_context.attach(ctx)
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
