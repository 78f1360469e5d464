"""`python -m chorus.history`: serve chorus.v1.HistoryService until SIGTERM/SIGINT."""

from __future__ import annotations

from pydantic import Field

from chorus.core.server import ServiceBinding, main
from chorus.core.settings import CoreSettings
from chorus.v1 import history_service_pb2_grpc


class Settings(CoreSettings):
    """Settings of the history service (`CHORUS_*` environment variables)."""

    history_port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 picks a free one).")


async def _bindings() -> list[ServiceBinding]:
    return [
        ServiceBinding(
            "chorus.v1.HistoryService",
            history_service_pb2_grpc.HistoryServiceServicer(),
            history_service_pb2_grpc.add_HistoryServiceServicer_to_server,
        )
    ]


if __name__ == "__main__":
    settings = Settings()
    main("history", settings, settings.history_port, _bindings)
