"""Prometheus metrics of gRPC servers, with the conventional names of go-grpc-prometheus.

`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
`grpc_server_handling_seconds` (histogram) and `grpc_server_msg_sent_total`, labelled by
`grpc_type`, `grpc_service` and `grpc_method`. py-grpc-prometheus has no aio interceptor,
hence `chorus.core.interceptors.MetricsInterceptor`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end on the server, seconds.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ),
)
MSG_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Stream messages sent by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve `/metrics` on `host:port` from a background thread; returns the bound port."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_address[1])
