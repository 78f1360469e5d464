"""An OTLP/gRPC trace receiver for tests and benchmarks: opentelemetry-proto's collector
`TraceService` on a real gRPC server (its own threads, so any event loop or none can use it),
keeping every span it is sent.

    with OtlpReceiver() as receiver:          # 127.0.0.1, a free port
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        spans = receiver.wait_for(lambda spans: any(s.name == "run duet" for s in spans))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SPAN_KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received (ids as lowercase hex; `parent_span_id` "" for a root)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    attributes: dict[str, Any]
    status_code: int
    links: list[tuple[str, str]] = field(default_factory=list)
    """(trace id, span id) of each link."""
    start_ns: int = 0
    end_ns: int = 0


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            service = str(resource.get("service.name", ""))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=SPAN_KINDS.get(s.kind, "UNSPECIFIED"),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status_code=s.status.code,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        self._receiver._add(received, request.ByteSize())
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """A running OTLP/gRPC trace receiver on `host`, port 0 (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0
        self.bytes = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self._server
        )
        self.port = self._server.add_insecure_port(f"{host}:0")
        self.endpoint = f"http://{host}:{self.port}"
        """What `OTEL_EXPORTER_OTLP_ENDPOINT` takes."""
        self._server.start()

    def _add(self, spans: Sequence[ReceivedSpan], size: int) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self.bytes += size
            self._lock.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans received so far."""
        with self._lock:
            self._spans.clear()

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float = 60.0
    ) -> list[ReceivedSpan]:
        """The spans once `condition(spans)` holds.

        Raises:
            TimeoutError: not within `timeout` seconds (the message counts what came).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({f"{s.service}:{s.name}" for s in self._spans})
                    raise TimeoutError(
                        f"{len(self._spans)} spans received, condition not met: {names}"
                    )
                self._lock.wait(min(left, 0.5))
            return list(self._spans)

    def close(self) -> None:
        """Stop the server."""
        self._server.stop(None)

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
