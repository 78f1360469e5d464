"""`python -m chorus.provider`: serve chorus.v1.ProviderService until SIGTERM/SIGINT."""

from __future__ import annotations

from pydantic import Field

from chorus.core.server import ServiceBinding, main
from chorus.core.settings import CoreSettings
from chorus.v1 import provider_service_pb2_grpc


class Settings(CoreSettings):
    """Settings of the provider service (`CHORUS_*` environment variables)."""

    provider_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")


async def _bindings() -> list[ServiceBinding]:
    return [
        ServiceBinding(
            "chorus.v1.ProviderService",
            provider_service_pb2_grpc.ProviderServiceServicer(),
            provider_service_pb2_grpc.add_ProviderServiceServicer_to_server,
        )
    ]


if __name__ == "__main__":
    settings = Settings()
    main("provider", settings, settings.provider_port, _bindings)
