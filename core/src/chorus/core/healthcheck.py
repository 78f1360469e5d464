"""`python -m chorus.core.healthcheck HOST:PORT [SERVICE]`: exit 0 when the gRPC health
service reports SERVING for SERVICE (default: the whole server), 1 otherwise.

Used by the containers' HEALTHCHECK (no grpc_health_probe binary needed). `wait_serving`
is the in-process form a service uses to wait for a dependency (the orchestrator's startup
sweep waits for history-svc).
"""

from __future__ import annotations

import asyncio
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


async def wait_serving(
    channel: grpc.aio.Channel,
    service: str = "",
    *,
    first_wait_s: float = 0.05,
    max_wait_s: float = 2.0,
    call_timeout_s: float = 2.0,
) -> None:
    """Return once `service` on `channel` reports SERVING (gRPC health `Check`).

    Polls with a doubling wait (`first_wait_s` up to `max_wait_s`) while the server is
    unreachable, answers NOT_SERVING or does not know the service yet. Waits without end:
    the caller bounds it (`asyncio.timeout`) or cancels it.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    wait = first_wait_s
    while True:
        try:
            reply = await stub.Check(request, timeout=call_timeout_s)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(wait)
        wait = min(max_wait_s, wait * 2)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: python -m chorus.core.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        raise SystemExit(2)
    address, service = sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else ""
    raise SystemExit(0 if check(address, service) else 1)
