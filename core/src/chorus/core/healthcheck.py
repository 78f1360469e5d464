"""`python -m chorus.core.healthcheck HOST:PORT [SERVICE]`: exit 0 when the gRPC health
service reports SERVING for SERVICE (default: the whole server), 1 otherwise.

Used by the containers' HEALTHCHECK (no grpc_health_probe binary needed).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> bool:
    """True when `address` reports SERVING for `service` within `timeout` seconds."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: python -m chorus.core.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        raise SystemExit(2)
    address, service = sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else ""
    raise SystemExit(0 if check(address, service) else 1)
