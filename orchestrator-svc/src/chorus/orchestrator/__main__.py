"""`python -m chorus.orchestrator`: serve chorus.v1.RunService until SIGTERM/SIGINT."""

from __future__ import annotations

from pydantic import Field

from chorus.core.server import ServiceBinding, main
from chorus.core.settings import CoreSettings
from chorus.v1 import run_service_pb2_grpc


class Settings(CoreSettings):
    """Settings of the orchestrator service (`CHORUS_*` environment variables)."""

    orchestrator_port: int = Field(
        50053, ge=0, le=65535, description="gRPC port (0 picks a free one)."
    )


async def _bindings() -> list[ServiceBinding]:
    return [
        ServiceBinding(
            "chorus.v1.RunService",
            run_service_pb2_grpc.RunServiceServicer(),
            run_service_pb2_grpc.add_RunServiceServicer_to_server,
        )
    ]


if __name__ == "__main__":
    settings = Settings()
    main("orchestrator", settings, settings.orchestrator_port, _bindings)
